#pragma once
#include "core/tensor.h"

namespace sdserve::ops {
// x [..., in], weight [out, in] (PyTorch nn.Linear layout), optional bias [out] -> [..., out].
// f16/bf16 inputs are computed in f32 and rounded back.
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor* bias = nullptr);
}  // namespace sdserve::ops
