// Kernels of the ESRGAN-family ops (ops/upscale_ops.h): leaky ReLU, PReLU, the scaled residual
// add and bottom/right reflect padding. Declared in cuda/kernels.h. Arithmetic in f32, storage
// in the tensor's dtype, rounded to nearest even like the CPU kernels.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <string>
#include <type_traits>

#include "core/error.h"
#include "cuda/kernels.h"
#include "cuda/runtime.h"

namespace sdserve::cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float load_f(const float* p) { return *p; }
__device__ __forceinline__ float load_f(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ float load_f(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ void store_f(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_f(__half* p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void store_f(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }

unsigned grid_for(int64_t n) { return unsigned(std::min<int64_t>((n + kThreads - 1) / kThreads, 65535 * 8)); }

template <typename F>
void with_type(DType dt, const char* what, F&& f) {
  switch (dt) {
    case DType::F32:
      return f(static_cast<float*>(nullptr));
    case DType::F16:
      return f(static_cast<__half*>(nullptr));
    case DType::BF16:
      return f(static_cast<__nv_bfloat16*>(nullptr));
    default:
      throw UnsupportedError(std::string(what) + ": unsupported dtype on the GPU");
  }
}

template <typename T>
__global__ void leaky_relu_kernel(const T* x, int64_t n, float slope, T* out) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float v = load_f(x + i);
    store_f(out + i, v < 0.f ? v * slope : v);
  }
}

template <typename T>
__global__ void prelu_kernel(const T* x, const float* w, bool shared, int64_t channels, int64_t inner, int64_t n,
                             T* out) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float v = load_f(x + i);
    const float a = w[shared ? 0 : (i / inner) % channels];
    store_f(out + i, v < 0.f ? v * a : v);
  }
}

template <typename T>
__global__ void scaled_add_kernel(const T* a, float alpha, const T* b, int64_t n, T* out) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    store_f(out + i, load_f(a + i) * alpha + load_f(b + i));
}

__device__ __forceinline__ int64_t reflect(int64_t i, int64_t n) {
  if (n == 1) return 0;
  const int64_t period = 2 * (n - 1);
  i %= period;
  return i < n ? i : period - i;
}

template <typename T>
__global__ void pad_reflect_kernel(const T* x, int64_t h, int64_t w, int64_t oh, int64_t ow, int64_t n, T* out) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t xx = i % ow, y = (i / ow) % oh, plane = i / (ow * oh);
    out[i] = x[(plane * h + reflect(y, h)) * w + reflect(xx, w)];
  }
}

}  // namespace

void leaky_relu(const void* x, int64_t n, float slope, void* out, DType dt, cudaStream_t stream) {
  if (n == 0) return;
  with_type(dt, "leaky_relu", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    leaky_relu_kernel<T>
        <<<grid_for(n), kThreads, 0, stream>>>(static_cast<const T*>(x), n, slope, static_cast<T*>(out));
  });
  check_launch("leaky_relu");
}

void prelu(const void* x, const float* weight, bool shared, int64_t channels, int64_t inner, int64_t n, void* out,
           DType dt, cudaStream_t stream) {
  if (n == 0 || inner == 0) return;
  with_type(dt, "prelu", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    prelu_kernel<T><<<grid_for(n), kThreads, 0, stream>>>(static_cast<const T*>(x), weight, shared, channels, inner, n,
                                                          static_cast<T*>(out));
  });
  check_launch("prelu");
}

void scaled_add(const void* a, float alpha, const void* b, int64_t n, void* out, DType dt, cudaStream_t stream) {
  if (n == 0) return;
  with_type(dt, "scaled_add", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    scaled_add_kernel<T><<<grid_for(n), kThreads, 0, stream>>>(static_cast<const T*>(a), alpha,
                                                               static_cast<const T*>(b), n, static_cast<T*>(out));
  });
  check_launch("scaled_add");
}

void pad_reflect_br(const void* x, int64_t planes, int64_t h, int64_t w, int64_t oh, int64_t ow, void* out, DType dt,
                    cudaStream_t stream) {
  const int64_t n = planes * oh * ow;
  if (n == 0) return;
  with_type(dt, "pad_reflect_br", [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    pad_reflect_kernel<T>
        <<<grid_for(n), kThreads, 0, stream>>>(static_cast<const T*>(x), h, w, oh, ow, n, static_cast<T*>(out));
  });
  check_launch("pad_reflect_br");
}

}  // namespace sdserve::cuda
