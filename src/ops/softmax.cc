#include "ops/softmax.h"

#include "core/profile.h"
#include "cpu/kernels.h"
#include "ops/dispatch.h"

namespace sdserve::ops {

Tensor softmax(const Tensor& x) {
  SD_PROFILE_SCOPE("softmax");
  SD_CHECK_ARG(x.dim() >= 1, "softmax: input must have at least one dimension");
  SD_RETURN_IF_CUDA(x, cuda::softmax(x));
  if (x.device().type != DeviceType::CPU) no_backend("softmax", x.device());
  const Tensor xc = x.contiguous();
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  const int64_t cols = x.size(-1);
  const int64_t rows = cols == 0 ? 0 : x.numel() / cols;
  SD_DISPATCH_FLOAT(x.dtype(), "softmax",
                    [&] { cpu::softmax_rows<scalar_t>(xc.data<scalar_t>(), rows, cols, out.data<scalar_t>()); });
  return out;
}

}  // namespace sdserve::ops
