// Every CUDA runtime call goes through SD_CUDA_CHECK: a failure becomes a typed
// InternalError naming the call, never a silent error code.
#pragma once
#include <cuda_runtime_api.h>

#include <string>

#include "core/error.h"

#define SD_CUDA_CHECK(call)                                                                                   \
  do {                                                                                                        \
    const cudaError_t sd_cuda_status_ = (call);                                                               \
    if (sd_cuda_status_ != cudaSuccess)                                                                       \
      throw ::sdserve::InternalError(std::string(#call) + " failed: " + cudaGetErrorString(sd_cuda_status_)); \
  } while (0)
