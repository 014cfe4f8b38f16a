#pragma once
#include "core/tensor.h"

namespace sdserve::ops {
// Softmax over the last dimension (max-subtracted; a row of -inf gives zeros).
Tensor softmax(const Tensor& x);
}  // namespace sdserve::ops
