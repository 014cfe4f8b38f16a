// PNG in and out through libpng, in memory. Output carries text chunks the way A1111 writes them
// (PIL's PngInfo.add_text: tEXt with Latin-1 text when the value fits, otherwise an uncompressed
// iTXt with UTF-8 text), so A1111's "PNG Info" tab and `Image.open(...).info["parameters"]` read our
// infotext back. Input is untrusted: decode_png checks the header against limits before it
// allocates anything for pixels, and every libpng error becomes a one-line InvalidArgument.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.h"

namespace sdserve {

// (key, value) pairs; both UTF-8. Keys must be 1-79 printable Latin-1 characters (PNG rule).
using PngText = std::vector<std::pair<std::string, std::string>>;

// Encodes interleaved 8-bit RGB (channels = 3) or RGBA (channels = 4) pixels, rows top to bottom,
// no padding. `compression` is the zlib level 0-9 (6 is PIL's default too). Text values: NUL
// characters are dropped (a PNG text chunk cannot hold them) and invalid UTF-8 becomes U+FFFD.
// Throws InvalidArgument on bad arguments, InternalError if libpng fails.
std::vector<uint8_t> encode_png(const uint8_t* pixels, int width, int height, int channels, const PngText& text_chunks,
                                int compression = 6);

// encode_png, then writes `path` (via a temporary file in the same directory, renamed into place).
// Throws IoError.
void write_png_file(const std::string& path, const uint8_t* pixels, int width, int height, int channels,
                    const PngText& text_chunks, int compression = 6);

struct PngLimits {
  uint32_t max_width = 16384;
  uint32_t max_height = 16384;
  uint64_t max_pixels = uint64_t(8192) * 8192;  // 256 MiB of RGBA
  size_t max_input_bytes = size_t(256) << 20;
  // Any one decompressed zTXt/iTXt/iCCP (a larger one is dropped, not an error) and the number of
  // text/sPLT/unknown chunks kept (further ones are skipped): at most 64 MiB of text in all.
  size_t max_chunk_bytes = size_t(1) << 20;
  uint32_t max_ancillary_chunks = 64;
};

struct DecodedImage {
  int width = 0;
  int height = 0;
  int channels = 0;             // 3 (RGB) or 4 (RGBA: the file had alpha or tRNS)
  std::vector<uint8_t> pixels;  // interleaved, width * height * channels bytes
  PngText text;                 // tEXt/zTXt (Latin-1, converted to UTF-8) and iTXt, in file order
};

// Decodes any PNG (palette, gray, 16-bit, interlaced, with or without alpha) to 8-bit RGB or RGBA;
// no gamma correction (like PIL). Text chunks after the image data are included. Every chunk must
// lie inside the input, up to IEND (checked before libpng runs). Throws
// InvalidArgument with a one-line message for a corrupt, truncated or over-limit file.
DecodedImage decode_png(const uint8_t* data, size_t size, const PngLimits& limits = {});

// The "parameters" text of a decoded PNG (A1111 infotext), or nullptr.
const std::string* find_png_text(const PngText& text, const std::string& key);

// A decoded image tensor [3, H, W] (or [1, 3, H, W]) in [-1, 1] to interleaved RGB8, exactly as
// diffusers' VaeImageProcessor.postprocess(output_type="pil") does: (x * 0.5 + 0.5).clamp(0, 1) in the
// tensor's dtype, then in f32 `* 255`, round half to even (numpy .round()), cast to uint8. NaN maps to 0.
std::vector<uint8_t> image_to_rgb8(const Tensor& img);

}  // namespace sdserve
