// libFuzzer target for the A1111 infotext parser and writer. Any bytes must parse without a crash,
// sanitizer report, exception or super-linear blow-up (-timeout), and what the writer makes of the
// result must parse again. (It is not a fixed point: A1111's format itself loses e.g. edge whitespace
// and values that look quoted, see docs/INFOTEXT.md.) See docs/FUZZING.md.
#include <cstdint>
#include <string>
#include <string_view>

#include "io/infotext.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const sdserve::GenerationParams p = sdserve::parse_infotext(text);
  const std::string once = sdserve::to_infotext(p);
  const sdserve::GenerationParams q = sdserve::parse_infotext(once);
  // The numeric fields survive a round trip exactly.
  if (q.steps != p.steps || q.seed != p.seed || q.width != p.width || q.height != p.height) __builtin_trap();
  (void)sdserve::infotext_find_params(text);
  return 0;
}
