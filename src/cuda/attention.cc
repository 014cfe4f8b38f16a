// math_attention: scores by a strided-batched cuBLASLt GEMM over heads (f32 scores), a softmax
// kernel (scale and causal mask applied there) writing probabilities in the storage type, and a
// second GEMM for P·V written straight into o's strided layout. Heads are processed in chunks so
// the scores stay under kScoreBudget bytes.
#include <algorithm>

#include "core/tensor.h"
#include "cuda/attention.h"
#include "cuda/blas.h"
#include "cuda/kernels.h"
#include "cuda/runtime.h"

namespace sdserve::cuda {

namespace {
constexpr int64_t kScoreBudget = int64_t(128) << 20;
}

void math_attention(const AttentionParams& p, int device) {
  const size_t es = dtype_size(p.dt);
  const int64_t per_head = p.tq * p.tk;
  const int64_t chunk = std::clamp<int64_t>(kScoreBudget / std::max<int64_t>(per_head * 4, 1), 1, p.H);
  const Tensor scores = Tensor::empty({chunk, p.tq, p.tk}, DType::F32, Device::cuda(device));
  const Tensor probs = Tensor::empty({chunk, p.tq, p.tk}, p.dt, Device::cuda(device));
  const cudaStream_t st = stream(device);
  for (int64_t b = 0; b < p.B; ++b) {
    for (int64_t h0 = 0; h0 < p.H; h0 += chunk) {
      const int64_t hc = std::min(chunk, p.H - h0);
      const char* q = static_cast<const char*>(p.q) + (b * p.q_sb + h0 * p.q_sh) * int64_t(es);
      const char* k = static_cast<const char*>(p.k) + (b * p.k_sb + h0 * p.k_sh) * int64_t(es);
      const char* v = static_cast<const char*>(p.v) + (b * p.v_sb + h0 * p.v_sh) * int64_t(es);
      char* o = static_cast<char*>(p.o) + (b * p.o_sb + h0 * p.o_sh) * int64_t(es);
      // S^T (column-major [tk, tq]) = K Q^T: A = K stored [d, tk] column-major (transposed).
      MatmulArgs s;
      s.transa = true;
      s.m = p.tk, s.n = p.tq, s.k = p.d;
      s.a = k, s.lda = p.k_st, s.stride_a = p.k_sh;
      s.b = q, s.ldb = p.q_st, s.stride_b = p.q_sh;
      s.d = scores.raw_data(), s.ldd = p.tk, s.stride_d = per_head;
      s.batch = hc;
      s.ab_dt = p.dt, s.d_dt = DType::F32;
      matmul(s, device);
      softmax_rows(scores.raw_data(), DType::F32, hc * p.tq, p.tk, p.scale, p.causal, p.tq, probs.raw_data(), p.dt, st);
      // O^T (column-major [dv, tq]) = V^T P^T: A = V stored [dv, tk], B = P stored [tk, tq].
      MatmulArgs pv;
      pv.m = p.dv, pv.n = p.tq, pv.k = p.tk;
      pv.a = v, pv.lda = p.v_st, pv.stride_a = p.v_sh;
      pv.b = probs.raw_data(), pv.ldb = p.tk, pv.stride_b = per_head;
      pv.d = o, pv.ldd = p.o_st, pv.stride_d = p.o_sh;
      pv.batch = hc;
      pv.ab_dt = p.dt, pv.d_dt = p.dt;
      matmul(pv, device);
    }
  }
}

}  // namespace sdserve::cuda
