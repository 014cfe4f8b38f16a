#include "cuda/library.h"

#include <array>
#include <memory>

#include "cuda/check.h"
#include "cuda/runtime.h"

namespace sdserve::cuda {

std::string cublas_status_string(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED:
      return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH:
      return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR:
      return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED:
      return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR:
      return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR:
      return "CUBLAS_STATUS_LICENSE_ERROR";
    default:
      return "cublas status " + std::to_string(int(s));
  }
}

void* Library::workspace(size_t bytes) {
  if (bytes <= workspace_size) return workspace_ptr;
  set_device(device);
  // Work queued on the stream may still use the old buffer.
  SD_CUDA_CHECK(cudaStreamSynchronize(stream(device)));
  if (workspace_ptr) SD_CUDA_CHECK(cudaFree(workspace_ptr));
  workspace_ptr = nullptr;
  const size_t old = workspace_size;
  workspace_size = 0;
  const cudaError_t st = cudaMalloc(&workspace_ptr, bytes);
  if (st != cudaSuccess) {
    (void)cudaGetLastError();
    workspace_ptr = nullptr;
    add_workspace_bytes(device, size_t(0) - old);
    throw ResourceError("out of GPU memory for a " + std::to_string(bytes >> 20) +
                        " MiB library workspace on cuda:" + std::to_string(device));
  }
  workspace_size = bytes;
  add_workspace_bytes(device, bytes - old);
  return workspace_ptr;
}

Library& library(int device) {
  // Never destroyed (like the allocator's pools): destroying handles after the CUDA runtime has
  // shut down at exit is undefined.
  static auto* libs_ptr = new std::array<std::unique_ptr<Library>, 16>;
  auto& libs = *libs_ptr;
  static std::mutex create_mu;
  require_device(device);
  std::lock_guard<std::mutex> lock(create_mu);
  auto& slot = libs[size_t(device)];
  if (!slot) {
    auto lib = std::make_unique<Library>();
    lib->device = device;
    set_device(device);
    SD_CUBLAS_CHECK(cublasLtCreate(&lib->lt));
    SD_CUDNN_CHECK(cudnnCreate(&lib->dnn));
    SD_CUDNN_CHECK(cudnnSetStream(lib->dnn, stream(device)));
    slot = std::move(lib);
  }
  return *slot;
}

}  // namespace sdserve::cuda
