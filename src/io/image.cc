#include "io/image.h"

#include <algorithm>
#include <cstring>
#include <string_view>

#include "core/error.h"
#include "core/utf8.h"
#include "io/image_detail.h"

namespace sdserve {
namespace {

// ---- a bounds-checked TIFF reader (EXIF is a TIFF header and IFDs) ----

class TiffReader {
 public:
  TiffReader(const uint8_t* d, size_t n, bool le) : d_(d), n_(n), le_(le) {}
  bool has(uint64_t off, uint64_t len) const { return off <= n_ && len <= n_ - off; }
  bool u16(uint64_t off, uint32_t& v) const {
    if (!has(off, 2)) return false;
    const uint8_t* p = d_ + off;
    v = le_ ? uint32_t(p[0]) | uint32_t(p[1]) << 8 : uint32_t(p[0]) << 8 | uint32_t(p[1]);
    return true;
  }
  bool u32(uint64_t off, uint32_t& v) const {
    if (!has(off, 4)) return false;
    const uint8_t* p = d_ + off;
    v = le_ ? uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24
            : uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | uint32_t(p[3]);
    return true;
  }
  const uint8_t* at(uint64_t off) const { return d_ + off; }

 private:
  const uint8_t* d_;
  size_t n_;
  bool le_;
};

uint32_t tiff_type_size(uint32_t type) {
  switch (type) {
    case 1:
    case 2:
    case 6:
    case 7:
      return 1;  // BYTE, ASCII, SBYTE, UNDEFINED
    case 3:
    case 8:
      return 2;  // SHORT, SSHORT
    case 4:
    case 9:
    case 11:
    case 13:
      return 4;  // LONG, SLONG, FLOAT, IFD
    case 5:
    case 10:
    case 12:
      return 8;  // RATIONAL, SRATIONAL, DOUBLE
    default:
      return 0;  // unknown: skipped, as PIL does
  }
}

struct TiffEntry {
  uint32_t tag = 0, type = 0, count = 0;
  uint64_t data_off = 0;  // where count * type_size bytes lie (checked to be inside the buffer)
};

// Calls fn(entry) for every readable entry of the IFD at `off`.
template <typename Fn>
void for_each_entry(const TiffReader& r, uint64_t off, Fn fn) {
  uint32_t count = 0;
  if (!r.u16(off, count)) return;
  for (uint32_t i = 0; i < count; ++i) {
    const uint64_t e = off + 2 + uint64_t(i) * 12;
    TiffEntry t;
    if (!r.has(e, 12)) return;  // PIL reads whole 12-byte entries
    if (!r.u16(e, t.tag) || !r.u16(e + 2, t.type) || !r.u32(e + 4, t.count)) return;
    const uint32_t unit = tiff_type_size(t.type);
    if (unit == 0) continue;
    const uint64_t bytes = uint64_t(t.count) * unit;
    if (bytes <= 4) {
      t.data_off = e + 8;
    } else {
      uint32_t p = 0;
      if (!r.u32(e + 8, p)) return;
      t.data_off = p;
    }
    if (!r.has(t.data_off, bytes)) continue;  // PIL skips an entry whose data lies outside
    fn(t);
  }
}

// The integer value of a one-element integer entry.
bool entry_int(const TiffReader& r, const TiffEntry& t, int64_t& v) {
  if (t.count != 1) return false;
  uint32_t u = 0;
  switch (t.type) {
    case 1:
      v = *r.at(t.data_off);
      return true;
    case 6:
      v = int8_t(*r.at(t.data_off));
      return true;
    case 3:
      r.u16(t.data_off, u);
      v = u;
      return true;
    case 8:
      r.u16(t.data_off, u);
      v = int16_t(uint16_t(u));
      return true;
    case 4:
    case 13:
      r.u32(t.data_off, u);
      v = u;
      return true;
    case 9:
      r.u32(t.data_off, u);
      v = int32_t(u);
      return true;
    default:
      return false;
  }
}

// UTF-8 code points of `s`; an invalid byte becomes U+FFFD.
template <typename Fn>
void for_each_code_point(std::string_view s, Fn fn) {
  for (size_t i = 0; i < s.size();) {
    const size_t len = utf8_len(s, i);
    if (len == 0) {
      fn(0xFFFDu);
      ++i;
      continue;
    }
    const uint8_t c = uint8_t(s[i]);
    uint32_t cp = len == 1 ? c : len == 2 ? c & 0x1F : len == 3 ? c & 0x0F : c & 0x07;
    for (size_t k = 1; k < len; ++k) cp = cp << 6 | (uint8_t(s[i + k]) & 0x3F);
    fn(cp);
    i += len;
  }
}

// piexif.helper.UserComment.load as A1111's read_info_from_image uses it: the 8-byte charset prefix
// "UNICODE\0" (UTF-16BE) or "ASCII\0\0\0"; anything else is read as UTF-8 with bad bytes dropped.
std::string user_comment_text(const uint8_t* p, size_t n) {
  std::string out;
  if (n >= 8 && std::memcmp(p, "UNICODE\0", 8) == 0) {
    for (size_t i = 8; i + 1 < n; i += 2) {
      uint32_t u = uint32_t(p[i]) << 8 | p[i + 1];
      if (u >= 0xD800 && u <= 0xDBFF && i + 3 < n) {
        const uint32_t lo = uint32_t(p[i + 2]) << 8 | p[i + 3];
        if (lo >= 0xDC00 && lo <= 0xDFFF) {
          u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
          i += 2;
        }
      }
      append_utf8(out, (u >= 0xD800 && u <= 0xDFFF) ? 0xFFFD : u);
    }
    if ((n - 8) % 2 != 0) append_utf8(out, 0xFFFD);
  } else if (n >= 8 && std::memcmp(p, "ASCII\0\0\0", 8) == 0) {
    for (size_t i = 8; i < n; ++i) append_utf8(out, p[i] < 0x80 ? p[i] : 0xFFFD);
  } else {
    const std::string_view s(reinterpret_cast<const char*>(p), n);
    for (size_t i = 0; i < s.size();) {
      const size_t len = utf8_len(s, i);
      if (len == 0) {
        ++i;
      } else {
        out.append(s.substr(i, len));
        i += len;
      }
    }
  }
  return out;
}

// ---- PNG: the eXIf chunk (decode_png has checked that every chunk lies inside the input) ----

bool png_exif(const uint8_t* d, size_t n, std::vector<uint8_t>& exif) {
  for (size_t pos = 8; pos <= n && n - pos >= 12;) {
    const uint32_t len = uint32_t(d[pos]) << 24 | uint32_t(d[pos + 1]) << 16 | uint32_t(d[pos + 2]) << 8 | d[pos + 3];
    if (len > n - pos - 12) return false;
    if (std::memcmp(d + pos + 4, "eXIf", 4) == 0) {
      exif.assign(d + pos + 8, d + pos + 8 + len);
      return true;
    }
    if (std::memcmp(d + pos + 4, "IEND", 4) == 0) return false;
    pos += 12 + size_t(len);
  }
  return false;
}

std::string lower(std::string s) {
  for (char& c : s) c = char(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
  return s;
}

}  // namespace

ImageFormat sniff_image_format(const uint8_t* d, size_t n) {
  static const uint8_t kPng[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  if (d == nullptr) return ImageFormat::Unknown;
  if (n >= 8 && std::memcmp(d, kPng, 8) == 0) return ImageFormat::Png;
  if (n >= 3 && d[0] == 0xFF && d[1] == 0xD8 && d[2] == 0xFF) return ImageFormat::Jpeg;
  if (n >= 12 && std::memcmp(d, "RIFF", 4) == 0 && std::memcmp(d + 8, "WEBP", 4) == 0) return ImageFormat::Webp;
  return ImageFormat::Unknown;
}

const char* image_format_name(ImageFormat f) {
  switch (f) {
    case ImageFormat::Png:
      return "png";
    case ImageFormat::Jpeg:
      return "jpeg";
    case ImageFormat::Webp:
      return "webp";
    case ImageFormat::Unknown:
      break;
  }
  return "unknown";
}

ExifInfo parse_exif(const uint8_t* data, size_t size) {
  ExifInfo info;
  if (data == nullptr) return info;
  if (size >= 6 && std::memcmp(data, "Exif\0\0", 6) == 0) {
    data += 6;
    size -= 6;
  }
  if (size < 8) return info;
  bool le = false;
  if (data[0] == 'I' && data[1] == 'I') {
    le = true;
  } else if (!(data[0] == 'M' && data[1] == 'M')) {
    return info;
  }
  const TiffReader r(data, size, le);
  uint32_t magic = 0, ifd0 = 0;
  if (!r.u16(2, magic) || magic != 42 || !r.u32(4, ifd0)) return info;
  int64_t exif_ifd = -1;
  for_each_entry(r, ifd0, [&](const TiffEntry& t) {
    int64_t v = 0;
    if (t.tag == 0x0112 && entry_int(r, t, v)) {
      info.has_orientation = true;
      info.orientation = int(std::clamp<int64_t>(v, -1, 1000));
    } else if (t.tag == 0x8769 && entry_int(r, t, v)) {
      exif_ifd = v;
    }
  });
  if (exif_ifd >= 0 && uint64_t(exif_ifd) != ifd0) {
    for_each_entry(r, uint64_t(exif_ifd), [&](const TiffEntry& t) {
      if (t.tag == 0x9286 && tiff_type_size(t.type) == 1) {
        std::string text = user_comment_text(r.at(t.data_off), t.count);
        info.has_user_comment = !text.empty();
        info.user_comment = std::move(text);
      }
    });
  }
  return info;
}

int xmp_orientation(const std::string& xmp) {
  static const std::string_view kKey = "tiff:Orientation";
  for (size_t pos = xmp.find(kKey); pos != std::string::npos; pos = xmp.find(kKey, pos + 1)) {
    size_t i = pos + kKey.size();
    if (i + 1 < xmp.size() && xmp[i] == '=' && xmp[i + 1] == '"') {
      i += 2;
    } else if (i < xmp.size() && xmp[i] == '>') {
      i += 1;
    } else {
      continue;
    }
    if (i < xmp.size() && xmp[i] >= '0' && xmp[i] <= '9') return xmp[i] - '0';
  }
  return 0;
}

DecodedImage apply_orientation(const DecodedImage& img, int orientation) {
  if (orientation < 2 || orientation > 8) return img;
  const size_t W = size_t(img.width), H = size_t(img.height), C = size_t(img.channels);
  SD_CHECK_ARG(img.pixels.size() == W * H * C, "apply_orientation: pixel buffer does not match the image size");
  const bool swap = orientation >= 5;
  DecodedImage out;
  out.width = swap ? img.height : img.width;
  out.height = swap ? img.width : img.height;
  out.channels = img.channels;
  out.text = img.text;
  out.pixels.resize(img.pixels.size());
  const size_t OW = size_t(out.width), OH = size_t(out.height);
  for (size_t y = 0; y < OH; ++y) {
    for (size_t x = 0; x < OW; ++x) {
      size_t sx = x, sy = y;
      switch (orientation) {
        case 2:
          sx = W - 1 - x;
          break;  // FLIP_LEFT_RIGHT
        case 3:
          sx = W - 1 - x;
          sy = H - 1 - y;
          break;  // ROTATE_180
        case 4:
          sy = H - 1 - y;
          break;  // FLIP_TOP_BOTTOM
        case 5:
          sx = y;
          sy = x;
          break;  // TRANSPOSE
        case 6:
          sx = y;
          sy = H - 1 - x;
          break;  // ROTATE_270 (90 degrees clockwise)
        case 7:
          sx = W - 1 - y;
          sy = H - 1 - x;
          break;  // TRANSVERSE
        case 8:
          sx = W - 1 - y;
          sy = x;
          break;  // ROTATE_90 (counter-clockwise)
      }
      std::memcpy(&out.pixels[(y * OW + x) * C], &img.pixels[(sy * W + sx) * C], C);
    }
  }
  return out;
}

DecodedImage decode_image(const uint8_t* data, size_t size, const ImageLimits& limits, bool apply_exif_orientation) {
  SD_CHECK_ARG(data != nullptr || size == 0, "image: no data");
  image_detail::check_input_size("image", size, limits);
  DecodedImage img;
  std::vector<uint8_t> exif;
  std::string xmp;
  switch (sniff_image_format(data, size)) {
    case ImageFormat::Png: {
      PngLimits pl;
      pl.max_width = limits.max_width;
      pl.max_height = limits.max_height;
      pl.max_pixels = limits.max_pixels;
      pl.max_input_bytes = limits.max_input_bytes;
      img = decode_png(data, size, pl);
      png_exif(data, size, exif);
      if (const std::string* x = find_png_text(img.text, "XML:com.adobe.xmp")) xmp = *x;
      break;
    }
    case ImageFormat::Jpeg:
      img = decode_jpeg(data, size, limits, &exif, &xmp);
      break;
    case ImageFormat::Webp:
      img = decode_webp(data, size, limits, &exif, &xmp);
      break;
    case ImageFormat::Unknown: {
      const char* what = "this file";
      if (size >= 4 && std::memcmp(data, "GIF8", 4) == 0)
        what = "GIF";
      else if (size >= 2 && std::memcmp(data, "BM", 2) == 0)
        what = "BMP";
      else if (size >= 4 && (std::memcmp(data, "II*\0", 4) == 0 || std::memcmp(data, "MM\0*", 4) == 0))
        what = "TIFF";
      else if (size >= 12 && std::memcmp(data + 4, "ftyp", 4) == 0)
        what = "HEIF/AVIF";
      else if (size == 0)
        what = "empty input";
      throw InvalidArgument(std::string("image: ") + what +
                            " is not a supported image; accepted formats are PNG, JPEG and WebP");
    }
  }
  const ExifInfo ei = exif.empty() ? ExifInfo{} : parse_exif(exif.data(), exif.size());
  if (ei.has_user_comment && find_png_text(img.text, "parameters") == nullptr)
    img.text.emplace_back("parameters", ei.user_comment);
  if (!apply_exif_orientation) return img;
  const int orientation = ei.has_orientation ? ei.orientation : xmp_orientation(xmp);
  return orientation >= 2 && orientation <= 8 ? apply_orientation(img, orientation) : img;
}

DecodedImage flatten_alpha(const DecodedImage& img, uint8_t r, uint8_t g, uint8_t b) {
  SD_CHECK_ARG(img.channels == 3 || img.channels == 4,
               "flatten_alpha: channels must be 3 or 4, got " + std::to_string(img.channels));
  const size_t n = size_t(img.width) * size_t(img.height);
  SD_CHECK_ARG(img.pixels.size() == n * size_t(img.channels),
               "flatten_alpha: pixel buffer does not match the image size");
  if (img.channels == 3) return img;
  DecodedImage out;
  out.width = img.width;
  out.height = img.height;
  out.channels = 3;
  out.text = img.text;
  out.pixels.resize(n * 3);
  const uint32_t bg[3] = {r, g, b};
  for (size_t i = 0; i < n; ++i) {
    const uint8_t* s = &img.pixels[i * 4];
    uint8_t* d = &out.pixels[i * 3];
    const uint32_t sa = s[3];
    if (sa == 0) {
      d[0] = r, d[1] = g, d[2] = b;
      continue;
    }
    // PIL's ImagingAlphaComposite with an opaque destination (7 extra bits of precision).
    const uint32_t outa255 = sa * 255 + 255 * (255 - sa);
    const uint32_t coef1 = sa * 255 * 255 * 128 / outa255;
    const uint32_t coef2 = 255 * 128 - coef1;
    for (int c = 0; c < 3; ++c) {
      const uint32_t t = s[c] * coef1 + bg[c] * coef2 + (0x80 << 7);
      d[c] = uint8_t((((t >> 8) + t) >> 8) >> 7);
    }
  }
  return out;
}

DecodedImage to_rgb(const DecodedImage& img) {
  SD_CHECK_ARG(img.channels == 3 || img.channels == 4,
               "to_rgb: channels must be 3 or 4, got " + std::to_string(img.channels));
  const size_t n = size_t(img.width) * size_t(img.height);
  SD_CHECK_ARG(img.pixels.size() == n * size_t(img.channels), "to_rgb: pixel buffer does not match the image size");
  if (img.channels == 3) return img;
  DecodedImage out;
  out.width = img.width;
  out.height = img.height;
  out.channels = 3;
  out.text = img.text;
  out.pixels.resize(n * 3);
  for (size_t i = 0; i < n; ++i) std::memcpy(&out.pixels[i * 3], &img.pixels[i * 4], 3);
  return out;
}

std::vector<uint8_t> to_gray(const uint8_t* pixels, int width, int height, int channels) {
  SD_CHECK_ARG(pixels != nullptr || size_t(width) * size_t(height) == 0, "to_gray: no pixel data");
  SD_CHECK_ARG(width >= 0 && height >= 0, "to_gray: negative image size");
  SD_CHECK_ARG(channels == 1 || channels == 3 || channels == 4,
               "to_gray: channels must be 1, 3 or 4, got " + std::to_string(channels));
  const size_t n = size_t(width) * size_t(height);
  std::vector<uint8_t> out(n);
  if (channels == 1) {
    std::copy(pixels, pixels + n, out.begin());
    return out;
  }
  for (size_t i = 0; i < n; ++i) {
    const uint8_t* p = pixels + i * size_t(channels);
    out[i] = uint8_t((uint32_t(p[0]) * 19595 + uint32_t(p[1]) * 38470 + uint32_t(p[2]) * 7471 + 0x8000) >> 16);
  }
  return out;
}

std::vector<uint8_t> to_gray(const DecodedImage& img) {
  SD_CHECK_ARG(img.pixels.size() == size_t(img.width) * size_t(img.height) * size_t(img.channels),
               "to_gray: pixel buffer does not match the image size");
  return to_gray(img.pixels.data(), img.width, img.height, img.channels);
}

std::vector<uint8_t> exif_user_comment(const std::string& text) {
  // "MM\0*", IFD0 at 8 with one entry (ExifIFD pointer), the Exif IFD at 26 with one entry
  // (UserComment, UNDEFINED), its data at 44: the layout piexif.dump gives for this one tag.
  std::vector<uint8_t> comment = {'U', 'N', 'I', 'C', 'O', 'D', 'E', 0};
  for_each_code_point(text, [&](uint32_t cp) {
    auto put = [&](uint32_t u) {
      comment.push_back(uint8_t(u >> 8));
      comment.push_back(uint8_t(u));
    };
    if (cp >= 0x10000) {
      put(0xD800 + ((cp - 0x10000) >> 10));
      put(0xDC00 + ((cp - 0x10000) & 0x3FF));
    } else {
      put(cp >= 0xD800 && cp <= 0xDFFF ? 0xFFFD : cp);
    }
  });
  std::vector<uint8_t> t;
  auto be16 = [&](uint32_t v) {
    t.push_back(uint8_t(v >> 8));
    t.push_back(uint8_t(v));
  };
  auto be32 = [&](uint32_t v) {
    be16(v >> 16);
    be16(v & 0xFFFF);
  };
  t.insert(t.end(), {'M', 'M', 0, 42});
  be32(8);
  be16(1);  // IFD0
  be16(0x8769), be16(4), be32(1), be32(26);
  be32(0);
  be16(1);  // Exif IFD
  be16(0x9286), be16(7), be32(uint32_t(comment.size())), be32(44);
  be32(0);
  t.insert(t.end(), comment.begin(), comment.end());
  return t;
}

std::vector<uint8_t> encode_image(const std::string& format, const uint8_t* pixels, int width, int height, int channels,
                                  int quality, const std::string& infotext, bool webp_lossless) {
  SD_CHECK_ARG(pixels != nullptr, "encode_image: no pixel data");
  SD_CHECK_ARG(channels == 3 || channels == 4,
               "encode_image: channels must be 3 or 4, got " + std::to_string(channels));
  SD_CHECK_ARG(width > 0 && height > 0, "encode_image: image size must be positive, got " + std::to_string(width) +
                                            "x" + std::to_string(height));
  const std::string f = lower(format);
  if (f == "png") {
    PngText text;
    if (!infotext.empty()) text.emplace_back("parameters", infotext);
    return encode_png(pixels, width, height, channels, text);
  }
  if (f == "jpeg" || f == "jpg") {
    if (channels == 3) return encode_jpeg(pixels, width, height, quality, infotext);
    DecodedImage rgba;
    rgba.width = width;
    rgba.height = height;
    rgba.channels = 4;
    rgba.pixels.assign(pixels, pixels + size_t(width) * size_t(height) * 4);
    const DecodedImage rgb = to_rgb(rgba);
    return encode_jpeg(rgb.pixels.data(), width, height, quality, infotext);
  }
  if (f == "webp") return encode_webp(pixels, width, height, channels, quality, webp_lossless, infotext);
  throw InvalidArgument("encode_image: unknown format '" + printable(format, 40) + "'; use png, jpeg or webp");
}

}  // namespace sdserve
