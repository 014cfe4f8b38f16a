#include "ops/upscale_ops.h"

#include <cstring>
#include <string>
#include <vector>

#include "core/profile.h"
#include "ops/dispatch.h"
#ifdef SDSERVE_WITH_CUDA
#include "cuda/kernels.h"
#include "cuda/runtime.h"
#endif

namespace sdserve::ops {
namespace {

// True when x is on a CUDA device (the caller then runs the GPU kernel); throws for a device
// with no backend in this build.
bool on_gpu(const char* op, const Tensor& x) {
  SD_CHECK_ARG(x.defined(), std::string(op) + ": undefined tensor");
#ifdef SDSERVE_WITH_CUDA
  if (x.device().type == DeviceType::CUDA) {
    cuda::set_device(x.device().index);
    return true;
  }
#endif
  if (x.device().type != DeviceType::CPU) no_backend(op, x.device());
  return false;
}

#ifdef SDSERVE_WITH_CUDA
cudaStream_t gpu_stream(const Tensor& x) { return cuda::stream(x.device().index); }
#endif

// Index into [0, n) of position i of an infinitely reflected sequence (period 2 (n - 1)).
int64_t reflect_index(int64_t i, int64_t n) {
  if (n == 1) return 0;
  const int64_t period = 2 * (n - 1);
  i %= period;
  if (i < 0) i += period;
  return i < n ? i : period - i;
}

template <typename T>
void leaky_relu_kernel(T* p, int64_t n, float slope) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) {
    const float v = to_float(p[i]);
    if (v < 0.f) p[i] = from_float<T>(v * slope);
  }
}

template <typename T>
void prelu_kernel(const T* src, const float* w, bool shared, int64_t nc_total, int64_t channels, int64_t inner,
                  T* dst) {
#pragma omp parallel for schedule(static) if (nc_total * inner > 65536)
  for (int64_t nc = 0; nc < nc_total; ++nc) {
    const float a = w[shared ? 0 : nc % channels];
    const T* s = src + nc * inner;
    T* d = dst + nc * inner;
    for (int64_t i = 0; i < inner; ++i) {
      const float v = to_float(s[i]);
      d[i] = from_float<T>(v < 0.f ? v * a : v);
    }
  }
}

template <typename T>
void scaled_add_kernel(const T* a, float alpha, const T* b, int64_t n, T* out) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) out[i] = from_float<T>(to_float(a[i]) * alpha + to_float(b[i]));
}

}  // namespace

Tensor leaky_relu(const Tensor& x, float slope) {
  on_gpu("leaky_relu", x);  // leaky_relu_ below runs the device's kernel
  Tensor out = x.contiguous();
  if (out.raw_data() == x.raw_data()) out = x.clone();
  leaky_relu_(out, slope);
  return out;
}

void leaky_relu_(Tensor& x, float slope) {
  SD_PROFILE_SCOPE("leaky_relu");
  const bool gpu = on_gpu("leaky_relu_", x);
  // Elementwise over the tensor's memory, so any dense layout will do (a GPU convolution's
  // channels-last output, say).
  SD_CHECK_ARG(x.is_contiguous() || x.is_channels_last(),
               "leaky_relu_: the tensor must be contiguous or channels last, got " + shape_str(x.shape()));
  const int64_t n = x.numel();
#ifdef SDSERVE_WITH_CUDA
  if (gpu) return cuda::leaky_relu(x.raw_data(), n, slope, x.raw_data(), x.dtype(), gpu_stream(x));
#endif
  (void)gpu;
  SD_DISPATCH_FLOAT(x.dtype(), "leaky_relu", [&] { leaky_relu_kernel(x.data<scalar_t>(), n, slope); });
}

Tensor prelu(const Tensor& x, const Tensor& weight) {
  SD_PROFILE_SCOPE("prelu");
  const bool gpu = on_gpu("prelu", x);
  SD_CHECK_ARG(x.dim() >= 2, "prelu: input must be [N, C, ...], got " + shape_str(x.shape()));
  SD_CHECK_ARG(weight.dim() == 1 && (weight.size(0) == x.size(1) || weight.size(0) == 1),
               "prelu: weight " + shape_str(weight.shape()) + " does not match input " + shape_str(x.shape()));
  check_same_device("prelu", x, weight);
  const Tensor xc = x.contiguous();
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  const int64_t N = x.size(0), C = x.size(1), inner = (N == 0 || C == 0) ? 0 : x.numel() / (N * C);
#ifdef SDSERVE_WITH_CUDA
  if (gpu) {
    const Tensor w32 = weight.to(DType::F32).contiguous();
    cuda::prelu(xc.raw_data(), w32.data<float>(), weight.size(0) == 1, C, inner, x.numel(), out.raw_data(), x.dtype(),
                gpu_stream(x));
    return out;
  }
#endif
  (void)gpu;
  const std::vector<float> w = weight.to_vector();
  SD_DISPATCH_FLOAT(x.dtype(), "prelu", [&] {
    prelu_kernel(xc.data<scalar_t>(), w.data(), w.size() == 1, N * C, C, inner, out.data<scalar_t>());
  });
  return out;
}

