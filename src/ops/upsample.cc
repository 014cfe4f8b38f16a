#include "ops/upsample.h"

#include "core/profile.h"
#include "cpu/kernels.h"
#include "ops/dispatch.h"

namespace sdserve::ops {

Tensor upsample_nearest(const Tensor& x, int64_t oh, int64_t ow) {
  SD_PROFILE_SCOPE("upsample_nearest");
  SD_CHECK_ARG(x.dim() == 4, "upsample_nearest: input must be [N, C, H, W], got " + shape_str(x.shape()));
  SD_CHECK_ARG(oh >= 1 && ow >= 1 && x.size(2) >= 1 && x.size(3) >= 1, "upsample_nearest: empty size");
  SD_RETURN_IF_CUDA(x, cuda::upsample_nearest(x, oh, ow));
  if (x.device().type != DeviceType::CPU) no_backend("upsample_nearest", x.device());
  const Tensor xc = x.contiguous();
  Tensor out = Tensor::empty({x.size(0), x.size(1), oh, ow}, x.dtype(), x.device());
  SD_DISPATCH_FLOAT(x.dtype(), "upsample_nearest", [&] {
    cpu::upsample_nearest<scalar_t>(xc.data<scalar_t>(), x.size(0) * x.size(1), x.size(2), x.size(3), oh, ow,
                                    out.data<scalar_t>());
  });
  return out;
}

}  // namespace sdserve::ops
