#include "cpu/kernels.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu/gemm.h"
#include "cpu/simd.h"

namespace sdserve::cpu {

template <typename T>
void embedding(const T* weight, int64_t vocab, int64_t dim, const int32_t* ids, int64_t n, T* out) {
#pragma omp parallel for schedule(static) if (n * dim > 65536)
  for (int64_t i = 0; i < n; ++i) std::memcpy(out + i * dim, weight + int64_t(ids[i]) * dim, size_t(dim) * sizeof(T));
}

template <typename T>
void layer_norm(const T* x, const T* gamma, const T* beta, int64_t rows, int64_t dim, float eps, T* out) {
#pragma omp parallel for schedule(static) if (rows * dim > 16384)
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * dim;
    T* yr = out + r * dim;
    // Two passes (mean, then centred variance) as PyTorch does: one-pass E[x^2]-E[x]^2 loses digits.
    float mean = 0.f;
    for (int64_t i = 0; i < dim; ++i) mean += to_float(xr[i]);
    mean /= float(dim);
    float var = 0.f;
    for (int64_t i = 0; i < dim; ++i) {
      const float d = to_float(xr[i]) - mean;
      var += d * d;
    }
    var /= float(dim);
    const float inv = 1.f / std::sqrt(var + eps);
    for (int64_t i = 0; i < dim; ++i) {
      float v = (to_float(xr[i]) - mean) * inv;
      if (gamma) v *= to_float(gamma[i]);
      if (beta) v += to_float(beta[i]);
      yr[i] = from_float<T>(v);
    }
  }
}

template <typename T>
void softmax_rows(const T* x, int64_t rows, int64_t cols, T* out) {
#pragma omp parallel for schedule(static) if (rows * cols > 16384)
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * cols;
    T* yr = out + r * cols;
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t i = 0; i < cols; ++i) mx = std::max(mx, to_float(xr[i]));
    if (mx == -std::numeric_limits<float>::infinity()) mx = 0.f;  // a fully masked row gives zeros, not NaN
    float sum = 0.f;
    for (int64_t i = 0; i < cols; ++i) {
      const float e = std::exp(to_float(xr[i]) - mx);
      yr[i] = from_float<T>(e);
      sum += e;
    }
    const float inv = sum > 0.f ? 1.f / sum : 0.f;
    for (int64_t i = 0; i < cols; ++i) yr[i] = from_float<T>(to_float(yr[i]) * inv);
  }
}

namespace {
inline float act(float v, ActKind k) {
  switch (k) {
    case ActKind::GELU:
      return 0.5f * v * (1.f + std::erf(v * 0.70710678118654752f));
    case ActKind::GELUTanh: {
      const float c = 0.7978845608028654f;  // sqrt(2/pi)
      return 0.5f * v * (1.f + std::tanh(c * (v + 0.044715f * v * v * v)));
    }
    case ActKind::QuickGELU:
      return v / (1.f + std::exp(-1.702f * v));
    case ActKind::SiLU:
      return v / (1.f + std::exp(-v));
  }
  return v;
}
}  // namespace

#ifdef SD_X86
SD_AVX2 void activation_avx2(const float* x, int64_t n, ActKind kind, float* out) {
  const int64_t nv = n / 8 * 8;
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < nv; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    _mm256_storeu_ps(out + i, kind == ActKind::GELU ? simd::gelu(v) : simd::silu(v));
  }
  for (int64_t i = nv; i < n; ++i) out[i] = act(x[i], kind);
}

// out[r, i] = x[r, i] * gelu(x[r, inner + i])
SD_AVX2 void geglu_avx2(const float* x, int64_t rows, int64_t inner, float* out) {
#pragma omp parallel for schedule(static) if (rows * inner > 65536)
  for (int64_t r = 0; r < rows; ++r) {
    const float* h = x + r * 2 * inner;
    const float* g = h + inner;
    float* o = out + r * inner;
    int64_t i = 0;
    for (; i + 8 <= inner; i += 8)
      _mm256_storeu_ps(o + i, _mm256_mul_ps(_mm256_loadu_ps(h + i), simd::gelu(_mm256_loadu_ps(g + i))));
    for (; i < inner; ++i) o[i] = h[i] * act(g[i], ActKind::GELU);
  }
}
#endif

