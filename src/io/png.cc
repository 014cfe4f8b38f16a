#include "io/png.h"

#include "core/utf8.h"

#include <png.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <csetjmp>
#include <cstdio>
#include <cstring>

#include "core/error.h"

namespace sdserve {
namespace {

// libpng reports errors by longjmp. Everything with a destructor lives in the caller's frame (in a
// State reached through a pointer), never as a local of the function that calls setjmp, so the
// jump skips no destructor and reads no indeterminate local. Callbacks never let a C++ exception
// cross libpng's C frames.
struct PngCtx {
  char msg[200] = {0};
  std::vector<uint8_t>* out = nullptr;  // write
  const uint8_t* in = nullptr;          // read
  size_t in_size = 0;
  size_t in_pos = 0;
};

void set_msg(PngCtx* ctx, const char* msg) {
  std::snprintf(ctx->msg, sizeof(ctx->msg), "%s", msg != nullptr && *msg != '\0' ? msg : "unknown libpng error");
  for (char* c = ctx->msg; *c != '\0'; ++c)
    if (*c == '\n' || *c == '\r') *c = ' ';
}

[[noreturn]] void on_error(png_structp png, png_const_charp msg) {
  if (auto* ctx = static_cast<PngCtx*>(png_get_error_ptr(png))) set_msg(ctx, msg);
  png_longjmp(png, 1);
}
void on_warning(png_structp, png_const_charp) {}

void on_write(png_structp png, png_bytep data, size_t n) {
  auto* ctx = static_cast<PngCtx*>(png_get_io_ptr(png));
  bool failed = false;
  try {
    ctx->out->insert(ctx->out->end(), data, data + n);
  } catch (...) {
    failed = true;
  }
  if (failed) png_error(png, "out of memory");
}
void on_flush(png_structp) {}

void on_read(png_structp png, png_bytep data, size_t n) {
  auto* ctx = static_cast<PngCtx*>(png_get_io_ptr(png));
  if (n > ctx->in_size - ctx->in_pos) png_error(png, "unexpected end of file");
  std::memcpy(data, ctx->in + ctx->in_pos, n);
  ctx->in_pos += n;
}

// ---- text conversion ----

// Decodes UTF-8 into code points; invalid sequences become U+FFFD, NUL is dropped.
std::vector<uint32_t> utf8_code_points(const std::string& s) {
  std::vector<uint32_t> cps;
  cps.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const uint8_t c = uint8_t(s[i]);
    size_t len = 1;
    uint32_t cp = 0xFFFD, min = 0;
    if (c < 0x80) {
      cp = c;
    } else if ((c & 0xE0) == 0xC0) {
      len = 2, cp = c & 0x1F, min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3, cp = c & 0x0F, min = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4, cp = c & 0x07, min = 0x10000;
    } else {
      len = 0;
    }
    if (len > 1) {
      bool ok = i + len <= s.size();
      for (size_t k = 1; ok && k < len; ++k) {
        if ((uint8_t(s[i + k]) & 0xC0) != 0x80) ok = false;
        cp = (cp << 6) | (uint8_t(s[i + k]) & 0x3F);
      }
      if (!ok || cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) cp = 0xFFFD, len = 0;
    }
    if (len == 0) {  // invalid: replace one byte
      cp = 0xFFFD;
      len = 1;
    }
    if (cp != 0) cps.push_back(cp);
    i += len;
  }
  return cps;
}

std::string latin1_to_utf8(const char* s, size_t n) {
  std::string out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) append_utf8(out, uint8_t(s[i]));
  return out;
}

std::string sanitize_utf8(const char* s, size_t n) {
  std::string out;
  out.reserve(n);
  for (uint32_t cp : utf8_code_points(std::string(s, n))) append_utf8(out, cp);
  return out;
}

// A PNG keyword: 1-79 Latin-1 characters from 32-126 and 161-255, no leading, trailing or double spaces.
std::string png_keyword(const std::string& key) {
  std::string out;
  for (uint32_t cp : utf8_code_points(key)) {
    if (!((cp >= 32 && cp <= 126) || (cp >= 161 && cp <= 255)))
      throw InvalidArgument("png: text key '" + key + "' has a character a PNG keyword cannot hold");
    out += char(cp);
  }
  if (out.empty() || out.size() > 79)
    throw InvalidArgument("png: text key must be 1-79 characters, got " + std::to_string(out.size()));
  if (out.front() == ' ' || out.back() == ' ' || out.find("  ") != std::string::npos)
    throw InvalidArgument("png: text key '" + key + "' has leading, trailing or repeated spaces");
  return out;
}

