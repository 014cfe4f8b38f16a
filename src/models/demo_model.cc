#include "models/demo_model.h"

#include <unistd.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "core/error.h"
#include "io/hash_init.h"
#include "io/safetensors.h"

namespace fs = std::filesystem;

namespace sdserve {

namespace {

void add(ParameterShapes& out, const std::string& name, Shape s) { out.emplace_back(name, std::move(s)); }

void norm(ParameterShapes& out, const std::string& p, int64_t c) {
  add(out, p + ".weight", {c});
  add(out, p + ".bias", {c});
}

void linear(ParameterShapes& out, const std::string& p, int64_t out_f, int64_t in_f, bool bias = true) {
  add(out, p + ".weight", {out_f, in_f});
  if (bias) add(out, p + ".bias", {out_f});
}

void conv(ParameterShapes& out, const std::string& p, int64_t out_c, int64_t in_c, int64_t k) {
  add(out, p + ".weight", {out_c, in_c, k, k});
  add(out, p + ".bias", {out_c});
}

// diffusers ResnetBlock2D; temb 0: no time embedding (the VAE's).
void resnet(ParameterShapes& out, const std::string& p, int64_t in_c, int64_t out_c, int64_t temb) {
  norm(out, p + ".norm1", in_c);
  conv(out, p + ".conv1", out_c, in_c, 3);
  if (temb > 0) linear(out, p + ".time_emb_proj", out_c, temb);
  norm(out, p + ".norm2", out_c);
  conv(out, p + ".conv2", out_c, out_c, 3);
  if (in_c != out_c) conv(out, p + ".conv_shortcut", out_c, in_c, 1);
}

// diffusers Transformer2DModel with BasicTransformerBlocks (self-attention, cross-attention, GEGLU).
void transformer(ParameterShapes& out, const std::string& p, int64_t c, int64_t ctx, int64_t layers, bool linear_proj) {
  norm(out, p + ".norm", c);
  if (linear_proj)
    linear(out, p + ".proj_in", c, c);
  else
    conv(out, p + ".proj_in", c, c, 1);
  for (int64_t l = 0; l < layers; ++l) {
    const std::string b = p + ".transformer_blocks." + std::to_string(l);
    for (const char* n : {".norm1", ".norm2", ".norm3"}) norm(out, b + n, c);
    for (const char* a : {".attn1", ".attn2"}) {
      const int64_t kv = std::string(a) == ".attn1" ? c : ctx;
      linear(out, b + a + ".to_q", c, c, false);
      linear(out, b + a + ".to_k", c, kv, false);
      linear(out, b + a + ".to_v", c, kv, false);
      linear(out, b + a + ".to_out.0", c, c);
    }
    linear(out, b + ".ff.net.0.proj", 8 * c, c);
    linear(out, b + ".ff.net.2", c, 4 * c);
  }
  if (linear_proj)
    linear(out, p + ".proj_out", c, c);
  else
    conv(out, p + ".proj_out", c, c, 1);
}

// diffusers' VAE mid-block attention (Attention with group_norm and biased projections).
void vae_attention(ParameterShapes& out, const std::string& p, int64_t c) {
  norm(out, p + ".group_norm", c);
  for (const char* n : {".to_q", ".to_k", ".to_v", ".to_out.0"}) linear(out, p + n, c, c);
}

void write_json(const fs::path& p, const nlohmann::json& j) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << j.dump(2) << "\n";
  if (!out) throw IoError(p.string() + ": cannot write");
}

void write_weights(const fs::path& p, const ParameterShapes& shapes) {
  std::vector<std::pair<std::string, Tensor>> tensors;
  tensors.reserve(shapes.size());
  for (const auto& [name, shape] : shapes) tensors.emplace_back(name, hash_init_tensor(name, shape));
  write_safetensors(p.string(), tensors, {{"format", "pt"}, {"sdserve", "demo model (hash-init weights)"}});
}

// Small enough to run a 512x512 image in seconds on a laptop CPU, SD1-shaped otherwise, except that
// the full-resolution level has no attention (4096-token self-attention would be most of the time).
nlohmann::json demo_unet_config() {
  return {{"_class_name", "UNet2DConditionModel"},
          {"act_fn", "silu"},
          {"attention_head_dim", 4},
          {"block_out_channels", {32, 64, 64}},
          {"cross_attention_dim", 64},
          {"down_block_types", {"DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"}},
          {"up_block_types", {"CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"}},
          {"mid_block_type", "UNetMidBlock2DCrossAttn"},
          {"flip_sin_to_cos", true},
          {"freq_shift", 0},
          {"in_channels", 4},
          {"out_channels", 4},
          {"layers_per_block", 1},
          {"norm_num_groups", 8},
          {"norm_eps", 1e-5},
          {"sample_size", 64},
          {"transformer_layers_per_block", 1},
          {"upcast_attention", false},
          {"use_linear_projection", false}};
}

nlohmann::json demo_vae_config() {
  return {
      {"_class_name", "AutoencoderKL"},
      {"act_fn", "silu"},
      {"block_out_channels", {8, 16, 16, 16}},
      {"down_block_types", {"DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"}},
      {"up_block_types", {"UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"}},
      {"in_channels", 3},
      {"out_channels", 3},
      {"latent_channels", 4},
      {"layers_per_block", 1},
      {"norm_num_groups", 4},
      {"sample_size", 512},
      {"scaling_factor", 0.18215},
      {"mid_block_add_attention", true},
      {"use_quant_conv", true},
      {"use_post_quant_conv", true}};
}

nlohmann::json demo_text_encoder_config() {
  return {{"architectures", {"CLIPTextModel"}},
          {"model_type", "clip_text_model"},
          {"hidden_act", "quick_gelu"},
          {"hidden_size", 64},
          {"intermediate_size", 128},
          {"num_hidden_layers", 2},
          {"num_attention_heads", 4},
          {"max_position_embeddings", 77},
          {"layer_norm_eps", 1e-5},
          {"vocab_size", 49408},
          {"bos_token_id", 49406},
          {"eos_token_id", 49407},
          {"pad_token_id", 49407},
          {"projection_dim", 64}};
}

nlohmann::json demo_scheduler_config() {
  // SD1.5's scheduler_config.json.
  return {{"_class_name", "PNDMScheduler"}, {"beta_end", 0.012},           {"beta_schedule", "scaled_linear"},
          {"beta_start", 0.00085},          {"num_train_timesteps", 1000}, {"prediction_type", "epsilon"},
          {"set_alpha_to_one", false},      {"skip_prk_steps", true},      {"steps_offset", 1},
          {"timestep_spacing", "leading"},  {"trained_betas", nullptr}};
}

bool current(const fs::path& dir) {
  std::error_code ec;
  const fs::path marker = dir / "sdserve_demo.json";
  if (!fs::is_regular_file(marker, ec)) return false;
  std::ifstream in(marker, std::ios::binary);
  const nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  return j.is_object() && j.value("version", 0) == kDemoModelVersion;
}

}  // namespace

