// libFuzzer target: A1111 prompt attention syntax (pipeline/prompt.h) on arbitrary bytes.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "pipeline/prompt.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto pieces = sdserve::parse_prompt_attention(std::string_view(reinterpret_cast<const char*>(data), size));
  if (pieces.empty()) std::abort();
  size_t text = 0;
  for (const auto& p : pieces) {
    if (std::isnan(p.weight)) std::abort();
    text += p.text.size();
  }
  // Pieces are the prompt's own bytes (escapes resolved, markup removed, "BREAK" markers added).
  if (text > size + 5 * pieces.size()) std::abort();
  return 0;
}
