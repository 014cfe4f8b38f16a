#include "ops/conv2d.h"

#include "core/profile.h"
#include "cpu/conv.h"
#include "ops/dispatch.h"

namespace sdserve::ops {

Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor* bias, const Conv2dOptions& opt) {
  SD_PROFILE_SCOPE("conv2d");
  SD_CHECK_ARG(x.dim() == 4, "conv2d: input must be [N, C, H, W], got " + shape_str(x.shape()));
  SD_CHECK_ARG(weight.dim() == 4, "conv2d: weight must be [O, C, kh, kw], got " + shape_str(weight.shape()));
  SD_CHECK_ARG(weight.size(1) == x.size(1),
               "conv2d: weight " + shape_str(weight.shape()) + " does not match input " + shape_str(x.shape()));
  SD_CHECK_ARG(opt.stride >= 1 && opt.pad_t >= 0 && opt.pad_l >= 0 && opt.pad_b >= 0 && opt.pad_r >= 0,
               "conv2d: bad stride/padding");
  check_same_dtype("conv2d", x, weight);
  check_same_device("conv2d", x, weight);
  if (bias) {
    SD_CHECK_ARG(bias->dim() == 1 && bias->size(0) == weight.size(0), "conv2d: bias does not match weight");
    check_same_dtype("conv2d", x, *bias);
  }
  cpu::Conv2dParams p{x.size(0),  x.size(1),  x.size(2), x.size(3), weight.size(0), weight.size(2), weight.size(3),
                      opt.stride, opt.stride, opt.pad_t, opt.pad_l, opt.pad_b,      opt.pad_r};
  SD_CHECK_ARG(p.h + p.pt + p.pb >= p.kh && p.w + p.pl + p.pr >= p.kw,
               "conv2d: kernel larger than padded input " + shape_str(x.shape()));
  SD_RETURN_IF_CUDA(x, cuda::conv2d(x, weight, bias, opt.stride, opt.pad_t, opt.pad_l, opt.pad_b, opt.pad_r));
  if (x.device().type != DeviceType::CPU) no_backend("conv2d", x.device());
  const Tensor xf = x.to(DType::F32).contiguous(), wf = weight.to(DType::F32).contiguous();
  Tensor bf;
  if (bias) bf = bias->to(DType::F32).contiguous();
  Tensor y = Tensor::empty({p.n, p.o, p.oh(), p.ow()}, DType::F32, x.device());
  cpu::conv2d_f32(p, xf.data<float>(), wf.data<float>(), bias ? bf.data<float>() : nullptr, y.data<float>());
  return x.dtype() == DType::F32 ? y : y.to(x.dtype());
}

}  // namespace sdserve::ops
