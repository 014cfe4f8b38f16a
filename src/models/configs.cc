#include "models/configs.h"

#include <cmath>
#include <sstream>

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace sdserve {

namespace {

using json = nlohmann::json;

bool is_null_or_absent(const json& j, const char* key) { return !j.contains(key) || j[key].is_null(); }

// Typed getters: a present value of the wrong JSON type is a ModelFormatError naming the field.
int64_t get_int(const json& j, const char* key, int64_t def) {
  if (is_null_or_absent(j, key)) return def;
  const json& v = j[key];
  if (!v.is_number_integer()) throw ModelFormatError(std::string("config field '") + key + "' must be an integer");
  return v.get<int64_t>();
}

float get_float(const json& j, const char* key, float def) {
  if (is_null_or_absent(j, key)) return def;
  const json& v = j[key];
  if (!v.is_number()) throw ModelFormatError(std::string("config field '") + key + "' must be a number");
  return v.get<float>();
}

bool get_bool(const json& j, const char* key, bool def) {
  if (is_null_or_absent(j, key)) return def;
  const json& v = j[key];
  if (!v.is_boolean()) throw ModelFormatError(std::string("config field '") + key + "' must be true or false");
  return v.get<bool>();
}

std::string get_string(const json& j, const char* key, const std::string& def) {
  if (is_null_or_absent(j, key)) return def;
  const json& v = j[key];
  if (!v.is_string()) throw ModelFormatError(std::string("config field '") + key + "' must be a string");
  return v.get<std::string>();
}

// An int broadcast to n entries, or a list of exactly n ints.
std::vector<int64_t> get_int_or_list(const json& j, const char* key, size_t n, int64_t def) {
  if (is_null_or_absent(j, key)) return std::vector<int64_t>(n, def);
  const json& v = j[key];
  if (v.is_number_integer()) return std::vector<int64_t>(n, v.get<int64_t>());
  if (!v.is_array()) throw ModelFormatError(std::string("config field '") + key + "' must be an integer or a list");
  if (v.size() != n)
    throw ModelFormatError(std::string("config field '") + key + "' has " + std::to_string(v.size()) +
                           " entries, expected " + std::to_string(n) + " (one per block)");
  std::vector<int64_t> out;
  for (const json& e : v) {
    if (!e.is_number_integer()) throw ModelFormatError(std::string("config field '") + key + "' must hold integers");
    out.push_back(e.get<int64_t>());
  }
  return out;
}

std::vector<int64_t> get_int_list(const json& j, const char* key, const std::vector<int64_t>& def) {
  if (is_null_or_absent(j, key)) return def;
  const json& v = j[key];
  if (!v.is_array() || v.empty())
    throw ModelFormatError(std::string("config field '") + key + "' must be a non-empty list");
  std::vector<int64_t> out;
  for (const json& e : v) {
    if (!e.is_number_integer()) throw ModelFormatError(std::string("config field '") + key + "' must hold integers");
    out.push_back(e.get<int64_t>());
  }
  return out;
}

std::vector<std::string> get_string_list(const json& j, const char* key, const std::vector<std::string>& def) {
  if (is_null_or_absent(j, key)) return def;
  const json& v = j[key];
  if (!v.is_array()) throw ModelFormatError(std::string("config field '") + key + "' must be a list");
  std::vector<std::string> out;
  for (const json& e : v) {
    if (!e.is_string()) throw ModelFormatError(std::string("config field '") + key + "' must hold strings");
    out.push_back(e.get<std::string>());
  }
  return out;
}

// One value repeated per block: diffusers allows a list, we only build uniform models.
int64_t get_uniform_int(const json& j, const char* key, size_t n, int64_t def) {
  const std::vector<int64_t> v = get_int_or_list(j, key, n, def);
  for (int64_t x : v)
    if (x != v[0])
      throw UnsupportedError(std::string("config field '") + key + "': different values per block are not supported");
  return v.empty() ? def : v[0];
}

// A field that must keep its default (null/absent or the given value) for the model we build.
void reject_if_set(const json& j, const char* key, const std::string& why = "") {
  if (is_null_or_absent(j, key)) return;
  const json& v = j[key];
  if (v.is_boolean() && !v.get<bool>()) return;
  if (v.is_array() && !v.empty() && v[0].is_boolean()) {
    bool any = false;
    for (const json& e : v) any = any || (e.is_boolean() && e.get<bool>());
    if (!any) return;
  }
  throw UnsupportedError(std::string("config field '") + key + "' = " + v.dump() + " is not supported" +
                         (why.empty() ? "" : " (" + why + ")"));
}

void require_value(const json& j, const char* key, const json& expected) {
  if (is_null_or_absent(j, key)) return;
  const json& v = j[key];
  const bool same = (v.is_number() && expected.is_number()) ? v.get<double>() == expected.get<double>() : v == expected;
  if (!same)
    throw UnsupportedError(std::string("config field '") + key + "' = " + v.dump() + " is not supported (only " +
                           expected.dump() + ")");
}

void check_positive(int64_t v, const char* what) {
  if (v <= 0) throw ModelFormatError(std::string("config: ") + what + " must be positive, got " + std::to_string(v));
}

void check_class_name(const json& j, const char* expected) {
  const std::string cls = get_string(j, "_class_name", expected);
  if (cls != expected)
    throw UnsupportedError(std::string("config field '_class_name' = '") + cls + "' is not supported (expected " +
                           expected + ")");
}

template <typename T>
std::string list_str(const std::vector<T>& v) {
  std::ostringstream s;
  s << '[';
  for (size_t i = 0; i < v.size(); ++i) s << (i ? "," : "") << v[i];
  s << ']';
  return s.str();
}

const char* yes_no(bool b) { return b ? "yes" : "no"; }

UNetConfig unet_from_json(const json& j) {
  if (!j.is_object()) throw ModelFormatError("UNet config is not a JSON object");
  check_class_name(j, "UNet2DConditionModel");
  // Features of other UNet variants (SDXL, unCLIP, LCM, Kandinsky, ...) that change the graph.
  if (!is_null_or_absent(j, "addition_embed_type"))
    throw UnsupportedError("config field 'addition_embed_type' = " + j["addition_embed_type"].dump() +
                           " is not supported (SDXL UNet not supported yet)");
  reject_if_set(j, "addition_time_embed_dim", "SDXL UNet not supported yet");
  reject_if_set(j, "class_embed_type");
  reject_if_set(j, "num_class_embeds");
  reject_if_set(j, "projection_class_embeddings_input_dim");
  reject_if_set(j, "class_embeddings_concat");
  reject_if_set(j, "time_cond_proj_dim");
  reject_if_set(j, "time_embedding_dim");
  reject_if_set(j, "time_embedding_act_fn");
  reject_if_set(j, "timestep_post_act");
  reject_if_set(j, "encoder_hid_dim");
  reject_if_set(j, "encoder_hid_dim_type");
  reject_if_set(j, "dual_cross_attention");
  reject_if_set(j, "only_cross_attention");
  reject_if_set(j, "mid_block_only_cross_attention");
  reject_if_set(j, "cross_attention_norm");
  reject_if_set(j, "center_input_sample");
  reject_if_set(j, "resnet_skip_time_act");
  reject_if_set(j, "reverse_transformer_layers_per_block");
  require_value(j, "resnet_time_scale_shift", "default");
  require_value(j, "time_embedding_type", "positional");
  require_value(j, "attention_type", "default");
  require_value(j, "act_fn", "silu");
  require_value(j, "conv_in_kernel", 3);
  require_value(j, "conv_out_kernel", 3);
  require_value(j, "downsample_padding", 1);
  require_value(j, "mid_block_scale_factor", 1);
  require_value(j, "resnet_out_scale_factor", 1);

  UNetConfig c;
  c.in_channels = get_int(j, "in_channels", 4);
  c.out_channels = get_int(j, "out_channels", 4);
  check_positive(c.in_channels, "in_channels");
  check_positive(c.out_channels, "out_channels");

  const auto down = get_string_list(
      j, "down_block_types", {"CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"});
  const size_t n = down.size();
  if (n == 0) throw ModelFormatError("config field 'down_block_types' is empty");
  c.down_has_attention.clear();
  for (const std::string& t : down) {
    if (t == "CrossAttnDownBlock2D")
      c.down_has_attention.push_back(true);
    else if (t == "DownBlock2D")
      c.down_has_attention.push_back(false);
    else
      throw UnsupportedError("config field 'down_block_types': block type '" + t + "' is not supported");
  }
  // Up blocks must mirror the down blocks (that is all the LDM layout can express).
  std::vector<std::string> expected_up;
  for (size_t i = 0; i < n; ++i)
    expected_up.push_back(c.down_has_attention[n - 1 - i] ? "CrossAttnUpBlock2D" : "UpBlock2D");
  const auto up = get_string_list(j, "up_block_types", expected_up);
  if (up.size() != n)
    throw ModelFormatError("config: 'up_block_types' has " + std::to_string(up.size()) +
                           " entries but 'down_block_types' has " + std::to_string(n));
  for (size_t i = 0; i < n; ++i)
    if (up[i] != expected_up[i])
      throw UnsupportedError("config field 'up_block_types': entry " + std::to_string(i) + " is '" + up[i] +
                             "', expected '" + expected_up[i] + "' (up blocks must mirror down blocks)");

  c.block_out_channels = get_int_list(j, "block_out_channels", {320, 640, 1280, 1280});
  if (c.block_out_channels.size() != n)
    throw ModelFormatError("config: 'block_out_channels' has " + std::to_string(c.block_out_channels.size()) +
                           " entries but 'down_block_types' has " + std::to_string(n));
  for (int64_t ch : c.block_out_channels) check_positive(ch, "block_out_channels");

  c.layers_per_block = get_uniform_int(j, "layers_per_block", n, 2);
  check_positive(c.layers_per_block, "layers_per_block");
  c.transformer_layers = get_uniform_int(j, "transformer_layers_per_block", n, 1);
  check_positive(c.transformer_layers, "transformer_layers_per_block");

  // diffusers' `attention_head_dim` is the head count for these UNets; `num_attention_heads`,
  // when given, means the same and wins.
  c.heads = is_null_or_absent(j, "num_attention_heads") ? get_int_or_list(j, "attention_head_dim", n, 8)
                                                        : get_int_or_list(j, "num_attention_heads", n, 8);

  if (!is_null_or_absent(j, "cross_attention_dim") && j["cross_attention_dim"].is_array())
    throw UnsupportedError("config field 'cross_attention_dim': a list (one per block) is not supported");
  c.cross_attention_dim = get_int(j, "cross_attention_dim", 1280);
  check_positive(c.cross_attention_dim, "cross_attention_dim");

  if (j.contains("norm_num_groups") && j["norm_num_groups"].is_null())
    throw UnsupportedError("config field 'norm_num_groups' = null (no output norm) is not supported");
  c.norm_num_groups = get_int(j, "norm_num_groups", 32);
  check_positive(c.norm_num_groups, "norm_num_groups");
  c.norm_eps = get_float(j, "norm_eps", 1e-5f);
  if (!(c.norm_eps > 0)) throw ModelFormatError("config: 'norm_eps' must be positive");
  c.use_linear_projection = get_bool(j, "use_linear_projection", false);
  c.upcast_attention = get_bool(j, "upcast_attention", false);
  c.flip_sin_to_cos = get_bool(j, "flip_sin_to_cos", true);
  c.freq_shift = get_int(j, "freq_shift", 0);

  if (j.contains("mid_block_type") && j["mid_block_type"].is_null()) {
    c.mid_block = false;
  } else {
    const std::string mid = get_string(j, "mid_block_type", "UNetMidBlock2DCrossAttn");
    if (mid != "UNetMidBlock2DCrossAttn")
      throw UnsupportedError("config field 'mid_block_type' = '" + mid + "' is not supported");
    c.mid_block = true;
  }

  // Shape consistency: GroupNorm needs channels divisible by groups; attention needs
  // channels divisible by heads wherever a transformer sits.
  for (size_t i = 0; i < n; ++i) {
    const int64_t ch = c.block_out_channels[i];
    if (ch % c.norm_num_groups != 0)
      throw ModelFormatError("config: block_out_channels[" + std::to_string(i) + "] = " + std::to_string(ch) +
                             " is not divisible by norm_num_groups = " + std::to_string(c.norm_num_groups));
    const bool attn = c.down_has_attention[i] || (c.mid_block && i == n - 1);
    if (attn && (c.heads[i] <= 0 || ch % c.heads[i] != 0))
      throw ModelFormatError("config: block_out_channels[" + std::to_string(i) + "] = " + std::to_string(ch) +
                             " is not divisible by the head count " + std::to_string(c.heads[i]));
  }
  return c;
}

VAEConfig vae_from_json(const json& j) {
  if (!j.is_object()) throw ModelFormatError("VAE config is not a JSON object");
  check_class_name(j, "AutoencoderKL");
  require_value(j, "act_fn", "silu");
  VAEConfig c;
  c.in_channels = get_int(j, "in_channels", 3);
  c.out_channels = get_int(j, "out_channels", 3);
  c.latent_channels = get_int(j, "latent_channels", 4);
  check_positive(c.in_channels, "in_channels");
  check_positive(c.out_channels, "out_channels");
  check_positive(c.latent_channels, "latent_channels");
  c.block_out_channels = get_int_list(j, "block_out_channels", {64});
  const size_t n = c.block_out_channels.size();
  for (int64_t ch : c.block_out_channels) check_positive(ch, "block_out_channels");
  const auto down = get_string_list(j, "down_block_types", std::vector<std::string>(n, "DownEncoderBlock2D"));
  const auto up = get_string_list(j, "up_block_types", std::vector<std::string>(n, "UpDecoderBlock2D"));
  if (down.size() != n || up.size() != n)
    throw ModelFormatError("config: 'down_block_types'/'up_block_types' need one entry per 'block_out_channels' (" +
                           std::to_string(n) + ")");
  for (const std::string& t : down)
    if (t != "DownEncoderBlock2D")
      throw UnsupportedError("config field 'down_block_types': block type '" + t + "' is not supported");
  for (const std::string& t : up)
    if (t != "UpDecoderBlock2D")
      throw UnsupportedError("config field 'up_block_types': block type '" + t + "' is not supported");
  c.layers_per_block = get_int(j, "layers_per_block", 1);
  check_positive(c.layers_per_block, "layers_per_block");
  c.norm_num_groups = get_int(j, "norm_num_groups", 32);
  check_positive(c.norm_num_groups, "norm_num_groups");
  c.scaling_factor = get_float(j, "scaling_factor", 0.18215f);
  if (!(c.scaling_factor > 0) || !std::isfinite(c.scaling_factor))
    throw ModelFormatError("config: 'scaling_factor' must be a positive number");
  c.shift_factor = get_float(j, "shift_factor", 0.f);
  if (j.contains("sample_size") && j["sample_size"].is_array() && !j["sample_size"].empty())
    c.sample_size = j["sample_size"][0].is_number_integer() ? j["sample_size"][0].get<int64_t>() : 0;
  else
    c.sample_size = get_int(j, "sample_size", 512);
  check_positive(c.sample_size, "sample_size");
  c.use_quant_conv = get_bool(j, "use_quant_conv", true);
  c.use_post_quant_conv = get_bool(j, "use_post_quant_conv", true);
  c.mid_block_attention = get_bool(j, "mid_block_add_attention", true);
  for (size_t i = 0; i < n; ++i)
    if (c.block_out_channels[i] % c.norm_num_groups != 0)
      throw ModelFormatError("config: block_out_channels[" + std::to_string(i) +
                             "] = " + std::to_string(c.block_out_channels[i]) +
                             " is not divisible by norm_num_groups = " + std::to_string(c.norm_num_groups));
  return c;
}

}  // namespace

UNetConfig UNetConfig::from_json(const nlohmann::json& j) {
  try {
    return unet_from_json(j);
  } catch (const nlohmann::json::exception& e) {
    throw ModelFormatError(std::string("UNet config: bad value (") + e.what() + ")");
  }
}

VAEConfig VAEConfig::from_json(const nlohmann::json& j) {
  try {
    return vae_from_json(j);
  } catch (const nlohmann::json::exception& e) {
    throw ModelFormatError(std::string("VAE config: bad value (") + e.what() + ")");
  }
}

std::string UNetConfig::summary() const {
  std::vector<int> attn(down_has_attention.begin(), down_has_attention.end());
  std::ostringstream s;
  s << "UNet in " << in_channels << ", out " << out_channels << ", channels " << list_str(block_out_channels)
    << ", attention " << list_str(attn) << ", layers " << layers_per_block << ", heads " << list_str(heads)
    << ", transformer depth " << transformer_layers << ", context " << cross_attention_dim << ", groups "
    << norm_num_groups << ", eps " << norm_eps << ", linear proj " << yes_no(use_linear_projection) << ", upcast "
    << yes_no(upcast_attention) << ", flip_sin_to_cos " << yes_no(flip_sin_to_cos) << ", freq_shift " << freq_shift
    << ", mid block " << yes_no(mid_block);
  return s.str();
}

std::string VAEConfig::summary() const {
  std::ostringstream s;
  s << "VAE in " << in_channels << ", out " << out_channels << ", latent " << latent_channels << ", channels "
    << list_str(block_out_channels) << ", layers " << layers_per_block << ", groups " << norm_num_groups << ", scale "
    << scaling_factor << ", shift " << shift_factor << ", quant_conv " << yes_no(use_quant_conv) << ", post_quant_conv "
    << yes_no(use_post_quant_conv) << ", mid attention " << yes_no(mid_block_attention);
  return s.str();
}

}  // namespace sdserve
