// A strided view over a reference-counted buffer. Views (reshape, transpose,
// slice) share the buffer; `contiguous()` and `to()` copy only when needed.
// A tensor may borrow memory it does not own (an mmapped weight file): the
// `keepalive` handle keeps that mapping alive for as long as any view exists.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "core/device.h"
#include "core/dtype.h"
#include "core/error.h"

namespace sdserve {

using Shape = std::vector<int64_t>;

std::string shape_str(const Shape& s);
int64_t shape_numel(const Shape& s);

class Tensor {
 public:
  Tensor() = default;

  static Tensor empty(const Shape& shape, DType dtype, Device device = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dtype, Device device = Device::cpu());
  // Wraps memory owned elsewhere; `keepalive` is held by every view. Contiguous.
  static Tensor from_blob(void* data, const Shape& shape, DType dtype, std::shared_ptr<void> keepalive,
                          Device device = Device::cpu());
  // Copies values in (converting from f32 to the tensor's dtype).
  static Tensor from_vector(const std::vector<float>& v, const Shape& shape, DType dtype = DType::F32);
  static Tensor from_ids(const std::vector<int32_t>& v, const Shape& shape);

  bool defined() const { return buf_ != nullptr; }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  int64_t dim() const { return int64_t(shape_.size()); }
  // Negative indices count from the end, like PyTorch.
  int64_t size(int64_t d) const;
  int64_t numel() const { return shape_numel(shape_); }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype_); }
  bool is_contiguous() const;
  // A 4-D [N, C, H, W] tensor whose memory is dense [N, H, W, C] ("channels last", PyTorch's
  // torch.channels_last): what a CUDA half-precision convolution returns (docs/CUDA.md). Every op
  // accepts it (those without a channels-last kernel make it contiguous first); view() does not.
  bool is_channels_last() const;
  // An uninitialised channels-last tensor of logical shape [N, C, H, W].
  static Tensor empty_channels_last(const Shape& nchw, DType dtype, Device device = Device::cpu());

  void* raw_data() const { return static_cast<char*>(buf_.get()) + offset_; }
  template <typename T>
  T* data() const {
    if (dtype_of<T>::value != dtype_)
      throw InvalidArgument(std::string("tensor is ") + dtype_name(dtype_) + ", accessed as " +
                            dtype_name(dtype_of<T>::value));
    return static_cast<T*>(raw_data());
  }

  // Views.
  Tensor reshape(const Shape& shape) const;  // -1 allowed once; copies if not contiguous
  Tensor view(const Shape& shape) const;     // requires contiguous
  Tensor transpose(int64_t d0, int64_t d1) const;
  Tensor permute(const std::vector<int64_t>& order) const;
  Tensor narrow(int64_t d, int64_t start, int64_t length) const;
  Tensor select(int64_t d, int64_t index) const;  // drops dimension d

  // Copies.
  Tensor contiguous() const;
  Tensor clone() const;
  Tensor to(DType dtype) const;  // no copy if already that dtype
  Tensor to(Device device) const;
  // Writes src's values into this tensor (which may be a strided view, e.g. a narrow()ed window
  // of a larger tensor), converting between float dtypes. Same shape and device required.
  void copy_(const Tensor& src);
  std::vector<float> to_vector() const;  // any float dtype, read as f32 (device tensors are copied)

  std::string repr() const;

 private:
  std::shared_ptr<void> buf_;
  size_t offset_ = 0;  // bytes
  Shape shape_;
  Shape strides_;  // in elements
  DType dtype_ = DType::F32;
  Device device_;
};

Shape contiguous_strides(const Shape& shape);

}  // namespace sdserve
