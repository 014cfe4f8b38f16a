#pragma once
#include "core/tensor.h"

namespace sdserve::ops {
// Normalises over the last dimension; gamma/beta [dim] may be null (undefined tensors).
Tensor layer_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps);
}  // namespace sdserve::ops
