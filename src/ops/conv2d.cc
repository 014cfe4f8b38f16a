#include "ops/conv2d.h"

#include <atomic>

#include "core/profile.h"
#include "cpu/conv.h"
#include "ops/dispatch.h"
#ifdef SDSERVE_WITH_CUDA
#include "cuda/conv.h"
#endif

namespace sdserve::ops {

namespace {
std::atomic<bool> g_cpu_channels_last{false};
}  // namespace

void set_cpu_channels_last_for_testing(bool on) { g_cpu_channels_last = on; }

bool conv2d_keeps_channels_last(const Tensor& x) {
#ifdef SDSERVE_WITH_CUDA
  if (x.device().type == DeviceType::CUDA) return cuda::keep_channels_last(x.dtype());
#endif
  return x.device().type == DeviceType::CPU && g_cpu_channels_last;
}

Tensor conv2d(const Tensor& x, const Tensor& weight, const Tensor* bias, const Conv2dOptions& opt) {
  const bool k1 = weight.dim() == 4 && weight.size(2) == 1 && weight.size(3) == 1;
  const bool k3 = weight.dim() == 4 && weight.size(2) == 3 && weight.size(3) == 3;
  SD_PROFILE_SCOPE(k1 ? "conv2d 1x1" : k3 ? "conv2d 3x3" : "conv2d");
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
  // One image at a time: oneDNN and the Winograd path pick other kernels and blockings for other
  // batch sizes, and an image must come out the same whatever else is in its batch (the server's
  // batched jobs equal their lone runs byte for byte: StableDiffusion::generate_batch).
  cpu::Conv2dParams one = p;
  one.n = 1;
  const int64_t in_per = p.c * p.h * p.w, out_per = p.o * p.oh() * p.ow();
  for (int64_t i = 0; i < p.n; ++i)
    cpu::conv2d_f32(one, xf.data<float>() + i * in_per, wf.data<float>(), bias ? bf.data<float>() : nullptr,
                    y.data<float>() + i * out_per);
  Tensor out = x.dtype() == DType::F32 ? y : y.to(x.dtype());
  if (g_cpu_channels_last && out.dim() == 4 && !out.is_channels_last()) {
    Tensor t = Tensor::empty_channels_last(out.shape(), out.dtype(), out.device());
    t.copy_(out);
    return t;
  }
  return out;
}

Tensor conv2d_weight_layout(const Tensor& weight) {
#ifdef SDSERVE_WITH_CUDA
  if (weight.defined() && weight.dim() == 4 && weight.device().type == DeviceType::CUDA &&
      cuda::conv_channels_last(weight.dtype()))
    return weight.permute({0, 2, 3, 1}).contiguous().permute({0, 3, 1, 2});
#endif
  return weight;
}

}  // namespace sdserve::ops
