// libFuzzer target for the PNG decoder. Any input must decode within the limits or fail with an
// sdserve::Error carrying a one-line message; a crash, sanitizer report, leak, other exception type,
// hang or out-of-memory is a bug. Decoded images are re-encoded and decoded again, which must give
// the same pixels and text. See docs/FUZZING.md.
#include <cstdint>
#include <cstring>

#include "core/error.h"
#include "io/png.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  sdserve::PngLimits limits;  // small, so one input cannot make a run slow or memory-hungry
  limits.max_width = 4096;
  limits.max_height = 4096;
  limits.max_pixels = 1 << 20;
  limits.max_input_bytes = 1 << 20;
  limits.max_chunk_bytes = 1 << 16;
  limits.max_ancillary_chunks = 16;
  try {
    const sdserve::DecodedImage img = sdserve::decode_png(data, size, limits);
    if (img.pixels.size() != size_t(img.width) * img.height * img.channels) __builtin_trap();
    sdserve::PngText text;
    for (const auto& [k, v] : img.text) {
      // Keys read from a file may be ones a writer must refuse (empty, spaces); keep the rest.
      try {
        sdserve::encode_png(img.pixels.data(), 1, 1, img.channels, {{k, v}}, 0);
        text.emplace_back(k, v);
      } catch (const sdserve::InvalidArgument&) {
      }
    }
    const auto again = sdserve::encode_png(img.pixels.data(), img.width, img.height, img.channels, text, 1);
    const sdserve::DecodedImage back = sdserve::decode_png(again.data(), again.size(), limits);
    if (back.pixels != img.pixels) __builtin_trap();
    if (back.text.size() != text.size()) __builtin_trap();
    for (size_t i = 0; i < text.size(); ++i) {
      if (back.text[i].first != text[i].first) __builtin_trap();
      std::string want;  // the writer drops NULs
      for (char c : text[i].second)
        if (c != '\0') want += c;
      if (back.text[i].second != want) __builtin_trap();
    }
  } catch (const sdserve::Error& e) {
    if (std::strchr(e.what(), '\n') != nullptr) __builtin_trap();  // messages must be one line
  }
  return 0;
}
