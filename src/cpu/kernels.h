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

// Scaled dot-product attention for one (batch, head): q [tq, d], k [tk, d], v [tk, dv] -> o [tq, dv].
// Rows of q are processed in blocks so the full score matrix is never held at once.
void attention_f32(const float* q, const float* k, const float* v, int64_t tq, int64_t tk, int64_t d, int64_t dv,
                   int64_t q_stride, int64_t k_stride, int64_t v_stride, int64_t o_stride, float scale, bool causal,
                   float* o);

}  // namespace sdserve::cpu
