#pragma once
#include "core/tensor.h"

namespace sdserve::ops {
// x [N, C, ...] normalised over (C/groups channels x spatial) per sample; gamma/beta [C] optional.
// `silu` fuses the SiLU that follows almost every GroupNorm in the UNet and VAE.
Tensor group_norm(const Tensor& x, int64_t groups, const Tensor& gamma, const Tensor& beta, float eps,
                  bool silu = false);
}  // namespace sdserve::ops
