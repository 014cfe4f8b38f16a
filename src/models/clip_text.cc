#include "models/clip_text.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "ops/add.h"
#include "ops/attention.h"
#include "ops/embedding.h"
#include "ops/layer_norm.h"
#include "ops/linear.h"

namespace sdserve {

namespace {

int64_t jint(const nlohmann::json& j, const char* key, int64_t def) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return def;
  if (!it->is_number_integer())
    throw ModelFormatError(std::string("text encoder config: '") + key + "' must be an integer");
  return it->get<int64_t>();
}

// Loads one tensor and checks its shape.
Tensor load_checked(const WeightSource& src, const std::string& name, const Shape& shape, DType dtype) {
  Tensor t = src.get(name, dtype);
  if (t.shape() != shape)
    throw ModelFormatError(src.describe() + ": tensor '" + src.prefix() + name + "' has shape " + shape_str(t.shape()) +
                           ", expected " + shape_str(shape));
  return t;
}

std::string hf_root(const WeightSource& src) {
  // Old transformers checkpoints (and some SD1 single files) lack the "text_model." level.
  return src.has("text_model.embeddings.token_embedding.weight") ? "text_model." : "";
}

}  // namespace

ClipTextConfig ClipTextConfig::from_json(const nlohmann::json& j) {
  if (!j.is_object()) throw ModelFormatError("text encoder config is not a JSON object");
  // A full CLIPConfig nests the text part.
  const nlohmann::json& t = j.contains("text_config") && j["text_config"].is_object() ? j["text_config"] : j;
  ClipTextConfig c;
  c.vocab_size = jint(t, "vocab_size", c.vocab_size);
  c.hidden_size = jint(t, "hidden_size", c.hidden_size);
  c.intermediate_size = jint(t, "intermediate_size", c.intermediate_size);
  c.num_layers = jint(t, "num_hidden_layers", c.num_layers);
  c.num_heads = jint(t, "num_attention_heads", c.num_heads);
  c.max_positions = jint(t, "max_position_embeddings", c.max_positions);
  c.projection_dim = 0;
  if (t.contains("hidden_act")) {
    if (!t["hidden_act"].is_string()) throw ModelFormatError("text encoder config: 'hidden_act' must be a string");
    c.act = ops::activation_from_name(t["hidden_act"].get<std::string>());
  }
  if (t.contains("layer_norm_eps") && t["layer_norm_eps"].is_number())
    c.layer_norm_eps = t["layer_norm_eps"].get<float>();
  c.bos_id = int32_t(jint(t, "bos_token_id", c.bos_id));
  c.eos_id = int32_t(jint(t, "eos_token_id", c.eos_id));
  c.pad_id = int32_t(jint(t, "pad_token_id", c.pad_id));
  if (c.vocab_size <= 0 || c.hidden_size <= 0 || c.num_layers <= 0 || c.num_heads <= 0 || c.max_positions <= 0 ||
      c.intermediate_size <= 0 || c.hidden_size % c.num_heads != 0)
    throw ModelFormatError("text encoder config is inconsistent: " + c.summary());
  return c;
}

std::string ClipTextConfig::summary() const {
  return "hidden " + std::to_string(hidden_size) + ", layers " + std::to_string(num_layers) + ", heads " +
         std::to_string(num_heads) + ", mlp " + std::to_string(intermediate_size) + ", vocab " +
         std::to_string(vocab_size) + ", act " + ops::activation_name(act);
}

