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

}  // namespace sdserve::ops
