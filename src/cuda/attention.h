// Scaled dot-product attention on the GPU. Two implementations behind one op:
//  - flash_attention (src/cuda/flash_attention.cu): our fused kernel, flash-attention style
//    (online softmax over key tiles, nothing of size tq x tk is ever stored);
//  - math_attention (src/cuda/attention.cc): cuBLASLt batched GEMMs and a softmax kernel,
//    chunked over heads so the score matrix stays small. The reference path for tests and the
//    fallback for shapes the fused kernel does not take.
#pragma once
#include <cstdint>

#include "core/dtype.h"

struct CUstream_st;
using cudaStream_t = CUstream_st*;

namespace sdserve::cuda {

// o = softmax(scale * q k^T [+ causal mask]) v, batched over (batch, head). Every operand is
// addressed by element strides of batch, head and token; the last dimension (d for q and k, dv
// for v and o) is contiguous. q, k, v, o all have storage type `dt` (F32, F16 or BF16);
// arithmetic and the softmax are f32. Causal: query i sees keys 0..i.
struct AttentionParams {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* o = nullptr;
  DType dt = DType::F32;
  int64_t B = 0, H = 0, tq = 0, tk = 0, d = 0, dv = 0;
  int64_t q_sb = 0, q_sh = 0, q_st = 0;
  int64_t k_sb = 0, k_sh = 0, k_st = 0;
  int64_t v_sb = 0, v_sh = 0, v_st = 0;
  int64_t o_sb = 0, o_sh = 0, o_st = 0;
  float scale = 1.f;
  bool causal = false;
};

// Returns false (launching nothing) when the fused kernel does not support these parameters
// (e.g. d or dv above its limit, or strides it cannot load); the caller then uses math_attention.
bool flash_attention(const AttentionParams& p, cudaStream_t stream);

void math_attention(const AttentionParams& p, int device);

}  // namespace sdserve::cuda
