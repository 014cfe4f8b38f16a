#include "core/allocator.h"

#include <cstdlib>
#include <new>

#include "core/error.h"
#ifdef SDSERVE_WITH_CUDA
#include "cuda/runtime.h"
#endif

namespace sdserve {

std::shared_ptr<void> allocate(size_t bytes, Device device) {
  if (device.type == DeviceType::CUDA) {
#ifdef SDSERVE_WITH_CUDA
    return cuda::allocate(bytes, device.index);
#else
    throw UnsupportedError("device " + device.str() + " is not available in this build (built without CUDA)");
#endif
  }
  const size_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
  void* p = std::aligned_alloc(kAlignment, rounded == 0 ? kAlignment : rounded);
  if (p == nullptr) throw std::bad_alloc();
  return std::shared_ptr<void>(p, [](void* q) { std::free(q); });
}

}  // namespace sdserve
