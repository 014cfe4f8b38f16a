#include "models/vae.h"

#include <algorithm>
#include <cstring>
#include <functional>

#include "ops/add.h"
#include "ops/group_norm.h"
#include "ops/upsample.h"

namespace sdserve {

namespace {
constexpr float kEps = 1e-6f;  // every GroupNorm in diffusers' AutoencoderKL
}

VAE::Mid VAE::load_mid(const WeightSource& src, const std::string& p, int64_t ch, DType dt) const {
  Mid m;
  const int64_t G = cfg_.norm_num_groups;
  m.res0 = layers::ResBlock::load(src, p + ".resnets.0", ch, ch, 0, G, kEps, dt);
  m.res1 = layers::ResBlock::load(src, p + ".resnets.1", ch, ch, 0, G, kEps, dt);
  m.has_attn = cfg_.mid_block_attention;
  if (m.has_attn) {
    m.attn_norm = layers::Norm::load(src, p + ".attentions.0.group_norm", ch, dt);
    m.attn = layers::Attention::load(src, p + ".attentions.0", ch, ch, 1, true, dt);
  }
  return m;
}

Tensor VAE::run_mid(const Mid& m, const Tensor& x) const {
  Tensor h = m.res0(x, Tensor());
  if (m.has_attn) {
    const int64_t H = h.size(2), W = h.size(3);
    const Tensor n = ops::group_norm(h, cfg_.norm_num_groups, m.attn_norm.w, m.attn_norm.b, kEps);
    h = ops::add(h, layers::tokens_to_nchw(m.attn(layers::nchw_to_tokens(n), Tensor()), H, W));
  }
  return m.res1(h, Tensor());
}

VAE VAE::load(const VAEConfig& cfg, const WeightSource& src, DType dt) {
  VAE v;
  v.cfg_ = cfg;
  const auto& ch = cfg.block_out_channels;
  const size_t nb = ch.size();
  SD_CHECK_ARG(nb >= 1, "VAE config: no blocks");
  const int64_t G = cfg.norm_num_groups, L = cfg.latent_channels;

  // Decoder.
  if (cfg.use_post_quant_conv) v.post_quant = layers::Conv2d::load(src, "post_quant_conv", L, L, 1, dt);
  v.dec_in = layers::Conv2d::load(src, "decoder.conv_in", L, ch.back(), 3, dt);
  v.dec_mid_ = v.load_mid(src, "decoder.mid_block", ch.back(), dt);
  int64_t prev = ch.back();
  for (size_t i = 0; i < nb; ++i) {
    const int64_t o = ch[nb - 1 - i];
    const std::string p = "decoder.up_blocks." + std::to_string(i);
    Block b;
    for (int64_t j = 0; j <= cfg.layers_per_block; ++j)
      b.resnets.push_back(
          layers::ResBlock::load(src, p + ".resnets." + std::to_string(j), j == 0 ? prev : o, o, 0, G, kEps, dt));
    if (i + 1 < nb) b.sampler = layers::Conv2d::load(src, p + ".upsamplers.0.conv", o, o, 3, dt);
    prev = o;
    v.dec_up_.push_back(std::move(b));
  }
  v.dec_norm = layers::Norm::load(src, "decoder.conv_norm_out", ch[0], dt);
  v.dec_out = layers::Conv2d::load(src, "decoder.conv_out", ch[0], cfg.out_channels, 3, dt);

  // Encoder (optional: decoder-only VAE files exist).
  if (!src.has("encoder.conv_in.weight")) return v;
  v.enc_in = layers::Conv2d::load(src, "encoder.conv_in", cfg.in_channels, ch[0], 3, dt);
  int64_t out = ch[0];
  for (size_t i = 0; i < nb; ++i) {
    const int64_t in = out;
    out = ch[i];
    const std::string p = "encoder.down_blocks." + std::to_string(i);
    Block b;
    for (int64_t j = 0; j < cfg.layers_per_block; ++j)
      b.resnets.push_back(
          layers::ResBlock::load(src, p + ".resnets." + std::to_string(j), j == 0 ? in : out, out, 0, G, kEps, dt));
    if (i + 1 < nb) {
      // diffusers pads (0, 1, 0, 1) and convolves with stride 2 and no padding.
      b.sampler = layers::Conv2d::load(src, p + ".downsamplers.0.conv", out, out, 3, dt, 2);
      b.sampler.opt = {2, 0, 0, 1, 1};
    }
    v.enc_down_.push_back(std::move(b));
  }
  v.enc_mid_ = v.load_mid(src, "encoder.mid_block", ch.back(), dt);
  v.enc_norm = layers::Norm::load(src, "encoder.conv_norm_out", ch.back(), dt);
  v.enc_out = layers::Conv2d::load(src, "encoder.conv_out", ch.back(), 2 * L, 3, dt);
  if (cfg.use_quant_conv) v.quant = layers::Conv2d::load(src, "quant_conv", 2 * L, 2 * L, 1, dt);
  return v;
}

Tensor VAE::decode(const Tensor& z_in) const {
  SD_CHECK_ARG(z_in.dim() == 4 && z_in.size(1) == cfg_.latent_channels, "VAE decode: latents must be [N, " +
                                                                            std::to_string(cfg_.latent_channels) +
                                                                            ", h, w], got " + shape_str(z_in.shape()));
  Tensor h = z_in.to(dec_in.w.device()).to(dec_in.w.dtype());
  if (post_quant.w.defined()) h = post_quant(h);
  h = run_mid(dec_mid_, dec_in(h));
  for (const Block& b : dec_up_) {
    for (const auto& r : b.resnets) h = r(h, Tensor());
    if (b.sampler.w.defined()) h = b.sampler(ops::upsample_nearest(h, h.size(2) * 2, h.size(3) * 2));
  }
  h = ops::group_norm(h, cfg_.norm_num_groups, dec_norm.w, dec_norm.b, kEps, /*silu=*/true);
  return dec_out(h);
}

Tensor VAE::encode_moments(const Tensor& x_in) const {
  if (!has_encoder()) throw UnsupportedError("this VAE has no encoder weights (decoder-only file)");
  SD_CHECK_ARG(x_in.dim() == 4 && x_in.size(1) == cfg_.in_channels,
               "VAE encode: images must be [N, 3, H, W], got " + shape_str(x_in.shape()));
  Tensor h = enc_in(x_in.to(enc_in.w.device()).to(enc_in.w.dtype()));
  for (const Block& b : enc_down_) {
    for (const auto& r : b.resnets) h = r(h, Tensor());
    if (b.sampler.w.defined()) h = b.sampler(h);
  }
  h = run_mid(enc_mid_, h);
  h = enc_out(ops::group_norm(h, cfg_.norm_num_groups, enc_norm.w, enc_norm.b, kEps, /*silu=*/true));
  return quant.w.defined() ? quant(h) : h;
}

namespace {

// diffusers' tiled_decode/_tiled_encode: tiles of `tile_in` input pixels start every
// tile_in * 3/4; each output tile is blended with the (already blended) tile above and the
// one to its left over `tile_out / 4` rows/columns, then cropped to tile_out * 3/4 and the
// crops are concatenated. The in-place order matters and is kept.
Tensor tiled_apply(const Tensor& x, int64_t tile_in, int64_t tile_out, const std::function<Tensor(const Tensor&)>& fn) {
  const int64_t H = x.size(2), W = x.size(3);
  const int64_t step = tile_in * 3 / 4, blend = tile_out / 4, limit = tile_out - blend;
  SD_CHECK_ARG(step >= 1 && limit >= 1, "VAE tiling: tile size " + std::to_string(tile_in) + " is too small");
  std::vector<std::vector<Tensor>> rows;
  for (int64_t i = 0; i < H; i += step) {
    std::vector<Tensor> row;
    for (int64_t j = 0; j < W; j += step) {
      const Tensor tile = x.narrow(2, i, std::min(tile_in, H - i)).narrow(3, j, std::min(tile_in, W - j)).contiguous();
      row.push_back(fn(tile).to(DType::F32).to(Device::cpu()).contiguous());
    }
    rows.push_back(std::move(row));
  }
  const int64_t N = rows[0][0].size(0), C = rows[0][0].size(1);
  auto at = [](Tensor& t, int64_t n, int64_t c, int64_t y, int64_t xx) -> float& {
    return t.data<float>()[((n * t.size(1) + c) * t.size(2) + y) * t.size(3) + xx];
  };
  // blend_v (axis 2) / blend_h (axis 3): the first `be` rows/columns of b fade in from the last
  // `be` of a, with Python-float weights applied in float32.
  auto blend_into = [&](Tensor& a, Tensor& b, int axis) {
    const int64_t be = std::min({a.size(axis), b.size(axis), blend}), across = b.size(axis == 2 ? 3 : 2);
    for (int64_t k = 0; k < be; ++k) {
      const float wb = float(double(k) / double(be)), wa = float(1.0 - double(k) / double(be));
      const int64_t ka = a.size(axis) - be + k;
      for (int64_t n = 0; n < N; ++n)
        for (int64_t c = 0; c < C; ++c)
          for (int64_t m = 0; m < across; ++m) {
            float& bv = axis == 2 ? at(b, n, c, k, m) : at(b, n, c, m, k);
            bv = (axis == 2 ? at(a, n, c, ka, m) : at(a, n, c, m, ka)) * wa + bv * wb;
          }
    }
  };
  for (size_t i = 0; i < rows.size(); ++i)
    for (size_t j = 0; j < rows[i].size(); ++j) {
      if (i > 0) blend_into(rows[i - 1][j], rows[i][j], 2);
      if (j > 0) blend_into(rows[i][j - 1], rows[i][j], 3);
    }
  int64_t OH = 0, OW = 0;
  for (const auto& row : rows) OH += std::min(limit, row[0].size(2));
  for (const Tensor& t : rows[0]) OW += std::min(limit, t.size(3));
  Tensor out = Tensor::empty({N, C, OH, OW}, DType::F32);
  float* o = out.data<float>();
  int64_t y0 = 0;
  for (auto& row : rows) {
    const int64_t h = std::min(limit, row[0].size(2));
    int64_t x0 = 0;
    for (Tensor& t : row) {
      const int64_t w = std::min(limit, t.size(3));
      for (int64_t n = 0; n < N; ++n)
        for (int64_t c = 0; c < C; ++c)
          for (int64_t y = 0; y < h; ++y)
            std::memcpy(o + ((n * C + c) * OH + y0 + y) * OW + x0, &at(t, n, c, y, 0), size_t(w) * sizeof(float));
      x0 += w;
    }
    y0 += h;
  }
  return out;
}

}  // namespace

int64_t VAE::tile_latent_size() const { return cfg_.sample_size >> (int64_t(cfg_.block_out_channels.size()) - 1); }

Tensor VAE::decode_tiled(const Tensor& z) const {
  SD_CHECK_ARG(z.dim() == 4, "VAE decode: latents must be 4-D, got " + shape_str(z.shape()));
  const int64_t tl = tile_latent_size();
  if (z.size(2) <= tl && z.size(3) <= tl) return decode(z);
  const Tensor out = tiled_apply(z, tl, cfg_.sample_size, [this](const Tensor& t) { return decode(t); });
  return out.to(dec_in.w.dtype()).to(dec_in.w.device());
}

Tensor VAE::encode_moments_tiled(const Tensor& x) const {
  SD_CHECK_ARG(x.dim() == 4, "VAE encode: images must be 4-D, got " + shape_str(x.shape()));
  if (x.size(2) <= cfg_.sample_size && x.size(3) <= cfg_.sample_size) return encode_moments(x);
  const Tensor out =
      tiled_apply(x, cfg_.sample_size, tile_latent_size(), [this](const Tensor& t) { return encode_moments(t); });
  return out.to(enc_in.w.dtype()).to(enc_in.w.device());
}

}  // namespace sdserve
