#include "ops/add.h"

#include "cpu/kernels.h"
#include "ops/dispatch.h"

namespace sdserve::ops {

Tensor add(const Tensor& a, const Tensor& b) {
  check_same_dtype("add", a, b);
  check_same_device("add", a, b);
  SD_CHECK_ARG(b.dim() <= a.dim(), "add: cannot broadcast " + shape_str(b.shape()) + " to " + shape_str(a.shape()));
  for (int64_t i = 1; i <= b.dim(); ++i)
    SD_CHECK_ARG(b.size(-i) == a.size(-i),
                 "add: cannot broadcast " + shape_str(b.shape()) + " to " + shape_str(a.shape()));
  if (a.device().type != DeviceType::CPU) no_backend("add", a.device());
  const Tensor ac = a.contiguous(), bc = b.contiguous();
  Tensor out = Tensor::empty(a.shape(), a.dtype(), a.device());
  SD_DISPATCH_FLOAT(a.dtype(), "add", [&] {
    cpu::add_broadcast<scalar_t>(ac.data<scalar_t>(), ac.numel(), bc.data<scalar_t>(), bc.numel(),
                                 out.data<scalar_t>());
  });
  return out;
}

}  // namespace sdserve::ops