struct EncodeState {
  PngCtx ctx;
  std::vector<std::string> keys, values;
  std::vector<png_text> texts;
};

bool encode_impl(png_structp png, png_infop info, const uint8_t* pixels, int width, int height, int channels,
                 int compression, EncodeState* st) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_set_write_fn(png, &st->ctx, on_write, on_flush);
  png_set_IHDR(png, info, png_uint_32(width), png_uint_32(height), 8,
               channels == 4 ? PNG_COLOR_TYPE_RGB_ALPHA : PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_set_compression_level(png, compression);
  if (!st->texts.empty()) png_set_text(png, info, st->texts.data(), int(st->texts.size()));
  png_write_info(png, info);
  const size_t stride = size_t(width) * size_t(channels);
  for (int y = 0; y < height; ++y) png_write_row(png, pixels + size_t(y) * stride);
  png_write_end(png, info);
  return true;
}

struct DecodeState {
  PngCtx ctx;
  PngLimits limits;
  DecodedImage* out = nullptr;
  std::vector<png_bytep> rows;
  bool limit_error = false;
};

bool decode_impl(png_structp png, png_infop info, DecodeState* st) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_set_read_fn(png, &st->ctx, on_read);
  png_set_chunk_cache_max(png, st->limits.max_ancillary_chunks);
  png_set_chunk_malloc_max(png, st->limits.max_chunk_bytes);
  png_read_info(png, info);

  const png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
  const int color_type = png_get_color_type(png, info), bit_depth = png_get_bit_depth(png, info);
  const PngLimits& lim = st->limits;
  if (w > lim.max_width || h > lim.max_height || uint64_t(w) * h > lim.max_pixels) {
    std::snprintf(st->ctx.msg, sizeof(st->ctx.msg), "image is %ux%u; the limit is %ux%u and %llu pixels", unsigned(w),
                  unsigned(h), unsigned(lim.max_width), unsigned(lim.max_height),
                  static_cast<unsigned long long>(lim.max_pixels));
    st->limit_error = true;
    return false;
  }
  // Deflate expands at most ~1032:1, so a header whose raw image data cannot fit in the input is a
  // lie; reject it before allocating the pixels.
  const uint64_t raw_bytes = uint64_t(h) * (uint64_t(png_get_rowbytes(png, info)) + 1);
  if (raw_bytes / 1032 > st->ctx.in_size + 64) {
    std::snprintf(st->ctx.msg, sizeof(st->ctx.msg), "a %ux%u image cannot fit in %zu bytes", unsigned(w), unsigned(h),
                  st->ctx.in_size);
    return false;
  }

  if (color_type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (color_type == PNG_COLOR_TYPE_GRAY && bit_depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (png_get_valid(png, info, PNG_INFO_tRNS)) png_set_tRNS_to_alpha(png);
  if (bit_depth == 16) png_set_strip_16(png);  // PIL keeps the high byte too
  if (color_type == PNG_COLOR_TYPE_GRAY || color_type == PNG_COLOR_TYPE_GRAY_ALPHA) png_set_gray_to_rgb(png);
  png_set_interlace_handling(png);
  png_read_update_info(png, info);

  const int channels = png_get_channels(png, info);
  const size_t stride = size_t(w) * size_t(channels);
  if ((channels != 3 && channels != 4) || png_get_bit_depth(png, info) != 8 || png_get_rowbytes(png, info) != stride)
    png_error(png, "unexpected pixel layout after conversion");
  DecodedImage& out = *st->out;
  out.width = int(w);
  out.height = int(h);
  out.channels = channels;
  out.pixels.resize(stride * h);
  st->rows.resize(h);
  for (png_uint_32 y = 0; y < h; ++y) st->rows[y] = out.pixels.data() + size_t(y) * stride;
  png_read_image(png, st->rows.data());
  png_read_end(png, info);

  png_textp text = nullptr;
  const int n = png_get_text(png, info, &text, nullptr);
  for (int i = 0; i < n; ++i) {
    const png_text& t = text[i];
    std::string key = latin1_to_utf8(t.key, std::strlen(t.key));
    const bool itxt = t.compression == PNG_ITXT_COMPRESSION_NONE || t.compression == PNG_ITXT_COMPRESSION_zTXt;
    const size_t len = itxt ? t.itxt_length : t.text_length;
    std::string value = t.text == nullptr ? std::string()
                        : itxt            ? sanitize_utf8(t.text, len)
                                          : latin1_to_utf8(t.text, len);
    out.text.emplace_back(std::move(key), std::move(value));
  }
  return true;
}

struct PngWriteGuard {
  png_structp png = nullptr;
  png_infop info = nullptr;
  ~PngWriteGuard() { png_destroy_write_struct(&png, &info); }
};
struct PngReadGuard {
  png_structp png = nullptr;
  png_infop info = nullptr;
  ~PngReadGuard() { png_destroy_read_struct(&png, &info, nullptr); }
};

}  // namespace

