#include "cuda/runtime.h"

#include "cuda/check.h"

namespace sdserve::cuda {

int device_count() {
  int n = 0;
  // No driver or no device: report zero so CPU-only machines run CUDA builds.
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

std::shared_ptr<void> allocate(size_t bytes, int device) {
  SD_CUDA_CHECK(cudaSetDevice(device));
  void* p = nullptr;
  SD_CUDA_CHECK(cudaMalloc(&p, bytes == 0 ? 256 : bytes));
  return std::shared_ptr<void>(p, [device](void* q) {
    cudaSetDevice(device);
    cudaFree(q);  // a failure here cannot be reported from a deleter
  });
}

void copy_to_device(void* dst, const void* src, size_t bytes, int device) {
  SD_CUDA_CHECK(cudaSetDevice(device));
  SD_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}

void copy_to_host(void* dst, const void* src, size_t bytes, int device) {
  SD_CUDA_CHECK(cudaSetDevice(device));
  SD_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}

}  // namespace sdserve::cuda