ClipTextConfig ClipTextModel::infer_config(const WeightSource& src, ClipWeightLayout layout, ops::Activation act,
                                           int64_t head_dim, int64_t drop_last_layers) {
  ClipTextConfig c;
  c.act = act;
  std::set<int64_t> layer_ids;
  std::string tok, pos, fc1, layer_prefix;
  if (layout == ClipWeightLayout::HF) {
    const std::string root = hf_root(src);
    tok = root + "embeddings.token_embedding.weight";
    pos = root + "embeddings.position_embedding.weight";
    fc1 = root + "encoder.layers.0.mlp.fc1.weight";
    layer_prefix = root + "encoder.layers.";
  } else {
    tok = "token_embedding.weight";
    pos = "positional_embedding";
    fc1 = "transformer.resblocks.0.mlp.c_fc.weight";
    layer_prefix = "transformer.resblocks.";
  }
  const TensorInfo* ti = src.info(tok);
  const TensorInfo* pi = src.info(pos);
  const TensorInfo* fi = src.info(fc1);
  if (!ti || !pi || !fi || ti->shape.size() != 2 || pi->shape.size() != 2 || fi->shape.size() != 2)
    throw ModelFormatError(src.describe() + ": no CLIP text encoder under '" + src.prefix() + "'");
  c.vocab_size = ti->shape[0];
  c.hidden_size = ti->shape[1];
  c.max_positions = pi->shape[0];
  c.intermediate_size = fi->shape[0];
  for (const std::string& k : src.keys()) {
    if (k.compare(0, layer_prefix.size(), layer_prefix) != 0) continue;
    const size_t dot = k.find('.', layer_prefix.size());
    const std::string num = k.substr(layer_prefix.size(), dot - layer_prefix.size());
    if (!num.empty() && num.size() < 6 && std::all_of(num.begin(), num.end(), ::isdigit))
      layer_ids.insert(std::stoll(num));
  }
  if (layer_ids.empty() || *layer_ids.begin() != 0 || *layer_ids.rbegin() + 1 != int64_t(layer_ids.size()))
    throw ModelFormatError(src.describe() + ": text encoder layers under '" + src.prefix() + layer_prefix +
                           "' are missing or not numbered 0..N-1");
  c.num_layers = int64_t(layer_ids.size()) - drop_last_layers;
  if (c.num_layers <= 0) throw ModelFormatError(src.describe() + ": text encoder has too few layers");
  if (head_dim <= 0 || c.hidden_size % head_dim != 0)
    throw ModelFormatError(src.describe() + ": hidden size " + std::to_string(c.hidden_size) +
                           " is not a multiple of head size " + std::to_string(head_dim));
  c.num_heads = c.hidden_size / head_dim;
  // Token ids of the standard CLIP vocabulary; the SD2 tokenizer pads with "!" (id 0).
  if (c.vocab_size != 49408) c.bos_id = int32_t(c.vocab_size - 2), c.eos_id = int32_t(c.vocab_size - 1);
  c.pad_id = layout == ClipWeightLayout::OpenCLIP ? 0 : c.eos_id;
  return c;
}

