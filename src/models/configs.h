// Configurations of the UNet and the VAE, read from a diffusers config.json or,
// for single-file checkpoints, inferred from tensor shapes (io/ldm_names.h).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace sdserve {

struct UNetConfig {
  int64_t in_channels = 4;
  int64_t out_channels = 4;
  std::vector<int64_t> block_out_channels = {320, 640, 1280, 1280};
  // Per down block: true for CrossAttnDownBlock2D, false for DownBlock2D. Up blocks mirror it.
  std::vector<bool> down_has_attention = {true, true, true, false};
  int64_t layers_per_block = 2;
  // Attention heads per down block (diffusers' `attention_head_dim` is really a head count
  // for SD1/SD2, as its own code notes); head_dim = channels / heads.
  std::vector<int64_t> heads = {8, 8, 8, 8};
  int64_t transformer_layers = 1;
  int64_t cross_attention_dim = 768;
  int64_t norm_num_groups = 32;
  float norm_eps = 1e-5f;
  bool use_linear_projection = false;
  bool upcast_attention = false;
  bool flip_sin_to_cos = true;
  int64_t freq_shift = 0;
  bool mid_block = true;

  static UNetConfig from_json(const nlohmann::json& j);
  std::string summary() const;
};

struct VAEConfig {
  int64_t in_channels = 3;
  int64_t out_channels = 3;
  int64_t latent_channels = 4;
  std::vector<int64_t> block_out_channels = {128, 256, 512, 512};
  int64_t layers_per_block = 2;
  int64_t norm_num_groups = 32;
  float scaling_factor = 0.18215f;
  float shift_factor = 0.f;
  bool use_quant_conv = true;
  bool use_post_quant_conv = true;
  bool mid_block_attention = true;
  // Image size the VAE was trained at; tiled decode/encode (diffusers enable_tiling) works in
  // tiles of this many pixels (sample_size / 2^(blocks-1) latents), overlapping by 1/4.
  int64_t sample_size = 512;

  static VAEConfig from_json(const nlohmann::json& j);
  std::string summary() const;
};

}  // namespace sdserve
