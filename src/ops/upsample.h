#pragma once
#include "core/tensor.h"

namespace sdserve::ops {
// Nearest-neighbour resize of x [N, C, H, W] to [N, C, oh, ow] (PyTorch F.interpolate mode='nearest').
Tensor upsample_nearest(const Tensor& x, int64_t oh, int64_t ow);
}  // namespace sdserve::ops
