#pragma once
#include "core/tensor.h"

namespace sdserve::ops {
// a + b where b's shape equals a trailing part of a's shape (b broadcasts over a's leading dims).
Tensor add(const Tensor& a, const Tensor& b);
// x [N, C, ...] + b [N, C] broadcast over the trailing dims (the UNet's time embedding).
Tensor add_channelwise(const Tensor& x, const Tensor& b);
}  // namespace sdserve::ops