Tensor scaled_add(const Tensor& a, float alpha, const Tensor& b) {
  SD_PROFILE_SCOPE("scaled_add");
  const bool gpu = on_gpu("scaled_add", a);
  SD_CHECK_ARG(a.shape() == b.shape(),
               "scaled_add: shapes differ (" + shape_str(a.shape()) + " vs " + shape_str(b.shape()) + ")");
  check_same_dtype("scaled_add", a, b);
  check_same_device("scaled_add", a, b);
  const Tensor ac = a.contiguous(), bc = b.contiguous();
  Tensor out = Tensor::empty(a.shape(), a.dtype(), a.device());
  const int64_t n = a.numel();
#ifdef SDSERVE_WITH_CUDA
  if (gpu) {
    cuda::scaled_add(ac.raw_data(), alpha, bc.raw_data(), n, out.raw_data(), a.dtype(), gpu_stream(a));
    return out;
  }
#endif
  (void)gpu;
  SD_DISPATCH_FLOAT(a.dtype(), "scaled_add", [&] {
    scaled_add_kernel(ac.data<scalar_t>(), alpha, bc.data<scalar_t>(), n, out.data<scalar_t>());
  });
  return out;
}

Tensor pixel_shuffle(const Tensor& x, int64_t r) {
  SD_PROFILE_SCOPE("pixel_shuffle");
  on_gpu("pixel_shuffle", x);  // a permuted copy: any device
  SD_CHECK_ARG(x.dim() == 4, "pixel_shuffle: input must be [N, C, H, W], got " + shape_str(x.shape()));
  SD_CHECK_ARG(r >= 1 && x.size(1) % (r * r) == 0, "pixel_shuffle: channels of " + shape_str(x.shape()) +
                                                       " are not a multiple of " + std::to_string(r * r));
  const int64_t N = x.size(0), C = x.size(1) / (r * r), H = x.size(2), W = x.size(3);
  // [N, C, r, r, H, W] -> [N, C, H, r, W, r]
  return x.reshape({N, C, r, r, H, W}).permute({0, 1, 4, 2, 5, 3}).contiguous().view({N, C, H * r, W * r});
}

Tensor pixel_unshuffle(const Tensor& x, int64_t r) {
  SD_PROFILE_SCOPE("pixel_unshuffle");
  on_gpu("pixel_unshuffle", x);
  SD_CHECK_ARG(x.dim() == 4, "pixel_unshuffle: input must be [N, C, H, W], got " + shape_str(x.shape()));
  SD_CHECK_ARG(
      r >= 1 && x.size(2) % r == 0 && x.size(3) % r == 0,
      "pixel_unshuffle: height and width of " + shape_str(x.shape()) + " are not multiples of " + std::to_string(r));
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2) / r, W = x.size(3) / r;
  // [N, C, H, r, W, r] -> [N, C, r, r, H, W]
  return x.reshape({N, C, H, r, W, r}).permute({0, 1, 3, 5, 2, 4}).contiguous().view({N, C * r * r, H, W});
}

Tensor pad_reflect_br(const Tensor& x, int64_t bottom, int64_t right) {
  SD_PROFILE_SCOPE("pad_reflect");
  const bool gpu = on_gpu("pad_reflect_br", x);
  SD_CHECK_ARG(x.dim() == 4, "pad_reflect_br: input must be [N, C, H, W], got " + shape_str(x.shape()));
  SD_CHECK_ARG(bottom >= 0 && right >= 0 && x.size(2) >= 1 && x.size(3) >= 1, "pad_reflect_br: bad size");
  if (bottom == 0 && right == 0) return x;
  const Tensor xc = x.contiguous();
  const int64_t NC = x.size(0) * x.size(1), H = x.size(2), W = x.size(3), OH = H + bottom, OW = W + right;
  Tensor out = Tensor::empty({x.size(0), x.size(1), OH, OW}, x.dtype(), x.device());
#ifdef SDSERVE_WITH_CUDA
  if (gpu) {
    cuda::pad_reflect_br(xc.raw_data(), NC, H, W, OH, OW, out.raw_data(), x.dtype(), gpu_stream(x));
    return out;
  }
#endif
  (void)gpu;
  const size_t es = dtype_size(x.dtype());
  const char* src = static_cast<const char*>(xc.raw_data());
  char* dst = static_cast<char*>(out.raw_data());
#pragma omp parallel for schedule(static) if (NC * OH * OW > 65536)
  for (int64_t nc = 0; nc < NC; ++nc)
    for (int64_t y = 0; y < OH; ++y) {
      const char* srow = src + size_t((nc * H + reflect_index(y, H)) * W) * es;
      char* drow = dst + size_t((nc * OH + y) * OW) * es;
      std::memcpy(drow, srow, size_t(W) * es);
      for (int64_t xx = W; xx < OW; ++xx)
        std::memcpy(drow + size_t(xx) * es, srow + size_t(reflect_index(xx, W)) * es, es);
    }
  return out;
}

}  // namespace sdserve::ops
