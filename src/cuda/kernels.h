// Our own CUDA kernels behind the ops in src/ops (src/cuda/kernels.cu). Like src/cpu/kernels.h:
// the op has already validated shapes and devices; pointers are device pointers; unless a
// comment says otherwise every operand is contiguous. `dt` is the storage type of every
// floating-point operand (F32, F16 or BF16); arithmetic is f32 (reductions too). Each function
// launches on `stream` and checks the launch (cuda::check_launch). n == 0 launches nothing.
#pragma once
#include <cstdint>

#include "core/dtype.h"

struct CUstream_st;
using cudaStream_t = CUstream_st*;

namespace sdserve::cuda {

constexpr int kMaxDims = 8;

// A strided view: element (i0..i{ndim-1}) lives at data + sum(ik * stride[k]) elements.
struct StridedDesc {
  int ndim = 0;
  int64_t shape[kMaxDims] = {};
  int64_t stride[kMaxDims] = {};
};

// dst (strided, element type dst_dt) = src (strided, element type src_dt), element by element
// over `shape` (shared by both). Converts between F32/F16/BF16 (round to nearest even) and copies
// I32/I64 unchanged (src_dt == dst_dt required for non-float types). Covers contiguous(), to(dtype),
// concat (a strided dst window) and permutes.
void copy_strided(const void* src, DType src_dt, const StridedDesc& src_desc, void* dst, DType dst_dt,
                  const StridedDesc& dst_desc, cudaStream_t stream);

// out[i] = a[i] + b[i % nb]
void add_broadcast(const void* a, int64_t na, const void* b, int64_t nb, void* out, DType dt, cudaStream_t stream);
// out[p, i] = x[p, i] + b[p % nb] for planes p of hw elements (NCHW bias: nb = C, planes = N*C).
void add_per_plane(const void* x, const void* b, int64_t planes, int64_t nb, int64_t hw, void* out, DType dt,
                   cudaStream_t stream);

// Channels last: out[s, p, ch] = x[s, p, ch] + b[s, ch] for x [n, hw, c] and b [n, c].
void add_per_channel_last(const void* x, const void* b, int64_t n, int64_t hw, int64_t c, void* out, DType dt,
                          cudaStream_t stream);

enum class Act { GELU, GELUTanh, QuickGELU, SiLU };
// out[i] = act(x[i]). GELU is erf-based (erff), GELUTanh PyTorch's tanh form,
// QuickGELU x*sigmoid(1.702x), SiLU x*sigmoid(x).
void activation(const void* x, int64_t n, Act act, void* out, DType dt, cudaStream_t stream);
// GEGLU over rows of 2*inner values: out[r, i] = x[r, i] * gelu_erf(x[r, inner + i]).
void geglu(const void* x, int64_t rows, int64_t inner, void* out, DType dt, cudaStream_t stream);

// Row-wise LayerNorm over `dim` (biased variance, eps inside the sqrt), gamma/beta per column.
void layer_norm(const void* x, const void* gamma, const void* beta, int64_t rows, int64_t dim, float eps, void* out,
                DType dt, cudaStream_t stream);
// x [n, c, hw] normalised per (n, group) of c/groups channels (biased variance, two-pass in f32);
// affine per channel; optional SiLU after the affine. `channels_last`: x and out are [n, hw, c].
void group_norm(const void* x, const void* gamma, const void* beta, int64_t n, int64_t c, int64_t hw, int64_t groups,
                float eps, bool silu, void* out, DType dt, cudaStream_t stream, bool channels_last = false);

// Softmax over each row of `cols` values. x and out may have different types (x_dt, out_dt) so
// attention can softmax f32 scores into f16 probabilities. `causal`: row r of every block of
// `rows_per_block` rows sees columns 0..(r % rows_per_block) only (the rest are written as 0).
// `scale` multiplies x before the softmax.
void softmax_rows(const void* x, DType x_dt, int64_t rows, int64_t cols, float scale, bool causal,
                  int64_t rows_per_block, void* out, DType out_dt, cudaStream_t stream);

// out[i, :] = weight[ids[i], :]; ids are int32 and already checked to be < vocab.
void embedding(const void* weight, int64_t dim, const int32_t* ids, int64_t n, void* out, DType dt,
               cudaStream_t stream);

// Nearest-neighbour resize of [nc, h, w] planes to [nc, oh, ow] (src = floor(dst * in / out)).
void upsample_nearest(const void* x, int64_t nc, int64_t h, int64_t w, int64_t oh, int64_t ow, void* out, DType dt,
                      cudaStream_t stream);

// The same resize for channels-last images: [n, h, w, c] to [n, oh, ow, c].
void upsample_nearest_channels_last(const void* x, int64_t n, int64_t c, int64_t h, int64_t w, int64_t oh, int64_t ow,
                                    void* out, DType dt, cudaStream_t stream);

// Fills n elements with `value` (converted to dt).
void fill(void* out, int64_t n, float value, DType dt, cudaStream_t stream);

// The ESRGAN ops (src/cuda/upscale_kernels.cu). out may equal x for leaky_relu.
void leaky_relu(const void* x, int64_t n, float slope, void* out, DType dt, cudaStream_t stream);
// out[i] = x[i] < 0 ? x[i] * w[c] : x[i], c = (i / inner) % channels (w[0] when `shared`); w is f32.
void prelu(const void* x, const float* weight, bool shared, int64_t channels, int64_t inner, int64_t n, void* out,
           DType dt, cudaStream_t stream);
// out[i] = a[i] * alpha + b[i]
void scaled_add(const void* a, float alpha, const void* b, int64_t n, void* out, DType dt, cudaStream_t stream);
// [planes, h, w] -> [planes, oh, ow] (oh >= h, ow >= w), the extra rows/columns reflected.
void pad_reflect_br(const void* x, int64_t planes, int64_t h, int64_t w, int64_t oh, int64_t ow, void* out, DType dt,
                    cudaStream_t stream);

}  // namespace sdserve::cuda
