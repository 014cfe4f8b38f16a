#pragma once
#include <vector>

#include "core/tensor.h"

namespace sdserve::ops {
// Concatenates along `dim`; all other dimensions, dtypes and devices must match.
Tensor concat(const std::vector<Tensor>& parts, int64_t dim);
}  // namespace sdserve::ops