std::vector<uint8_t> encode_png(const uint8_t* pixels, int width, int height, int channels, const PngText& text_chunks,
                                int compression) {
  SD_CHECK_ARG(pixels != nullptr, "png: no pixel data");
  SD_CHECK_ARG(width > 0 && height > 0,
               "png: image size must be positive, got " + std::to_string(width) + "x" + std::to_string(height));
  SD_CHECK_ARG(channels == 3 || channels == 4, "png: channels must be 3 or 4, got " + std::to_string(channels));
  SD_CHECK_ARG(compression >= 0 && compression <= 9,
               "png: compression must be 0-9, got " + std::to_string(compression));

  std::vector<uint8_t> out;
  EncodeState st;
  st.ctx.out = &out;
  st.keys.reserve(text_chunks.size());
  st.values.reserve(text_chunks.size());
  for (const auto& [k, v] : text_chunks) {
    st.keys.push_back(png_keyword(k));
    const std::vector<uint32_t> cps = utf8_code_points(v);
    bool latin1 = true;
    for (uint32_t cp : cps) latin1 = latin1 && cp <= 0xFF;
    std::string value;
    for (uint32_t cp : cps) latin1 ? void(value += char(cp)) : append_utf8(value, cp);
    st.values.push_back(std::move(value));
    png_text t;
    std::memset(&t, 0, sizeof(t));
    // As PIL's PngInfo.add_text: tEXt (Latin-1) when possible, else uncompressed iTXt with empty
    // language tag and translated keyword.
    t.compression = latin1 ? PNG_TEXT_COMPRESSION_NONE : PNG_ITXT_COMPRESSION_NONE;
    t.key = st.keys.back().data();
    t.text = st.values.back().data();
    t.text_length = latin1 ? st.values.back().size() : 0;
    t.itxt_length = latin1 ? 0 : st.values.back().size();
    t.lang = nullptr;
    t.lang_key = nullptr;
    st.texts.push_back(t);
  }
  out.reserve(size_t(width) * size_t(height) * size_t(channels) / 2 + 1024);

  PngWriteGuard g;
  g.png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &st.ctx, on_error, on_warning);
  if (g.png == nullptr) throw InternalError("png: png_create_write_struct failed");
  g.info = png_create_info_struct(g.png);
  if (g.info == nullptr) throw InternalError("png: png_create_info_struct failed");
  if (!encode_impl(g.png, g.info, pixels, width, height, channels, compression, &st))
    throw InternalError(std::string("png: encoding failed: ") + st.ctx.msg);
  return out;
}

void write_png_file(const std::string& path, const uint8_t* pixels, int width, int height, int channels,
                    const PngText& text_chunks, int compression) {
  const std::vector<uint8_t> bytes = encode_png(pixels, width, height, channels, text_chunks, compression);
  const std::string tmp = path + ".tmp" + std::to_string(::getpid());
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) throw IoError(tmp + ": cannot open for writing: " + std::strerror(errno));
  const bool ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
  const int err = errno;
  if (std::fclose(f) != 0 || !ok) {
    std::remove(tmp.c_str());
    throw IoError(tmp + ": write failed: " + std::strerror(ok ? errno : err));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int e = errno;
    std::remove(tmp.c_str());
    throw IoError(path + ": cannot rename into place: " + std::strerror(e));
  }
}

