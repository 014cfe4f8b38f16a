#include "ops/group_norm.h"

#include "core/profile.h"
#include "cpu/kernels.h"
#include "ops/dispatch.h"

namespace sdserve::ops {

Tensor group_norm(const Tensor& x, int64_t groups, const Tensor& gamma, const Tensor& beta, float eps, bool silu) {
  SD_PROFILE_SCOPE("group_norm");
  SD_CHECK_ARG(x.dim() >= 2, "group_norm: input must be [N, C, ...], got " + shape_str(x.shape()));
  const int64_t n = x.size(0), c = x.size(1);
  SD_CHECK_ARG(groups >= 1 && c % groups == 0, "group_norm: " + std::to_string(c) + " channels not divisible into " +
                                                   std::to_string(groups) + " groups");
  for (const Tensor* p : {&gamma, &beta}) {
    if (!p->defined()) continue;
    SD_CHECK_ARG(p->dim() == 1 && p->size(0) == c,
                 "group_norm: parameter " + shape_str(p->shape()) + " does not match input " + shape_str(x.shape()));
    check_same_dtype("group_norm", x, *p);
    check_same_device("group_norm", x, *p);
  }
  SD_RETURN_IF_CUDA(x, cuda::group_norm(x, groups, gamma, beta, eps, silu));
  if (x.device().type != DeviceType::CPU) no_backend("group_norm", x.device());
  const Tensor xc = x.contiguous();
  const Tensor g = gamma.defined() ? gamma.contiguous() : Tensor();
  const Tensor b = beta.defined() ? beta.contiguous() : Tensor();
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  const int64_t hw = (n * c) == 0 ? 0 : x.numel() / (n * c);
  SD_DISPATCH_FLOAT(x.dtype(), "group_norm", [&] {
    cpu::group_norm<scalar_t>(xc.data<scalar_t>(), g.defined() ? g.data<scalar_t>() : nullptr,
                              b.defined() ? b.data<scalar_t>() : nullptr, n, c, hw, groups, eps, silu,
                              out.data<scalar_t>());
  });
  return out;
}

}  // namespace sdserve::ops
