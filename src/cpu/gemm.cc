#include "cpu/gemm.h"

#include <atomic>
#include <cstdlib>
#include <string>

#include "core/error.h"

#ifdef SDSERVE_WITH_ONEDNN
#include <dnnl.h>
#endif
#ifdef SDSERVE_WITH_OPENBLAS
#include <cblas.h>
#endif

namespace sdserve::cpu {

namespace {

GemmBackend default_backend() {
  if (const char* env = std::getenv("SDSERVE_GEMM")) {
    const std::string s = env;
    if (s == "onednn" && gemm_backend_available(GemmBackend::OneDNN)) return GemmBackend::OneDNN;
    if (s == "openblas" && gemm_backend_available(GemmBackend::OpenBLAS)) return GemmBackend::OpenBLAS;
    if (s == "reference") return GemmBackend::Reference;
  }
  // oneDNN is the default GEMM where it exists: it threads with the same OpenMP pool as every
  // other op, while OpenBLAS's own pthreads pool fights the spinning OpenMP workers for the
  // cores (the UNet step ran 18% slower with it): docs/PERFORMANCE.md.
  if (gemm_backend_available(GemmBackend::OneDNN)) return GemmBackend::OneDNN;
  if (gemm_backend_available(GemmBackend::OpenBLAS)) return GemmBackend::OpenBLAS;
  return GemmBackend::Reference;
}

std::atomic<GemmBackend>& backend_slot() {
  static std::atomic<GemmBackend> slot{default_backend()};
  return slot;
}

void reference_sgemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
                     const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < m; ++i) {
    float* crow = c + i * ldc;
    for (int64_t j = 0; j < n; ++j) crow[j] = beta == 0.f ? 0.f : beta * crow[j];
    for (int64_t p = 0; p < k; ++p) {
      const float av = alpha * (ta ? a[p * lda + i] : a[i * lda + p]);
      if (!tb) {
        const float* brow = b + p * ldb;
        for (int64_t j = 0; j < n; ++j) crow[j] += av * brow[j];
      } else {
        for (int64_t j = 0; j < n; ++j) crow[j] += av * b[j * ldb + p];
      }
    }
  }
}

}  // namespace

bool gemm_backend_available(GemmBackend b) {
  switch (b) {
    case GemmBackend::OneDNN:
#ifdef SDSERVE_WITH_ONEDNN
      return true;
#else
      return false;
#endif
    case GemmBackend::OpenBLAS:
#ifdef SDSERVE_WITH_OPENBLAS
      return true;
#else
      return false;
#endif
    case GemmBackend::Reference:
      return true;
  }
  return false;
}

const char* gemm_backend_name(GemmBackend b) {
  switch (b) {
    case GemmBackend::OneDNN:
      return "onednn";
    case GemmBackend::OpenBLAS:
      return "openblas";
    case GemmBackend::Reference:
      return "reference";
  }
  return "?";
}

GemmBackend gemm_backend() { return backend_slot().load(std::memory_order_relaxed); }

void set_gemm_backend(GemmBackend b) {
  if (!gemm_backend_available(b))
    throw UnsupportedError(std::string("GEMM backend ") + gemm_backend_name(b) + " is not compiled in");
  backend_slot().store(b);
}

void sgemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda, const float* b,
           int64_t ldb, float beta, float* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  switch (gemm_backend()) {
#ifdef SDSERVE_WITH_ONEDNN
    case GemmBackend::OneDNN: {
      const dnnl_status_t st = dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
      if (st != dnnl_success) throw InternalError("oneDNN sgemm failed with status " + std::to_string(int(st)));
      return;
    }
#endif
#ifdef SDSERVE_WITH_OPENBLAS
    case GemmBackend::OpenBLAS:
      cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, int(m), int(n), int(k),
                  alpha, a, int(lda), b, int(ldb), beta, c, int(ldc));
      return;
#endif
    default:
      reference_sgemm(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
      return;
  }
}

}  // namespace sdserve::cpu
