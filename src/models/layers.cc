#include "models/layers.h"

#include "ops/activation.h"
#include "ops/add.h"
#include "ops/attention.h"
#include "ops/conv2d.h"
#include "ops/group_norm.h"
#include "ops/linear.h"

namespace sdserve::layers {

Shape stored_shape(const WeightSource& src, const std::string& name) {
  const TensorInfo* i = src.info(name);
  if (!i) throw NotFoundError(src.describe() + ": missing tensor '" + src.prefix() + name + "'");
  return i->shape;
}

Tensor load(const WeightSource& src, const std::string& name, const Shape& shape, DType dt) {
  Tensor t = src.get(name, dt);
  if (t.shape() == shape) return t;
  // A 1x1 conv [O, I, 1, 1] standing in for a Linear [O, I].
  if (t.dim() > int64_t(shape.size()) && t.numel() == shape_numel(shape)) {
    bool trailing_ones = true;
    for (int64_t d = int64_t(shape.size()); d < t.dim(); ++d) trailing_ones &= t.size(d) == 1;
    bool prefix_equal = true;
    for (size_t d = 0; d < shape.size(); ++d) prefix_equal &= t.size(int64_t(d)) == shape[d];
    if (trailing_ones && prefix_equal) return t.view(shape);
  }
  throw ModelFormatError(src.describe() + ": tensor '" + src.prefix() + name + "' has shape " + shape_str(t.shape()) +
                         ", expected " + shape_str(shape));
}

Linear Linear::load(const WeightSource& src, const std::string& p, int64_t in, int64_t out, bool bias, DType dt) {
  Linear l;
  l.name = p;
  l.w = layers::load(src, p + ".weight", {out, in}, dt);
  if (bias) l.b = layers::load(src, p + ".bias", {out}, dt);
  return l;
}

Tensor Linear::operator()(const Tensor& x) const { return ops::linear(x, w, b.defined() ? &b : nullptr); }

Conv2d Conv2d::load(const WeightSource& src, const std::string& p, int64_t in, int64_t out, int64_t k, DType dt,
                    int64_t stride) {
  Conv2d c;
  c.name = p;
  c.w = ops::conv2d_weight_layout(layers::load(src, p + ".weight", {out, in, k, k}, dt));
  c.b = layers::load(src, p + ".bias", {out}, dt);
  c.opt = ops::Conv2dOptions::same(k, stride);
  return c;
}

Tensor Conv2d::operator()(const Tensor& x) const { return ops::conv2d(x, w, b.defined() ? &b : nullptr, opt); }

Norm Norm::load(const WeightSource& src, const std::string& p, int64_t ch, DType dt) {
  return {layers::load(src, p + ".weight", {ch}, dt), layers::load(src, p + ".bias", {ch}, dt)};
}

ResBlock ResBlock::load(const WeightSource& src, const std::string& p, int64_t in, int64_t out, int64_t temb_dim,
                        int64_t groups, float eps, DType dt) {
  ResBlock r;
  r.groups = groups;
  r.eps = eps;
  r.norm1 = Norm::load(src, p + ".norm1", in, dt);
  r.conv1 = Conv2d::load(src, p + ".conv1", in, out, 3, dt);
  if (temb_dim > 0) r.time_emb_proj = Linear::load(src, p + ".time_emb_proj", temb_dim, out, true, dt);
  r.norm2 = Norm::load(src, p + ".norm2", out, dt);
  r.conv2 = Conv2d::load(src, p + ".conv2", out, out, 3, dt);
  if (in != out) r.shortcut = Conv2d::load(src, p + ".conv_shortcut", in, out, 1, dt);
  return r;
}

Tensor ResBlock::operator()(const Tensor& x, const Tensor& temb_act) const {
  Tensor h = conv1(ops::group_norm(x, groups, norm1.w, norm1.b, eps, /*silu=*/true));
  if (time_emb_proj.w.defined() && temb_act.defined()) h = ops::add_channelwise(h, time_emb_proj(temb_act));
  h = conv2(ops::group_norm(h, groups, norm2.w, norm2.b, eps, /*silu=*/true));
  return ops::add(shortcut.w.defined() ? shortcut(x) : x, h);
}

Attention Attention::load(const WeightSource& src, const std::string& p, int64_t dim, int64_t context_dim,
                          int64_t heads, bool qkv_bias, DType dt) {
  SD_CHECK_ARG(heads >= 1 && dim % heads == 0,
               "attention: " + std::to_string(dim) + " channels not divisible by " + std::to_string(heads) + " heads");
  Attention a;
  a.heads = heads;
  a.q = Linear::load(src, p + ".to_q", dim, dim, qkv_bias, dt);
  a.k = Linear::load(src, p + ".to_k", context_dim, dim, qkv_bias, dt);
  a.v = Linear::load(src, p + ".to_v", context_dim, dim, qkv_bias, dt);
  a.out = Linear::load(src, p + ".to_out.0", dim, dim, true, dt);
  return a;
}

Tensor Attention::operator()(const Tensor& x, const Tensor& context) const {
  const Tensor& ctx = context.defined() ? context : x;
  const int64_t n = x.size(0), t = x.size(1), s = ctx.size(1), dim = q.w.size(0), hd = dim / heads;
  auto split = [&](const Tensor& y, int64_t len) { return y.view({n, len, heads, hd}).permute({0, 2, 1, 3}); };
  Tensor o = ops::attention(split(q(x), t), split(k(ctx), s), split(v(ctx), s), /*causal=*/false);
  return out(o.permute({0, 2, 1, 3}).reshape({n, t, dim}));
}

Tensor nchw_to_tokens(const Tensor& x) {
  // Free for a channels-last image (its memory is [N, H*W, C] already); a copy otherwise.
  return x.permute({0, 2, 3, 1}).reshape({x.size(0), x.size(2) * x.size(3), x.size(1)});
}

Tensor tokens_to_nchw(const Tensor& t, int64_t h, int64_t w) {
  // [N, H*W, C] is a channels-last image as it stands: kept so where convolutions read that.
  const Tensor img = t.reshape({t.size(0), h, w, t.size(2)}).permute({0, 3, 1, 2});
  return ops::conv2d_keeps_channels_last(t) ? img : img.contiguous();
}

}  // namespace sdserve::layers
