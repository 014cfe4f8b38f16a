#include "pipeline/upscale.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>

#include "io/resize.h"
#include "io/safetensors.h"
#include "io/torch_checkpoint.h"

namespace sdserve {
namespace {

bool is_torch_extension(const std::string& path) {
  std::string ext = std::filesystem::path(path).extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return char(std::tolower(c)); });
  return ext == ".pth" || ext == ".pt" || ext == ".ckpt" || ext == ".bin";
}

// Per tile along one axis: its blend weights over its output pixels, and the sum of all tiles' weights
// per output pixel (the 2-D weight of a tile is the product of its two axes' weights, so the 2-D sums
// are products too). In a band of L pixels that two neighbouring tiles share, a tile's weight is 0 over
// the quarter of the band nearest its own cut edge (pixels the network computed with zero padding
// where the image goes on), rises linearly across the middle half, and is 1 beyond; the two weights
// sum to 1 everywhere in the band. Elsewhere a tile's weight is 1.
struct AxisWeights {
  std::vector<std::vector<float>> tile;
  std::vector<float> sum;
};

// Weight at distance k (0 = the cut edge) into a shared band of `band` pixels.
float ramp(int64_t k, int64_t band, bool margins) {
  const int64_t m = margins ? band / 4 : 0, r = band - 2 * m;
  if (k < m) return 0.f;
  if (k >= band - m) return 1.f;
  return (float(k - m) + 0.5f) / float(r);
}

AxisWeights axis_weights(const std::vector<TileSpan>& spans, int64_t size, int64_t scale, bool margins = true) {
  AxisWeights a;
  a.sum.assign(size_t(size * scale), 0.f);
  for (size_t i = 0; i < spans.size(); ++i) {
    const int64_t len = (spans[i].end - spans[i].begin) * scale;
    std::vector<float> w(size_t(len), 1.f);
    if (i > 0) {
      const int64_t band = std::min(len, (spans[i - 1].end - spans[i].begin) * scale);
      for (int64_t k = 0; k < band; ++k) w[size_t(k)] = std::min(w[size_t(k)], ramp(k, band, margins));
    }
    if (i + 1 < spans.size()) {
      const int64_t band = std::min(len, (spans[i].end - spans[i + 1].begin) * scale);
      for (int64_t k = 0; k < band; ++k)
        w[size_t(len - 1 - k)] = std::min(w[size_t(len - 1 - k)], ramp(k, band, margins));
    }
    for (int64_t k = 0; k < len; ++k) a.sum[size_t(spans[i].begin * scale + k)] += w[size_t(k)];
    a.tile.push_back(std::move(w));
  }
  // Tiles packed so densely that three share a band could leave a pixel with only zero weights: blend
  // over the whole bands then (every weight positive).
  if (margins && std::any_of(a.sum.begin(), a.sum.end(), [](float v) { return !(v > 0.f); }))
    return axis_weights(spans, size, scale, false);
  return a;
}

// spandrel / A1111 output conversion: clamp to [0, 1], * 255, round half to even; NaN -> 0.
inline uint8_t to_u8(float v) {
  if (!(v > 0.f)) return 0;
  if (v >= 1.f) return 255;
  return uint8_t(std::nearbyint(v * 255.f));
}

std::string format_factor(double f) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", f);
  return buf;
}

}  // namespace

std::vector<TileSpan> tile_spans(int64_t size, int64_t tile, int64_t overlap, int64_t align) {
  SD_CHECK_ARG(size >= 1 && align >= 1 && overlap >= 0, "tile_spans: bad arguments");
  if (tile <= 0 || tile >= size) return {{0, size}};
  const int64_t units = (size + align - 1) / align;
  const int64_t t = std::max<int64_t>(1, tile / align);
  const int64_t o = std::min((overlap + align - 1) / align, t - 1);
  if (t >= units) return {{0, size}};
  // A1111 images.split_grid: cols = ceil((w - overlap) / (tile - overlap)), spread evenly.
  const int64_t n = (units - o + (t - o) - 1) / (t - o);
  const double dx = n > 1 ? double(units - t) / double(n - 1) : 0.0;
  std::vector<TileSpan> spans;
  for (int64_t i = 0; i < n; ++i) {
    int64_t x = int64_t(double(i) * dx);
    if (x + t >= units) x = units - t;
    const int64_t end = i == n - 1 ? size : std::min((x + t) * align, size);
    spans.push_back({x * align, end});
  }
  return spans;
}

