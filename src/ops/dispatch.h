// Device dispatch for ops. Each op validates shapes in ops/<op>.cc, then calls the
// backend for the tensor's device; the CUDA slot compiles only with SDSERVE_WITH_CUDA.
#pragma once
#include <string>

#include "core/error.h"
#include "core/tensor.h"
#ifdef SDSERVE_WITH_CUDA
#include "cuda/ops.h"
// Returns `expr` (a cuda:: op) when `t` lives on a CUDA device; compiles to nothing without CUDA.
#define SD_RETURN_IF_CUDA(t, expr) \
  if ((t).device().type == ::sdserve::DeviceType::CUDA) return expr
#else
#define SD_RETURN_IF_CUDA(t, expr) (void)0
#endif

namespace sdserve::ops {

[[noreturn]] inline void no_backend(const char* op, const Device& d) {
  throw UnsupportedError(std::string(op) + ": no backend for device " + d.str() + " in this build");
}

inline void check_same_device(const char* op, const Tensor& a, const Tensor& b) {
  if (!(a.device() == b.device()))
    throw InvalidArgument(std::string(op) + ": tensors on different devices (" + a.device().str() + " vs " +
                          b.device().str() + ")");
}

inline void check_same_dtype(const char* op, const Tensor& a, const Tensor& b) {
  if (a.dtype() != b.dtype())
    throw InvalidArgument(std::string(op) + ": dtype mismatch (" + dtype_name(a.dtype()) + " vs " +
                          dtype_name(b.dtype()) + ")");
}

}  // namespace sdserve::ops
