// Our own CUDA kernels (declared in cuda/kernels.h).
//
// Storage types are float, __half and __nv_bfloat16, picked at run time (dispatch_float); all
// arithmetic is f32 and stores round to nearest even. Layout of the file:
//  - elementwise ops (casts, adds, activations, embedding, resize, fill) share one grid-stride
//    kernel over packs of up to 16 bytes per thread (a pack size of 1 where a pointer or a row
//    length does not allow wider ones);
//  - copy_strided collapses the shape first, so contiguous copies take the packed path; other
//    views go packed along a shared contiguous last dim, through a shared-memory transpose when
//    src and dst are contiguous along different dims, else element by element;
//  - layer_norm and softmax_rows give each row to a "team" (a warp, or a whole block for long
//    rows) that keeps the row in registers, so x is read once;
//  - group_norm splits each (sample, group) over blocks of 4096 values; see group_norm below.
// Every index is 64-bit; divisions fall back to 32-bit ones when both operands fit. Grids are
// capped at kMaxBlocks blocks and kernels loop over the rest.
#include "cuda/kernels.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <type_traits>

#include "core/error.h"
#include "cuda/check.h"
#include "cuda/runtime.h"

namespace sdserve::cuda {
namespace {

constexpr int kThreads = 256;          // block size of the elementwise kernels
constexpr int64_t kMaxBlocks = 65536;  // grid cap; grid-stride loops cover the rest
constexpr unsigned kFullMask = 0xffffffffu;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Blocks for `work` items at `per_block` items a block: at least 1, at most kMaxBlocks.
int blocks_for(int64_t work, int64_t per_block) {
  return int(std::clamp<int64_t>((work + per_block - 1) / per_block, 1, kMaxBlocks));
}

bool aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

// ---------------------------------------------------------------------------------------------
// Storage types

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_f(float v);
template <>
__device__ __forceinline__ float from_f<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __half from_f<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Element conversion: same type is a plain copy (also for the raw word types of copy_strided).
template <typename D, typename S>
__device__ __forceinline__ D convert(S v) {
  if constexpr (std::is_same_v<S, D>) {
    return v;
  } else {
    return from_f<D>(to_f(v));
  }
}

template <typename T>
struct Tag {
  using type = T;
};

// Calls f(Tag<T>{}) with T the CUDA storage type of a compute dtype.
template <typename F>
void dispatch_float(DType dt, const char* what, F&& f) {
  switch (dt) {
    case DType::F32:
      f(Tag<float>{});
      return;
    case DType::F16:
      f(Tag<__half>{});
      return;
    case DType::BF16:
      f(Tag<__nv_bfloat16>{});
      return;
    default:
      throw UnsupportedError(std::string(what) + ": dtype " + dtype_name(dt) + " is not supported on CUDA");
  }
}

// Calls f(Tag<W>{}) with W an unsigned integer of `bytes` bytes (raw copies of any dtype).
template <typename F>
void dispatch_raw(size_t bytes, const char* what, F&& f) {
  switch (bytes) {
    case 1:
      f(Tag<uint8_t>{});
      return;
    case 2:
      f(Tag<uint16_t>{});
      return;
    case 4:
      f(Tag<uint32_t>{});
      return;
    case 8:
      f(Tag<uint64_t>{});
      return;
    default:
      throw UnsupportedError(std::string(what) + ": element size " + std::to_string(bytes) + " is not supported");
  }
}

// Calls f(Tag<E>{}) with E the raw word type of a float dtype's elements, for ops that only move
// values (gathers, resizes): other dtypes are refused as dispatch_float refuses them.
template <typename F>
void dispatch_float_raw(DType dt, const char* what, F&& f) {
  dispatch_float(dt, what, [&](auto tag) { dispatch_raw(sizeof(typename decltype(tag)::type), what, f); });
}

// ---------------------------------------------------------------------------------------------
// Device helpers

// a / b for a >= 0, b > 0; a 32-bit division when both fit (the common case, several times faster).
__device__ __forceinline__ int64_t div_fast(int64_t a, int64_t b) {
  if (((uint64_t(a) | uint64_t(b)) >> 32) == 0) return int64_t(uint32_t(a) / uint32_t(b));
  return a / b;
}

// W consecutive elements, loaded and stored as one access (16 bytes at most).
template <typename T, int W>
struct alignas(sizeof(T) * W) Pack {
  T v[W];
};

template <int W, typename T>
__device__ __forceinline__ Pack<T, W> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, W>*>(p);
}
template <int W, typename T>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, W>& v) {
  *reinterpret_cast<Pack<T, W>*>(p) = v;
}

// x / (1 + e^-x) with __fdividef (2 ulp): an IEEE division (with its slow-path call) made SiLU
// compute-bound in f16. For x < -87 the divisor passes 2^126 and the quotient flushes to 0,
// where the exact value is below 1e-36 anyway.
__device__ __forceinline__ float silu_f(float v) { return __fdividef(v, 1.f + expf(-v)); }
__device__ __forceinline__ float gelu_erf(float v) { return 0.5f * v * (1.f + erff(v * 0.70710678118654752f)); }

template <Act A>
__device__ __forceinline__ float act_f(float v) {
  if constexpr (A == Act::GELU) {
    return gelu_erf(v);
  } else if constexpr (A == Act::GELUTanh) {
    constexpr float kC = 0.7978845608028654f;  // sqrt(2/pi)
    return 0.5f * v * (1.f + tanhf(kC * (v + 0.044715f * v * v * v)));
  } else if constexpr (A == Act::QuickGELU) {
    return __fdividef(v, 1.f + expf(-1.702f * v));
  } else {
    return silu_f(v);
  }
}

// 1 / s for s >= 1 (a softmax denominator, which counts exp(0) for the row maximum, or an element
// count): the hardware reciprocal plus one Newton step, within an ulp. IEEE divisions bring a
// slow-path call whose calling convention made some kernels spill.
__device__ __forceinline__ float recip_ge1(float s) {
  const float r = __fdividef(1.f, s);
  return fmaf(r, fmaf(-s, r, 1.f), r);
}

// 1 / sqrt(v) for a variance + eps: the hardware estimate plus one Newton step (within about an
// ulp, like 1.f / sqrtf, whose slow-path calls made some kernels spill). v = 0 gives inf.
__device__ __forceinline__ float inv_std(float v) {
  const float y = rsqrtf(v);
  return v > 0.f && y > 0.f ? y * fmaf(-0.5f * v * y, y, 1.5f) : y;
}

struct SumOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
};
struct MaxOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};

// Reduces v over a team of kTeam threads: a warp (kTeam == 32), or the whole block (kTeam ==
// blockDim.x, a multiple of 32; `red` is __shared__ float[32]). Every thread of the team gets
// the same value: a butterfly leaves identical sums in all lanes, and each thread then combines
// the warp results in the same order. Block teams: all threads of the block must call it.
template <int kTeam, typename Op>
__device__ __forceinline__ float team_reduce(float v, float* red, Op op) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(kFullMask, v, o));
  if constexpr (kTeam > 32) {
    __syncthreads();  // earlier readers of red are done
    if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = v;
    __syncthreads();
    v = red[0];
#pragma unroll
    for (int w = 1; w < kTeam / 32; ++w) v = op(v, red[w]);
  }
  return v;
}

// ---------------------------------------------------------------------------------------------
// Elementwise framework: op.apply<W>(i) handles elements [i, i + W). Packs of W cover the first
// n / W * W elements; the last n % W (< W <= 16) go one each to the first threads of the grid.

