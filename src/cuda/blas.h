// GEMMs through cuBLASLt (src/cuda/blas.cc). Column-major, like BLAS:
//   D[m, n] = alpha * op(A) op(B) (+ bias[m] broadcast over n), batched with element strides.
// A is stored k x m (transa) or m x k; B is n x k (transb) or k x n. A and B have type ab_dt,
// D has type d_dt (it may be F32 while A/B are F16); accumulation is f32. F32 operands use
// strict f32 arithmetic (no TF32) so GPU results stay within the CPU tolerances.
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace sdserve::cuda {

struct MatmulArgs {
  bool transa = false, transb = false;
  int64_t m = 0, n = 0, k = 0;
  const void* a = nullptr;
  int64_t lda = 0, stride_a = 0;
  const void* b = nullptr;
  int64_t ldb = 0, stride_b = 0;
  void* d = nullptr;
  int64_t ldd = 0, stride_d = 0;
  int64_t batch = 1;
  DType ab_dt = DType::F32, d_dt = DType::F32;
  float alpha = 1.f;
  const void* bias = nullptr;  // m values of type d_dt, or null
};

void matmul(const MatmulArgs& args, int device);

}  // namespace sdserve::cuda
