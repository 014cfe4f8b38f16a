// CUDA device memory and copies. Compiled only with SDSERVE_WITH_CUDA.
#pragma once
#include <cstddef>
#include <memory>

namespace sdserve::cuda {

int device_count();  // 0 when no driver/device is present (not an error)
std::shared_ptr<void> allocate(size_t bytes, int device);
void copy_to_device(void* dst, const void* src, size_t bytes, int device);
void copy_to_host(void* dst, const void* src, size_t bytes, int device);

}  // namespace sdserve::cuda