ParameterShapes unet_parameter_shapes(const UNetConfig& c) {
  ParameterShapes out;
  const auto& ch = c.block_out_channels;
  const size_t n = ch.size();
  const int64_t temb = 4 * ch[0], lpb = c.layers_per_block, ctx = c.cross_attention_dim;
  conv(out, "conv_in", ch[0], c.in_channels, 3);
  linear(out, "time_embedding.linear_1", temb, ch[0]);
  linear(out, "time_embedding.linear_2", temb, temb);
  int64_t cur = ch[0];
  for (size_t i = 0; i < n; ++i) {
    const std::string p = "down_blocks." + std::to_string(i);
    const int64_t in_c = cur;
    cur = ch[i];
    for (int64_t l = 0; l < lpb; ++l) {
      resnet(out, p + ".resnets." + std::to_string(l), l == 0 ? in_c : cur, cur, temb);
      if (c.down_has_attention[i])
        transformer(out, p + ".attentions." + std::to_string(l), cur, ctx, c.transformer_layers,
                    c.use_linear_projection);
    }
    if (i + 1 < n) conv(out, p + ".downsamplers.0.conv", cur, cur, 3);
  }
  if (c.mid_block) {
    resnet(out, "mid_block.resnets.0", ch[n - 1], ch[n - 1], temb);
    transformer(out, "mid_block.attentions.0", ch[n - 1], ctx, c.transformer_layers, c.use_linear_projection);
    resnet(out, "mid_block.resnets.1", ch[n - 1], ch[n - 1], temb);
  }
  cur = ch[n - 1];
  for (size_t i = 0; i < n; ++i) {
    const std::string p = "up_blocks." + std::to_string(i);
    const int64_t prev = cur;
    cur = ch[n - 1 - i];
    const int64_t skip_in = ch[n - 1 - std::min(i + 1, n - 1)];
    const bool attn = c.down_has_attention[n - 1 - i];
    for (int64_t l = 0; l <= lpb; ++l) {
      const int64_t skip = l == lpb ? skip_in : cur;
      resnet(out, p + ".resnets." + std::to_string(l), (l == 0 ? prev : cur) + skip, cur, temb);
      if (attn)
        transformer(out, p + ".attentions." + std::to_string(l), cur, ctx, c.transformer_layers,
                    c.use_linear_projection);
    }
    if (i + 1 < n) conv(out, p + ".upsamplers.0.conv", cur, cur, 3);
  }
  norm(out, "conv_norm_out", ch[0]);
  conv(out, "conv_out", c.out_channels, ch[0], 3);
  return out;
}

