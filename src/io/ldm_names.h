// UNet and VAE weights of single-file (LDM / A1111) checkpoints under diffusers names.
//
// The model code is written against diffusers parameter names (UNet2DConditionModel,
// AutoencoderKL). A single-file checkpoint stores the same tensors under the original
// CompVis names; the maps here say, for every diffusers parameter of a given config, which
// LDM key holds it, and WeightSource::with_renames() applies them. Values are never changed;
// the one layout difference is the VAE mid-block attention: LDM stores q/k/v/proj_out as 1x1
// convs [C, C, 1, 1] where diffusers has Linear [C, C] (the caller view()s them).
//
// A single file records no config, so it is inferred from tensor shapes. What shapes cannot
// tell (GroupNorm groups, head counts, upcast) comes from the family's known constants or from
// LdmInferOptions (tiny test models).
//
// The mapping follows the original `ldm` module structure (mirrors tools/ldm_layout.py and
// diffusers' loaders/single_file_utils.py):
//   UNet (prefix "model.diffusion_model.", lpb = layers_per_block)
//     time_embedding.linear_{1,2}       <- time_embed.{0,2}
//     conv_in                           <- input_blocks.0.0
//     down_blocks.b.resnets.l           <- input_blocks.(1 + b*(lpb+1) + l).0
//     down_blocks.b.attentions.l        <- input_blocks.(1 + b*(lpb+1) + l).1
//     down_blocks.b.downsamplers.0.conv <- input_blocks.((b+1)*(lpb+1)).0.op
//     mid_block.resnets.0/attentions.0/resnets.1 <- middle_block.0/1/2
//     up_blocks.b.resnets.l             <- output_blocks.(b*(lpb+1) + l).0
//     up_blocks.b.attentions.l          <- output_blocks.(b*(lpb+1) + l).1
//     up_blocks.b.upsamplers.0.conv     <- output_blocks.(b*(lpb+1) + lpb).(2 if attention else 1).conv
//     conv_norm_out / conv_out          <- out.0 / out.2
//     resnet: norm1 in_layers.0, conv1 in_layers.2, time_emb_proj emb_layers.1, norm2 out_layers.0,
//             conv2 out_layers.3, conv_shortcut skip_connection; transformers: same names.
//   VAE (prefix "first_stage_model.", n levels)
//     encoder.down_blocks.i.resnets.j  <- encoder.down.i.block.j;  downsamplers.0 <- down.i.downsample
//     decoder.up_blocks.i.resnets.j    <- decoder.up.(n-1-i).block.j;  upsamplers.0 <- up.(n-1-i).upsample
//     mid_block.resnets.k <- mid.block_(k+1);  mid_block.attentions.0 <- mid.attn_1 with
//       group_norm norm, to_q q, to_k k, to_v v, to_out.0 proj_out
//     conv_norm_out <- norm_out;  conv_shortcut <- nin_shortcut;  conv_in/conv_out/(post_)quant_conv same.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "io/model_files.h"
#include "io/weights.h"
#include "models/configs.h"

namespace sdserve {

using NameMap = std::unordered_map<std::string, std::string>;

// Facts a single file does not record. Zero / empty means "the family's constant".
struct LdmInferOptions {
  int64_t norm_num_groups = 32;  // every released SD UNet and VAE uses 32
  // Head count per level (one entry per down block), or else a fixed head width.
  // Defaults: SD1 8 heads everywhere; SD2 64-wide heads (heads = channels / 64).
  std::vector<int64_t> heads;
  int64_t head_dim = 0;
  // Default: on for SD2 (its 768-v model overflows f16 attention without it; upcasting is
  // harmless for the base model), off otherwise.
  std::optional<bool> upcast_attention;
};

// UNetConfig of the UNet under `unet` (a WeightSource whose prefix is "model.diffusion_model.").
// Throws ModelFormatError when the tensors do not form a UNet we understand and
// UnsupportedError for SDXL or class-conditioned UNets.
UNetConfig infer_unet_config_ldm(const WeightSource& unet, ModelFamily family, const LdmInferOptions& opt = {});

// VAEConfig of the VAE under `vae` (prefix "first_stage_model."). scaling_factor is the SD1/SD2
// constant 0.18215; shift_factor 0.
VAEConfig infer_vae_config_ldm(const WeightSource& vae, int64_t norm_groups = 32);

// Every diffusers parameter name of a model with this config -> its LDM key (relative to the
// component prefix). The key set is exactly the diffusers model's state dict.
NameMap unet_ldm_name_map(const UNetConfig& config);
NameMap vae_ldm_name_map(const VAEConfig& config);

// diffusers VAE attention names -> names used by diffusers before 0.14 (query/key/value/proj_attn),
// for diffusers folders saved by old versions. Only the renamed keys are listed.
NameMap vae_legacy_attention_name_map(const VAEConfig& config);

// Convenience: the source seen under diffusers names.
//  * unet_weights_from_ldm / vae_weights_from_ldm: for single-file components.
//  * vae_weights_diffusers: a diffusers VAE folder, renaming legacy attention names if present.
WeightSource unet_weights_from_ldm(const WeightSource& ldm, const UNetConfig& config);
WeightSource vae_weights_from_ldm(const WeightSource& ldm, const VAEConfig& config);
WeightSource vae_weights_diffusers(const WeightSource& vae, const VAEConfig& config);

}  // namespace sdserve
