#pragma once
#include "core/tensor.h"

namespace sdserve::ops {
// Scaled dot-product attention. q [B, H, Tq, d], k [B, H, Tk, d], v [B, H, Tk, dv] -> [B, H, Tq, dv].
// Inputs may be strided views (e.g. a [B, T, H, d] projection permuted) as long as the last
// dimension is contiguous. `causal` masks key j > query i (requires Tq == Tk).
// scale <= 0 means 1/sqrt(d).
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, float scale = 0.f);
}  // namespace sdserve::ops
