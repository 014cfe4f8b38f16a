#include "ops/concat.h"

#include <cstring>

#include "core/profile.h"
#include "ops/dispatch.h"

namespace sdserve::ops {

Tensor concat(const std::vector<Tensor>& parts, int64_t dim) {
  SD_PROFILE_SCOPE("concat");
  SD_CHECK_ARG(!parts.empty(), "concat: nothing to concatenate");
  const Tensor& first = parts[0];
  if (dim < 0) dim += first.dim();
  SD_CHECK_ARG(dim >= 0 && dim < first.dim(), "concat: dimension out of range");
  Shape out_shape = first.shape();
  out_shape[size_t(dim)] = 0;
  for (const Tensor& t : parts) {
    check_same_dtype("concat", first, t);
    check_same_device("concat", first, t);
    SD_CHECK_ARG(t.dim() == first.dim(), "concat: rank mismatch");
    for (int64_t d = 0; d < first.dim(); ++d)
      SD_CHECK_ARG(d == dim || t.size(d) == first.size(d),
                   "concat: " + shape_str(t.shape()) + " does not match " + shape_str(first.shape()));
    out_shape[size_t(dim)] += t.size(dim);
  }
  SD_RETURN_IF_CUDA(first, cuda::concat(parts, dim));
  if (first.device().type != DeviceType::CPU) no_backend("concat", first.device());
  Tensor out = Tensor::empty(out_shape, first.dtype(), first.device());
  int64_t outer = 1;
  for (int64_t d = 0; d < dim; ++d) outer *= out_shape[size_t(d)];
  int64_t inner = 1;
  for (int64_t d = dim + 1; d < first.dim(); ++d) inner *= out_shape[size_t(d)];
  const size_t es = dtype_size(first.dtype());
  const int64_t out_row = out_shape[size_t(dim)] * inner;
  int64_t offset = 0;
  for (const Tensor& t : parts) {
    const Tensor tc = t.contiguous();
    const int64_t row = t.size(dim) * inner;
    const char* src = static_cast<const char*>(tc.raw_data());
    char* dst = static_cast<char*>(out.raw_data());
    for (int64_t o = 0; o < outer; ++o)
      std::memcpy(dst + size_t(o * out_row + offset) * es, src + size_t(o * row) * es, size_t(row) * es);
    offset += row;
  }
  return out;
}

}  // namespace sdserve::ops
