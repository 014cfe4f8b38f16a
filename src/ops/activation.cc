#include "ops/activation.h"

#include "core/profile.h"
#include "cpu/kernels.h"
#include "ops/dispatch.h"

namespace sdserve::ops {

Activation activation_from_name(std::string_view n) {
  if (n == "gelu") return Activation::GELU;
  if (n == "gelu_new" || n == "gelu_pytorch_tanh" || n == "gelu_fast") return Activation::GELUTanh;
  if (n == "quick_gelu") return Activation::QuickGELU;
  if (n == "silu" || n == "swish") return Activation::SiLU;
  throw UnsupportedError("unsupported activation '" + std::string(n) + "'");
}

const char* activation_name(Activation a) {
  switch (a) {
    case Activation::GELU:
      return "gelu";
    case Activation::GELUTanh:
      return "gelu_tanh";
    case Activation::QuickGELU:
      return "quick_gelu";
    case Activation::SiLU:
      return "silu";
  }
  return "?";
}

Tensor activation(const Tensor& x, Activation kind) {
  SD_PROFILE_SCOPE("activation");
  SD_RETURN_IF_CUDA(x, cuda::activation(x, static_cast<cuda::Act>(static_cast<int>(kind))));
  if (x.device().type != DeviceType::CPU) no_backend("activation", x.device());
  const Tensor xc = x.contiguous();
  Tensor out = Tensor::empty(x.shape(), x.dtype(), x.device());
  const auto k = static_cast<cpu::ActKind>(static_cast<int>(kind));
  SD_DISPATCH_FLOAT(x.dtype(), "activation",
                    [&] { cpu::activation<scalar_t>(xc.data<scalar_t>(), xc.numel(), k, out.data<scalar_t>()); });
  return out;
}

Tensor geglu(const Tensor& x) {
  SD_PROFILE_SCOPE("geglu");
  SD_CHECK_ARG(x.dim() >= 1 && x.size(-1) % 2 == 0,
               "geglu: last dimension must be even (hidden and gate halves), got " + shape_str(x.shape()));
  SD_RETURN_IF_CUDA(x, cuda::geglu(x));
  if (x.device().type != DeviceType::CPU) no_backend("geglu", x.device());
  const Tensor xc = x.contiguous();
  Shape shape = x.shape();
  const int64_t inner = shape.back() / 2;
  shape.back() = inner;
  Tensor out = Tensor::empty(shape, x.dtype(), x.device());
  const int64_t rows = inner == 0 ? 0 : xc.numel() / (2 * inner);
  SD_DISPATCH_FLOAT(x.dtype(), "geglu",
                    [&] { cpu::geglu<scalar_t>(xc.data<scalar_t>(), rows, inner, out.data<scalar_t>()); });
  return out;
}

}  // namespace sdserve::ops