template <typename T>
void activation(const T* x, int64_t n, ActKind kind, T* out) {
#ifdef SD_X86
  if constexpr (std::is_same_v<T, float>) {
    if ((kind == ActKind::GELU || kind == ActKind::SiLU) && have_avx2_fma()) return activation_avx2(x, n, kind, out);
  }
#endif
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) out[i] = from_float<T>(act(to_float(x[i]), kind));
}

template <typename T>
void geglu(const T* x, int64_t rows, int64_t inner, T* out) {
#ifdef SD_X86
  if constexpr (std::is_same_v<T, float>) {
    if (have_avx2_fma()) return geglu_avx2(x, rows, inner, out);
  }
#endif
#pragma omp parallel for schedule(static) if (rows * inner > 65536)
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < inner; ++i)
      out[r * inner + i] =
          from_float<T>(to_float(x[r * 2 * inner + i]) * act(to_float(x[r * 2 * inner + inner + i]), ActKind::GELU));
}

template <typename T>
void add_broadcast(const T* a, int64_t na, const T* b, int64_t nb, T* out) {
  const int64_t outer = nb == 0 ? 0 : na / nb;
#pragma omp parallel for schedule(static) if (na > 65536)
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < nb; ++i) out[o * nb + i] = from_float<T>(to_float(a[o * nb + i]) + to_float(b[i]));
}

template <typename T>
void add_per_plane(const T* x, const T* b, int64_t planes, int64_t hw, T* out) {
#pragma omp parallel for schedule(static) if (planes * hw > 65536)
  for (int64_t p = 0; p < planes; ++p) {
    const float bv = to_float(b[p]);
    for (int64_t i = 0; i < hw; ++i) out[p * hw + i] = from_float<T>(to_float(x[p * hw + i]) + bv);
  }
}

#ifdef SD_X86
// One (sample, group): mean and variance (float lanes summed per 8 KiB block, blocks summed in
// double), then y = x * scale + shift per channel, optional SiLU.
SD_AVX2 void group_norm_one_avx2(const float* xs, const float* gamma, const float* beta, int64_t cg, int64_t hw,
                                 float eps, bool silu, float* ys) {
  const int64_t len = cg * hw;
  constexpr int64_t kBlock = 2048;
  double sum = 0;
  for (int64_t b0 = 0; b0 < len; b0 += kBlock) {
    const int64_t b1 = std::min(len, b0 + kBlock);
    __m256 acc = _mm256_setzero_ps();
    int64_t i = b0;
    for (; i + 8 <= b1; i += 8) acc = _mm256_add_ps(acc, _mm256_loadu_ps(xs + i));
    float part = simd::hsum(acc);
    for (; i < b1; ++i) part += xs[i];
    sum += part;
  }
  const double mean = sum / double(len);
  const __m256 vm = _mm256_set1_ps(float(mean));
  double var = 0;
  for (int64_t b0 = 0; b0 < len; b0 += kBlock) {
    const int64_t b1 = std::min(len, b0 + kBlock);
    __m256 acc = _mm256_setzero_ps();
    int64_t i = b0;
    for (; i + 8 <= b1; i += 8) {
      const __m256 d = _mm256_sub_ps(_mm256_loadu_ps(xs + i), vm);
      acc = _mm256_fmadd_ps(d, d, acc);
    }
    float part = simd::hsum(acc);
    for (; i < b1; ++i) part += (xs[i] - float(mean)) * (xs[i] - float(mean));
    var += part;
  }
  var /= double(len);
  const float inv = float(1.0 / std::sqrt(var + double(eps)));
  for (int64_t ch = 0; ch < cg; ++ch) {
    const float ga = gamma ? gamma[ch] : 1.f, be = beta ? beta[ch] : 0.f;
    const float scale = inv * ga, shift = be - float(mean) * inv * ga;
    const __m256 vs = _mm256_set1_ps(scale), vb = _mm256_set1_ps(shift);
    const float* xc = xs + ch * hw;
    float* yc = ys + ch * hw;
    int64_t i = 0;
    for (; i + 8 <= hw; i += 8) {
      __m256 v = _mm256_fmadd_ps(_mm256_loadu_ps(xc + i), vs, vb);
      if (silu) v = simd::silu(v);
      _mm256_storeu_ps(yc + i, v);
    }
    for (; i < hw; ++i) {
      float v = xc[i] * scale + shift;
      if (silu) v = v / (1.f + std::exp(-v));
      yc[i] = v;
    }
  }
}
#endif

