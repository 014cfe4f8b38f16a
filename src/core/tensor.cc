#include "core/tensor.h"

#include <cstring>
#include <limits>
#include <numeric>
#include <sstream>

#include "core/allocator.h"
#include "core/profile.h"
#ifdef SDSERVE_WITH_CUDA
#include "cuda/kernels.h"
#include "cuda/runtime.h"
#endif

namespace sdserve {

std::string shape_str(const Shape& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) {
    if (i) out += ", ";
    out += std::to_string(s[i]);
  }
  return out + "]";
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) {
    if (d < 0) throw InvalidArgument("negative dimension in shape " + shape_str(s));
    if (d != 0 && n > std::numeric_limits<int64_t>::max() / d)
      throw InvalidArgument("shape " + shape_str(s) + " overflows");
    n *= d;
  }
  return n;
}

Shape contiguous_strides(const Shape& shape) {
  Shape st(shape.size());
  int64_t acc = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    st[i] = acc;
    acc *= std::max<int64_t>(shape[i], 1);
  }
  return st;
}

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  Tensor t;
  const int64_t n = shape_numel(shape);
  t.buf_ = allocate(size_t(n) * dtype_size(dtype), device);
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  t.dtype_ = dtype;
  t.device_ = device;
  return t;
}

namespace {
// Host-side helpers below touch the bytes directly; device tensors go through to(Device).
void require_host(const Device& d, const char* what) {
  if (d.type != DeviceType::CPU)
    throw UnsupportedError(std::string(what) + " of a " + d.str() + " tensor: copy it to the CPU first");
}

#ifdef SDSERVE_WITH_CUDA
cuda::StridedDesc strided_desc(const Shape& shape, const Shape& strides) {
  // Size-1 dimensions are dropped (their stride is irrelevant), so any view of up to
  // kMaxDims non-trivial dimensions is accepted.
  cuda::StridedDesc d;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == 1) continue;
    if (d.ndim == cuda::kMaxDims)
      throw UnsupportedError("CUDA copy of a view with more than " + std::to_string(cuda::kMaxDims) + " dimensions");
    d.shape[d.ndim] = shape[i];
    d.stride[d.ndim] = strides[i];
    ++d.ndim;
  }
  return d;
}
#endif
}  // namespace

void Tensor::copy_(const Tensor& src) {
  SD_CHECK_ARG(defined() && src.defined(), "copy_ of an undefined tensor");
  SD_PROFILE_SCOPE("copy");
  SD_CHECK_ARG(src.shape() == shape_, "copy_: shape " + shape_str(src.shape()) + " into " + shape_str(shape_));
  SD_CHECK_ARG(src.device() == device_, "copy_: " + src.device().str() + " tensor into a " + device_.str() + " tensor");
  if (numel() == 0) return;
#ifdef SDSERVE_WITH_CUDA
  if (device_.type == DeviceType::CUDA) {
    SD_CHECK_ARG(src.dtype() == dtype_ || (is_float(src.dtype()) && is_float(dtype_)),
                 std::string("copy_: cannot convert ") + dtype_name(src.dtype()) + " to " + dtype_name(dtype_));
    cuda::set_device(device_.index);
    cuda::copy_strided(src.raw_data(), src.dtype(), strided_desc(src.shape(), src.strides()), raw_data(), dtype_,
                       strided_desc(shape_, strides_), cuda::stream(device_.index));
    return;
  }
#endif
  require_host(device_, "copy_");
  const Tensor s = src.to(dtype_).contiguous();
  if (is_contiguous()) {
    std::memcpy(raw_data(), s.raw_data(), nbytes());
    return;
  }
  // Scatter into a strided destination: walk the destination's index space.
  const size_t es = dtype_size(dtype_);
  std::vector<int64_t> idx(shape_.size(), 0);
  const char* from = static_cast<const char*>(s.raw_data());
  char* base = static_cast<char*>(raw_data());
  for (int64_t i = 0, n = numel(); i < n; ++i) {
    int64_t off = 0;
    for (size_t d = 0; d < idx.size(); ++d) off += idx[d] * strides_[d];
    std::memcpy(base + off * int64_t(es), from + i * int64_t(es), es);
    for (size_t d = idx.size(); d-- > 0;) {
      if (++idx[d] < shape_[d]) break;
      idx[d] = 0;
    }
  }
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
#ifdef SDSERVE_WITH_CUDA
  if (device.type == DeviceType::CUDA) {
    if (t.numel() > 0) {
      // Zero bytes are a zero of every dtype.
      cuda::memset_async(t.raw_data(), 0, t.nbytes(), device.index);
    }
    return t;
  }
#endif
  std::memset(t.raw_data(), 0, t.nbytes());
  return t;
}

