// 2-D convolution through cuDNN (src/cuda/conv.cc): NCHW activations with OIHW weights, or NHWC
// with OHWI (channels last: what the tensor-core kernels read natively, so cuDNN needs no
// transposes of its own), the algorithm found once per shape
// (cudnnFindConvolutionForwardAlgorithmEx) and cached.
#pragma once
#include <cstdint>

#include "core/dtype.h"

namespace sdserve::cuda {

struct ConvArgs {
  int64_t n = 0, c = 0, h = 0, w = 0, o = 0, kh = 0, kw = 0, stride = 1, pad_h = 0, pad_w = 0;
  DType dt = DType::F32;
  bool nhwc = false;  // x [n, h, w, c], weight [o, kh, kw, c], y [n, oh, ow, o]
  const void* x = nullptr;
  const void* weight = nullptr;
  const void* bias = nullptr;  // o values or null
  void* y = nullptr;           // [n, o, oh, ow]
};

void conv2d(const ConvArgs& args, int device);

// Whether half-precision convolutions run channels last: yes unless
// SDSERVE_CUDA_CONV_LAYOUT=nchw (f32 always runs NCHW, with FMA math, to match the CPU).
bool conv_channels_last(DType dt);
// Whether those convolutions also hand their output on channels last (a permuted view,
// Tensor::is_channels_last) for the next ops to read as it is, rather than transposing it back
// to NCHW: yes with conv_channels_last unless SDSERVE_CUDA_KEEP_CHANNELS_LAST=0.
bool keep_channels_last(DType dt);

}  // namespace sdserve::cuda