template <typename T>
void group_norm(const T* x, const T* gamma, const T* beta, int64_t n, int64_t c, int64_t hw, int64_t groups, float eps,
                bool silu, T* out) {
  const int64_t cg = c / groups, len = cg * hw;
#ifdef SD_X86
  if constexpr (std::is_same_v<T, float>) {
    if (have_avx2_fma()) {
#pragma omp parallel for schedule(static) collapse(2)
      for (int64_t b = 0; b < n; ++b)
        for (int64_t g = 0; g < groups; ++g)
          group_norm_one_avx2(x + (b * c + g * cg) * hw, gamma ? gamma + g * cg : nullptr,
                              beta ? beta + g * cg : nullptr, cg, hw, eps, silu, out + (b * c + g * cg) * hw);
      return;
    }
  }
#endif
#pragma omp parallel for schedule(static) collapse(2)
  for (int64_t b = 0; b < n; ++b)
    for (int64_t g = 0; g < groups; ++g) {
      const T* xs = x + (b * c + g * cg) * hw;
      T* ys = out + (b * c + g * cg) * hw;
      // Double accumulators: a group holds up to ~10^6 values at 512x512.
      double sum = 0;
      for (int64_t i = 0; i < len; ++i) sum += to_float(xs[i]);
      const double mean = sum / double(len);
      double var = 0;
      for (int64_t i = 0; i < len; ++i) {
        const double d = double(to_float(xs[i])) - mean;
        var += d * d;
      }
      var /= double(len);
      const float inv = float(1.0 / std::sqrt(var + double(eps)));
      const float m = float(mean);
      for (int64_t ch = 0; ch < cg; ++ch) {
        const float ga = gamma ? to_float(gamma[g * cg + ch]) : 1.f;
        const float be = beta ? to_float(beta[g * cg + ch]) : 0.f;
        const float scale = inv * ga, shift = be - m * inv * ga;
        const T* xc = xs + ch * hw;
        T* yc = ys + ch * hw;
        for (int64_t i = 0; i < hw; ++i) {
          float v = to_float(xc[i]) * scale + shift;
          if (silu) v = v / (1.f + std::exp(-v));
          yc[i] = from_float<T>(v);
        }
      }
    }
}

template <typename T>
void upsample_nearest(const T* x, int64_t nc, int64_t h, int64_t w, int64_t oh, int64_t ow, T* out) {
  std::vector<int64_t> xs(static_cast<size_t>(ow));
  const float sx = float(w) / float(ow), sy = float(h) / float(oh);
  for (int64_t j = 0; j < ow; ++j) xs[size_t(j)] = std::min(int64_t(float(j) * sx), w - 1);
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < nc; ++p)
    for (int64_t i = 0; i < oh; ++i) {
      const int64_t si = std::min(int64_t(float(i) * sy), h - 1);
      const T* src = x + (p * h + si) * w;
      T* dst = out + (p * oh + i) * ow;
      for (int64_t j = 0; j < ow; ++j) dst[j] = src[xs[size_t(j)]];
    }
}

void linear_f32(const float* x, int64_t rows, int64_t in, const float* w, int64_t out, const float* bias, float* y) {
  if (bias) {
    for (int64_t r = 0; r < rows; ++r) std::memcpy(y + r * out, bias, size_t(out) * sizeof(float));
  }
  sgemm(false, true, rows, out, in, 1.f, x, in, w, in, bias ? 1.f : 0.f, y, out);
}

#define SD_INSTANTIATE(T)                                                                                         \
  template void embedding<T>(const T*, int64_t, int64_t, const int32_t*, int64_t, T*);                            \
  template void layer_norm<T>(const T*, const T*, const T*, int64_t, int64_t, float, T*);                         \
  template void softmax_rows<T>(const T*, int64_t, int64_t, T*);                                                  \
  template void activation<T>(const T*, int64_t, ActKind, T*);                                                    \
  template void geglu<T>(const T*, int64_t, int64_t, T*);                                                         \
  template void add_broadcast<T>(const T*, int64_t, const T*, int64_t, T*);                                       \
  template void group_norm<T>(const T*, const T*, const T*, int64_t, int64_t, int64_t, int64_t, float, bool, T*); \
  template void add_per_plane<T>(const T*, const T*, int64_t, int64_t, T*);                                       \
  template void upsample_nearest<T>(const T*, int64_t, int64_t, int64_t, int64_t, int64_t, T*);
SD_INSTANTIATE(float)
SD_INSTANTIATE(half_t)
SD_INSTANTIATE(bfloat16_t)
#undef SD_INSTANTIATE

}  // namespace sdserve::cpu
