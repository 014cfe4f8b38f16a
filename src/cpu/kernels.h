// CPU kernels behind the ops in src/ops. They assume the op already validated
// shapes and that inputs are contiguous. Templated over the storage type; all
// arithmetic is done in f32.
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace sdserve::cpu {

template <typename T>
void embedding(const T* weight, int64_t vocab, int64_t dim, const int32_t* ids, int64_t n, T* out);

template <typename T>
void layer_norm(const T* x, const T* gamma, const T* beta, int64_t rows, int64_t dim, float eps, T* out);

template <typename T>
void softmax_rows(const T* x, int64_t rows, int64_t cols, T* out);

enum class ActKind { GELU, GELUTanh, QuickGELU, SiLU };
template <typename T>
void activation(const T* x, int64_t n, ActKind kind, T* out);

// GEGLU over rows of 2 * inner values: out[r, i] = x[r, i] * gelu(x[r, inner + i]).
template <typename T>
void geglu(const T* x, int64_t rows, int64_t inner, T* out);

// out[i] = a[i] + b[i % nb]  (b broadcast over the leading dimensions of a)
template <typename T>
void add_broadcast(const T* a, int64_t na, const T* b, int64_t nb, T* out);

// out[p, i] = x[p, i] + b[p] for planes p of hw elements.
template <typename T>
void add_per_plane(const T* x, const T* b, int64_t planes, int64_t hw, T* out);

// x [n, c, hw] normalised per (n, group); optional affine per channel; optional SiLU after.
template <typename T>
void group_norm(const T* x, const T* gamma, const T* beta, int64_t n, int64_t c, int64_t hw, int64_t groups, float eps,
                bool silu, T* out);

// Nearest-neighbour resize of [nc, h, w] planes to [nc, oh, ow] (PyTorch's 'nearest': src = floor(dst * in/out)).
template <typename T>
void upsample_nearest(const T* x, int64_t nc, int64_t h, int64_t w, int64_t oh, int64_t ow, T* out);

// y[rows, out] = x[rows, in] * w[out, in]^T + bias
void linear_f32(const float* x, int64_t rows, int64_t in, const float* w, int64_t out, const float* bias, float* y);

// Scaled dot-product attention, batched over (batch, head): o = softmax(scale * q k^T) v, with
// an optional causal mask (query i sees keys 0..i). Every operand is addressed by element
// strides of batch, head and token; the last dimension (d for q and k, dv for v and o) is
// contiguous. Threads over (batch, head, query block) with OpenMP (src/cpu/attention.cc).
struct AttentionArgs {
  const float* q = nullptr;
  const float* k = nullptr;
  const float* v = nullptr;
  float* o = nullptr;
  int64_t B = 0, H = 0, tq = 0, tk = 0, d = 0, dv = 0;
  int64_t q_sb = 0, q_sh = 0, q_st = 0;
  int64_t k_sb = 0, k_sh = 0, k_st = 0;
  int64_t v_sb = 0, v_sh = 0, v_st = 0;
  int64_t o_sb = 0, o_sh = 0, o_st = 0;
  float scale = 1.f;
  bool causal = false;
};
void attention_f32(const AttentionArgs& args);

}  // namespace sdserve::cpu
