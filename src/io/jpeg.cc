// JPEG through libjpeg-turbo's libjpeg API. libjpeg reports errors by calling error_exit, which must
// not return: ours longjmps back to the function that called setjmp. As in png.cc, everything with a
// destructor lives in the caller's frame (a State reached through a pointer), so the jump skips no
// destructor, and no C++ exception crosses libjpeg's C frames.
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

// jpeglib.h needs <cstdio> (FILE, size_t) first.
#include <jerror.h>
#include <jpeglib.h>

#include "core/error.h"
#include "io/image.h"
#include "io/image_detail.h"

namespace sdserve {
namespace {

// Progressive JPEGs with thousands of tiny scans make decoding quadratic; real files have ~10.
constexpr int kMaxScans = 500;

struct JpegErr {
  jpeg_error_mgr pub;
  jmp_buf jump;
  char msg[JMSG_LENGTH_MAX + 64] = {0};
};

void set_msg(j_common_ptr c, JpegErr* e) {
  char buf[JMSG_LENGTH_MAX] = {0};
  (*c->err->format_message)(c, buf);
  std::snprintf(e->msg, sizeof(e->msg), "%s", buf[0] != '\0' ? buf : "unknown libjpeg error");
  for (char* p = e->msg; *p != '\0'; ++p)
    if (*p == '\n' || *p == '\r') *p = ' ';
}

[[noreturn]] void on_error_exit(j_common_ptr c) {
  auto* e = reinterpret_cast<JpegErr*>(c->err);
  set_msg(c, e);
  std::longjmp(e->jump, 1);
}

// libjpeg only warns when the data ends early (it pads with an EOI and goes on, giving a grey
// bottom); a truncated file is an error here, as PIL's "image file is truncated". Other warnings
// (e.g. extraneous bytes before a marker) are tolerated as PIL tolerates them.
void on_emit_message(j_common_ptr c, int level) {
  if (level >= 0) return;
  if (c->err->msg_code == JWRN_JPEG_EOF) {
    auto* e = reinterpret_cast<JpegErr*>(c->err);
    std::snprintf(e->msg, sizeof(e->msg), "truncated file (premature end of JPEG data)");
    std::longjmp(e->jump, 1);
  }
  c->err->num_warnings++;
}

void on_output_message(j_common_ptr) {}

void on_progress(j_common_ptr c) {
  if (!c->is_decompressor) return;
  auto* d = reinterpret_cast<j_decompress_ptr>(c);
  if (d->input_scan_number > kMaxScans) {
    auto* e = reinterpret_cast<JpegErr*>(c->err);
    std::snprintf(e->msg, sizeof(e->msg), "more than %d progressive scans", kMaxScans);
    std::longjmp(e->jump, 1);
  }
}

void init_err(JpegErr* e) {
  jpeg_std_error(&e->pub);
  e->pub.error_exit = on_error_exit;
  e->pub.emit_message = on_emit_message;
  e->pub.output_message = on_output_message;
}

// ---- decode ----

struct DecodeState {
  JpegErr err;
  jpeg_progress_mgr progress;
  ImageLimits limits;
  const uint8_t* data = nullptr;
  size_t size = 0;
  DecodedImage* out = nullptr;
  std::vector<uint8_t> row;  // CMYK scanline
  std::vector<uint8_t> exif;
  std::string xmp;
  bool limit_error = false;
  bool cmyk = false;
};

// Markers as PIL keeps them: the first APP1 "Exif\0\0" payload plus any further Exif segments
// appended (PIL concatenates them), and the XMP packet of an "http://ns.adobe.com/xap/1.0/\0" APP1.
// Read right after the header: libjpeg frees saved markers in jpeg_finish_decompress.
void collect_markers(jpeg_decompress_struct* cinfo, DecodeState* st) {
  static const char kXmpId[] = "http://ns.adobe.com/xap/1.0/";
  bool have_xmp = false;
  for (jpeg_saved_marker_ptr m = cinfo->marker_list; m != nullptr; m = m->next) {
    if (m->marker != JPEG_APP0 + 1 || m->data == nullptr) continue;
    const size_t n = m->data_length;
    if (n >= 6 && std::memcmp(m->data, "Exif\0\0", 6) == 0) {
      st->exif.insert(st->exif.end(), m->data + 6, m->data + n);
    } else if (!have_xmp && n >= sizeof(kXmpId) && std::memcmp(m->data, kXmpId, sizeof(kXmpId)) == 0) {
      st->xmp.assign(reinterpret_cast<const char*>(m->data) + sizeof(kXmpId), n - sizeof(kXmpId));
      have_xmp = true;
    }
  }
}

bool decode_impl(jpeg_decompress_struct* cinfo, DecodeState* st) {
  if (setjmp(st->err.jump)) return false;
  jpeg_create_decompress(cinfo);  // may fail (out of memory): inside the setjmp
  cinfo->progress = &st->progress;
  jpeg_mem_src(cinfo, st->data, static_cast<unsigned long>(st->size));
  jpeg_save_markers(cinfo, JPEG_APP0 + 1, 0xFFFF);  // Exif and XMP
  jpeg_read_header(cinfo, TRUE);
  collect_markers(cinfo, st);

  const uint64_t w = cinfo->image_width, h = cinfo->image_height;
  if (w == 0 || h == 0 || !image_detail::within_limits(w, h, st->limits)) {
    st->limit_error = true;
    return false;
  }
  // libjpeg allocates whole-image coefficient buffers for progressive files: at most 2 bytes per
  // coefficient and 4 components. Anything beyond that is refused instead of allocated.
  cinfo->mem->max_memory_to_use = static_cast<long>(w * h * 8 + (size_t(64) << 20));

  if (cinfo->jpeg_color_space == JCS_CMYK || cinfo->jpeg_color_space == JCS_YCCK) {
    cinfo->out_color_space = JCS_CMYK;
    st->cmyk = true;
  } else {
    cinfo->out_color_space = JCS_RGB;  // also for grayscale: libjpeg replicates, as convert("RGB")
  }
  jpeg_start_decompress(cinfo);
  if (cinfo->output_components != (st->cmyk ? 4 : 3) || cinfo->output_width != w || cinfo->output_height != h)
    ERREXIT(cinfo, JERR_CONVERSION_NOTIMPL);

  DecodedImage& out = *st->out;
  out.width = int(w);
  out.height = int(h);
  out.channels = 3;
  out.pixels.resize(size_t(w) * size_t(h) * 3);
  if (st->cmyk) st->row.resize(size_t(w) * 4);
  while (cinfo->output_scanline < cinfo->output_height) {
    const size_t y = cinfo->output_scanline;
    uint8_t* dst = out.pixels.data() + y * size_t(w) * 3;
    JSAMPROW rowp = st->cmyk ? st->row.data() : dst;
    if (jpeg_read_scanlines(cinfo, &rowp, 1) != 1) ERREXIT(cinfo, JERR_INPUT_EOF);
    if (st->cmyk) {
      // PIL reads CMYK JPEGs as Adobe-inverted ("CMYK;I"), then convert("RGB"):
      // with c' = 255 - c (likewise k'), R = k - (c' * k + 128) / 255 (PIL's MULDIV255).
      for (size_t x = 0; x < size_t(w); ++x) {
        const uint8_t* s = st->row.data() + x * 4;
        const uint32_t k = s[3];
        for (int c = 0; c < 3; ++c) {
          const uint32_t t = uint32_t(255 - s[c]) * k + 128;
          const int v = int(k) - int(((t >> 8) + t) >> 8);
          dst[x * 3 + size_t(c)] = uint8_t(v < 0 ? 0 : v);
        }
      }
    }
  }
  // Reads up to EOI, so a file cut after the last scan line is still an error (as in PIL).
  jpeg_finish_decompress(cinfo);
  return true;
}

// jpeg_destroy_* is safe on a zeroed struct and on one whose jpeg_create_* failed half-way.
struct DecompressGuard {
  jpeg_decompress_struct cinfo;
  DecompressGuard() { std::memset(&cinfo, 0, sizeof(cinfo)); }
  ~DecompressGuard() { jpeg_destroy_decompress(&cinfo); }
};

// ---- encode: a destination manager writing into a std::vector ----

struct EncodeState {
  JpegErr err;
  jpeg_destination_mgr dest;
  std::vector<uint8_t>* out = nullptr;
  JOCTET chunk[65536];
  const uint8_t* pixels = nullptr;
  int width = 0, height = 0, quality = 0;
  const std::vector<uint8_t>* app1 = nullptr;
};

EncodeState* encode_state(j_compress_ptr c) { return static_cast<EncodeState*>(c->client_data); }

void dest_init(j_compress_ptr c) {
  EncodeState* st = encode_state(c);
  c->dest->next_output_byte = st->chunk;
  c->dest->free_in_buffer = sizeof(st->chunk);
}

bool append(EncodeState* st, size_t n) {
  try {
    st->out->insert(st->out->end(), st->chunk, st->chunk + n);
    return true;
  } catch (...) {
    return false;
  }
}

boolean dest_empty(j_compress_ptr c) {
  EncodeState* st = encode_state(c);
  if (!append(st, sizeof(st->chunk))) ERREXIT1(c, JERR_OUT_OF_MEMORY, 0);
  c->dest->next_output_byte = st->chunk;
  c->dest->free_in_buffer = sizeof(st->chunk);
  return TRUE;
}

void dest_term(j_compress_ptr c) {
  EncodeState* st = encode_state(c);
  if (!append(st, sizeof(st->chunk) - c->dest->free_in_buffer)) ERREXIT1(c, JERR_OUT_OF_MEMORY, 0);
}

bool encode_impl(jpeg_compress_struct* cinfo, EncodeState* st) {
  if (setjmp(st->err.jump)) return false;
  jpeg_create_compress(cinfo);
  cinfo->client_data = st;
  st->dest.init_destination = dest_init;
  st->dest.empty_output_buffer = dest_empty;
  st->dest.term_destination = dest_term;
  cinfo->dest = &st->dest;
  cinfo->image_width = JDIMENSION(st->width);
  cinfo->image_height = JDIMENSION(st->height);
  cinfo->input_components = 3;
  cinfo->in_color_space = JCS_RGB;
  jpeg_set_defaults(cinfo);
  jpeg_set_quality(cinfo, st->quality, TRUE);
  jpeg_start_compress(cinfo, TRUE);
  if (st->app1 != nullptr)
    jpeg_write_marker(cinfo, JPEG_APP0 + 1, st->app1->data(), static_cast<unsigned int>(st->app1->size()));
  const size_t stride = size_t(st->width) * 3;
  while (cinfo->next_scanline < cinfo->image_height) {
    // libjpeg's API takes non-const rows; it does not write to them.
    JSAMPROW row = const_cast<JSAMPROW>(st->pixels + size_t(cinfo->next_scanline) * stride);
    jpeg_write_scanlines(cinfo, &row, 1);
  }
  jpeg_finish_compress(cinfo);
  return true;
}

struct CompressGuard {
  jpeg_compress_struct cinfo;
  CompressGuard() { std::memset(&cinfo, 0, sizeof(cinfo)); }
  ~CompressGuard() { jpeg_destroy_compress(&cinfo); }
};

}  // namespace

DecodedImage decode_jpeg(const uint8_t* data, size_t size, const ImageLimits& limits, std::vector<uint8_t>* exif,
                         std::string* xmp) {
  SD_CHECK_ARG(data != nullptr || size == 0, "jpeg: no data");
  image_detail::check_input_size("jpeg", size, limits);
  if (size < 3 || data[0] != 0xFF || data[1] != 0xD8 || data[2] != 0xFF)
    throw InvalidArgument("jpeg: not a JPEG file (bad signature)");

  DecodedImage out;
  DecodeState st;
  st.limits = limits;
  st.data = data;
  st.size = size;
  st.out = &out;
  DecompressGuard g;
  init_err(&st.err);
  g.cinfo.err = &st.err.pub;
  st.progress.progress_monitor = on_progress;
  if (!decode_impl(&g.cinfo, &st)) {
    if (st.limit_error) {
      image_detail::check_dimensions("jpeg", g.cinfo.image_width, g.cinfo.image_height, limits);
      throw InvalidArgument("jpeg: image size out of range");
    }
    throw InvalidArgument(std::string("jpeg: ") + st.err.msg);
  }

  if (exif != nullptr) *exif = std::move(st.exif);
  if (xmp != nullptr) *xmp = std::move(st.xmp);
  return out;
}

std::vector<uint8_t> encode_jpeg(const uint8_t* rgb, int width, int height, int quality, const std::string& infotext) {
  SD_CHECK_ARG(rgb != nullptr, "jpeg: no pixel data");
  SD_CHECK_ARG(
      width > 0 && height > 0 && width <= 65500 && height <= 65500,
      "jpeg: image size must be 1-65500 per side, got " + std::to_string(width) + "x" + std::to_string(height));
  SD_CHECK_ARG(quality >= 1 && quality <= 100, "jpeg: quality must be 1-100, got " + std::to_string(quality));
  std::vector<uint8_t> app1;
  if (!infotext.empty()) {
    const std::vector<uint8_t> tiff = exif_user_comment(infotext);
    if (tiff.size() + 6 > 65533)
      throw InvalidArgument("jpeg: infotext too long for a JPEG Exif segment (" + std::to_string(tiff.size()) +
                            " bytes, at most 65527); save as PNG instead");
    app1.assign({'E', 'x', 'i', 'f', 0, 0});
    app1.insert(app1.end(), tiff.begin(), tiff.end());
  }

  std::vector<uint8_t> out;
  auto st = std::make_unique<EncodeState>();  // 64 KiB chunk: not on the stack
  st->out = &out;
  st->pixels = rgb;
  st->width = width;
  st->height = height;
  st->quality = quality;
  st->app1 = app1.empty() ? nullptr : &app1;
  CompressGuard g;
  init_err(&st->err);
  g.cinfo.err = &st->err.pub;
  if (!encode_impl(&g.cinfo, st.get())) throw InternalError(std::string("jpeg: encoding failed: ") + st->err.msg);
  return out;
}

}  // namespace sdserve
