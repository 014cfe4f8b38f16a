#include "cuda/conv.h"

#include <cstdlib>
#include <map>
#include <string>
#include <tuple>

#include "cuda/library.h"
#include "cuda/runtime.h"

namespace sdserve::cuda {

namespace {

// cuDNN's Find may use this much scratch; algorithms that need more are skipped.
constexpr size_t kMaxConvWorkspace = size_t(64) << 20;

cudnnDataType_t dnn_type(DType t) {
  switch (t) {
    case DType::F32:
      return CUDNN_DATA_FLOAT;
    case DType::F16:
      return CUDNN_DATA_HALF;
    case DType::BF16:
      return CUDNN_DATA_BFLOAT16;
    default:
      throw UnsupportedError(std::string("GPU conv2d: unsupported dtype ") + dtype_name(t));
  }
}

using Key =
    std::tuple<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int, bool>;

struct Plan {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr, bias = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
  cudnnConvolutionFwdAlgo_t algo = CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM;
  size_t workspace = 0;
  int64_t oh = 0, ow = 0;
};

Plan make_plan(Library& lib, const ConvArgs& a) {
  Plan p;
  const cudnnDataType_t t = dnn_type(a.dt);
  SD_CUDNN_CHECK(cudnnCreateTensorDescriptor(&p.x));
  const cudnnTensorFormat_t fmt = a.nhwc ? CUDNN_TENSOR_NHWC : CUDNN_TENSOR_NCHW;
  SD_CUDNN_CHECK(cudnnSetTensor4dDescriptor(p.x, fmt, t, int(a.n), int(a.c), int(a.h), int(a.w)));
  SD_CUDNN_CHECK(cudnnCreateFilterDescriptor(&p.w));
  SD_CUDNN_CHECK(cudnnSetFilter4dDescriptor(p.w, t, fmt, int(a.o), int(a.c), int(a.kh), int(a.kw)));
  SD_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&p.conv));
  // f32 storage computes in f32 (FMA math: no TF32, to stay within the CPU tolerances);
  // f16/bf16 store half precision, accumulate in f32 and may use tensor cores.
  SD_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(p.conv, int(a.pad_h), int(a.pad_w), int(a.stride), int(a.stride), 1, 1,
                                                 CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
  SD_CUDNN_CHECK(
      cudnnSetConvolutionMathType(p.conv, a.dt == DType::F32 ? CUDNN_FMA_MATH : CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION));
  int on = 0, oc = 0, oh = 0, ow = 0;
  SD_CUDNN_CHECK(cudnnGetConvolution2dForwardOutputDim(p.conv, p.x, p.w, &on, &oc, &oh, &ow));
  p.oh = oh;
  p.ow = ow;
  SD_CUDNN_CHECK(cudnnCreateTensorDescriptor(&p.y));
  SD_CUDNN_CHECK(cudnnSetTensor4dDescriptor(p.y, fmt, t, on, oc, oh, ow));
  SD_CUDNN_CHECK(cudnnCreateTensorDescriptor(&p.bias));
  SD_CUDNN_CHECK(cudnnSetTensor4dDescriptor(p.bias, CUDNN_TENSOR_NCHW, t, 1, int(a.o), 1, 1));

  // Find runs the candidates on the real buffers (y is overwritten below anyway).
  void* ws = lib.workspace(kMaxConvWorkspace);
  cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
  int returned = 0;
  SD_CUDNN_CHECK(cudnnFindConvolutionForwardAlgorithmEx(lib.dnn, p.x, a.x, p.w, a.weight, p.conv, p.y, a.y,
                                                        CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &returned, perf, ws,
                                                        kMaxConvWorkspace));
  for (int i = 0; i < returned; ++i) {
    if (perf[i].status != CUDNN_STATUS_SUCCESS) continue;
    // Keep f32 exact-ish: no algorithm that silently down-converts.
    if (a.dt == DType::F32 && perf[i].mathType != CUDNN_FMA_MATH && perf[i].mathType != CUDNN_DEFAULT_MATH) continue;
    p.algo = perf[i].algo;
    p.workspace = perf[i].memory;
    SD_CUDNN_CHECK(cudnnSetConvolutionMathType(p.conv, perf[i].mathType));
    return p;
  }
  throw InternalError("cuDNN found no convolution algorithm for input [" + std::to_string(a.n) + ", " +
                      std::to_string(a.c) + ", " + std::to_string(a.h) + ", " + std::to_string(a.w) + "], " +
                      std::to_string(a.kh) + "x" + std::to_string(a.kw) + " kernel, " + dtype_name(a.dt));
}

}  // namespace

void conv2d(const ConvArgs& a, int device) {
  SD_CHECK_ARG(a.n <= INT32_MAX && a.c <= INT32_MAX && a.h <= INT32_MAX && a.w <= INT32_MAX && a.o <= INT32_MAX,
               "GPU conv2d: dimensions too large");
  Library& lib = library(device);
  std::lock_guard<std::mutex> lock(lib.mu);
  static std::map<Key, Plan> plans[16];
  const Key key{a.n, a.c, a.h, a.w, a.o, a.kh, a.kw, a.stride, a.pad_h, a.pad_w, int(a.dt), a.nhwc};
  auto& cache = plans[size_t(device)];
  auto it = cache.find(key);
  set_device(device);
  if (it == cache.end()) it = cache.emplace(key, make_plan(lib, a)).first;
  const Plan& p = it->second;
  const float one = 1.f, zero = 0.f;
  void* ws = p.workspace ? lib.workspace(p.workspace) : nullptr;
  SD_CUDNN_CHECK(cudnnConvolutionForward(lib.dnn, &one, p.x, a.x, p.w, a.weight, p.conv, p.algo, ws, p.workspace, &zero,
                                         p.y, a.y));
  if (a.bias) {
    SD_CHECK_ARG(!a.nhwc, "GPU conv2d: channels-last bias is the caller's (add_broadcast)");
    SD_CUDNN_CHECK(cudnnAddTensor(lib.dnn, &one, p.bias, a.bias, &one, p.y, a.y));
  }
}

bool conv_channels_last(DType dt) {
  static const bool nchw = [] {
    const char* v = std::getenv("SDSERVE_CUDA_CONV_LAYOUT");
    return v && std::string(v) == "nchw";
  }();
  return !nchw && (dt == DType::F16 || dt == DType::BF16);
}

bool keep_channels_last(DType dt) {
  static const bool off = [] {
    const char* v = std::getenv("SDSERVE_CUDA_KEEP_CHANNELS_LAST");
    return v && std::string(v) == "0";
  }();
  return !off && conv_channels_last(dt);
}

}  // namespace sdserve::cuda