Tensor Tensor::from_blob(void* data, const Shape& shape, DType dtype, std::shared_ptr<void> keepalive, Device device) {
  Tensor t;
  // Aliasing constructor: the tensor points at `data` but shares ownership of `keepalive`.
  t.buf_ = std::shared_ptr<void>(std::move(keepalive), data);
  if (!t.buf_) t.buf_ = std::shared_ptr<void>(std::shared_ptr<void>(), data);
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  t.dtype_ = dtype;
  t.device_ = device;
  shape_numel(shape);
  return t;
}

Tensor Tensor::from_vector(const std::vector<float>& v, const Shape& shape, DType dtype) {
  SD_CHECK_ARG(int64_t(v.size()) == shape_numel(shape),
               "from_vector: " + std::to_string(v.size()) + " values for shape " + shape_str(shape));
  Tensor t = empty(shape, dtype);
  convert_from_f32(v.data(), t.raw_data(), dtype, v.size());
  return t;
}

Tensor Tensor::from_ids(const std::vector<int32_t>& v, const Shape& shape) {
  SD_CHECK_ARG(int64_t(v.size()) == shape_numel(shape),
               "from_ids: " + std::to_string(v.size()) + " values for shape " + shape_str(shape));
  Tensor t = empty(shape, DType::I32);
  std::memcpy(t.raw_data(), v.data(), v.size() * 4);
  return t;
}

int64_t Tensor::size(int64_t d) const {
  const int64_t n = dim();
  if (d < 0) d += n;
  SD_CHECK_ARG(d >= 0 && d < n, "dimension out of range for tensor of shape " + shape_str(shape_));
  return shape_[size_t(d)];
}

bool Tensor::is_contiguous() const {
  // No elements: any strides address nothing (torch says contiguous too).
  for (int64_t d : shape_)
    if (d == 0) return true;
  int64_t acc = 1;
  for (size_t i = shape_.size(); i-- > 0;) {
    if (shape_[i] != 1 && strides_[i] != acc) return false;
    acc *= shape_[i];
  }
  return true;
}

bool Tensor::is_channels_last() const {
  if (dim() != 4) return false;
  for (int64_t d : shape_)
    if (d == 0) return false;
  int64_t acc = 1;
  for (const int d : {1, 3, 2, 0}) {  // C innermost, then W, H, N
    const size_t i = size_t(d);
    if (shape_[i] != 1 && strides_[i] != acc) return false;
    acc *= shape_[i];
  }
  return true;
}

Tensor Tensor::empty_channels_last(const Shape& nchw, DType dtype, Device device) {
  SD_CHECK_ARG(nchw.size() == 4, "empty_channels_last: shape must be [N, C, H, W], got " + shape_str(nchw));
  return empty({nchw[0], nchw[2], nchw[3], nchw[1]}, dtype, device).permute({0, 3, 1, 2});
}

Tensor Tensor::view(const Shape& shape) const {
  SD_CHECK_ARG(is_contiguous(), "view of a non-contiguous tensor");
  Shape s = shape;
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      SD_CHECK_ARG(infer < 0, "reshape: more than one -1 in " + shape_str(shape));
      infer = int64_t(i);
    } else {
      SD_CHECK_ARG(s[i] >= 0, "reshape: negative size in " + shape_str(shape));
      known *= s[i];
    }
  }
  if (infer >= 0) {
    SD_CHECK_ARG(known != 0 && numel() % known == 0,
                 "reshape: cannot view " + shape_str(shape_) + " as " + shape_str(shape));
    s[size_t(infer)] = numel() / known;
  }
  SD_CHECK_ARG(shape_numel(s) == numel(), "reshape: cannot view " + shape_str(shape_) + " as " + shape_str(shape));
  Tensor t = *this;
  t.shape_ = s;
  t.strides_ = contiguous_strides(s);
  return t;
}

Tensor Tensor::reshape(const Shape& shape) const { return is_contiguous() ? view(shape) : contiguous().view(shape); }

Tensor Tensor::transpose(int64_t d0, int64_t d1) const {
  const int64_t n = dim();
  if (d0 < 0) d0 += n;
  if (d1 < 0) d1 += n;
  SD_CHECK_ARG(d0 >= 0 && d0 < n && d1 >= 0 && d1 < n, "transpose: dimension out of range");
  Tensor t = *this;
  std::swap(t.shape_[size_t(d0)], t.shape_[size_t(d1)]);
  std::swap(t.strides_[size_t(d0)], t.strides_[size_t(d1)]);
  return t;
}

Tensor Tensor::permute(const std::vector<int64_t>& order) const {
  SD_CHECK_ARG(int64_t(order.size()) == dim(), "permute: order has wrong length");
  std::vector<bool> seen(order.size(), false);
  Tensor t = *this;
  for (size_t i = 0; i < order.size(); ++i) {
    const int64_t o = order[i];
    SD_CHECK_ARG(o >= 0 && o < dim() && !seen[size_t(o)], "permute: bad order");
    seen[size_t(o)] = true;
    t.shape_[i] = shape_[size_t(o)];
    t.strides_[i] = strides_[size_t(o)];
  }
  return t;
}

