#include "ops/layer_norm.h"

#include "core/profile.h"
#include "cpu/kernels.h"
#include "ops/dispatch.h"

namespace sdserve::ops {

Tensor layer_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps) {
  SD_PROFILE_SCOPE("layer_norm");
  SD_CHECK_ARG(x.dim() >= 1, "layer_norm: input must have at least one dimension");
  SD_CHECK_ARG(eps > 0.f, "layer_norm: eps must be positive");
  const int64_t dim = x.size(-1);
  for (const Tensor* p : {&gamma, &beta}) {
    if (!p->defined()) continue;
    SD_CHECK_ARG(p->dim() == 1 && p->size(0) == dim,
                 "layer_norm: parameter " + shape_str(p->shape()) + " does not match input " + shape_str(x.shape()));
    check_same_dtype("layer_norm", x, *p);
    check_same_device("layer_norm", x, *p);
  }
  SD_RETURN_IF_CUDA(x, cuda::layer_norm(x, gamma, beta, eps));
  if (x.device().type != DeviceType::CPU) no_backend("layer_norm", x.device());
  const Tensor xc = x.contiguous();
  const Tensor g = gamma.defined() ? gamma.contiguous() : Tensor();
  const Tensor b = beta.defined() ? beta.contiguous() : Tensor();
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  const int64_t rows = dim == 0 ? 0 : xc.numel() / dim;
  SD_DISPATCH_FLOAT(x.dtype(), "layer_norm", [&] {
    cpu::layer_norm<scalar_t>(xc.data<scalar_t>(), g.defined() ? g.data<scalar_t>() : nullptr,
                              b.defined() ? b.data<scalar_t>() : nullptr, rows, dim, eps, out.data<scalar_t>());
  });
  return out;
}

}  // namespace sdserve::ops