DecodedImage decode_png(const uint8_t* data, size_t size, const PngLimits& limits) {
  SD_CHECK_ARG(data != nullptr || size == 0, "png: no data");
  if (size > limits.max_input_bytes)
    throw InvalidArgument("png: input is " + std::to_string(size) + " bytes; the limit is " +
                          std::to_string(limits.max_input_bytes));
  if (size < 8 || png_sig_cmp(data, 0, 8) != 0) throw InvalidArgument("png: not a PNG file (bad signature)");

  // Every chunk must fit in the input. libpng only warns about an over-long ancillary chunk (a
  // benign error) and then allocates whatever its length field claims.
  for (size_t pos = 8;;) {
    if (size - pos < 12)
      throw InvalidArgument("png: truncated file (incomplete chunk at byte " + std::to_string(pos) + ")");
    const uint32_t len = uint32_t(data[pos]) << 24 | uint32_t(data[pos + 1]) << 16 | uint32_t(data[pos + 2]) << 8 |
                         uint32_t(data[pos + 3]);
    if (len > size - pos - 12)
      throw InvalidArgument("png: chunk at byte " + std::to_string(pos) + " claims " + std::to_string(len) +
                            " bytes; only " + std::to_string(size - pos - 12) + " remain");
    if (std::memcmp(data + pos + 4, "IEND", 4) == 0) break;
    pos += 12 + size_t(len);
  }

  DecodedImage out;
  DecodeState st;
  st.ctx.in = data;
  st.ctx.in_size = size;
  st.limits = limits;
  st.out = &out;
  PngReadGuard g;
  g.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &st.ctx, on_error, on_warning);
  if (g.png == nullptr) throw InternalError("png: png_create_read_struct failed");
  g.info = png_create_info_struct(g.png);
  if (g.info == nullptr) throw InternalError("png: png_create_info_struct failed");
  if (!decode_impl(g.png, g.info, &st)) throw InvalidArgument(std::string("png: ") + st.ctx.msg);
  return out;
}

const std::string* find_png_text(const PngText& text, const std::string& key) {
  for (const auto& [k, v] : text)
    if (k == key) return &v;
  return nullptr;
}

std::vector<uint8_t> image_to_rgb8(const Tensor& img) {
  SD_CHECK_ARG(img.defined(), "image_to_rgb8: undefined tensor");
  const bool chw = img.dim() == 3 && img.size(0) == 3;
  const bool nchw = img.dim() == 4 && img.size(0) == 1 && img.size(1) == 3;
  SD_CHECK_ARG(chw || nchw, "image_to_rgb8: expected [3, H, W] or [1, 3, H, W], got " + shape_str(img.shape()));
  const DType dt = img.dtype();
  SD_CHECK_ARG(dt == DType::F32 || dt == DType::F16 || dt == DType::BF16,
               std::string("image_to_rgb8: expected a float tensor, got ") + dtype_name(dt));
  const int64_t h = img.size(-2), w = img.size(-1);
  Tensor f = img.to(Device::cpu()).to(DType::F32).contiguous();
  const float* p = f.data<float>();
  const int64_t plane = h * w;
  std::vector<uint8_t> out(size_t(plane) * 3);
  for (int64_t c = 0; c < 3; ++c) {
    for (int64_t i = 0; i < plane; ++i) {
      // denormalize in the tensor's dtype (torch computes a half op in f32 and rounds once).
      float d = p[c * plane + i] * 0.5f + 0.5f;
      if (dt == DType::F16) d = f16_to_f32(f32_to_f16(d));
      if (dt == DType::BF16) d = bf16_to_f32(f32_to_bf16(d));
      if (std::isnan(d)) d = 0.f;
      d = d < 0.f ? 0.f : (d > 1.f ? 1.f : d);
      out[size_t(i) * 3 + size_t(c)] = uint8_t(std::nearbyint(d * 255.0f));  // round half to even
    }
  }
  return out;
}

}  // namespace sdserve
