#pragma once
#include "core/tensor.h"

namespace sdserve::ops {
// weight [vocab, dim], ids (i32, any shape) -> ids.shape + [dim]. Out-of-range ids throw InvalidArgument.
Tensor embedding(const Tensor& weight, const Tensor& ids);
}  // namespace sdserve::ops