ClipTextModel ClipTextModel::load(const ClipTextConfig& cfg, const WeightSource& src, ClipWeightLayout layout,
                                  DType dtype) {
  ClipTextModel m;
  m.cfg_ = cfg;
  const int64_t D = cfg.hidden_size, F = cfg.intermediate_size;
  const Shape vec{D}, mat{D, D};
  if (layout == ClipWeightLayout::HF) {
    const std::string r = hf_root(src);
    m.token_embedding_ = load_checked(src, r + "embeddings.token_embedding.weight", {cfg.vocab_size, D}, dtype);
    m.position_embedding_ =
        load_checked(src, r + "embeddings.position_embedding.weight", {cfg.max_positions, D}, dtype);
    for (int64_t i = 0; i < cfg.num_layers; ++i) {
      const std::string p = r + "encoder.layers." + std::to_string(i) + ".";
      ClipTextLayer L;
      L.ln1_w = load_checked(src, p + "layer_norm1.weight", vec, dtype);
      L.ln1_b = load_checked(src, p + "layer_norm1.bias", vec, dtype);
      L.q_w = load_checked(src, p + "self_attn.q_proj.weight", mat, dtype);
      L.q_b = load_checked(src, p + "self_attn.q_proj.bias", vec, dtype);
      L.k_w = load_checked(src, p + "self_attn.k_proj.weight", mat, dtype);
      L.k_b = load_checked(src, p + "self_attn.k_proj.bias", vec, dtype);
      L.v_w = load_checked(src, p + "self_attn.v_proj.weight", mat, dtype);
      L.v_b = load_checked(src, p + "self_attn.v_proj.bias", vec, dtype);
      L.o_w = load_checked(src, p + "self_attn.out_proj.weight", mat, dtype);
      L.o_b = load_checked(src, p + "self_attn.out_proj.bias", vec, dtype);
      L.ln2_w = load_checked(src, p + "layer_norm2.weight", vec, dtype);
      L.ln2_b = load_checked(src, p + "layer_norm2.bias", vec, dtype);
      L.fc1_w = load_checked(src, p + "mlp.fc1.weight", {F, D}, dtype);
      L.fc1_b = load_checked(src, p + "mlp.fc1.bias", {F}, dtype);
      L.fc2_w = load_checked(src, p + "mlp.fc2.weight", {D, F}, dtype);
      L.fc2_b = load_checked(src, p + "mlp.fc2.bias", vec, dtype);
      m.layers_.push_back(std::move(L));
    }
    m.final_ln_w_ = load_checked(src, r + "final_layer_norm.weight", vec, dtype);
    m.final_ln_b_ = load_checked(src, r + "final_layer_norm.bias", vec, dtype);
    // CLIPTextModelWithProjection (SDXL's second tower) stores it at the top level.
    if (src.has("text_projection.weight")) {
      m.text_projection_ = src.get("text_projection.weight", dtype);
      m.cfg_.projection_dim = m.text_projection_.size(0);
    }
  } else {
    m.token_embedding_ = load_checked(src, "token_embedding.weight", {cfg.vocab_size, D}, dtype);
    m.position_embedding_ = load_checked(src, "positional_embedding", {cfg.max_positions, D}, dtype);
    for (int64_t i = 0; i < cfg.num_layers; ++i) {
      const std::string p = "transformer.resblocks." + std::to_string(i) + ".";
      ClipTextLayer L;
      L.ln1_w = load_checked(src, p + "ln_1.weight", vec, dtype);
      L.ln1_b = load_checked(src, p + "ln_1.bias", vec, dtype);
      // open_clip packs q, k, v into one [3D, D] projection.
      const Tensor in_w = load_checked(src, p + "attn.in_proj_weight", {3 * D, D}, dtype);
      const Tensor in_b = load_checked(src, p + "attn.in_proj_bias", {3 * D}, dtype);
      L.q_w = in_w.narrow(0, 0, D).contiguous();
      L.k_w = in_w.narrow(0, D, D).contiguous();
      L.v_w = in_w.narrow(0, 2 * D, D).contiguous();
      L.q_b = in_b.narrow(0, 0, D).contiguous();
      L.k_b = in_b.narrow(0, D, D).contiguous();
      L.v_b = in_b.narrow(0, 2 * D, D).contiguous();
      L.o_w = load_checked(src, p + "attn.out_proj.weight", mat, dtype);
      L.o_b = load_checked(src, p + "attn.out_proj.bias", vec, dtype);
      L.ln2_w = load_checked(src, p + "ln_2.weight", vec, dtype);
      L.ln2_b = load_checked(src, p + "ln_2.bias", vec, dtype);
      L.fc1_w = load_checked(src, p + "mlp.c_fc.weight", {F, D}, dtype);
      L.fc1_b = load_checked(src, p + "mlp.c_fc.bias", {F}, dtype);
      L.fc2_w = load_checked(src, p + "mlp.c_proj.weight", {D, F}, dtype);
      L.fc2_b = load_checked(src, p + "mlp.c_proj.bias", vec, dtype);
      m.layers_.push_back(std::move(L));
    }
    m.final_ln_w_ = load_checked(src, "ln_final.weight", vec, dtype);
    m.final_ln_b_ = load_checked(src, "ln_final.bias", vec, dtype);
    if (src.has("text_projection")) {
      // open_clip applies it as x @ P with P [D, proj]; store as a Linear weight [proj, D].
      const Tensor p = src.get("text_projection", dtype);
      if (p.dim() != 2 || p.size(0) != D)
        throw ModelFormatError(src.describe() + ": text_projection has shape " + shape_str(p.shape()));
      m.text_projection_ = p.transpose(0, 1).contiguous();
      m.cfg_.projection_dim = m.text_projection_.size(0);
    }
  }
  return m;
}

ClipTextModel::Output ClipTextModel::forward(const Tensor& ids, int clip_skip, bool want_pooled) const {
  return forward(ids, clip_skip, want_pooled, {});
}

