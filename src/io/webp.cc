// WebP through libwebp (decode, encode) and libwebpmux (adding the EXIF chunk on encode). The RIFF
// container is walked here first, bounds-checked, for the VP8X canvas size (checked against the
// limits before libwebp sees the file), animation, and the EXIF/XMP chunks.
#include <webp/decode.h>
#include <webp/encode.h>
#include <webp/mux.h>

#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/image.h"
#include "io/image_detail.h"

namespace sdserve {
namespace {

uint32_t le32(const uint8_t* p) {
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}
uint32_t le24(const uint8_t* p) { return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16; }

struct RiffInfo {
  bool vp8x = false;
  uint32_t canvas_width = 0, canvas_height = 0;
  bool animated = false;  // VP8X animation flag, or an ANIM/ANMF chunk
  const uint8_t* exif = nullptr;
  size_t exif_size = 0;
  const uint8_t* xmp = nullptr;
  size_t xmp_size = 0;
};

// Walks the chunks that lie wholly inside the input; stops at the first that does not (libwebp then
// reports the truncation).
RiffInfo walk_riff(const uint8_t* data, size_t size) {
  RiffInfo r;
  size_t pos = 12;
  while (pos <= size && size - pos >= 8) {
    const uint8_t* c = data + pos;
    const uint32_t len = le32(c + 4);
    if (len > size - pos - 8) break;
    const uint8_t* payload = c + 8;
    if (std::memcmp(c, "VP8X", 4) == 0 && pos == 12 && len >= 10) {
      r.vp8x = true;
      r.animated = r.animated || (payload[0] & 0x02) != 0;
      r.canvas_width = le24(payload + 4) + 1;
      r.canvas_height = le24(payload + 7) + 1;
    } else if (std::memcmp(c, "ANIM", 4) == 0 || std::memcmp(c, "ANMF", 4) == 0) {
      r.animated = true;
    } else if (std::memcmp(c, "EXIF", 4) == 0 && r.exif == nullptr) {
      r.exif = payload;
      r.exif_size = len;
    } else if (std::memcmp(c, "XMP ", 4) == 0 && r.xmp == nullptr) {
      r.xmp = payload;
      r.xmp_size = len;
    }
    pos += 8 + size_t(len) + (len & 1);
  }
  return r;
}

const char* vp8_status_name(VP8StatusCode s) {
  switch (s) {
    case VP8_STATUS_OK:
      return "ok";
    case VP8_STATUS_OUT_OF_MEMORY:
      return "out of memory";
    case VP8_STATUS_INVALID_PARAM:
      return "invalid parameter";
    case VP8_STATUS_BITSTREAM_ERROR:
      return "corrupt bitstream";
    case VP8_STATUS_UNSUPPORTED_FEATURE:
      return "unsupported feature";
    case VP8_STATUS_SUSPENDED:
      return "suspended";
    case VP8_STATUS_USER_ABORT:
      return "aborted";
    case VP8_STATUS_NOT_ENOUGH_DATA:
      return "truncated file (not enough data)";
  }
  return "unknown error";
}

const char* encode_error_name(WebPEncodingError e) {
  switch (e) {
    case VP8_ENC_OK:
      return "ok";
    case VP8_ENC_ERROR_OUT_OF_MEMORY:
      return "out of memory";
    case VP8_ENC_ERROR_BITSTREAM_OUT_OF_MEMORY:
      return "out of memory for the bitstream";
    case VP8_ENC_ERROR_NULL_PARAMETER:
      return "null parameter";
    case VP8_ENC_ERROR_INVALID_CONFIGURATION:
      return "invalid configuration";
    case VP8_ENC_ERROR_BAD_DIMENSION:
      return "bad dimension";
    case VP8_ENC_ERROR_PARTITION0_OVERFLOW:
      return "partition 0 overflow";
    case VP8_ENC_ERROR_PARTITION_OVERFLOW:
      return "partition overflow";
    case VP8_ENC_ERROR_BAD_WRITE:
      return "write failed";
    case VP8_ENC_ERROR_FILE_TOO_BIG:
      return "file too big";
    case VP8_ENC_ERROR_USER_ABORT:
      return "aborted";
    case VP8_ENC_ERROR_LAST:
      break;
  }
  return "unknown error";
}

struct PictureGuard {
  WebPPicture pic;
  WebPMemoryWriter writer;
  PictureGuard() { WebPMemoryWriterInit(&writer); }
  ~PictureGuard() {
    WebPPictureFree(&pic);
    WebPMemoryWriterClear(&writer);
  }
};

struct MuxGuard {
  WebPMux* mux = nullptr;
  WebPData assembled;
  MuxGuard() { WebPDataInit(&assembled); }
  ~MuxGuard() {
    WebPMuxDelete(mux);
    WebPDataClear(&assembled);
  }
};

}  // namespace

DecodedImage decode_webp(const uint8_t* data, size_t size, const ImageLimits& limits, std::vector<uint8_t>* exif,
                         std::string* xmp) {
  SD_CHECK_ARG(data != nullptr || size == 0, "webp: no data");
  image_detail::check_input_size("webp", size, limits);
  if (size < 12 || std::memcmp(data, "RIFF", 4) != 0 || std::memcmp(data + 8, "WEBP", 4) != 0)
    throw InvalidArgument("webp: not a WebP file (bad RIFF header)");

  const RiffInfo riff = walk_riff(data, size);
  if (riff.vp8x) image_detail::check_dimensions("webp", riff.canvas_width, riff.canvas_height, limits);
  if (riff.animated)
    throw InvalidArgument("webp: animated WebP is not supported; send a single frame (PNG, JPEG or still WebP)");

  WebPBitstreamFeatures f;
  const VP8StatusCode fs = WebPGetFeatures(data, size, &f);
  if (fs != VP8_STATUS_OK) throw InvalidArgument(std::string("webp: cannot read the header: ") + vp8_status_name(fs));
  if (f.has_animation)
    throw InvalidArgument("webp: animated WebP is not supported; send a single frame (PNG, JPEG or still WebP)");
  if (f.width <= 0 || f.height <= 0) throw InvalidArgument("webp: image has no pixels");
  image_detail::check_dimensions("webp", uint64_t(f.width), uint64_t(f.height), limits);

  DecodedImage out;
  out.width = f.width;
  out.height = f.height;
  out.channels = f.has_alpha ? 4 : 3;
  const size_t stride = size_t(f.width) * size_t(out.channels);
  out.pixels.resize(stride * size_t(f.height));

  WebPDecoderConfig config;
  if (!WebPInitDecoderConfig(&config)) throw InternalError("webp: library version mismatch");
  config.output.colorspace = f.has_alpha ? MODE_RGBA : MODE_RGB;  // straight (not premultiplied) alpha
  config.output.is_external_memory = 1;
  config.output.u.RGBA.rgba = out.pixels.data();
  config.output.u.RGBA.stride = int(stride);
  config.output.u.RGBA.size = out.pixels.size();
  const VP8StatusCode ds = WebPDecode(data, size, &config);
  WebPFreeDecBuffer(&config.output);
  if (ds != VP8_STATUS_OK) throw InvalidArgument(std::string("webp: ") + vp8_status_name(ds));

  if (exif != nullptr && riff.exif != nullptr) exif->assign(riff.exif, riff.exif + riff.exif_size);
  if (xmp != nullptr && riff.xmp != nullptr) xmp->assign(reinterpret_cast<const char*>(riff.xmp), riff.xmp_size);
  return out;
}

std::vector<uint8_t> encode_webp(const uint8_t* pixels, int width, int height, int channels, int quality, bool lossless,
                                 const std::string& infotext) {
  SD_CHECK_ARG(pixels != nullptr, "webp: no pixel data");
  SD_CHECK_ARG(
      width > 0 && height > 0 && width <= WEBP_MAX_DIMENSION && height <= WEBP_MAX_DIMENSION,
      "webp: image size must be 1-16383 per side, got " + std::to_string(width) + "x" + std::to_string(height));
  SD_CHECK_ARG(channels == 3 || channels == 4, "webp: channels must be 3 or 4, got " + std::to_string(channels));
  SD_CHECK_ARG(quality >= 0 && quality <= 100, "webp: quality must be 0-100, got " + std::to_string(quality));

  WebPConfig config;
  if (!WebPConfigInit(&config)) throw InternalError("webp: library version mismatch");
  config.quality = float(quality);
  config.lossless = lossless ? 1 : 0;
  config.exact = lossless ? 1 : 0;  // keep RGB under transparent pixels in lossless files
  if (!WebPValidateConfig(&config)) throw InternalError("webp: invalid encoder configuration");

  PictureGuard g;
  if (!WebPPictureInit(&g.pic)) throw InternalError("webp: library version mismatch");
  g.pic.width = width;
  g.pic.height = height;
  g.pic.use_argb = lossless ? 1 : 0;
  const int stride = width * channels;
  const int ok =
      channels == 4 ? WebPPictureImportRGBA(&g.pic, pixels, stride) : WebPPictureImportRGB(&g.pic, pixels, stride);
  if (!ok)
    throw ResourceError("webp: out of memory importing a " + std::to_string(width) + "x" + std::to_string(height) +
                        " image");
  g.pic.writer = WebPMemoryWrite;
  g.pic.custom_ptr = &g.writer;
  if (!WebPEncode(&config, &g.pic))
    throw InternalError(std::string("webp: encoding failed: ") + encode_error_name(g.pic.error_code));

  if (infotext.empty()) return std::vector<uint8_t>(g.writer.mem, g.writer.mem + g.writer.size);

  const std::vector<uint8_t> tiff = exif_user_comment(infotext);
  MuxGuard m;
  WebPData image = {g.writer.mem, g.writer.size};
  m.mux = WebPMuxCreate(&image, 0);
  if (m.mux == nullptr) throw InternalError("webp: cannot parse our own encoder output");
  WebPData chunk = {tiff.data(), tiff.size()};
  if (WebPMuxSetChunk(m.mux, "EXIF", &chunk, 0) != WEBP_MUX_OK || WebPMuxAssemble(m.mux, &m.assembled) != WEBP_MUX_OK)
    throw InternalError("webp: adding the EXIF chunk failed");
  return std::vector<uint8_t>(m.assembled.bytes, m.assembled.bytes + m.assembled.size);
}

}  // namespace sdserve