Tensor Tensor::narrow(int64_t d, int64_t start, int64_t length) const {
  if (d < 0) d += dim();
  SD_CHECK_ARG(d >= 0 && d < dim(), "narrow: dimension out of range");
  SD_CHECK_ARG(start >= 0 && length >= 0 && start + length <= shape_[size_t(d)],
               "narrow: range out of bounds for shape " + shape_str(shape_));
  Tensor t = *this;
  t.offset_ += size_t(start * strides_[size_t(d)]) * dtype_size(dtype_);
  t.shape_[size_t(d)] = length;
  return t;
}

Tensor Tensor::select(int64_t d, int64_t index) const {
  if (d < 0) d += dim();
  Tensor t = narrow(d, index, 1);
  t.shape_.erase(t.shape_.begin() + d);
  t.strides_.erase(t.strides_.begin() + d);
  return t;
}

namespace {
// Copies a strided tensor into contiguous dst, element size `es`.
void strided_copy(const char* src, const Shape& shape, const Shape& strides, size_t es, char* dst) {
  const size_t nd = shape.size();
  if (nd == 0) {
    std::memcpy(dst, src, es);
    return;
  }
  const int64_t n = shape_numel(shape);
  if (n == 0) return;
  std::vector<int64_t> idx(nd, 0);
  const int64_t inner = shape[nd - 1];
  const int64_t inner_stride = strides[nd - 1];
  for (int64_t done = 0; done < n; done += inner) {
    int64_t off = 0;
    for (size_t i = 0; i + 1 < nd; ++i) off += idx[i] * strides[i];
    const char* s = src + off * int64_t(es);
    if (inner_stride == 1) {
      std::memcpy(dst, s, size_t(inner) * es);
      dst += size_t(inner) * es;
    } else {
      for (int64_t j = 0; j < inner; ++j) {
        std::memcpy(dst, s + j * inner_stride * int64_t(es), es);
        dst += es;
      }
    }
    for (size_t i = nd - 1; i-- > 0;) {
      if (++idx[i] < shape[i]) break;
      idx[i] = 0;
    }
  }
}
}  // namespace

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  return clone();
}

Tensor Tensor::clone() const {
  SD_CHECK_ARG(defined(), "clone of an undefined tensor");
  SD_PROFILE_SCOPE("copy");
  Tensor t = empty(shape_, dtype_, device_);
  if (device_.type != DeviceType::CPU) {
    t.copy_(*this);
    return t;
  }
  strided_copy(static_cast<const char*>(raw_data()), shape_, strides_, dtype_size(dtype_),
               static_cast<char*>(t.raw_data()));
  return t;
}

Tensor Tensor::to(DType dtype) const {
  if (dtype == dtype_) return *this;
  SD_PROFILE_SCOPE("cast");
  if (device_.type != DeviceType::CPU) {
    Tensor out = empty(shape_, dtype, device_);
    out.copy_(*this);
    return out;
  }
  Tensor src = contiguous();
  const size_t n = size_t(numel());
  Tensor out = empty(shape_, dtype, device_);
  if (dtype == DType::F32) {
    convert_to_f32(src.raw_data(), dtype_, out.data<float>(), n);
  } else {
    std::vector<float> tmp(n);
    convert_to_f32(src.raw_data(), dtype_, tmp.data(), n);
    convert_from_f32(tmp.data(), out.raw_data(), dtype, n);
  }
  return out;
}

Tensor Tensor::to(Device device) const {
  if (device == device_) return *this;
  SD_PROFILE_SCOPE("host<->device copy");
#ifdef SDSERVE_WITH_CUDA
  if (device_.type == DeviceType::CPU && device.type == DeviceType::CUDA) {
    const Tensor src = contiguous();
    Tensor out = empty(shape_, dtype_, device);
    cuda::copy_to_device(out.raw_data(), src.raw_data(), src.nbytes(), device.index);
    return out;
  }
  if (device_.type == DeviceType::CUDA && device.type == DeviceType::CPU) {
    const Tensor src = contiguous();
    Tensor out = empty(shape_, dtype_, device);
    cuda::copy_to_host(out.raw_data(), src.raw_data(), src.nbytes(), device_.index);
    return out;
  }
#endif
  throw UnsupportedError("copy from " + device_.str() + " to " + device.str() + " is not available in this build");
}

std::vector<float> Tensor::to_vector() const {
  if (device_.type != DeviceType::CPU) return to(Device::cpu()).to_vector();
  Tensor src = contiguous();
  std::vector<float> out(static_cast<size_t>(numel()));
  convert_to_f32(src.raw_data(), dtype_, out.data(), out.size());
  return out;
}

std::string Tensor::repr() const {
  std::ostringstream os;
  os << "Tensor(" << shape_str(shape_) << ", " << dtype_name(dtype_) << ", " << device_.str() << ")";
  return os.str();
}

}  // namespace sdserve
