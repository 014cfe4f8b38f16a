#include "cuda/blas.h"

#include <cstring>
#include <unordered_map>

#include "cuda/library.h"
#include "cuda/runtime.h"

namespace sdserve::cuda {

namespace {

constexpr size_t kLtWorkspace = size_t(32) << 20;  // NVIDIA's recommendation for Hopper

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::F32:
      return CUDA_R_32F;
    case DType::F16:
      return CUDA_R_16F;
    case DType::BF16:
      return CUDA_R_16BF;
    default:
      throw UnsupportedError(std::string("GPU matmul: unsupported dtype ") + dtype_name(t));
  }
}

// Largest power of two (<= 256) dividing the address: cuBLASLt must only pick kernels whose
// alignment needs our pointers meet (views such as a head of q start mid-row).
uint32_t alignment_of(const void* p) {
  const auto v = reinterpret_cast<uintptr_t>(p);
  uint32_t a = 256;
  while (a > 1 && (v % a) != 0) a /= 2;
  return a;
}

struct Key {
  MatmulArgs a;
  uint32_t align[4];
  bool operator==(const Key& o) const {
    const MatmulArgs &x = a, &y = o.a;
    return x.transa == y.transa && x.transb == y.transb && x.m == y.m && x.n == y.n && x.k == y.k && x.lda == y.lda &&
           x.ldb == y.ldb && x.ldd == y.ldd && x.stride_a == y.stride_a && x.stride_b == y.stride_b &&
           x.stride_d == y.stride_d && x.batch == y.batch && x.ab_dt == y.ab_dt && x.d_dt == y.d_dt &&
           (x.bias != nullptr) == (y.bias != nullptr) && std::memcmp(align, o.align, sizeof(align)) == 0;
  }
};

struct KeyHash {
  size_t operator()(const Key& k) const {
    size_t h = 1469598103934665603ull;
    auto mix = [&](uint64_t v) { h = (h ^ v) * 1099511628211ull; };
    const MatmulArgs& a = k.a;
    for (int64_t v : {a.m, a.n, a.k, a.lda, a.ldb, a.ldd, a.stride_a, a.stride_b, a.stride_d, a.batch})
      mix(uint64_t(v));
    mix(uint64_t(a.transa) | uint64_t(a.transb) << 1 | uint64_t(a.bias != nullptr) << 2 | uint64_t(a.ab_dt) << 8 |
        uint64_t(a.d_dt) << 16);
    for (uint32_t v : k.align) mix(v);
    return h;
  }
};

// Descriptors and the chosen algorithm for one problem shape; built once, reused every step.
struct Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, ld = nullptr;
  cublasLtMatmulAlgo_t algo{};
};

cublasLtMatrixLayout_t make_layout(DType t, int64_t rows, int64_t cols, int64_t ld, int64_t batch, int64_t stride) {
  cublasLtMatrixLayout_t l = nullptr;
  SD_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&l, cuda_type(t), uint64_t(rows), uint64_t(cols), ld));
  if (batch > 1) {
    const int32_t bc = int32_t(batch);
    SD_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &bc, sizeof(bc)));
    SD_CUBLAS_CHECK(
        cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof(stride)));
  }
  return l;
}

Plan make_plan(Library& lib, const Key& key) {
  const MatmulArgs& a = key.a;
  Plan p;
  SD_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t ta = a.transa ? CUBLAS_OP_T : CUBLAS_OP_N, tb = a.transb ? CUBLAS_OP_T : CUBLAS_OP_N;
  SD_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  SD_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  if (a.bias) {
    const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
    SD_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
    const cudaDataType_t bt = cuda_type(a.d_dt);
    SD_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof(bt)));
  }
  p.la = a.transa ? make_layout(a.ab_dt, a.k, a.m, a.lda, a.batch, a.stride_a)
                  : make_layout(a.ab_dt, a.m, a.k, a.lda, a.batch, a.stride_a);
  p.lb = a.transb ? make_layout(a.ab_dt, a.n, a.k, a.ldb, a.batch, a.stride_b)
                  : make_layout(a.ab_dt, a.k, a.n, a.ldb, a.batch, a.stride_b);
  p.ld = make_layout(a.d_dt, a.m, a.n, a.ldd, a.batch, a.stride_d);

  cublasLtMatmulPreference_t pref = nullptr;
  SD_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const uint64_t ws = kLtWorkspace;
  SD_CUBLAS_CHECK(
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
  const cublasLtMatmulPreferenceAttributes_t align_attr[4] = {
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
  for (int i = 0; i < 4; ++i)
    SD_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, align_attr[i], &key.align[i], sizeof(uint32_t)));
  cublasLtMatmulHeuristicResult_t res{};
  int found = 0;
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(lib.lt, p.op, p.la, p.lb, p.ld, p.ld, pref, 1, &res, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (st != CUBLAS_STATUS_SUCCESS || found == 0)
    throw InternalError("cuBLASLt has no algorithm for a " + std::to_string(a.m) + "x" + std::to_string(a.n) + "x" +
                        std::to_string(a.k) + " " + dtype_name(a.ab_dt) + " matmul (batch " + std::to_string(a.batch) +
                        "): " + cublas_status_string(st));
  p.algo = res.algo;
  return p;
}

}  // namespace

void matmul(const MatmulArgs& args, int device) {
  SD_CHECK_ARG(args.m > 0 && args.n > 0 && args.k > 0 && args.batch > 0, "GPU matmul: empty problem");
  SD_CHECK_ARG(args.batch <= INT32_MAX, "GPU matmul: batch too large");
  Library& lib = library(device);
  Key key{args, {alignment_of(args.a), alignment_of(args.b), alignment_of(args.d), alignment_of(args.d)}};
  if (args.bias) key.align[2] = std::min(key.align[2], alignment_of(args.bias));
  std::lock_guard<std::mutex> lock(lib.mu);
  static std::unordered_map<Key, Plan, KeyHash> plans[16];
  auto& cache = plans[size_t(device)];
  auto it = cache.find(key);
  if (it == cache.end()) it = cache.emplace(key, make_plan(lib, key)).first;
  Plan& p = it->second;
  if (args.bias)
    SD_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &args.bias, sizeof(args.bias)));
  const float alpha = args.alpha, beta = 0.f;
  void* ws = lib.workspace(kLtWorkspace);
  set_device(device);
  SD_CUBLAS_CHECK(cublasLtMatmul(lib.lt, p.op, &alpha, args.a, p.la, args.b, p.lb, &beta, args.d, p.ld, args.d, p.ld,
                                 &p.algo, ws, kLtWorkspace, stream(device)));
}

}  // namespace sdserve::cuda