Upscaler Upscaler::from_source(const WeightSource& src, const std::string& name, Device device, DType dtype) {
  Upscaler u;
  u.net_ = UpscalerNet::load(canonical_upscaler_source(src).with_device(device), dtype);
  u.name_ = name;
  return u;
}

Upscaler Upscaler::open(const std::string& path, Device device, DType dtype) {
  if (!std::filesystem::exists(path))
    throw NotFoundError("upscaler " + path + ": no such file (give a .safetensors or .pth ESRGAN/Real-ESRGAN model)");
  std::shared_ptr<const SafeTensorsFile> file;
  if (is_torch_extension(path)) {
    file = std::make_shared<const SafeTensorsFile>(read_torch_checkpoint(path));
  } else {
    try {
      file = std::make_shared<const SafeTensorsFile>(SafeTensorsFile::open(path));
    } catch (const UnsupportedError&) {
      // A PyTorch checkpoint under another extension: read it the safe way, else the original error.
      std::vector<uint8_t> head(64);
      size_t n = 0;
      if (FILE* f = std::fopen(path.c_str(), "rb")) {
        n = std::fread(head.data(), 1, head.size(), f);
        std::fclose(f);
      }
      if (!looks_like_torch_checkpoint(head.data(), n)) throw;
      file = std::make_shared<const SafeTensorsFile>(read_torch_checkpoint(path));
    }
  }
  return from_source(WeightSource({file}), std::filesystem::path(path).filename().string(), device, dtype);
}

Rgb8Image Upscaler::upscale(const uint8_t* rgb, int width, int height, const UpscaleOptions& opt) const {
  SD_CHECK_ARG(rgb != nullptr && width >= 1 && height >= 1, "upscale: empty image");
  SD_CHECK_ARG(opt.tile >= 0,
               "upscale: the tile size must be 0 (no tiling) or positive, got " + std::to_string(opt.tile));
  SD_CHECK_ARG(opt.tile == 0 || (opt.tile_overlap >= 0 && opt.tile_overlap < opt.tile),
               "upscale: the tile overlap must be between 0 and the tile size - 1, got " +
                   std::to_string(opt.tile_overlap) + " for tiles of " + std::to_string(opt.tile));
  const UpscalerConfig& c = config();
  if (c.in_channels != 3 || c.out_channels != 3)
    throw UnsupportedError("upscaler " + name_ + ": " + c.describe() +
                           "; sdserve upscales RGB images and needs a 3-channel model");
  const int64_t s = c.scale, W = width, H = height, OW = W * s, OH = H * s;
  if (OW > 65535 || OH > 65535 || OW * OH > (int64_t(1) << 30))
    throw InvalidArgument("upscale: " + std::to_string(OW) + "x" + std::to_string(OH) +
                          " output is too large (at most 65535 per side and 2^30 pixels)");

  const std::vector<TileSpan> xs = tile_spans(W, opt.tile, opt.tile_overlap, c.unshuffle);
  const std::vector<TileSpan> ys = tile_spans(H, opt.tile, opt.tile_overlap, c.unshuffle);
  const AxisWeights wx = axis_weights(xs, W, s), wy = axis_weights(ys, H, s);
  const int total = int(xs.size() * ys.size());

  Rgb8Image out;
  out.width = int(OW);
  out.height = int(OH);
  out.rgb.assign(size_t(OW * OH * 3), 0);
  // Weighted sums of the rows of the current band of tiles: output rows [band0, band0 + rows).
  std::vector<float> acc;
  int64_t band0 = 0;
  auto flush = [&](int64_t upto) {  // rows before `upto` get no more contributions
    const int64_t n = upto - band0;
    if (n <= 0) return;
    for (int64_t r = 0; r < n; ++r) {
      const float* a = acc.data() + size_t(r * OW * 3);
      uint8_t* o = out.rgb.data() + size_t((band0 + r) * OW * 3);
      const float sy = wy.sum[size_t(band0 + r)];
      for (int64_t x = 0; x < OW; ++x) {
        const float norm = sy * wx.sum[size_t(x)];
        for (int ch = 0; ch < 3; ++ch) o[x * 3 + ch] = to_u8(a[x * 3 + ch] / norm);
      }
    }
    acc.erase(acc.begin(), acc.begin() + std::min<ptrdiff_t>(ptrdiff_t(acc.size()), ptrdiff_t(n * OW * 3)));
    band0 = upto;
  };

  int done = 0;
  for (size_t j = 0; j < ys.size(); ++j) {
    const TileSpan ty = ys[j];
    flush(ty.begin * s);
    acc.resize(size_t((ty.end * s - band0) * OW * 3), 0.f);
    for (size_t i = 0; i < xs.size(); ++i) {
      const TileSpan tx = xs[i];
      const int64_t th = ty.end - ty.begin, tw = tx.end - tx.begin;
      Tensor in = Tensor::empty({1, 3, th, tw}, DType::F32);
      float* p = in.data<float>();
      for (int64_t y = 0; y < th; ++y)
        for (int64_t x = 0; x < tw; ++x) {
          const uint8_t* px = rgb + ((ty.begin + y) * W + tx.begin + x) * 3;
          for (int ch = 0; ch < 3; ++ch) p[(ch * th + y) * tw + x] = float(px[ch]) / 255.f;
        }
      const Tensor y = net_->forward(in).to(DType::F32).to(Device::cpu()).contiguous();
      if (y.size(2) != th * s || y.size(3) != tw * s)
        throw InternalError("upscale: the network returned " + shape_str(y.shape()) + " for a " + std::to_string(tw) +
                            "x" + std::to_string(th) + " tile");
      const float* q = y.data<float>();
      const std::vector<float>& fx = wx.tile[i];
      const std::vector<float>& fy = wy.tile[j];
      const int64_t oh = th * s, ow = tw * s;
      for (int64_t yy = 0; yy < oh; ++yy) {
        float* a = acc.data() + size_t(((ty.begin * s + yy - band0) * OW + tx.begin * s) * 3);
        for (int64_t xx = 0; xx < ow; ++xx) {
          const float w = fy[size_t(yy)] * fx[size_t(xx)];
          for (int ch = 0; ch < 3; ++ch) a[xx * 3 + ch] += w * q[(ch * oh + yy) * ow + xx];
        }
      }
      ++done;
      if (opt.progress && !opt.progress(done, total)) throw UpscaleCancelled();
    }
  }
  flush(OH);
  return out;
}