template <int W, typename Op>
__global__ void __launch_bounds__(kThreads) elementwise_kernel(int64_t n, Op op) {
  const int64_t tid = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  const int64_t packs = n / W;
  for (int64_t p = tid; p < packs; p += step) op.template apply<W>(p * W);
  if constexpr (W > 1) {
    if (tid < n - packs * W) op.template apply<1>(packs * W + tid);
  }
}

// Launches op over n elements in packs of W, or of 1 when !vec.
template <int W, typename Op>
void launch_elementwise(int64_t n, bool vec, const Op& op, cudaStream_t stream, const char* what) {
  if (n <= 0) return;
  if (vec && W > 1) {
    elementwise_kernel<W><<<blocks_for(std::max<int64_t>(n / W, 1), kThreads), kThreads, 0, stream>>>(n, op);
  } else {
    elementwise_kernel<1><<<blocks_for(n, kThreads), kThreads, 0, stream>>>(n, op);
  }
  check_launch(what);
}

// Pack width for 16-byte accesses of the widest of the given types.
template <typename... Ts>
constexpr int kPackWidth = int(16 / std::max({sizeof(Ts)...}));

template <typename S, typename D>
struct CastOp {
  const S* src;
  D* dst;
  template <int W>
  __device__ __forceinline__ void apply(int64_t i) const {
    const Pack<S, W> a = load_pack<W>(src + i);
    Pack<D, W> b;
#pragma unroll
    for (int k = 0; k < W; ++k) b.v[k] = convert<D>(a.v[k]);
    store_pack<W>(dst + i, b);
  }
};

// Collapsed strided geometry: dims [0, ndim) of shape and both strides, row-major order.
struct CopyGeom {
  int ndim = 0;
  int64_t shape[kMaxDims] = {};
  int64_t src_stride[kMaxDims] = {};
  int64_t dst_stride[kMaxDims] = {};
};

// Index i counts packs of V elements: for V > 1 the last dim is contiguous in both views, its
// shape is counted in packs and its strides are V (elements a pack step).
template <typename S, typename D, int V>
struct StridedCopyOp {
  const S* src;
  D* dst;
  CopyGeom g;
  template <int W>
  __device__ __forceinline__ void apply(int64_t i) const {
    static_assert(W == 1);
    int64_t rem = i, so = 0, dof = 0;
    // Unrolled with compile-time indices so g stays in the parameter space (no local copy).
#pragma unroll
    for (int k = kMaxDims - 1; k >= 0; --k) {
      if (k < g.ndim) {
        int64_t c = rem;
        if (k > 0) {
          const int64_t q = div_fast(rem, g.shape[k]);
          c = rem - q * g.shape[k];
          rem = q;
        }
        so += c * g.src_stride[k];
        dof += c * g.dst_stride[k];
      }
    }
    const Pack<S, V> a = load_pack<V>(src + so);
    Pack<D, V> b;
#pragma unroll
    for (int k = 0; k < V; ++k) b.v[k] = convert<D>(a.v[k]);
    store_pack<V>(dst + dof, b);
  }
};

// Transposing copy through shared memory, for views where src is contiguous along dim A and dst
// along dim B (the last): a block of 32 x 8 threads moves 32 x 32 tiles of the (A, B) plane,
// reading along A and writing along B, so both sides coalesce. The remaining dims ("batch", in
// `outer`) pick the plane.
struct TransposeGeom {
  CopyGeom outer;
  int64_t na, nb;        // extents of A and B
  int64_t src_b, dst_a;  // src stride along B, dst stride along A (the other two are 1)
  int64_t tiles_a, tiles_b, tiles;
};

template <typename S, typename D>
__global__ void __launch_bounds__(256) transpose_copy_kernel(const S* src, D* dst, TransposeGeom g) {
  // Row pitch of 32 + 4 bytes' worth of elements: column reads then hit distinct banks.
  constexpr int kPitch = 32 + int(sizeof(D) >= 4 ? 1 : 4 / sizeof(D));
  __shared__ D tile[32][kPitch];
  const int tx = int(threadIdx.x), ty = int(threadIdx.y);
  for (int64_t t = blockIdx.x; t < g.tiles; t += gridDim.x) {
    const int64_t t2 = div_fast(t, g.tiles_b), tb = t - t2 * g.tiles_b;
    int64_t rem = div_fast(t2, g.tiles_a);
    const int64_t ta = t2 - rem * g.tiles_a;
    int64_t so = 0, dof = 0;
#pragma unroll
    for (int k = kMaxDims - 1; k >= 0; --k) {
      if (k < g.outer.ndim) {
        const int64_t q = div_fast(rem, g.outer.shape[k]);
        const int64_t c = rem - q * g.outer.shape[k];
        rem = q;
        so += c * g.outer.src_stride[k];
        dof += c * g.outer.dst_stride[k];
      }
    }
    const int64_t a0 = ta * 32, b0 = tb * 32;
#pragma unroll
    for (int j = 0; j < 32; j += 8) {
      const int64_t a = a0 + tx, b = b0 + ty + j;
      if (a < g.na && b < g.nb) tile[ty + j][tx] = convert<D>(src[so + a + b * g.src_b]);
    }
    __syncthreads();
#pragma unroll
    for (int j = 0; j < 32; j += 8) {
      const int64_t a = a0 + ty + j, b = b0 + tx;
      if (a < g.na && b < g.nb) dst[dof + a * g.dst_a + b] = tile[tx][ty + j];
    }
    __syncthreads();  // the tile is refilled on the next iteration
  }
}

template <typename T>
struct AddBroadcastOp {
  const T* a;
  const T* b;
  int64_t nb;
  T* out;
  template <int W>  // W > 1 needs nb % W == 0, so a pack never wraps around b
  __device__ __forceinline__ void apply(int64_t i) const {
    const int64_t j = i - div_fast(i, nb) * nb;
    const Pack<T, W> va = load_pack<W>(a + i), vb = load_pack<W>(b + j);
    Pack<T, W> r;
#pragma unroll
    for (int k = 0; k < W; ++k) r.v[k] = from_f<T>(to_f(va.v[k]) + to_f(vb.v[k]));
    store_pack<W>(out + i, r);
  }
};

template <typename T>
struct AddPerPlaneOp {
  const T* x;
  const T* b;
  int64_t nb, hw;
  T* out;
  template <int W>  // W > 1 needs hw % W == 0, so a pack stays within one plane
  __device__ __forceinline__ void apply(int64_t i) const {
    const int64_t p = div_fast(i, hw);
    const float bv = to_f(b[p - div_fast(p, nb) * nb]);
    const Pack<T, W> v = load_pack<W>(x + i);
    Pack<T, W> r;
#pragma unroll
    for (int k = 0; k < W; ++k) r.v[k] = from_f<T>(to_f(v.v[k]) + bv);
    store_pack<W>(out + i, r);
  }
};

// Channels last: out[s, p, ch] = x[s, p, ch] + b[s, ch] over `per_sample` = hw * c values a sample.
template <typename T>
struct AddPerChannelLastOp {
  const T* x;
  const T* b;  // [samples, c]
  int64_t c, per_sample;
  T* out;
  template <int W>  // W > 1 needs c % W == 0, so a pack stays within one pixel
  __device__ __forceinline__ void apply(int64_t i) const {
    const int64_t s = div_fast(i, per_sample);
    const int64_t ch = (i - s * per_sample) - div_fast(i - s * per_sample, c) * c;
    const T* bs = b + s * c + ch;
    const Pack<T, W> v = load_pack<W>(x + i);
    Pack<T, W> r;
#pragma unroll
    for (int k = 0; k < W; ++k) r.v[k] = from_f<T>(to_f(v.v[k]) + to_f(bs[k]));
    store_pack<W>(out + i, r);
  }
};

