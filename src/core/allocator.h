#pragma once
#include <cstddef>
#include <memory>

#include "core/device.h"

namespace sdserve {

// Host buffers are 64-byte aligned so AVX-512 loads and oneDNN blocked layouts
// never straddle a cache line at the start of a tensor.
constexpr size_t kAlignment = 64;

// Allocates `bytes` on `device`; the deleter frees it. Throws on failure.
std::shared_ptr<void> allocate(size_t bytes, Device device);

}  // namespace sdserve
