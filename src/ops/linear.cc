#include "ops/linear.h"

#include "core/profile.h"
#include "cpu/kernels.h"
#include "ops/dispatch.h"

namespace sdserve::ops {

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor* bias) {
  SD_PROFILE_SCOPE("linear");
  SD_CHECK_ARG(weight.dim() == 2, "linear: weight must be 2-D, got " + shape_str(weight.shape()));
  SD_CHECK_ARG(x.dim() >= 1, "linear: input must have at least one dimension");
  const int64_t in = weight.size(1), out_f = weight.size(0);
  SD_CHECK_ARG(x.size(-1) == in,
               "linear: input " + shape_str(x.shape()) + " does not match weight " + shape_str(weight.shape()));
  check_same_dtype("linear", x, weight);
  check_same_device("linear", x, weight);
  if (bias) {
    SD_CHECK_ARG(bias->dim() == 1 && bias->size(0) == out_f,
                 "linear: bias " + shape_str(bias->shape()) + " does not match weight " + shape_str(weight.shape()));
    check_same_dtype("linear", x, *bias);
  }
  SD_RETURN_IF_CUDA(x, cuda::linear(x, weight, bias));
  if (x.device().type != DeviceType::CPU) no_backend("linear", x.device());
  Shape out_shape = x.shape();
  out_shape.back() = out_f;
  const int64_t rows = x.numel() / std::max<int64_t>(in, 1);
  const bool f32 = x.dtype() == DType::F32;
  const Tensor xf = x.to(DType::F32).contiguous();
  const Tensor wf = weight.to(DType::F32).contiguous();
  Tensor bf;
  if (bias) bf = bias->to(DType::F32).contiguous();
  Tensor y = Tensor::empty(out_shape, DType::F32, x.device());
  // One GEMM per sample (the leading dimension; per row for a small 2-D input such as the UNet's
  // time embedding): the GEMM's blocking, and so its rounding, depends on the row count, and a sample
  // must come out the same whatever else is in its batch (the server's batched jobs equal their lone
  // runs byte for byte: StableDiffusion::generate_batch). Large 2-D inputs stay one GEMM.
  int64_t samples = 1;
  if (x.dim() >= 3)
    samples = x.size(0);
  else if (x.dim() == 2 && rows <= 64)
    samples = rows;
  const int64_t per = samples > 0 ? rows / samples : rows;
  for (int64_t s = 0; s < samples; ++s)
    cpu::linear_f32(xf.data<float>() + s * per * in, per, in, wf.data<float>(), out_f,
                    bias ? bf.data<float>() : nullptr, y.data<float>() + s * per * out_f);
  return f32 ? y : y.to(x.dtype());
}

}  // namespace sdserve::ops