template <typename T, Act A>
struct ActOp {
  const T* x;
  T* out;
  template <int W>
  __device__ __forceinline__ void apply(int64_t i) const {
    const Pack<T, W> v = load_pack<W>(x + i);
    Pack<T, W> r;
#pragma unroll
    for (int k = 0; k < W; ++k) r.v[k] = from_f<T>(act_f<A>(to_f(v.v[k])));
    store_pack<W>(out + i, r);
  }
};

template <typename T>
struct GegluOp {
  const T* x;
  int64_t inner;
  T* out;
  template <int W>  // W > 1 needs inner % W == 0
  __device__ __forceinline__ void apply(int64_t i) const {
    const int64_t r = div_fast(i, inner);
    const T* h = x + i + r * inner;  // x + r * 2 * inner + (i - r * inner)
    const Pack<T, W> vh = load_pack<W>(h), vg = load_pack<W>(h + inner);
    Pack<T, W> o;
#pragma unroll
    for (int k = 0; k < W; ++k) o.v[k] = from_f<T>(to_f(vh.v[k]) * gelu_erf(to_f(vg.v[k])));
    store_pack<W>(out + i, o);
  }
};

// Rows of `row` raw elements (E: an unsigned word of the element size) gathered by id.
template <typename E>
struct EmbeddingOp {
  const E* weight;
  const int32_t* ids;
  int64_t row;
  E* out;
  template <int W>  // W > 1 needs row % W == 0
  __device__ __forceinline__ void apply(int64_t i) const {
    const int64_t r = div_fast(i, row);
    store_pack<W>(out + i, load_pack<W>(weight + int64_t(ids[r]) * row + (i - r * row)));
  }
};

// One warp an output row (8 rows a block), so the row's source is found once; lanes walk the
// columns. Elements are raw words (E) of the element size.
template <typename E>
struct UpsampleArgs {
  const E* x;
  int64_t nc, h, w, oh, ow;  // h, w, ow < 2^31 (checked by the launcher)
  float sy, sx;              // in / out, in f32 exactly as the CPU kernel (and PyTorch) compute it
  E* out;
};

template <typename E>
__global__ void __launch_bounds__(256) upsample_nearest_kernel(UpsampleArgs<E> a) {
  const int lane = int(threadIdx.x) % 32;
  const int64_t rows = a.nc * a.oh;
  const int wmax = int(a.w) - 1, ow = int(a.ow);
  for (int64_t r = int64_t(blockIdx.x) * 8 + int(threadIdx.x) / 32; r < rows; r += int64_t(gridDim.x) * 8) {
    const int64_t p = div_fast(r, a.oh), oy = r - p * a.oh;
    const int64_t iy = min(int64_t(float(oy) * a.sy), a.h - 1);
    const E* src = a.x + (p * a.h + iy) * a.w;
    E* dst = a.out + r * a.ow;
    // float(ox) * sx < w, so the truncation fits an int.
    for (int ox = lane; ox < ow; ox += 32) dst[ox] = src[min(int(float(ox) * a.sx), wmax)];
  }
}

// Channels last: out[s, oy, ox, :] = x[s, iy, ix, :], one output element (or a pack of W
// channels) a thread, so reads and writes both run along the channels.
template <typename E>
struct UpsampleChannelsLastOp {
  const E* x;
  int64_t c, h, w, oh, ow;
  float sy, sx;
  E* out;
  template <int W>  // W > 1 needs c % W == 0
  __device__ __forceinline__ void apply(int64_t i) const {
    const int64_t pix = div_fast(i, c), ch = i - pix * c;
    const int64_t r = div_fast(pix, ow), ox = pix - r * ow;
    const int64_t s = div_fast(r, oh), oy = r - s * oh;
    const int64_t iy = min(int64_t(float(oy) * sy), h - 1), ix = min(int64_t(float(ox) * sx), w - 1);
    store_pack<W>(out + i, load_pack<W>(x + ((s * h + iy) * w + ix) * c + ch));
  }
};

template <typename T>
struct FillOp {
  T* out;
  float value;
  template <int W>
  __device__ __forceinline__ void apply(int64_t i) const {
    Pack<T, W> r;
#pragma unroll
    for (int k = 0; k < W; ++k) r.v[k] = from_f<T>(value);
    store_pack<W>(out + i, r);
  }
};

// ---------------------------------------------------------------------------------------------
// Row kernels. A team of kTeam threads owns a row: a warp (kTeam == 32, four rows per block of
// 128 threads) or a block of kTeam threads. The row is read in packs of P elements (P > 1 when
// the row length and the pointers allow 16-byte accesses: with 2-byte scalar loads a warp moves
// too few bytes a load to keep enough memory traffic in flight); thread t caches packs
// t + k * kTeam, k < K, so a row of up to kTeam * K * P values is read once. K == 0 is the
// fallback for longer rows, which re-reads x from global memory (L2) on every pass.

template <int kTeam>
constexpr int kTeamBlock = kTeam == 32 ? 128 : kTeam;  // block size for a team of kTeam

template <typename T>
struct LayerNormArgs {
  const T* x;
  const T* gamma;
  const T* beta;
  int64_t rows, dim;  // dim % P == 0
  float eps;
  T* out;
};

// y = (v - mean) * inv * gamma + beta for one pack at element index i (v holds x - pivot).
template <int P, typename T>
__device__ __forceinline__ void layer_norm_store(const LayerNormArgs<T>& a, T* y, int64_t i, const float* v, float mean,
                                                 float inv) {
  Pack<T, P> g, b, o;
  if (a.gamma) g = load_pack<P>(a.gamma + i);
  if (a.beta) b = load_pack<P>(a.beta + i);
#pragma unroll
  for (int j = 0; j < P; ++j) {
    float r = (v[j] - mean) * inv;
    if (a.gamma) r *= to_f(g.v[j]);
    if (a.beta) r += to_f(b.v[j]);
    o.v[j] = from_f<T>(r);
  }
  store_pack<P>(y + i, o);
}

