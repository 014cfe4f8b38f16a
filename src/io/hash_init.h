// Deterministic "hash-init" weights: every element is a pure function of the tensor
// name, shape and index, so full-size random-weight models (tests, benchmarks) need
// no committed weight files. tools/hashinit.py implements the same function in
// numpy; the two agree bit for bit. Spec:
//   seed = FNV-1a-64(name); z = splitmix64(seed + i); v = ((z >> 40) - 2^23) * 2^-23
//   name ends ".weight" and contains "norm": 1 + 0.1 v;  ends ".bias": 0.05 v;
//   contains "embedding": 0.05 v;  otherwise (Linear [out, in] or conv [out, in, kh, kw]):
//   v * f32(1/sqrt(fan_in)), fan_in = prod(shape[1:]).
#pragma once
#include <string>

#include "core/tensor.h"

namespace sdserve {

uint64_t fnv1a64(std::string_view s);
uint64_t splitmix64(uint64_t z);
Tensor hash_init_tensor(const std::string& name, const Shape& shape);

}  // namespace sdserve
