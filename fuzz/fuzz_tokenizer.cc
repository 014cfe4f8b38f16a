// libFuzzer target: arbitrary bytes through the bundled CLIP tokenizer. Checks framing and id range,
// and that decode accepts whatever encode produced.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "pipeline/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const sdserve::ClipTokenizer tok = sdserve::ClipTokenizer::bundled();
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const auto ids = tok.encode(text);
  if (ids.size() < 2 || ids.front() != tok.bos_id() || ids.back() != tok.eos_id()) abort();
  for (int32_t id : ids) {
    if (id < 0 || static_cast<size_t>(id) >= tok.vocab_size()) abort();
  }
  (void)tok.decode(ids);
  return 0;
}
