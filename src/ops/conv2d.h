#pragma once
#include "core/tensor.h"

namespace sdserve::ops {

struct Conv2dOptions {
  int64_t stride = 1;
  // Padding top, left, bottom, right (the VAE encoder pads asymmetrically).
  int64_t pad_t = 0, pad_l = 0, pad_b = 0, pad_r = 0;
  static Conv2dOptions same(int64_t k, int64_t stride = 1) { return {stride, k / 2, k / 2, k / 2, k / 2}; }
};

// x [N, C, H, W], weight [O, C, kh, kw], optional bias [O] -> [N, O, OH, OW]. f16/bf16 compute in f32.
Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor* bias, const Conv2dOptions& opt);

// A loaded weight [O, C, kh, kw] in the memory layout conv2d reads fastest on its device: on a GPU
// in half precision, OHWI (channels last) behind the same logical shape (a permuted view, so
// every reader, LoRA merges included, still indexes it as [O, C, kh, kw]); unchanged elsewhere.
Tensor conv2d_weight_layout(const Tensor& weight);

// Whether conv2d hands on its results channels last (Tensor::is_channels_last) for tensors like
// `x`: on a GPU in half precision (cuda::keep_channels_last). Code that rebuilds an image from
// tokens (layers::tokens_to_nchw) uses it to leave the image in the layout the next convolution
// reads. Elsewhere no, except under set_cpu_channels_last_for_testing.
bool conv2d_keeps_channels_last(const Tensor& x);

// Tests only: CPU convolutions return their results channels last too, so the CPU runs the
// models through the same mix of layouts the GPU does (every op must give the same values).
void set_cpu_channels_last_for_testing(bool on);

}  // namespace sdserve::ops
