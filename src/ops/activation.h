#pragma once
#include <string_view>

#include "core/tensor.h"

namespace sdserve::ops {

enum class Activation {
  GELU,       // exact, erf-based (PyTorch nn.GELU(), HF "gelu")
  GELUTanh,   // tanh approximation (HF "gelu_new" / "gelu_pytorch_tanh")
  QuickGELU,  // x * sigmoid(1.702 x), OpenAI CLIP (HF "quick_gelu")
  SiLU,
};

// Maps a HF config `hidden_act` string; throws UnsupportedError for unknown names.
Activation activation_from_name(std::string_view name);
const char* activation_name(Activation a);
Tensor activation(const Tensor& x, Activation kind);

// GEGLU (diffusers): the last dimension splits into [hidden, gate]; hidden * gelu(gate), exact GELU.
Tensor geglu(const Tensor& x);

}  // namespace sdserve::ops
