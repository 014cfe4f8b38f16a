// Untrusted image input (PNG, JPEG, WebP) and output (PNG, JPEG, WebP), with the pixel conventions of
// PIL as A1111 uses it: decode_image gives what `ImageOps.exif_transpose(Image.open(f))` followed by
// convert("RGB"/"RGBA") gives, flatten_alpha is A1111's images.flatten, to_gray is convert("L").
// Every decoder checks the header against ImageLimits before it allocates pixels, and every
// library error becomes a one-line InvalidArgument. See docs/IMAGES.md.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "io/png.h"

namespace sdserve {

struct ImageLimits {
  uint32_t max_width = 16384;
  uint32_t max_height = 16384;
  uint64_t max_pixels = uint64_t(8192) * 8192;
  size_t max_input_bytes = size_t(256) << 20;
};

enum class ImageFormat { Unknown, Png, Jpeg, Webp };

// The format the magic bytes say (PNG signature, JPEG SOI FF D8 FF, RIFF....WEBP); Unknown otherwise.
ImageFormat sniff_image_format(const uint8_t* data, size_t size);
const char* image_format_name(ImageFormat f);  // "png", "jpeg", "webp", "unknown"

// Decodes a PNG, JPEG or WebP to 8-bit RGB (channels 3) or RGBA (channels 4: the file has alpha),
// then, when `apply_exif_orientation`, turns it upright as PIL's ImageOps.exif_transpose does (EXIF
// Orientation from JPEG APP1, PNG eXIf or the WebP EXIF chunk; else XMP tiff:Orientation). Text: a PNG's
// text chunks; for JPEG/WebP, an EXIF UserComment becomes ("parameters", text) as A1111's PNG Info reads
// it. Throws InvalidArgument (one line) for anything else, a corrupt or truncated file, an animated
// WebP, or a size over `limits`.
DecodedImage decode_image(const uint8_t* data, size_t size, const ImageLimits& limits = {},
                          bool apply_exif_orientation = true);

// The single decoders behind decode_image, without orientation (JPEG: gray and CMYK become RGB as
// PIL's convert("RGB") does). `exif` (optional) receives the raw EXIF payload (TIFF header onwards).
DecodedImage decode_jpeg(const uint8_t* data, size_t size, const ImageLimits& limits = {},
                         std::vector<uint8_t>* exif = nullptr, std::string* xmp = nullptr);
DecodedImage decode_webp(const uint8_t* data, size_t size, const ImageLimits& limits = {},
                         std::vector<uint8_t>* exif = nullptr, std::string* xmp = nullptr);

// What sdserve reads from an EXIF block (with or without the "Exif\0\0" prefix). A bounds-checked
// TIFF reader: any input is safe; anything unreadable leaves the defaults.
struct ExifInfo {
  bool has_orientation = false;  // IFD0 has tag 0x0112 (then XMP is not consulted, as in PIL)
  int orientation = 1;           // its value (1-8 are meaningful)
  bool has_user_comment = false;
  std::string user_comment;  // Exif IFD tag 0x9286 ("ASCII" or "UNICODE" UTF-16 charset), as UTF-8
};
ExifInfo parse_exif(const uint8_t* data, size_t size);

// XMP's tiff:Orientation as PIL's getexif() finds it (first `tiff:Orientation="D` or `>D`), or 0.
int xmp_orientation(const std::string& xmp);

// PIL's Image.transpose for EXIF orientations 2-8 (2 mirror, 3 rotate 180, 4 flip, 5 transpose,
// 6 rotate 270 = 90 clockwise, 7 transverse, 8 rotate 90 = counter-clockwise); others: unchanged copy.
DecodedImage apply_orientation(const DecodedImage& img, int orientation);

// RGBA composited over an opaque colour, to RGB: A1111's images.flatten (PIL alpha_composite onto a
// solid RGBA background, then convert("RGB")), with PIL's integer arithmetic. RGB input: a copy.
DecodedImage flatten_alpha(const DecodedImage& img, uint8_t r, uint8_t g, uint8_t b);
// convert("RGB"): alpha dropped (not composited).
DecodedImage to_rgb(const DecodedImage& img);
// convert("L"): L = (19595 R + 38470 G + 7471 B + 32768) >> 16 (PIL's fixed-point ITU-R 601-2 luma,
// 0.299/0.587/0.114 rounded); alpha ignored. Returns width * height bytes.
std::vector<uint8_t> to_gray(const DecodedImage& img);
std::vector<uint8_t> to_gray(const uint8_t* pixels, int width, int height, int channels);

// EXIF (TIFF, big-endian as piexif writes it) holding `text` as the Exif UserComment in the
// "UNICODE" charset (UTF-16BE): what A1111 embeds in JPEG/WebP so PNG Info reads the infotext back.
std::vector<uint8_t> exif_user_comment(const std::string& text);

// Baseline JPEG of RGB pixels (libjpeg defaults as PIL's save: 4:2:0, quality 1-100, JFIF header).
// A non-empty `infotext` goes into an APP1 Exif UserComment (at most about 32000 characters).
std::vector<uint8_t> encode_jpeg(const uint8_t* rgb, int width, int height, int quality,
                                 const std::string& infotext = "");
// WebP of RGB (channels 3) or RGBA (4): lossy at `quality` 0-100, or lossless (quality then is the
// compression effort, as in PIL; RGB under fully transparent pixels is kept exactly).
std::vector<uint8_t> encode_webp(const uint8_t* pixels, int width, int height, int channels, int quality, bool lossless,
                                 const std::string& infotext = "");
// "png" (infotext as text chunk "parameters"; quality ignored), "jpeg"/"jpg" (alpha dropped, as
// A1111 does) or "webp" (lossy at `quality`, or lossless), infotext in EXIF for the latter two.
// Throws InvalidArgument for another format.
std::vector<uint8_t> encode_image(const std::string& format, const uint8_t* pixels, int width, int height, int channels,
                                  int quality = 80, const std::string& infotext = "", bool webp_lossless = false);

}  // namespace sdserve
