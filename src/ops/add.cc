#include "ops/add.h"

#include "core/profile.h"
#include "cpu/kernels.h"
#include "ops/dispatch.h"

namespace sdserve::ops {

Tensor add(const Tensor& a, const Tensor& b) {
  SD_PROFILE_SCOPE("add");
  check_same_dtype("add", a, b);
  check_same_device("add", a, b);
  SD_CHECK_ARG(b.dim() <= a.dim(), "add: cannot broadcast " + shape_str(b.shape()) + " to " + shape_str(a.shape()));
  for (int64_t i = 1; i <= b.dim(); ++i)
    SD_CHECK_ARG(b.size(-i) == a.size(-i),
                 "add: cannot broadcast " + shape_str(b.shape()) + " to " + shape_str(a.shape()));
  SD_RETURN_IF_CUDA(a, cuda::add(a, b));
  if (a.device().type != DeviceType::CPU) no_backend("add", a.device());
  const Tensor ac = a.contiguous(), bc = b.contiguous();
  Tensor out = Tensor::empty(a.shape(), a.dtype(), a.device());
  SD_DISPATCH_FLOAT(a.dtype(), "add", [&] {
    cpu::add_broadcast<scalar_t>(ac.data<scalar_t>(), ac.numel(), bc.data<scalar_t>(), bc.numel(),
                                 out.data<scalar_t>());
  });
  return out;
}

Tensor add_channelwise(const Tensor& x, const Tensor& b) {
  SD_PROFILE_SCOPE("add_channelwise");
  SD_CHECK_ARG(x.dim() >= 2 && b.dim() == 2 && b.size(0) == x.size(0) && b.size(1) == x.size(1),
               "add_channelwise: cannot add " + shape_str(b.shape()) + " to " + shape_str(x.shape()));
  check_same_dtype("add_channelwise", x, b);
  check_same_device("add_channelwise", x, b);
  SD_RETURN_IF_CUDA(x, cuda::add_channelwise(x, b));
  if (x.device().type != DeviceType::CPU) no_backend("add_channelwise", x.device());
  const Tensor xc = x.contiguous(), bc = b.contiguous();
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  const int64_t planes = x.size(0) * x.size(1), hw = planes == 0 ? 0 : x.numel() / planes;
  SD_DISPATCH_FLOAT(x.dtype(), "add_channelwise", [&] {
    cpu::add_per_plane<scalar_t>(xc.data<scalar_t>(), bc.data<scalar_t>(), planes, hw, out.data<scalar_t>());
  });
  return out;
}

}  // namespace sdserve::ops
