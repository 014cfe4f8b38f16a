// Pillow-exact resampling and OpenCV-exact 8-bit Gaussian blur. Both libraries are matched by doing
// the same arithmetic in the same order: the filter weights in double precision (so no fused
// multiply-add may be formed here: Pillow's wheels are built for baseline x86-64, which has none),
// then integer sums.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "io/resize.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"

namespace sdserve {
namespace {

// ---- Pillow (src/libImaging/Resample.c semantics) ----

struct Filter {
  double (*fn)(double);
  double support;
};

double box_fn(double x) { return x > -0.5 && x <= 0.5 ? 1.0 : 0.0; }

double bilinear_fn(double x) {
  x = std::fabs(x);
  return x < 1.0 ? 1.0 - x : 0.0;
}

double hamming_fn(double x) {
  x = std::fabs(x);
  if (x == 0.0) return 1.0;
  if (x >= 1.0) return 0.0;
  x = x * M_PI;
  return std::sin(x) / x * (0.54f + 0.46f * std::cos(x));  // float constants, as Pillow writes them
}

double bicubic_fn(double x) {
  constexpr double a = -0.5;
  x = std::fabs(x);
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

double sinc(double x) {
  if (x == 0.0) return 1.0;
  x = x * M_PI;
  return std::sin(x) / x;
}

double lanczos_fn(double x) { return -3.0 <= x && x < 3.0 ? sinc(x) * sinc(x / 3) : 0.0; }

Filter filter_of(ResizeFilter f) {
  switch (f) {
    case ResizeFilter::Box:
      return {box_fn, 0.5};
    case ResizeFilter::Bilinear:
      return {bilinear_fn, 1.0};
    case ResizeFilter::Hamming:
      return {hamming_fn, 1.0};
    case ResizeFilter::Bicubic:
      return {bicubic_fn, 2.0};
    case ResizeFilter::Lanczos:
      return {lanczos_fn, 3.0};
    case ResizeFilter::Nearest:
      break;
  }
  throw InternalError("resize: no convolution filter for nearest");
}

constexpr int kPrecisionBits = 32 - 8 - 2;

// Per output position: the first input index, the tap count and ksize fixed-point weights.
struct Coeffs {
  int ksize = 0;
  std::vector<int> first, count;
  std::vector<int32_t> k;
};

Coeffs precompute(int in_size, int out_size, const Filter& f) {
  const double scale = double(float(in_size)) / out_size;
  const double filterscale = scale < 1.0 ? 1.0 : scale;
  const double support = f.support * filterscale;
  Coeffs c;
  c.ksize = int(std::ceil(support)) * 2 + 1;
  c.first.resize(size_t(out_size));
  c.count.resize(size_t(out_size));
  c.k.assign(size_t(out_size) * size_t(c.ksize), 0);
  std::vector<double> w(size_t(c.ksize));
  const double inv_filterscale = 1.0 / filterscale;
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = (xx + 0.5) * scale;
    int xmin = int(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = int(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      const double v = f.fn((x + xmin - center + 0.5) * inv_filterscale);
      w[size_t(x)] = v;
      ww += v;
    }
    int32_t* k = &c.k[size_t(xx) * size_t(c.ksize)];
    for (int x = 0; x < xmax; ++x) {
      const double v = ww != 0.0 ? w[size_t(x)] / ww : w[size_t(x)];
      k[x] = v < 0 ? int32_t(-0.5 + v * (1 << kPrecisionBits)) : int32_t(0.5 + v * (1 << kPrecisionBits));
    }
    c.first[size_t(xx)] = xmin;
    c.count[size_t(xx)] = xmax;
  }
  return c;
}

inline uint8_t clip8(int32_t ss) {
  const int32_t v = ss >> kPrecisionBits;  // arithmetic shift (C++20)
  return uint8_t(v < 0 ? 0 : v > 255 ? 255 : v);
}

// Horizontal pass over rows [y0, y0 + rows) of `in` (width in_w) into `out` (width c.first.size()).
void resample_rows(const uint8_t* in, int in_w, int y0, int rows, int ch, const Coeffs& c, uint8_t* out) {
  const int out_w = int(c.first.size());
  const int64_t work = int64_t(rows) * out_w * c.ksize * ch;
#pragma omp parallel for schedule(static) if (work > (1 << 20))
  for (int y = 0; y < rows; ++y) {
    const uint8_t* src = in + (size_t(y0 + y) * size_t(in_w)) * size_t(ch);
    uint8_t* dst = out + size_t(y) * size_t(out_w) * size_t(ch);
    for (int xx = 0; xx < out_w; ++xx) {
      const int32_t* k = &c.k[size_t(xx) * size_t(c.ksize)];
      const uint8_t* s = src + size_t(c.first[size_t(xx)]) * size_t(ch);
      const int n = c.count[size_t(xx)];
      for (int b = 0; b < ch; ++b) {
        int32_t ss = 1 << (kPrecisionBits - 1);
        for (int x = 0; x < n; ++x) ss += int32_t(s[size_t(x) * size_t(ch) + size_t(b)]) * k[x];
        dst[size_t(xx) * size_t(ch) + size_t(b)] = clip8(ss);
      }
    }
  }
}

// Vertical pass: `in` has width w; output row yy reads rows first[yy] - y_offset ...
void resample_cols(const uint8_t* in, int w, int ch, int y_offset, const Coeffs& c, uint8_t* out) {
  const int out_h = int(c.first.size());
  const size_t stride = size_t(w) * size_t(ch);
  const int64_t work = int64_t(out_h) * w * c.ksize * ch;
#pragma omp parallel for schedule(static) if (work > (1 << 20))
  for (int yy = 0; yy < out_h; ++yy) {
    const int32_t* k = &c.k[size_t(yy) * size_t(c.ksize)];
    const uint8_t* s = in + size_t(c.first[size_t(yy)] - y_offset) * stride;
    const int n = c.count[size_t(yy)];
    uint8_t* dst = out + size_t(yy) * stride;
    for (size_t i = 0; i < stride; ++i) {
      int32_t ss = 1 << (kPrecisionBits - 1);
      for (int y = 0; y < n; ++y) ss += int32_t(s[size_t(y) * stride + i]) * k[y];
      dst[i] = clip8(ss);
    }
  }
}

std::vector<uint8_t> resample(const uint8_t* in, int w, int h, int ch, int out_w, int out_h, const Filter& f,
                              PillowVersion pillow) {
  const bool need_h = out_w != w, need_v = out_h != h;
  const Coeffs cv = precompute(h, out_h, f);
  if (pillow == PillowVersion::V13 && out_w >= w && out_h < h) {
    // Pillow 13: the height shrinks and the width does not, so the vertical pass runs first (over
    // every column), then the horizontal pass over the out_h rows.
    std::vector<uint8_t> tmp(size_t(w) * size_t(out_h) * size_t(ch));
    resample_cols(in, w, ch, 0, cv, tmp.data());
    if (!need_h) return tmp;
    std::vector<uint8_t> out(size_t(out_w) * size_t(out_h) * size_t(ch));
    resample_rows(tmp.data(), w, 0, out_h, ch, precompute(w, out_w, f), out.data());
    return out;
  }
  // Only the input rows the vertical pass reads go through the horizontal pass.
  const int y_first = cv.first.front();
  const int y_last = cv.first.back() + cv.count.back();
  std::vector<uint8_t> tmp;
  const uint8_t* cur = in;
  int cur_w = w, cur_offset = 0;
  if (need_h) {
    const Coeffs chz = precompute(w, out_w, f);
    tmp.resize(size_t(out_w) * size_t(y_last - y_first) * size_t(ch));
    resample_rows(in, w, y_first, y_last - y_first, ch, chz, tmp.data());
    cur = tmp.data();
    cur_w = out_w;
    cur_offset = y_first;
  }
  if (need_v) {
    std::vector<uint8_t> out(size_t(cur_w) * size_t(out_h) * size_t(ch));
    resample_cols(cur, cur_w, ch, cur_offset, cv, out.data());
    return out;
  }
  if (need_h) return tmp;  // y_first == 0 and y_last == h when the height is unchanged
  return std::vector<uint8_t>(in, in + size_t(w) * size_t(h) * size_t(ch));
}

// ImagingScaleAffine: the source coordinate advances by in/out per pixel, accumulated in double.
std::vector<uint8_t> nearest(const uint8_t* in, int w, int h, int ch, int out_w, int out_h) {
  const double ax = double(float(w)) / out_w, ay = double(float(h)) / out_h;
  std::vector<int> xin(size_t(out_w), -1);
  double xo = ax * 0.5;
  for (int x = 0; x < out_w; ++x) {
    const int xi = xo < 0.0 ? -1 : int(xo);
    if (xi >= 0 && xi < w) xin[size_t(x)] = xi;
    xo += ax;
  }
  std::vector<uint8_t> out(size_t(out_w) * size_t(out_h) * size_t(ch), 0);
  double yo = ay * 0.5;
  for (int y = 0; y < out_h; ++y) {
    const int yi = yo < 0.0 ? -1 : int(yo);
    yo += ay;
    if (yi < 0 || yi >= h) continue;
    const uint8_t* src = in + size_t(yi) * size_t(w) * size_t(ch);
    uint8_t* dst = out.data() + size_t(y) * size_t(out_w) * size_t(ch);
    for (int x = 0; x < out_w; ++x)
      if (xin[size_t(x)] >= 0)
        std::memcpy(dst + size_t(x) * size_t(ch), src + size_t(xin[size_t(x)]) * size_t(ch), size_t(ch));
  }
  return out;
}

// ---- OpenCV (imgproc/src/smooth.dispatch.cpp, fixed-point GaussianBlur for CV_8U) ----

// getGaussianKernelBitExact, then error-diffused rounding to 8 fractional bits
// (getGaussianKernelFixedPoint_ED): integer taps summing to 256.
std::vector<uint32_t> gaussian_kernel_q8(int n, double sigma) {
  std::vector<double> k(static_cast<size_t>(n));
  static const double t3[] = {0.25, 0.5, 0.25};
  static const double t5[] = {0.0625, 0.25, 0.375, 0.25, 0.0625};
  static const double t7[] = {0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125};
  static const double t9[] = {4 / 256.0,  13 / 256.0, 30 / 256.0, 51 / 256.0, 60 / 256.0,
                              51 / 256.0, 30 / 256.0, 13 / 256.0, 4 / 256.0};
  if (sigma <= 0 && (n == 1 || n == 3 || n == 5 || n == 7 || n == 9)) {
    const double* t = n == 1 ? nullptr : n == 3 ? t3 : n == 5 ? t5 : n == 7 ? t7 : t9;
    for (int i = 0; i < n; ++i) k[size_t(i)] = t == nullptr ? 1.0 : t[i];
  } else {
    const double s = sigma > 0 ? sigma : std::fma(double(n), 0.15, 0.35);  // ((n-1)/2 - 1) * 0.3 + 0.8
    const double scale2 = -0.125 / (s * s);
    const int half = (n - 1) / 2;
    std::vector<double> values(static_cast<size_t>(half));
    double sum = 0;
    for (int i = 0, x = 1 - n; i < half; ++i, x += 2) {
      values[size_t(i)] = std::exp(double(x * x) * scale2);
      sum += values[size_t(i)];
    }
    sum *= 2;
    sum += 1.0;
    if ((n & 1) == 0) sum += 1.0;
    const double mul = 1.0 / sum;
    for (int i = 0; i < half; ++i) k[size_t(i)] = k[size_t(n - 1 - i)] = values[size_t(i)] * mul;
    k[size_t(half)] = mul;
    if ((n & 1) == 0) k[size_t(half + 1)] = mul;
  }
  std::vector<uint32_t> q(static_cast<size_t>(n));
  double err = 0;
  int64_t sum = 0;
  for (int i = 0; i < n / 2; ++i) {
    const double adj = k[size_t(i)] * 256.0 + err;
    const int64_t v = int64_t(std::nearbyint(adj));
    err = adj - double(v);
    q[size_t(i)] = q[size_t(n - 1 - i)] = uint32_t(v);
    sum += v;
  }
  q[size_t(n / 2)] = uint32_t(256 - 2 * sum);
  return q;
}

// cv::borderInterpolate for BORDER_REFLECT_101 (gfedcb|abcdefgh|gfedcba).
int reflect101(int p, int len) {
  if (len == 1) return 0;
  while (p < 0 || p >= len) p = p < 0 ? -p : 2 * (len - 1) - p;
  return p;
}

std::string lower(std::string s) {
  for (char& c : s) c = char(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
  return s;
}

}  // namespace

ResizeFilter parse_resize_filter(const std::string& name) {
  const std::string n = lower(name);
  if (n == "nearest") return ResizeFilter::Nearest;
  if (n == "box") return ResizeFilter::Box;
  if (n == "bilinear") return ResizeFilter::Bilinear;
  if (n == "hamming") return ResizeFilter::Hamming;
  if (n == "bicubic") return ResizeFilter::Bicubic;
  if (n == "lanczos") return ResizeFilter::Lanczos;
  throw InvalidArgument("resize: unknown filter '" + name +
                        "'; use nearest, box, bilinear, hamming, bicubic or lanczos");
}

const char* resize_filter_name(ResizeFilter f) {
  switch (f) {
    case ResizeFilter::Nearest:
      return "nearest";
    case ResizeFilter::Box:
      return "box";
    case ResizeFilter::Bilinear:
      return "bilinear";
    case ResizeFilter::Hamming:
      return "hamming";
    case ResizeFilter::Bicubic:
      return "bicubic";
    case ResizeFilter::Lanczos:
      return "lanczos";
  }
  return "unknown";
}

std::vector<uint8_t> resize_image(const uint8_t* pixels, int width, int height, int channels, int out_width,
                                  int out_height, ResizeFilter filter, PillowVersion pillow) {
  SD_CHECK_ARG(pixels != nullptr, "resize: no pixel data");
  SD_CHECK_ARG(channels == 1 || channels == 3 || channels == 4,
               "resize: channels must be 1, 3 or 4, got " + std::to_string(channels));
  SD_CHECK_ARG(width > 0 && height > 0 && out_width > 0 && out_height > 0,
               "resize: sizes must be positive, got " + std::to_string(width) + "x" + std::to_string(height) + " -> " +
                   std::to_string(out_width) + "x" + std::to_string(out_height));
  SD_CHECK_ARG(width <= (1 << 24) && height <= (1 << 24) && out_width <= (1 << 24) && out_height <= (1 << 24),
               "resize: sizes must be at most 16777216 per side");
  const size_t n = size_t(width) * size_t(height) * size_t(channels);
  if (width == out_width && height == out_height) return std::vector<uint8_t>(pixels, pixels + n);
  if (filter == ResizeFilter::Nearest) return nearest(pixels, width, height, channels, out_width, out_height);
  const Filter f = filter_of(filter);
  if (channels != 4) return resample(pixels, width, height, channels, out_width, out_height, f, pillow);

  // Pillow resizes RGBA as premultiplied "RGBa" and converts back (Convert.c rgbA2rgba / rgba2rgbA).
  std::vector<uint8_t> pre(pixels, pixels + n);
  for (size_t i = 0; i < n; i += 4) {
    const uint32_t a = pre[i + 3];
    for (size_t c = 0; c < 3; ++c) {
      const uint32_t t = pre[i + c] * a + 128;
      pre[i + c] = uint8_t(((t >> 8) + t) >> 8);
    }
  }
  std::vector<uint8_t> out = resample(pre.data(), width, height, 4, out_width, out_height, f, pillow);
  for (size_t i = 0; i < out.size(); i += 4) {
    const uint32_t a = out[i + 3];
    if (a == 0 || a == 255) continue;
    for (size_t c = 0; c < 3; ++c) out[i + c] = uint8_t(std::min<uint32_t>(255, 255 * out[i + c] / a));
  }
  return out;
}

std::vector<uint8_t> gaussian_blur(const uint8_t* gray, int width, int height, int ksize_x, int ksize_y, double sigma_x,
                                   double sigma_y) {
  SD_CHECK_ARG(gray != nullptr, "gaussian_blur: no pixel data");
  SD_CHECK_ARG(width > 0 && height > 0,
               "gaussian_blur: size must be positive, got " + std::to_string(width) + "x" + std::to_string(height));
  SD_CHECK_ARG(std::isfinite(sigma_x) && std::isfinite(sigma_y), "gaussian_blur: sigma must be finite");
  if (sigma_y <= 0) sigma_y = sigma_x;
  // OpenCV's size from sigma for 8-bit images: cvRound(sigma * 3 * 2 + 1) | 1.
  if (ksize_x <= 0 && sigma_x > 0) ksize_x = int(std::nearbyint(std::min(sigma_x * 6 + 1, 1e6))) | 1;
  if (ksize_y <= 0 && sigma_y > 0) ksize_y = int(std::nearbyint(std::min(sigma_y * 6 + 1, 1e6))) | 1;
  SD_CHECK_ARG(ksize_x > 0 && ksize_x % 2 == 1 && ksize_y > 0 && ksize_y % 2 == 1,
               "gaussian_blur: kernel sizes must be odd and positive (or <= 0 with a positive sigma), got " +
                   std::to_string(ksize_x) + "x" + std::to_string(ksize_y));
  SD_CHECK_ARG(ksize_x <= 4095 && ksize_y <= 4095, "gaussian_blur: kernel size is at most 4095");
  // A one-pixel-wide (or tall) image is not blurred along that axis.
  if (width == 1) ksize_x = 1;
  if (height == 1) ksize_y = 1;
  const size_t n = size_t(width) * size_t(height);
  if (ksize_x == 1 && ksize_y == 1) return std::vector<uint8_t>(gray, gray + n);
  const std::vector<uint32_t> kx = gaussian_kernel_q8(ksize_x, std::max(sigma_x, 0.0));
  const std::vector<uint32_t> ky = gaussian_kernel_q8(ksize_y, std::max(sigma_y, 0.0));

  // Rows: exact sums with 8 fractional bits (at most 255 * 256). Columns: 16 fractional bits,
  // rounded once at the end, as OpenCV's ufixedpoint16/ufixedpoint32 arithmetic.
  const int rx = ksize_x / 2, ry = ksize_y / 2;
  std::vector<uint32_t> rows(n);
  std::vector<int> xmap(size_t(width + 2 * rx));
  for (int i = 0; i < width + 2 * rx; ++i) xmap[size_t(i)] = reflect101(i - rx, width);
#pragma omp parallel for schedule(static) if (n * size_t(ksize_x + ksize_y) > (size_t(1) << 20))
  for (int y = 0; y < height; ++y) {
    const uint8_t* s = gray + size_t(y) * size_t(width);
    uint32_t* d = rows.data() + size_t(y) * size_t(width);
    for (int x = 0; x < width; ++x) {
      uint32_t acc = 0;
      for (int i = 0; i < ksize_x; ++i) acc += kx[size_t(i)] * s[xmap[size_t(x + i)]];
      d[x] = acc;
    }
  }
  std::vector<uint8_t> out(n);
  std::vector<int> ymap(size_t(height + 2 * ry));
  for (int i = 0; i < height + 2 * ry; ++i) ymap[size_t(i)] = reflect101(i - ry, height);
#pragma omp parallel for schedule(static) if (n * size_t(ksize_x + ksize_y) > (size_t(1) << 20))
  for (int y = 0; y < height; ++y) {
    uint8_t* d = out.data() + size_t(y) * size_t(width);
    for (int x = 0; x < width; ++x) {
      uint32_t acc = 0;
      for (int j = 0; j < ksize_y; ++j)
        acc += ky[size_t(j)] * rows[size_t(ymap[size_t(y + j)]) * size_t(width) + size_t(x)];
      const uint32_t v = (acc + (1u << 15)) >> 16;
      d[x] = uint8_t(v > 255 ? 255 : v);
    }
  }
  return out;
}

std::vector<uint8_t> mask_blur(const uint8_t* gray, int width, int height, double blur_x, double blur_y) {
  SD_CHECK_ARG(gray != nullptr, "mask_blur: no pixel data");
  SD_CHECK_ARG(width > 0 && height > 0,
               "mask_blur: size must be positive, got " + std::to_string(width) + "x" + std::to_string(height));
  SD_CHECK_ARG(std::isfinite(blur_x) && std::isfinite(blur_y) && blur_x <= 800 && blur_y <= 800,
               "mask_blur: blur must be a finite number of pixels up to 800");
  std::vector<uint8_t> m(gray, gray + size_t(width) * size_t(height));
  if (blur_x > 0) {
    const int k = 2 * int(2.5 * blur_x + 0.5) + 1;
    m = gaussian_blur(m.data(), width, height, k, 1, blur_x, 0);
  }
  if (blur_y > 0) {
    const int k = 2 * int(2.5 * blur_y + 0.5) + 1;
    m = gaussian_blur(m.data(), width, height, 1, k, blur_y, 0);
  }
  return m;
}

}  // namespace sdserve
