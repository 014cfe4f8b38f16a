// Small building blocks shared by the UNet and the VAE, named after their
// diffusers counterparts so weight names read the same in both codebases.
#pragma once
#include <string>

#include "core/tensor.h"
#include "io/weights.h"
#include "ops/conv2d.h"

namespace sdserve::layers {

// Loads `name` and checks it has `shape`; trailing size-1 dims are squeezed when the
// stored tensor has them and the wanted shape does not (LDM stores 1x1 convs where
// diffusers has Linear layers).
Tensor load(const WeightSource& src, const std::string& name, const Shape& shape, DType dt);
Shape stored_shape(const WeightSource& src, const std::string& name);

struct Linear {
  Tensor w, b;       // b may be undefined
  std::string name;  // the module's name under the source it was loaded from (LoRA targets)
  static Linear load(const WeightSource& src, const std::string& prefix, int64_t in, int64_t out, bool bias, DType dt);
  Tensor operator()(const Tensor& x) const;
};

struct Conv2d {
  Tensor w, b;
  ops::Conv2dOptions opt;
  std::string name;
  static Conv2d load(const WeightSource& src, const std::string& prefix, int64_t in, int64_t out, int64_t k, DType dt,
                     int64_t stride = 1);
  Tensor operator()(const Tensor& x) const;
};

struct Norm {
  Tensor w, b;
  static Norm load(const WeightSource& src, const std::string& prefix, int64_t ch, DType dt);
};

// diffusers ResnetBlock2D (time_embedding_norm "default", output_scale_factor 1).
struct ResBlock {
  Norm norm1, norm2;
  Conv2d conv1, conv2, shortcut;  // shortcut.w undefined when in == out
  Linear time_emb_proj;           // undefined in the VAE
  int64_t groups = 32;
  float eps = 1e-5f;
  static ResBlock load(const WeightSource& src, const std::string& prefix, int64_t in, int64_t out, int64_t temb_dim,
                       int64_t groups, float eps, DType dt);
  // temb_act: silu(time embedding) [N, temb_dim] or undefined.
  Tensor operator()(const Tensor& x, const Tensor& temb_act) const;
};

// Multi-head attention on token sequences: x [N, T, C], context [N, S, Cc].
struct Attention {
  Linear q, k, v, out;
  int64_t heads = 1;
  static Attention load(const WeightSource& src, const std::string& prefix, int64_t dim, int64_t context_dim,
                        int64_t heads, bool qkv_bias, DType dt);
  Tensor operator()(const Tensor& x, const Tensor& context) const;  // context undefined: self-attention
};

// [N, C, H, W] <-> [N, H*W, C]
Tensor nchw_to_tokens(const Tensor& x);
Tensor tokens_to_nchw(const Tensor& t, int64_t h, int64_t w);

}  // namespace sdserve::layers
