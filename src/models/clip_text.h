// CLIP text transformer as used by Stable Diffusion's conditioners:
//   SD1.x: OpenAI ViT-L/14 text tower (quick-GELU), HF layout.
//   SD2.x: OpenCLIP ViT-H/14 text tower (GELU), run to the penultimate block.
// SDXL adds a second tower with a projection and pooled output: `text_projection`
// and `Output::pooled` are already here for it.
#pragma once
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "core/tensor.h"
#include "io/weights.h"
#include "ops/activation.h"

namespace sdserve {

struct ClipTextConfig {
  int64_t vocab_size = 49408;
  int64_t hidden_size = 768;
  int64_t intermediate_size = 3072;
  int64_t num_layers = 12;
  int64_t num_heads = 12;
  int64_t max_positions = 77;
  int64_t projection_dim = 0;  // 0: no projection
  ops::Activation act = ops::Activation::QuickGELU;
  float layer_norm_eps = 1e-5f;
  int32_t bos_id = 49406;
  int32_t eos_id = 49407;
  int32_t pad_id = 49407;

  // From a transformers CLIPTextConfig config.json.
  static ClipTextConfig from_json(const nlohmann::json& j);
  std::string summary() const;
};

// Where the weights of a text tower live and how they are named.
enum class ClipWeightLayout {
  HF,        // transformers names: [prefix]text_model.embeddings.token_embedding.weight, ...
  OpenCLIP,  // open_clip names: [prefix]token_embedding.weight, transformer.resblocks.N.attn.in_proj_weight, ...
};

struct ClipTextLayer {
  Tensor ln1_w, ln1_b, q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b, ln2_w, ln2_b, fc1_w, fc1_b, fc2_w, fc2_b;
};

class ClipTextModel {
 public:
  struct Output {
    Tensor hidden;       // [B, T, hidden], final layer norm applied
    Tensor pooled;       // [B, hidden]: last layer at the EOS token (transformers' pooler_output); if asked
    Tensor text_embeds;  // [B, projection_dim]: pooled @ text_projection, when the tower has one (SDXL)
  };

  // Loads weights named in `layout` under `src` (whose prefix is already set).
  // Tensors are converted to `dtype` on load. Shape mismatches throw ModelFormatError
  // naming the tensor.
  static ClipTextModel load(const ClipTextConfig& cfg, const WeightSource& src, ClipWeightLayout layout,
                            DType dtype = DType::F32);
  // Infers the config from tensor shapes (heads from `head_dim`, since checkpoints
  // do not store it; 64 for every released CLIP text tower). `drop_last_layers`
  // drops trailing blocks (SD2 checkpoints carry one block diffusers never runs).
  static ClipTextConfig infer_config(const WeightSource& src, ClipWeightLayout layout, ops::Activation act,
                                     int64_t head_dim = 64, int64_t drop_last_layers = 0);

  // ids: [B, T] i32, T <= max_positions. clip_skip follows A1111: 1 = last layer,
  // 2 = penultimate, ...; the final layer norm is applied to whichever layer is taken.
  Output forward(const Tensor& ids, int clip_skip = 1, bool want_pooled = false) const;

  // Token-embedding overrides for textual inversion (A1111's EmbeddingsWithFixes): rows
  // [position, position + vectors.size(0)) of batch row 0 take `vectors` [n, hidden] instead of
  // the token table's rows (before the position embedding is added). Clipped at the end.
  struct EmbeddingFix {
    int64_t position = 0;
    Tensor vectors;
  };
  Output forward(const Tensor& ids, int clip_skip, bool want_pooled, const std::vector<EmbeddingFix>& fixes) const;

  const ClipTextConfig& config() const { return cfg_; }
  // The attention and MLP weights of every layer under their transformers names
  // ("text_model.encoder.layers.N.self_attn.q_proj", "...mlp.fc1"), whatever layout the file had,
  // for merging LoRA-family networks in place (pipeline/lora.h).
  void for_each_weight(const std::function<void(const std::string& module, Tensor& weight)>& fn);

 private:
  ClipTextConfig cfg_;
  Tensor token_embedding_, position_embedding_, final_ln_w_, final_ln_b_, text_projection_;
  std::vector<ClipTextLayer> layers_;
};

}  // namespace sdserve
