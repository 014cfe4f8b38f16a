// AutoencoderKL (SD1.x / SD2.x VAE): decoder for every pipeline, encoder for img2img.
// decode() takes latents already divided by the scaling factor, as diffusers does.
#pragma once
#include <vector>

#include "models/configs.h"
#include "models/layers.h"

namespace sdserve {

class VAE {
 public:
  static VAE load(const VAEConfig& cfg, const WeightSource& src, DType dtype = DType::F32);

  Tensor decode(const Tensor& z) const;  // [N, latent, h, w] -> [N, 3, 8h, 8w] in about [-1, 1]
  // [N, 3, H, W] in [-1, 1] -> moments [N, 2*latent, H/8, W/8] (mean, then logvar).
  Tensor encode_moments(const Tensor& x) const;

  // Tiled variants, as diffusers' AutoencoderKL with enable_tiling(): inputs larger than one
  // tile (config sample_size pixels, sample_size / 2^(blocks-1) latents) are cut into tiles
  // overlapping by 1/4, each decoded/encoded alone, and blended linearly across the overlaps.
  // Memory then stays that of one tile whatever the image size; the result differs slightly
  // from the untiled one. Inputs that fit in one tile take the untiled path.
  Tensor decode_tiled(const Tensor& z) const;
  Tensor encode_moments_tiled(const Tensor& x) const;
  int64_t tile_latent_size() const;
  bool has_encoder() const { return !enc_down_.empty(); }
  const VAEConfig& config() const { return cfg_; }

 private:
  struct Block {
    std::vector<layers::ResBlock> resnets;
    layers::Conv2d sampler;
  };
  struct Mid {
    layers::ResBlock res0, res1;
    layers::Norm attn_norm;
    layers::Attention attn;
    bool has_attn = false;
  };
  Mid load_mid(const WeightSource& src, const std::string& p, int64_t ch, DType dt) const;
  Tensor run_mid(const Mid& m, const Tensor& x) const;

  VAEConfig cfg_;
  layers::Conv2d post_quant, dec_in, dec_out, quant, enc_in, enc_out;
  layers::Norm dec_norm, enc_norm;
  Mid dec_mid_, enc_mid_;
  std::vector<Block> dec_up_, enc_down_;
};

}  // namespace sdserve
