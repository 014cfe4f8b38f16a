// libFuzzer target for untrusted image input (docs/IMAGES.md): decode_image over PNG, JPEG and WebP
// with small limits (so one input cannot make a run slow or memory-hungry), the EXIF/TIFF parser and
// the XMP orientation search on the raw bytes, and the pixel ops A1111's img2img path applies to an
// upload (flatten, grayscale, resize, mask blur) on what decodes. Any input must decode within the
// limits or fail with an sdserve::Error carrying a one-line message; a crash, sanitizer report, leak,
// other exception type, hang or out-of-memory is a bug. See docs/FUZZING.md.
#include <cstdint>
#include <cstring>
#include <string>

#include "core/error.h"
#include "io/image.h"
#include "io/resize.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // The EXIF reader sees raw bytes; it must never read outside them, whatever they claim.
  const sdserve::ExifInfo exif = sdserve::parse_exif(data, size);
  if (exif.has_user_comment && exif.user_comment.empty()) __builtin_trap();
  const int xo = sdserve::xmp_orientation(std::string(reinterpret_cast<const char*>(data), size));
  if (xo < 0 || xo > 9) __builtin_trap();

  sdserve::ImageLimits limits;
  limits.max_width = 4096;
  limits.max_height = 4096;
  limits.max_pixels = 1 << 20;
  limits.max_input_bytes = 1 << 20;
  try {
    const sdserve::DecodedImage img = sdserve::decode_image(data, size, limits);
    const uint64_t w = uint64_t(img.width), h = uint64_t(img.height);
    if (w == 0 || h == 0 || w * h > limits.max_pixels || (img.channels != 3 && img.channels != 4)) __builtin_trap();
    if (img.pixels.size() != w * h * uint64_t(img.channels)) __builtin_trap();
    if (w * h <= 4096) {
      const sdserve::DecodedImage flat = sdserve::flatten_alpha(img, 255, 255, 255);
      if (flat.channels != 3 || flat.pixels.size() != w * h * 3) __builtin_trap();
      const std::vector<uint8_t> gray = sdserve::to_gray(flat);
      const int ow = int(w / 2 + 1), oh = int(h + 3);
      const auto r = sdserve::resize_image(img.pixels.data(), img.width, img.height, img.channels, ow, oh,
                                           sdserve::ResizeFilter::Lanczos);
      if (r.size() != size_t(ow) * size_t(oh) * size_t(img.channels)) __builtin_trap();
      const auto m = sdserve::mask_blur(gray.data(), img.width, img.height, 4, 4);
      if (m.size() != gray.size()) __builtin_trap();
    }
  } catch (const sdserve::Error& e) {
    if (std::strchr(e.what(), '\n') != nullptr) __builtin_trap();  // messages must be one line
  }
  return 0;
}