ParameterShapes vae_parameter_shapes(const VAEConfig& c) {
  ParameterShapes out;
  const auto& ch = c.block_out_channels;
  const size_t n = ch.size();
  const int64_t lpb = c.layers_per_block, L = c.latent_channels;
  conv(out, "encoder.conv_in", ch[0], c.in_channels, 3);
  int64_t cur = ch[0];
  for (size_t i = 0; i < n; ++i) {
    const std::string p = "encoder.down_blocks." + std::to_string(i);
    const int64_t in_c = cur;
    cur = ch[i];
    for (int64_t l = 0; l < lpb; ++l) resnet(out, p + ".resnets." + std::to_string(l), l == 0 ? in_c : cur, cur, 0);
    if (i + 1 < n) conv(out, p + ".downsamplers.0.conv", cur, cur, 3);
  }
  for (const char* side : {"encoder", "decoder"}) {
    const std::string p = std::string(side) + ".mid_block";
    resnet(out, p + ".resnets.0", ch[n - 1], ch[n - 1], 0);
    if (c.mid_block_attention) vae_attention(out, p + ".attentions.0", ch[n - 1]);
    resnet(out, p + ".resnets.1", ch[n - 1], ch[n - 1], 0);
  }
  norm(out, "encoder.conv_norm_out", ch[n - 1]);
  conv(out, "encoder.conv_out", 2 * L, ch[n - 1], 3);
  if (c.use_quant_conv) conv(out, "quant_conv", 2 * L, 2 * L, 1);
  if (c.use_post_quant_conv) conv(out, "post_quant_conv", L, L, 1);
  conv(out, "decoder.conv_in", ch[n - 1], L, 3);
  cur = ch[n - 1];
  for (size_t i = 0; i < n; ++i) {
    const std::string p = "decoder.up_blocks." + std::to_string(i);
    const int64_t prev = cur;
    cur = ch[n - 1 - i];
    for (int64_t l = 0; l <= lpb; ++l) resnet(out, p + ".resnets." + std::to_string(l), l == 0 ? prev : cur, cur, 0);
    if (i + 1 < n) conv(out, p + ".upsamplers.0.conv", cur, cur, 3);
  }
  norm(out, "decoder.conv_norm_out", ch[0]);
  conv(out, "decoder.conv_out", c.out_channels, ch[0], 3);
  return out;
}

ParameterShapes clip_text_parameter_shapes(const ClipTextConfig& c) {
  ParameterShapes out;
  const int64_t D = c.hidden_size, F = c.intermediate_size;
  add(out, "text_model.embeddings.token_embedding.weight", {c.vocab_size, D});
  add(out, "text_model.embeddings.position_embedding.weight", {c.max_positions, D});
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = "text_model.encoder.layers." + std::to_string(i);
    norm(out, p + ".layer_norm1", D);
    norm(out, p + ".layer_norm2", D);
    for (const char* proj : {".q_proj", ".k_proj", ".v_proj", ".out_proj"}) linear(out, p + ".self_attn" + proj, D, D);
    linear(out, p + ".mlp.fc1", F, D);
    linear(out, p + ".mlp.fc2", D, F);
  }
  norm(out, "text_model.final_layer_norm", D);
  return out;
}

fs::path ensure_demo_model(const fs::path& dir) {
  if (current(dir)) return dir;
  std::error_code ec;
  const fs::path parent = dir.has_parent_path() ? dir.parent_path() : fs::path(".");
  fs::create_directories(parent, ec);
  if (ec) throw IoError(parent.string() + ": cannot create the cache folder (" + ec.message() + ")");
  const fs::path tmp =
      parent / (".demo-tmp-" + std::to_string(::getpid()) + "-" + std::to_string(std::random_device{}()));
  try {
    for (const char* sub : {"unet", "vae", "text_encoder", "scheduler"}) fs::create_directories(tmp / sub);
    const nlohmann::json uj = demo_unet_config(), vj = demo_vae_config(), tj = demo_text_encoder_config();
    write_json(tmp / "model_index.json", {{"_class_name", "StableDiffusionPipeline"},
                                          {"scheduler", {"diffusers", "PNDMScheduler"}},
                                          {"text_encoder", {"transformers", "CLIPTextModel"}},
                                          {"unet", {"diffusers", "UNet2DConditionModel"}},
                                          {"vae", {"diffusers", "AutoencoderKL"}}});
    write_json(tmp / "unet" / "config.json", uj);
    write_json(tmp / "vae" / "config.json", vj);
    write_json(tmp / "text_encoder" / "config.json", tj);
    write_json(tmp / "scheduler" / "scheduler_config.json", demo_scheduler_config());
    write_weights(tmp / "unet" / "diffusion_pytorch_model.safetensors",
                  unet_parameter_shapes(UNetConfig::from_json(uj)));
    write_weights(tmp / "vae" / "diffusion_pytorch_model.safetensors", vae_parameter_shapes(VAEConfig::from_json(vj)));
    write_weights(tmp / "text_encoder" / "model.safetensors",
                  clip_text_parameter_shapes(ClipTextConfig::from_json(tj)));
    write_json(tmp / "sdserve_demo.json",
               {{"version", kDemoModelVersion},
                {"what", "sdserve's built-in demo model: tiny SD1 architecture, hash-init weights; images are noise"}});
    if (fs::exists(dir, ec) && !current(dir)) fs::remove_all(dir, ec);
    fs::rename(tmp, dir, ec);
    if (ec) {
      // Another process finished first: use its copy.
      fs::remove_all(tmp, ec);
      if (!current(dir)) throw IoError(dir.string() + ": cannot write the demo model");
    }
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
  return dir;
}

}  // namespace sdserve