ClipTextModel::Output ClipTextModel::forward(const Tensor& ids, int clip_skip, bool want_pooled,
                                             const std::vector<EmbeddingFix>& fixes) const {
  SD_CHECK_ARG(ids.dim() == 2, "text encoder: ids must be [batch, tokens], got " + shape_str(ids.shape()));
  const int64_t B = ids.size(0), T = ids.size(1), D = cfg_.hidden_size, H = cfg_.num_heads, hd = D / H;
  SD_CHECK_ARG(T >= 1 && T <= cfg_.max_positions,
               "text encoder: " + std::to_string(T) + " tokens, at most " + std::to_string(cfg_.max_positions));
  SD_CHECK_ARG(
      clip_skip >= 1 && clip_skip <= cfg_.num_layers,
      "clip skip must be between 1 and " + std::to_string(cfg_.num_layers) + ", got " + std::to_string(clip_skip));
  const DType dt = token_embedding_.dtype();

  Tensor tokens = ops::embedding(token_embedding_, ids);
  for (const EmbeddingFix& f : fixes) {
    SD_CHECK_ARG(
        f.vectors.dim() == 2 && f.vectors.size(1) == D,
        "embedding of " + shape_str(f.vectors.shape()) + " does not fit a text encoder of width " + std::to_string(D));
    SD_CHECK_ARG(f.position >= 0 && f.position < T, "embedding position out of range");
    const int64_t n = std::min(f.vectors.size(0), T - f.position);
    if (n <= 0) continue;
    Tensor window = tokens.select(0, 0).narrow(0, f.position, n);
    window.copy_(f.vectors.narrow(0, 0, n).to(dt).to(tokens.device()));
  }
  Tensor x = ops::add(tokens, position_embedding_.narrow(0, 0, T));
  const int64_t run = cfg_.num_layers - (clip_skip - 1);
  // The pooled output always comes from the last layer (as in transformers), even when
  // the hidden states are taken earlier for clip skip.
  const int64_t total = want_pooled ? cfg_.num_layers : run;
  Tensor taken;
  for (int64_t l = 0; l < total; ++l) {
    const ClipTextLayer& L = layers_[size_t(l)];
    Tensor h = ops::layer_norm(x, L.ln1_w, L.ln1_b, cfg_.layer_norm_eps);
    auto heads = [&](const Tensor& w, const Tensor& b) {
      return ops::linear(h, w, &b).view({B, T, H, hd}).permute({0, 2, 1, 3});
    };
    Tensor a = ops::attention(heads(L.q_w, L.q_b), heads(L.k_w, L.k_b), heads(L.v_w, L.v_b), /*causal=*/true);
    a = a.permute({0, 2, 1, 3}).reshape({B, T, D});
    x = ops::add(x, ops::linear(a, L.o_w, &L.o_b));
    h = ops::layer_norm(x, L.ln2_w, L.ln2_b, cfg_.layer_norm_eps);
    h = ops::activation(ops::linear(h, L.fc1_w, &L.fc1_b), cfg_.act);
    x = ops::add(x, ops::linear(h, L.fc2_w, &L.fc2_b));
    if (l == run - 1) taken = x;
  }
  Output out;
  out.hidden = ops::layer_norm(taken, final_ln_w_, final_ln_b_, cfg_.layer_norm_eps);
  if (want_pooled) {
    const Tensor last = run == total ? out.hidden : ops::layer_norm(x, final_ln_w_, final_ln_b_, cfg_.layer_norm_eps);
    // transformers picks the EOS position: argmax(ids) for legacy configs (eos id 2),
    // otherwise the first occurrence of eos_id (position 0 if absent).
    const Tensor idc = ids.contiguous().to(Device::cpu());
    const int32_t* id = idc.data<int32_t>();
    const Tensor last_host = last.to(Device::cpu());
    Tensor pooled = Tensor::empty({B, D}, dt);
    for (int64_t b = 0; b < B; ++b) {
      int64_t pos = 0;
      if (cfg_.eos_id == 2) {
        for (int64_t t = 1; t < T; ++t)
          if (id[b * T + t] > id[b * T + pos]) pos = t;
      } else {
        for (int64_t t = 0; t < T; ++t)
          if (id[b * T + t] == cfg_.eos_id) {
            pos = t;
            break;
          }
      }
      std::memcpy(static_cast<char*>(pooled.raw_data()) + size_t(b * D) * dtype_size(dt),
                  last_host.select(0, b).select(0, pos).contiguous().raw_data(), size_t(D) * dtype_size(dt));
    }
    out.pooled = pooled.to(last.device());
    if (text_projection_.defined()) out.text_embeds = ops::linear(pooled, text_projection_);
  }
  return out;
}

void ClipTextModel::for_each_weight(const std::function<void(const std::string&, Tensor&)>& fn) {
  for (size_t i = 0; i < layers_.size(); ++i) {
    const std::string p = "text_model.encoder.layers." + std::to_string(i) + ".";
    ClipTextLayer& L = layers_[i];
    fn(p + "self_attn.q_proj", L.q_w);
    fn(p + "self_attn.k_proj", L.k_w);
    fn(p + "self_attn.v_proj", L.v_w);
    fn(p + "self_attn.out_proj", L.o_w);
    fn(p + "mlp.fc1", L.fc1_w);
    fn(p + "mlp.fc2", L.fc2_w);
  }
}

}  // namespace sdserve
