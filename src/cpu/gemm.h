// Row-major single-precision GEMM on the CPU: C = alpha * op(A) * op(B) + beta * C.
// The backend (oneDNN, OpenBLAS or the built-in reference loop) is chosen once per
// process: SDSERVE_GEMM=onednn|openblas|reference overrides the default.
#pragma once
#include <cstdint>

namespace sdserve::cpu {

enum class GemmBackend { OneDNN, OpenBLAS, Reference };

GemmBackend gemm_backend();
void set_gemm_backend(GemmBackend b);  // throws UnsupportedError if not compiled in
const char* gemm_backend_name(GemmBackend b);
bool gemm_backend_available(GemmBackend b);

void sgemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
           const float* b, int64_t ldb, float beta, float* c, int64_t ldc);

}  // namespace sdserve::cpu
