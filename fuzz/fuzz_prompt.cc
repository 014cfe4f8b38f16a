// libFuzzer target: A1111 prompt syntax (pipeline/prompt.h) on arbitrary bytes: extra-network
// tags and LoRA multipliers, the attention parser, and the 75-token chunking that feeds the
// text encoder (with the bundled CLIP tokenizer), and the token count the web page shows.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "core/error.h"
#include "pipeline/prompt.h"
#include "pipeline/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  const auto extra = sdserve::parse_extra_networks(input);
  if (extra.prompt.size() > size) std::abort();
  try {
    for (const auto& l : sdserve::lora_calls(extra.calls))
      if (l.name.empty() || !std::isfinite(l.te_multiplier) || !std::isfinite(l.unet_multiplier)) std::abort();
  } catch (const sdserve::InvalidArgument&) {
    // a malformed multiplier is a clear error, never a crash
  }
  const auto pieces = sdserve::parse_prompt_attention(extra.prompt);
  if (pieces.empty()) std::abort();
  size_t text = 0;
  for (const auto& p : pieces) {
    if (std::isnan(p.weight)) std::abort();
    text += p.text.size();
  }
  // Pieces are the prompt's own bytes (escapes resolved, markup removed, "BREAK" markers added).
  if (text > size + 5 * pieces.size()) std::abort();
  static const sdserve::ClipTokenizer tok = sdserve::ClipTokenizer::bundled();
  sdserve::ChunkOptions opt;
  opt.max_chunks = 1000;
  try {
    const auto chunks = sdserve::chunk_prompt(tok, extra.prompt, opt);
    for (const auto& c : chunks)
      if (c.ids.size() != 77 || c.multipliers.size() != 77 || c.ids.front() != tok.bos_id()) std::abort();
    // The token counter (POST /v1/tokenize): within the chunks, limit a multiple of 75 above it.
    const auto n = sdserve::count_prompt_tokens(chunks, tok.eos_id());
    if (n.chunks != chunks.size() || n.tokens > 75 * n.chunks || n.limit % 75 != 0 || n.limit < n.tokens ||
        n.limit < 75)
      std::abort();
  } catch (const sdserve::InvalidArgument&) {
    // too many chunks: a clear error
  }
  return 0;
}