template <typename T, int kTeam, int K, int P>
__global__ void __launch_bounds__(kTeamBlock<kTeam>) layer_norm_kernel(LayerNormArgs<T> a) {
  constexpr int kRowsPerBlock = kTeamBlock<kTeam> / kTeam;
  __shared__ float red[32];
  const int t = int(threadIdx.x) % kTeam;
  const int64_t first = int64_t(blockIdx.x) * kRowsPerBlock + int(threadIdx.x) / kTeam;
  const int64_t step = int64_t(gridDim.x) * kRowsPerBlock;
  const int64_t dim = a.dim;
  const float inv_dim = recip_ge1(float(dim));
  // Block teams: every thread runs the same rows, so the barriers in team_reduce line up.
  for (int64_t r = first; r < a.rows; r += step) {
    const T* x = a.x + r * dim;
    T* y = a.out + r * dim;
    // Two passes (mean, then centred variance) as PyTorch and the CPU kernel do, over x - x[0]
    // so that a large common offset costs no digits (see group_norm).
    const float pivot = to_f(x[0]);
    if constexpr (K > 0) {
      float v[K][P];  // x - pivot
      float s = 0.f;
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const int i = (t + k * kTeam) * P;
        Pack<T, P> p;
        if (i < dim) p = load_pack<P>(x + i);
#pragma unroll
        for (int j = 0; j < P; ++j) {
          v[k][j] = i < dim ? to_f(p.v[j]) - pivot : 0.f;
          s += v[k][j];
        }
      }
      const float mean = team_reduce<kTeam>(s, red, SumOp{}) * inv_dim;
      float q = 0.f;
#pragma unroll
      for (int k = 0; k < K; ++k) {
#pragma unroll
        for (int j = 0; j < P; ++j) {
          const float d = (t + k * kTeam) * P < dim ? v[k][j] - mean : 0.f;
          q += d * d;
        }
      }
      const float inv = inv_std(team_reduce<kTeam>(q, red, SumOp{}) * inv_dim + a.eps);
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const int i = (t + k * kTeam) * P;
        if (i < dim) layer_norm_store<P>(a, y, i, v[k], mean, inv);
      }
    } else {
      // Loops not unrolled: unrolled, they spilled on sm_86 and sm_89 (a ptxas quirk at 40 registers).
      float s = 0.f;
#pragma unroll 1
      for (int64_t i = int64_t(t) * P; i < dim; i += kTeam * P) {
        const Pack<T, P> p = load_pack<P>(x + i);
#pragma unroll
        for (int j = 0; j < P; ++j) s += to_f(p.v[j]) - pivot;
      }
      const float mean = team_reduce<kTeam>(s, red, SumOp{}) * inv_dim;
      float q = 0.f;
#pragma unroll 1
      for (int64_t i = int64_t(t) * P; i < dim; i += kTeam * P) {
        const Pack<T, P> p = load_pack<P>(x + i);
#pragma unroll
        for (int j = 0; j < P; ++j) {
          const float d = (to_f(p.v[j]) - pivot) - mean;
          q += d * d;
        }
      }
      const float inv = inv_std(team_reduce<kTeam>(q, red, SumOp{}) * inv_dim + a.eps);
#pragma unroll 1
      for (int64_t i = int64_t(t) * P; i < dim; i += kTeam * P) {
        const Pack<T, P> p = load_pack<P>(x + i);
        float v[P];
#pragma unroll
        for (int j = 0; j < P; ++j) v[j] = to_f(p.v[j]) - pivot;
        layer_norm_store<P>(a, y, i, v, mean, inv);
      }
    }
  }
}

template <typename Tin, typename Tout>
struct SoftmaxArgs {
  const Tin* x;
  int64_t rows, cols;  // cols % P == 0
  float scale;
  bool causal;
  int64_t rows_per_block;
  Tout* out;
};

