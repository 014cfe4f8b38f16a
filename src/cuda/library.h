// cuBLASLt and cuDNN handles and the shared workspace, one set per device, bound to the
// device's stream (cuda/runtime.h). Library calls go through SD_CUBLAS_CHECK / SD_CUDNN_CHECK,
// so a failure is a typed InternalError naming the call and the library's status string.
#pragma once
#include <cublasLt.h>
#include <cudnn.h>

#include <mutex>
#include <string>

#include "core/error.h"

namespace sdserve::cuda {

std::string cublas_status_string(cublasStatus_t s);

#define SD_CUBLAS_CHECK(call)                                                                                 \
  do {                                                                                                        \
    const cublasStatus_t sd_cublas_status_ = (call);                                                          \
    if (sd_cublas_status_ != CUBLAS_STATUS_SUCCESS)                                                           \
      throw ::sdserve::InternalError(std::string(#call) +                                                     \
                                     " failed: " + ::sdserve::cuda::cublas_status_string(sd_cublas_status_)); \
  } while (0)

#define SD_CUDNN_CHECK(call)                                                                                    \
  do {                                                                                                          \
    const cudnnStatus_t sd_cudnn_status_ = (call);                                                              \
    if (sd_cudnn_status_ != CUDNN_STATUS_SUCCESS)                                                               \
      throw ::sdserve::InternalError(std::string(#call) + " failed: " + cudnnGetErrorString(sd_cudnn_status_)); \
  } while (0)

struct Library {
  cublasLtHandle_t lt = nullptr;
  cudnnHandle_t dnn = nullptr;
  // Serialises library calls on this device: the handles and the workspace are shared by all
  // threads, and calls are enqueued on the one stream in the order they hold this lock.
  std::mutex mu;
  // Grows to the largest size asked for; never shrinks (counted in MemoryStats::workspace).
  void* workspace(size_t bytes);

  size_t workspace_size = 0;
  void* workspace_ptr = nullptr;
  int device = 0;
};

// The device's handles, created on first use (after cudaSetDevice).
Library& library(int device);

}  // namespace sdserve::cuda