Rgb8Image Upscaler::upscale_to(const uint8_t* rgb, int width, int height, int out_width, int out_height,
                               const UpscaleOptions& opt) const {
  SD_CHECK_ARG(rgb != nullptr && width >= 1 && height >= 1, "upscale: empty image");
  SD_CHECK_ARG(out_width >= 1 && out_height >= 1 && out_width <= 65535 && out_height <= 65535,
               "upscale: target size " + std::to_string(out_width) + "x" + std::to_string(out_height) +
                   " must be 1..65535 per side");
  Rgb8Image img;
  img.width = width;
  img.height = height;
  img.rgb.assign(rgb, rgb + size_t(width) * size_t(height) * 3);
  // A1111 Upscaler.upscale: run the network (at least once, at most 3 times) until the image is at
  // least the target size or stops growing, then Lanczos to the exact size.
  for (int pass = 0; pass < 3; ++pass) {
    const int w0 = img.width, h0 = img.height;
    if (pass > 0 && (int64_t(w0) * scale() > 65535 || int64_t(h0) * scale() > 65535)) break;
    img = upscale(img, opt);
    if (img.width == w0 && img.height == h0) break;
    if (img.width >= out_width && img.height >= out_height) break;
  }
  if (img.width == out_width && img.height == out_height) return img;
  Rgb8Image r;
  r.width = out_width;
  r.height = out_height;
  r.rgb = resize_image(img.rgb.data(), img.width, img.height, 3, out_width, out_height, ResizeFilter::Lanczos);
  return r;
}

Rgb8Image Upscaler::upscale_by(const uint8_t* rgb, int width, int height, double factor,
                               const UpscaleOptions& opt) const {
  SD_CHECK_ARG(std::isfinite(factor) && factor > 0 && factor <= 64,
               "upscale: the scale factor must be a number in (0, 64], got " + format_factor(factor));
  const double tw = std::floor(double(width) * factor), th = std::floor(double(height) * factor);
  SD_CHECK_ARG(tw >= 1 && th >= 1 && tw <= 65535 && th <= 65535,
               "upscale: scale " + format_factor(factor) + " gives a " + format_factor(tw) + "x" + format_factor(th) +
                   " image; sides must be 1..65535");
  return upscale_to(rgb, width, height, int(tw), int(th), opt);
}

}  // namespace sdserve