template <typename Tin, typename Tout, int kTeam, int K, int P>
__global__ void __launch_bounds__(kTeamBlock<kTeam>) softmax_kernel(SoftmaxArgs<Tin, Tout> a) {
  constexpr int kRowsPerBlock = kTeamBlock<kTeam> / kTeam;
  __shared__ float red[32];
  const int t = int(threadIdx.x) % kTeam;
  const int64_t first = int64_t(blockIdx.x) * kRowsPerBlock + int(threadIdx.x) / kTeam;
  const int64_t step = int64_t(gridDim.x) * kRowsPerBlock;
  const int64_t cols = a.cols, rpb = a.rows_per_block;
  // r % rpb, kept up to date without dividing in the loop (a 64-bit division there is a call
  // that costs spills).
  int64_t rem = first - div_fast(first, rpb) * rpb;
  const int64_t step_rem = step - div_fast(step, rpb) * rpb;
  for (int64_t r = first; r < a.rows; r += step) {
    const Tin* x = a.x + r * cols;
    Tout* y = a.out + r * cols;
    // Columns [valid, cols) are masked: they count as -inf and are written as 0. (Packs that
    // straddle `valid` are still read whole; they lie inside the row.)
    const int64_t valid = a.causal ? min(cols, rem + 1) : cols;
    rem += step_rem;
    if (rem >= rpb) rem -= rpb;
    if constexpr (K > 0) {
      float v[K][P];
      float m = kNegInf;
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const int i = (t + k * kTeam) * P;
        Pack<Tin, P> p;
        if (i < valid) p = load_pack<P>(x + i);
#pragma unroll
        for (int j = 0; j < P; ++j) {
          v[k][j] = i + j < valid ? to_f(p.v[j]) * a.scale : kNegInf;
          m = fmaxf(m, v[k][j]);
        }
      }
      m = team_reduce<kTeam>(m, red, MaxOp{});
      if (m == kNegInf) m = 0.f;  // a fully masked row gives zeros, not NaN
      float s = 0.f;
#pragma unroll
      for (int k = 0; k < K; ++k) {
#pragma unroll
        for (int j = 0; j < P; ++j) {
          v[k][j] = expf(v[k][j] - m);  // exp(-inf) = 0 for the masked slots
          s += v[k][j];
        }
      }
      s = team_reduce<kTeam>(s, red, SumOp{});
      const float inv = s > 0.f ? recip_ge1(s) : 0.f;
#pragma unroll
      for (int k = 0; k < K; ++k) {
        const int i = (t + k * kTeam) * P;
        if (i < cols) {
          Pack<Tout, P> o;
#pragma unroll
          for (int j = 0; j < P; ++j) o.v[j] = from_f<Tout>(v[k][j] * inv);
          store_pack<P>(y + i, o);
        }
      }
    } else {
      // Online max and sum in one pass: s is the sum of exp(v - m) for this thread's m.
      float m = kNegInf, s = 0.f;
      for (int64_t i = int64_t(t) * P; i < valid; i += kTeam * P) {
        const Pack<Tin, P> p = load_pack<P>(x + i);
#pragma unroll
        for (int j = 0; j < P; ++j) {
          const float v = i + j < valid ? to_f(p.v[j]) * a.scale : kNegInf;
          if (v > m) {
            s = s * expf(m - v) + 1.f;
            m = v;
          } else if (m != kNegInf) {
            s += expf(v - m);
          }
        }
      }
      float mx = team_reduce<kTeam>(m, red, MaxOp{});
      if (mx == kNegInf) mx = 0.f;
      s = team_reduce<kTeam>(m == kNegInf ? 0.f : s * expf(m - mx), red, SumOp{});
      const float inv = s > 0.f ? recip_ge1(s) : 0.f;
      for (int64_t i = int64_t(t) * P; i < cols; i += kTeam * P) {
        Pack<Tout, P> o;
        if (i < valid) {
          const Pack<Tin, P> p = load_pack<P>(x + i);
#pragma unroll
          for (int j = 0; j < P; ++j)
            o.v[j] = from_f<Tout>(i + j < valid ? expf(to_f(p.v[j]) * a.scale - mx) * inv : 0.f);
        } else {
#pragma unroll
          for (int j = 0; j < P; ++j) o.v[j] = from_f<Tout>(0.f);
        }
        store_pack<P>(y + i, o);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Group norm. Each (sample, group) is a contiguous run of len = (c / groups) * hw values, cut
// into chunks of kGnChunk. gn_stats_kernel gives a chunk to a block, which holds it in
// registers and computes the chunk's exact two-pass mean and M2 (sum of squared deviations).
//  - len <= kGnChunk (one chunk a group): the same block then normalises from its registers and
//    writes the output (kFused): one read, one write, one launch.
//  - otherwise the chunk stats go to a workspace; gn_finalize_kernel (a warp a group) merges them
//    (Chan et al.: mean = sum(n_i mean_i) / n, M2 = sum(M2_i + n_i (mean_i - mean)^2), itself in
//    two passes) into per-(sample, channel) coefficients, and GnApplyOp normalises elementwise:
//    two reads and one write in all.
// Precision: every statistic is taken of x - p, p the group's first value (a pivot). That keeps
// f32 sums from losing the digits that matter when |mean| >> stddev (an f32 mean alone can be
// off by stddev * 1e-5 there), and the output is computed as ((x - p) - mean') * scale + beta
// rather than x * scale + shift, which would cancel the same way.
// Channels last (kCL: x is [n, hw, c]): a group's values are the same len = cg * hw values,
// taken pixel by pixel (element i is channel g*cg + i % cg of pixel i / cg), so the statistics
// and their chunking are the same; consecutive blocks take one chunk (one pixel range) of every
// group in turn, so the groups that share those pixels' cache lines read them together.

constexpr int kGnThreads = 256;
constexpr int kGnK = 16;
constexpr int64_t kGnChunk = int64_t(kGnThreads) * kGnK;

template <typename T>
struct GroupNormArgs {
  const T* x;
  const T* gamma;
  const T* beta;
  T* out;
  int64_t len, chunks, total;  // values a group, chunks a group, total chunks
  int64_t ngroups;             // samples * groups
  int64_t hw;
  int64_t groups, cg;
  float eps;
  bool silu;
  float* partial;  // [total][2]: chunk mean and M2 of x - pivot (unfused only)
};

// Where a (sample, group)'s values start: NCHW, a contiguous run; channels last, channel g*cg of
// the sample's first pixel.
template <bool kCL, typename T>
__device__ __forceinline__ int64_t gn_group_base(const GroupNormArgs<T>& a, int64_t grp) {
  if constexpr (kCL) {
    const int64_t sample = div_fast(grp, a.groups);
    return sample * a.hw * a.groups * a.cg + (grp - sample * a.groups) * a.cg;
  } else {
    return grp * a.len;
  }
}

// Offset of a group's value i from its base.
template <bool kCL, typename T>
__device__ __forceinline__ int64_t gn_offset(const GroupNormArgs<T>& a, int64_t i) {
  if constexpr (kCL) {
    const int64_t px = div_fast(i, a.cg);
    return px * a.groups * a.cg + (i - px * a.cg);
  } else {
    return i;
  }
}

template <typename T, bool kFused, bool kCL>
__global__ void __launch_bounds__(kGnThreads) gn_stats_kernel(GroupNormArgs<T> a) {
  __shared__ float red[32];
  const int t = int(threadIdx.x);
  for (int64_t b = blockIdx.x; b < a.total; b += gridDim.x) {
    // Fused: one chunk a group, so no division (whose 64-bit slow path cost a spill here).
    // NCHW walks a group's chunks in turn; channels last walks a chunk of every group in turn.
    int64_t grp = b, chunk = 0;
    if constexpr (!kFused) {
      if constexpr (kCL) {
        chunk = div_fast(b, a.ngroups);
        grp = b - chunk * a.ngroups;
      } else {
        grp = div_fast(b, a.chunks);
        chunk = b - grp * a.chunks;
      }
    }
    const int64_t start = chunk * kGnChunk;
    const int cnt = int(min(kGnChunk, a.len - start));
    const T* xg = a.x + gn_group_base<kCL>(a, grp);
    const float pivot = to_f(xg[0]);
    float v[kGnK];
    float s = 0.f;
#pragma unroll
    for (int k = 0; k < kGnK; ++k) {
      const int i = t + k * kGnThreads;
      v[k] = i < cnt ? to_f(xg[gn_offset<kCL>(a, start + i)]) - pivot : 0.f;
      s += v[k];
    }
    const float inv_cnt = recip_ge1(float(cnt));
    const float mean = team_reduce<kGnThreads>(s, red, SumOp{}) * inv_cnt;
    float q = 0.f;
#pragma unroll
    for (int k = 0; k < kGnK; ++k) {
      const float d = t + k * kGnThreads < cnt ? v[k] - mean : 0.f;
      q += d * d;
    }
    const float m2 = team_reduce<kGnThreads>(q, red, SumOp{});
    if constexpr (!kFused) {
      if (t == 0) {
        const int64_t slot = grp * a.chunks + chunk;  // the finalize kernel's order
        a.partial[2 * slot] = mean;
        a.partial[2 * slot + 1] = m2;
      }
    } else {
      // The chunk is the whole group (cnt == len <= kGnChunk, so 32-bit channel arithmetic).
      const float inv = inv_std(m2 * inv_cnt + a.eps);
      const int c0 = int(grp - div_fast(grp, a.groups) * a.groups) * int(a.cg);
      const int hw = int(a.hw), cg = int(a.cg);
      T* y = a.out + gn_group_base<kCL>(a, grp);
#pragma unroll
      for (int k = 0; k < kGnK; ++k) {
        const int i = t + k * kGnThreads;
        if (i < cnt) {
          const int ch = c0 + (kCL ? i % cg : i / hw);
          const float ga = a.gamma ? to_f(a.gamma[ch]) : 1.f;
          const float be = a.beta ? to_f(a.beta[ch]) : 0.f;
          float o = (v[k] - mean) * (inv * ga) + be;
          if (a.silu) o = silu_f(o);
          y[gn_offset<kCL>(a, i)] = from_f<T>(o);
        }
      }
    }
  }
}

// Per (sample, channel): y = ((x - pivot) - mean) * scale + beta.
struct alignas(16) GnCoef {
  float pivot, mean, scale, beta;
};

// One warp a (sample, group): merges the chunk stats and writes the GnCoef of each of the
// group's channels into table[sample * c + channel].
template <typename T, bool kCL>
__global__ void __launch_bounds__(128) gn_finalize_kernel(GroupNormArgs<T> a, int64_t ngroups, GnCoef* table) {
  constexpr int kWarps = 128 / 32;
  const int lane = int(threadIdx.x) % 32;
  const int64_t first = int64_t(blockIdx.x) * kWarps + int(threadIdx.x) / 32;
  const float inv_len = recip_ge1(float(a.len));
  for (int64_t g = first; g < ngroups; g += int64_t(gridDim.x) * kWarps) {
    const float* p = a.partial + 2 * g * a.chunks;
    const auto count = [&](int64_t j) { return float(j == a.chunks - 1 ? a.len - j * kGnChunk : kGnChunk); };
    float s = 0.f;
    for (int64_t j = lane; j < a.chunks; j += 32) s += count(j) * p[2 * j];
    const float mean = team_reduce<32>(s, nullptr, SumOp{}) * inv_len;
    float q = 0.f;
    for (int64_t j = lane; j < a.chunks; j += 32) {
      const float d = p[2 * j] - mean;
      q += p[2 * j + 1] + count(j) * d * d;
    }
    const float inv = inv_std(team_reduce<32>(q, nullptr, SumOp{}) * inv_len + a.eps);
    const float pivot = to_f(a.x[gn_group_base<kCL>(a, g)]);
    const int64_t sample = div_fast(g, a.groups);
    const int64_t c0 = (g - sample * a.groups) * a.cg;
    for (int64_t ch = lane; ch < a.cg; ch += 32) {
      const float ga = a.gamma ? to_f(a.gamma[c0 + ch]) : 1.f;
      const float be = a.beta ? to_f(a.beta[c0 + ch]) : 0.f;
      table[sample * a.groups * a.cg + c0 + ch] = GnCoef{pivot, mean, inv * ga, be};
    }
  }
}

template <typename T>
struct GnApplyOp {
  const T* x;
  const GnCoef* table;  // per plane (sample * c + channel)
  int64_t hw;
  bool silu;
  T* out;
  template <int W>  // W > 1 needs hw % W == 0
  __device__ __forceinline__ void apply(int64_t i) const {
    const GnCoef cf = table[div_fast(i, hw)];
    const Pack<T, W> v = load_pack<W>(x + i);
    Pack<T, W> r;
#pragma unroll
    for (int k = 0; k < W; ++k) {
      float o = ((to_f(v.v[k]) - cf.pivot) - cf.mean) * cf.scale + cf.beta;
      if (silu) o = silu_f(o);
      r.v[k] = from_f<T>(o);
    }
    store_pack<W>(out + i, r);
  }
};

// Channels last: element i is channel i % c of pixel i / c; the table is per (sample, channel).
template <typename T>
struct GnApplyChannelsLastOp {
  const T* x;
  const GnCoef* table;
  int64_t c, hw;
  bool silu;
  T* out;
  template <int W>  // W > 1 needs c % W == 0
  __device__ __forceinline__ void apply(int64_t i) const {
    const int64_t px = div_fast(i, c), ch = i - px * c;
    const GnCoef* cf = table + div_fast(px, hw) * c + ch;
    const Pack<T, W> v = load_pack<W>(x + i);
    Pack<T, W> r;
#pragma unroll
    for (int k = 0; k < W; ++k) {
      float o = ((to_f(v.v[k]) - cf[k].pivot) - cf[k].mean) * cf[k].scale + cf[k].beta;
      if (silu) o = silu_f(o);
      r.v[k] = from_f<T>(o);
    }
    store_pack<W>(out + i, r);
  }
};

// ---------------------------------------------------------------------------------------------
// Host-side launch helpers

template <typename T, int kTeam, int K, int P>
void launch_layer_norm(const LayerNormArgs<T>& a, cudaStream_t stream) {
  constexpr int kBlock = kTeamBlock<kTeam>;
  layer_norm_kernel<T, kTeam, K, P><<<blocks_for(a.rows, kBlock / kTeam), kBlock, 0, stream>>>(a);
  check_launch("layer_norm");
}

template <typename Tin, typename Tout, int kTeam, int K, int P>
void launch_softmax(const SoftmaxArgs<Tin, Tout>& a, cudaStream_t stream) {
  constexpr int kBlock = kTeamBlock<kTeam>;
  softmax_kernel<Tin, Tout, kTeam, K, P><<<blocks_for(a.rows, kBlock / kTeam), kBlock, 0, stream>>>(a);
  check_launch("softmax_rows");
}

// Calls fn.template operator()<kTeam, K>() for the team shape that fits a row of `packs` packs of
// P, caching up to 16 values a thread: a warp (K = the smallest power of two that holds the row),
// then a block of 128, 256 or 512 threads (K = 16 / P), else the uncached fallback (K = 0) on a
// block of 512. (On an H200, f32 -> f16 softmax over 4096 columns ran at 2.8 TB/s with 16 values
// a thread against 2.2 with 8.) Scalar rows (P == 1) cache 8 values a thread in block teams:
// their per-element predicates and addresses cost more registers, and 16 spilled on sm_86.
template <int P, typename F>
void with_row_team(int64_t packs, F&& fn) {
  constexpr int kWarpK = 16 / P, kBlockK = P == 1 ? 8 : 16 / P;
  static_assert(kBlockK >= 1);
  if (packs <= 32) return fn.template operator()<32, 1>();
  if constexpr (kWarpK >= 2) {
    if (packs <= 64) return fn.template operator()<32, 2>();
  }
  if constexpr (kWarpK >= 4) {
    if (packs <= 128) return fn.template operator()<32, 4>();
  }
  if constexpr (kWarpK >= 8) {
    if (packs <= 256) return fn.template operator()<32, 8>();
  }
  if constexpr (kWarpK >= 16) {
    if (packs <= 512) return fn.template operator()<32, 16>();
  }
  if (packs <= 128 * kBlockK) return fn.template operator()<128, kBlockK>();
  if (packs <= 256 * kBlockK) return fn.template operator()<256, kBlockK>();
  if (packs <= 512 * kBlockK) return fn.template operator()<512, kBlockK>();
  return fn.template operator()<512, 0>();
}

// Picks the pack width for row kernels: W when every row starts 16-byte aligned, else 1.
template <int W, typename F>
void with_row_pack(bool vec, int64_t len, F&& fn) {
  if (vec && W > 1)
    return with_row_team<W>((len + W - 1) / W, [&]<int kTeam, int K>() { fn.template operator()<kTeam, K, W>(); });
  with_row_team<1>(len, [&]<int kTeam, int K>() { fn.template operator()<kTeam, K, 1>(); });
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Public entry points

void copy_strided(const void* src, DType src_dt, const StridedDesc& src_desc, void* dst, DType dst_dt,
                  const StridedDesc& dst_desc, cudaStream_t stream) {
  SD_CHECK_ARG(src_desc.ndim == dst_desc.ndim && src_desc.ndim >= 0 && src_desc.ndim <= kMaxDims,
               "copy_strided: src and dst need the same rank (at most " + std::to_string(kMaxDims) + ")");
  // Collapse: drop size-1 dims, then merge a dim into its inner neighbour where both views step
  // over it contiguously (outer stride == inner shape * inner stride). A plain contiguous copy
  // becomes a single dim of stride 1 (or none, for one element).
  CopyGeom g;
  for (int k = 0; k < src_desc.ndim; ++k) {
    const int64_t n = src_desc.shape[k];
    SD_CHECK_ARG(n == dst_desc.shape[k] && n >= 0, "copy_strided: src and dst shapes differ");
    if (n == 0) return;
    if (n == 1) continue;
    const int64_t ss = src_desc.stride[k], ds = dst_desc.stride[k];
    if (g.ndim > 0 && g.src_stride[g.ndim - 1] == n * ss && g.dst_stride[g.ndim - 1] == n * ds) {
      g.shape[g.ndim - 1] *= n;
      g.src_stride[g.ndim - 1] = ss;
      g.dst_stride[g.ndim - 1] = ds;
    } else {
      g.shape[g.ndim] = n;
      g.src_stride[g.ndim] = ss;
      g.dst_stride[g.ndim] = ds;
      ++g.ndim;
    }
  }
  const bool contiguous = g.ndim == 0 || (g.ndim == 1 && g.src_stride[0] == 1 && g.dst_stride[0] == 1);
  const int64_t numel = g.ndim == 0 ? 1 : g.shape[0];  // only used when contiguous

  const auto run = [&](auto s_tag, auto d_tag) {
    using S = typename decltype(s_tag)::type;
    using D = typename decltype(d_tag)::type;
    const S* s = static_cast<const S*>(src);
    D* d = static_cast<D*>(dst);
    constexpr int W = kPackWidth<S, D>;
    const bool ptrs_aligned = aligned(s, W * sizeof(S)) && aligned(d, W * sizeof(D));
    if (contiguous) {
      launch_elementwise<W>(numel, ptrs_aligned, CastOp<S, D>{s, d}, stream, "copy_strided");
      return;
    }
    int64_t n = 1;
    for (int k = 0; k < g.ndim; ++k) n *= g.shape[k];
    const int last = g.ndim - 1;
    if (g.src_stride[last] == 1 && g.dst_stride[last] == 1) {
      // Both views contiguous along the last dim (permutes that keep it, concat windows): move
      // packs of W when every pack lands aligned.
      bool vec = ptrs_aligned && g.shape[last] % W == 0;
      for (int k = 0; k < last; ++k) vec = vec && g.src_stride[k] % W == 0 && g.dst_stride[k] % W == 0;
      if (vec) {
        CopyGeom gv = g;
        gv.shape[last] /= W;
        gv.src_stride[last] = gv.dst_stride[last] = W;
        launch_elementwise<1>(n / W, false, StridedCopyOp<S, D, W>{s, d, gv}, stream, "copy_strided");
        return;
      }
    } else if (g.dst_stride[last] == 1) {
      // dst contiguous along the last dim, src along another one (A) of 16 or more: transpose.
      for (int a = 0; a < last; ++a) {
        if (g.src_stride[a] != 1 || g.shape[a] < 16 || g.shape[last] < 16) continue;
        TransposeGeom t;
        for (int k = 0; k < last; ++k) {
          if (k == a) continue;
          t.outer.shape[t.outer.ndim] = g.shape[k];
          t.outer.src_stride[t.outer.ndim] = g.src_stride[k];
          t.outer.dst_stride[t.outer.ndim] = g.dst_stride[k];
          ++t.outer.ndim;
        }
        t.na = g.shape[a];
        t.nb = g.shape[last];
        t.src_b = g.src_stride[last];
        t.dst_a = g.dst_stride[a];
        t.tiles_a = (t.na + 31) / 32;
        t.tiles_b = (t.nb + 31) / 32;
        t.tiles = n / (t.na * t.nb) * t.tiles_a * t.tiles_b;
        transpose_copy_kernel<S, D><<<blocks_for(t.tiles, 1), dim3(32, 8), 0, stream>>>(s, d, t);
        check_launch("copy_strided");
        return;
      }
    }
    launch_elementwise<1>(n, false, StridedCopyOp<S, D, 1>{s, d, g}, stream, "copy_strided");
  };

  if (src_dt == dst_dt) {
    // Same type: raw words of the element size (bit-exact, any dtype).
    dispatch_raw(dtype_size(src_dt), "copy_strided", [&](auto tag) { run(tag, tag); });
    return;
  }
  if (!(src_dt == DType::F32 || src_dt == DType::F16 || src_dt == DType::BF16) ||
      !(dst_dt == DType::F32 || dst_dt == DType::F16 || dst_dt == DType::BF16))
    throw UnsupportedError(std::string("copy_strided: cannot convert ") + dtype_name(src_dt) + " to " +
                           dtype_name(dst_dt) + " on CUDA");
  dispatch_float(src_dt, "copy_strided",
                 [&](auto s_tag) { dispatch_float(dst_dt, "copy_strided", [&](auto d_tag) { run(s_tag, d_tag); }); });
}

void add_broadcast(const void* a, int64_t na, const void* b, int64_t nb, void* out, DType dt, cudaStream_t stream) {
  if (na == 0) return;
  SD_CHECK_ARG(nb > 0, "add_broadcast: empty b");
  dispatch_float(dt, "add_broadcast", [&](auto tag) {
    using T = typename decltype(tag)::type;
    constexpr int W = kPackWidth<T>;
    const bool vec = nb % W == 0 && aligned(a, 16) && aligned(b, 16) && aligned(out, 16);
    launch_elementwise<W>(
        na, vec, AddBroadcastOp<T>{static_cast<const T*>(a), static_cast<const T*>(b), nb, static_cast<T*>(out)},
        stream, "add_broadcast");
  });
}

void add_per_plane(const void* x, const void* b, int64_t planes, int64_t nb, int64_t hw, void* out, DType dt,
                   cudaStream_t stream) {
  if (planes == 0 || hw == 0) return;
  SD_CHECK_ARG(nb > 0, "add_per_plane: empty bias");
  dispatch_float(dt, "add_per_plane", [&](auto tag) {
    using T = typename decltype(tag)::type;
    constexpr int W = kPackWidth<T>;
    const bool vec = hw % W == 0 && aligned(x, 16) && aligned(out, 16);
    launch_elementwise<W>(
        planes * hw, vec,
        AddPerPlaneOp<T>{static_cast<const T*>(x), static_cast<const T*>(b), nb, hw, static_cast<T*>(out)}, stream,
        "add_per_plane");
  });
}

void add_per_channel_last(const void* x, const void* b, int64_t n, int64_t hw, int64_t c, void* out, DType dt,
                          cudaStream_t stream) {
  if (n == 0 || hw == 0 || c == 0) return;
  dispatch_float(dt, "add_per_channel_last", [&](auto tag) {
    using T = typename decltype(tag)::type;
    constexpr int W = kPackWidth<T>;
    const bool vec = c % W == 0 && aligned(x, 16) && aligned(out, 16);
    launch_elementwise<W>(
        n * hw * c, vec,
        AddPerChannelLastOp<T>{static_cast<const T*>(x), static_cast<const T*>(b), c, hw * c, static_cast<T*>(out)},
        stream, "add_per_channel_last");
  });
}

void activation(const void* x, int64_t n, Act act, void* out, DType dt, cudaStream_t stream) {
  if (n == 0) return;
  dispatch_float(dt, "activation", [&](auto tag) {
    using T = typename decltype(tag)::type;
    constexpr int W = kPackWidth<T>;
    const bool vec = aligned(x, 16) && aligned(out, 16);
    const T* xt = static_cast<const T*>(x);
    T* o = static_cast<T*>(out);
    switch (act) {
      case Act::GELU:
        return launch_elementwise<W>(n, vec, ActOp<T, Act::GELU>{xt, o}, stream, "activation");
      case Act::GELUTanh:
        return launch_elementwise<W>(n, vec, ActOp<T, Act::GELUTanh>{xt, o}, stream, "activation");
      case Act::QuickGELU:
        return launch_elementwise<W>(n, vec, ActOp<T, Act::QuickGELU>{xt, o}, stream, "activation");
      case Act::SiLU:
        return launch_elementwise<W>(n, vec, ActOp<T, Act::SiLU>{xt, o}, stream, "activation");
    }
    throw InvalidArgument("activation: unknown activation");
  });
}

void geglu(const void* x, int64_t rows, int64_t inner, void* out, DType dt, cudaStream_t stream) {
  if (rows == 0 || inner == 0) return;
  dispatch_float(dt, "geglu", [&](auto tag) {
    using T = typename decltype(tag)::type;
    constexpr int W = kPackWidth<T>;
    const bool vec = inner % W == 0 && aligned(x, 16) && aligned(out, 16);
    launch_elementwise<W>(rows * inner, vec, GegluOp<T>{static_cast<const T*>(x), inner, static_cast<T*>(out)}, stream,
                          "geglu");
  });
}

void layer_norm(const void* x, const void* gamma, const void* beta, int64_t rows, int64_t dim, float eps, void* out,
                DType dt, cudaStream_t stream) {
  if (rows == 0 || dim == 0) return;
  dispatch_float(dt, "layer_norm", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const LayerNormArgs<T> a{
        static_cast<const T*>(x), static_cast<const T*>(gamma), static_cast<const T*>(beta), rows, dim, eps,
        static_cast<T*>(out)};
    constexpr int W = kPackWidth<T>;
    const bool vec = dim % W == 0 && aligned(x, 16) && aligned(out, 16) && aligned(gamma, 16) && aligned(beta, 16);
    with_row_pack<W>(vec, dim, [&]<int kTeam, int K, int P>() { launch_layer_norm<T, kTeam, K, P>(a, stream); });
  });
}

void group_norm(const void* x, const void* gamma, const void* beta, int64_t n, int64_t c, int64_t hw, int64_t groups,
                float eps, bool silu, void* out, DType dt, cudaStream_t stream, bool channels_last) {
  if (n == 0 || c == 0 || hw == 0) return;
  SD_CHECK_ARG(groups > 0 && c % groups == 0, "group_norm: channels must split evenly into groups");
  dispatch_float(dt, "group_norm", [&](auto tag) {
    using T = typename decltype(tag)::type;
    const int64_t cg = c / groups, len = cg * hw, ngroups = n * groups;
    const int64_t chunks = (len + kGnChunk - 1) / kGnChunk;
    GroupNormArgs<T> a{static_cast<const T*>(x),
                       static_cast<const T*>(gamma),
                       static_cast<const T*>(beta),
                       static_cast<T*>(out),
                       len,
                       chunks,
                       ngroups * chunks,
                       ngroups,
                       hw,
                       groups,
                       cg,
                       eps,
                       silu,
                       nullptr};
    const auto run = [&]<bool kCL>() {
      if (chunks == 1) {
        gn_stats_kernel<T, true, kCL><<<blocks_for(a.total, 1), kGnThreads, 0, stream>>>(a);
        check_launch("group_norm");
        return;
      }
      // Workspace: the coefficient table, then the chunk stats. It goes back to the caching
      // allocator when this function returns, before the kernels ran; that is safe because the
      // allocator's next user queues its work behind ours on the same stream (cuda/runtime.h).
      int device = 0;
      SD_CUDA_CHECK(cudaGetDevice(&device));
      const std::shared_ptr<void> ws =
          allocate(size_t(n * c) * sizeof(GnCoef) + size_t(2 * a.total) * sizeof(float), device);
      GnCoef* table = static_cast<GnCoef*>(ws.get());
      a.partial = reinterpret_cast<float*>(table + n * c);

      gn_stats_kernel<T, false, kCL><<<blocks_for(a.total, 1), kGnThreads, 0, stream>>>(a);
      check_launch("group_norm");
      gn_finalize_kernel<T, kCL><<<blocks_for(ngroups, 128 / 32), 128, 0, stream>>>(a, ngroups, table);
      check_launch("group_norm");
      constexpr int W = kPackWidth<T>;
      if constexpr (kCL) {
        const bool vec = c % W == 0 && aligned(x, 16) && aligned(out, 16);
        launch_elementwise<W>(n * c * hw, vec, GnApplyChannelsLastOp<T>{a.x, table, c, hw, silu, a.out}, stream,
                              "group_norm");
      } else {
        const bool vec = hw % W == 0 && aligned(x, 16) && aligned(out, 16);
        launch_elementwise<W>(n * c * hw, vec, GnApplyOp<T>{a.x, table, hw, silu, a.out}, stream, "group_norm");
      }
    };
    if (channels_last) {
      run.template operator()<true>();
    } else {
      run.template operator()<false>();
    }
  });
}

void softmax_rows(const void* x, DType x_dt, int64_t rows, int64_t cols, float scale, bool causal,
                  int64_t rows_per_block, void* out, DType out_dt, cudaStream_t stream) {
  if (rows == 0 || cols == 0) return;
  SD_CHECK_ARG(!causal || rows_per_block > 0, "softmax_rows: causal needs rows_per_block > 0");
  dispatch_float(x_dt, "softmax_rows", [&](auto in_tag) {
    dispatch_float(out_dt, "softmax_rows", [&](auto out_tag) {
      using Tin = typename decltype(in_tag)::type;
      using Tout = typename decltype(out_tag)::type;
      const SoftmaxArgs<Tin, Tout> a{static_cast<const Tin*>(x), rows, cols, scale, causal, causal ? rows_per_block : 1,
                                     static_cast<Tout*>(out)};
      constexpr int W = kPackWidth<Tin, Tout>;
      const bool vec = cols % W == 0 && aligned(x, W * sizeof(Tin)) && aligned(out, W * sizeof(Tout));
      with_row_pack<W>(vec, cols,
                       [&]<int kTeam, int K, int P>() { launch_softmax<Tin, Tout, kTeam, K, P>(a, stream); });
    });
  });
}

void embedding(const void* weight, int64_t dim, const int32_t* ids, int64_t n, void* out, DType dt,
               cudaStream_t stream) {
  if (n == 0 || dim == 0) return;
  // A raw gather: copy the rows as unsigned words of the element size.
  dispatch_float_raw(dt, "embedding", [&](auto raw) {
    using E = typename decltype(raw)::type;
    constexpr int W = kPackWidth<E>;
    const bool vec = dim % W == 0 && aligned(weight, 16) && aligned(out, 16);
    launch_elementwise<W>(n * dim, vec, EmbeddingOp<E>{static_cast<const E*>(weight), ids, dim, static_cast<E*>(out)},
                          stream, "embedding");
  });
}

void upsample_nearest(const void* x, int64_t nc, int64_t h, int64_t w, int64_t oh, int64_t ow, void* out, DType dt,
                      cudaStream_t stream) {
  if (nc == 0 || oh == 0 || ow == 0) return;
  SD_CHECK_ARG(h > 0 && w > 0, "upsample_nearest: empty input planes");
  SD_CHECK_ARG(w <= INT32_MAX && ow <= INT32_MAX, "upsample_nearest: rows too long");
  dispatch_float_raw(dt, "upsample_nearest", [&](auto raw) {
    using E = typename decltype(raw)::type;
    const UpsampleArgs<E> a{static_cast<const E*>(x), nc, h, w, oh, ow, float(h) / float(oh), float(w) / float(ow),
                            static_cast<E*>(out)};
    upsample_nearest_kernel<E><<<blocks_for(nc * oh, 8), 256, 0, stream>>>(a);
    check_launch("upsample_nearest");
  });
}

void upsample_nearest_channels_last(const void* x, int64_t n, int64_t c, int64_t h, int64_t w, int64_t oh, int64_t ow,
                                    void* out, DType dt, cudaStream_t stream) {
  if (n == 0 || c == 0 || oh == 0 || ow == 0) return;
  SD_CHECK_ARG(h > 0 && w > 0, "upsample_nearest: empty input planes");
  dispatch_float_raw(dt, "upsample_nearest", [&](auto raw) {
    using E = typename decltype(raw)::type;
    constexpr int W = kPackWidth<E>;
    const bool vec = c % W == 0 && aligned(x, 16) && aligned(out, 16);
    launch_elementwise<W>(n * oh * ow * c, vec,
                          UpsampleChannelsLastOp<E>{static_cast<const E*>(x), c, h, w, oh, ow, float(h) / float(oh),
                                                    float(w) / float(ow), static_cast<E*>(out)},
                          stream, "upsample_nearest");
  });
}

void fill(void* out, int64_t n, float value, DType dt, cudaStream_t stream) {
  if (n == 0) return;
  dispatch_float(dt, "fill", [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch_elementwise<kPackWidth<T>>(n, aligned(out, 16), FillOp<T>{static_cast<T*>(out), value}, stream, "fill");
  });
}

}  // namespace sdserve::cuda
