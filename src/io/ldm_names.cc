#include "io/ldm_names.h"

#include <set>

namespace sdserve {

namespace {

std::string idx(int64_t i) { return std::to_string(i); }

// Shape of a tensor that must exist (and have `rank` dims when rank > 0).
Shape need_shape(const WeightSource& w, const std::string& name, size_t rank, const char* what) {
  const TensorInfo* i = w.info(name);
  if (!i) throw ModelFormatError(w.describe() + ": " + what + " is missing tensor '" + w.full_name(name) + "'");
  if (rank && i->shape.size() != rank)
    throw ModelFormatError(w.describe() + ": tensor '" + w.full_name(name) + "' has shape " + shape_str(i->shape) +
                           ", expected " + std::to_string(rank) + " dimensions");
  return i->shape;
}

// The distinct integers N of keys "<head>N.<...>".
std::set<int64_t> indices_after(const std::vector<std::string>& keys, const std::string& head) {
  std::set<int64_t> out;
  for (const std::string& k : keys) {
    if (k.compare(0, head.size(), head) != 0) continue;
    size_t p = head.size();
    int64_t v = 0;
    bool digits = false;
    while (p < k.size() && k[p] >= '0' && k[p] <= '9' && v < 1'000'000) v = v * 10 + (k[p++] - '0'), digits = true;
    if (digits && p < k.size() && k[p] == '.') out.insert(v);
  }
  return out;
}

// Indices must be exactly 0..n-1; returns n.
int64_t dense_count(const std::set<int64_t>& s, const WeightSource& w, const std::string& what) {
  const int64_t n = int64_t(s.size());
  if (n > 0 && *s.rbegin() != n - 1)
    throw ModelFormatError(w.describe() + ": " + what + " indices under '" + w.prefix() + "' are not 0.." +
                           std::to_string(n - 1));
  return n;
}

// Number of transformer blocks in the SpatialTransformer at `block` ("input_blocks.4.1").
int64_t transformer_depth(const WeightSource& w, const std::string& block) {
  int64_t d = 0;
  while (w.has(block + ".transformer_blocks." + idx(d) + ".norm1.weight")) ++d;
  return d;
}

void add_wb(NameMap& m, const std::string& d, const std::string& l) {
  m[d + ".weight"] = l + ".weight";
  m[d + ".bias"] = l + ".bias";
}

void unet_resnet(NameMap& m, const std::string& d, const std::string& l, bool shortcut) {
  add_wb(m, d + ".norm1", l + ".in_layers.0");
  add_wb(m, d + ".conv1", l + ".in_layers.2");
  add_wb(m, d + ".time_emb_proj", l + ".emb_layers.1");
  add_wb(m, d + ".norm2", l + ".out_layers.0");
  add_wb(m, d + ".conv2", l + ".out_layers.3");
  if (shortcut) add_wb(m, d + ".conv_shortcut", l + ".skip_connection");
}

// Transformer2DModel <- SpatialTransformer: the names inside are the same.
void unet_transformer(NameMap& m, const std::string& d, const std::string& l, int64_t depth) {
  for (const char* s : {".norm", ".proj_in", ".proj_out"}) add_wb(m, d + s, l + s);
  for (int64_t k = 0; k < depth; ++k) {
    const std::string tb = ".transformer_blocks." + idx(k);
    for (const char* s :
         {".norm1", ".norm2", ".norm3", ".attn1.to_out.0", ".attn2.to_out.0", ".ff.net.0.proj", ".ff.net.2"})
      add_wb(m, d + tb + s, l + tb + s);
    for (const char* s : {".attn1.to_q", ".attn1.to_k", ".attn1.to_v", ".attn2.to_q", ".attn2.to_k", ".attn2.to_v"})
      m[d + tb + s + ".weight"] = l + tb + s + ".weight";  // no bias in SD attention projections
  }
}

void vae_resnet(NameMap& m, const std::string& d, const std::string& l, bool shortcut) {
  for (const char* s : {".norm1", ".conv1", ".norm2", ".conv2"}) add_wb(m, d + s, l + s);
  if (shortcut) add_wb(m, d + ".conv_shortcut", l + ".nin_shortcut");
}

void vae_mid(NameMap& m, const std::string& coder, bool attention) {
  const std::string d = coder + ".mid_block", l = coder + ".mid";
  vae_resnet(m, d + ".resnets.0", l + ".block_1", false);
  vae_resnet(m, d + ".resnets.1", l + ".block_2", false);
  if (!attention) return;
  add_wb(m, d + ".attentions.0.group_norm", l + ".attn_1.norm");
  add_wb(m, d + ".attentions.0.to_q", l + ".attn_1.q");
  add_wb(m, d + ".attentions.0.to_k", l + ".attn_1.k");
  add_wb(m, d + ".attentions.0.to_v", l + ".attn_1.v");
  add_wb(m, d + ".attentions.0.to_out.0", l + ".attn_1.proj_out");
}

}  // namespace

UNetConfig infer_unet_config_ldm(const WeightSource& w, ModelFamily family, const LdmInferOptions& opt) {
  constexpr const char* kWhat = "single-file UNet";
  if (family == ModelFamily::SDXL || family == ModelFamily::SDXLRefiner)
    throw UnsupportedError(w.describe() + ": SDXL UNet not supported yet");
  if (w.has("label_emb.0.0.weight"))
    throw UnsupportedError(w.describe() + ": UNet with class/size embeddings ('" + w.full_name("label_emb.0.0.weight") +
                           "', SDXL or unCLIP) is not supported yet");
  SD_CHECK_ARG(opt.norm_num_groups > 0, "infer_unet_config_ldm: norm_num_groups must be positive");

  UNetConfig c;
  const Shape conv_in = need_shape(w, "input_blocks.0.0.weight", 4, kWhat);
  const int64_t c0 = conv_in[0];
  c.in_channels = conv_in[1];
  c.out_channels = need_shape(w, "out.2.weight", 4, kWhat)[0];
  const Shape temb = need_shape(w, "time_embed.0.weight", 2, kWhat);
  if (temb[1] != c0)
    throw ModelFormatError(w.describe() + ": '" + w.full_name("time_embed.0.weight") + "' has shape " +
                           shape_str(temb) + ", expected [*, " + std::to_string(c0) + "]");

  const std::vector<std::string> keys = w.keys();
  const int64_t n_in = dense_count(indices_after(keys, "input_blocks."), w, "input_blocks");
  const int64_t n_out = dense_count(indices_after(keys, "output_blocks."), w, "output_blocks");
  // input_blocks: conv_in, then per level lpb resnet(+attention) blocks and, except on the last
  // level, one downsampler: 1 + L*lpb + (L-1) = L*(lpb+1) blocks.
  int64_t first_op = 0;
  for (int64_t i = 1; i < n_in && !first_op; ++i)
    if (w.has("input_blocks." + idx(i) + ".0.op.weight")) first_op = i;
  const int64_t lpb = first_op ? first_op - 1 : n_in - 1;
  if (lpb < 1 || n_in % (lpb + 1) != 0)
    throw ModelFormatError(w.describe() + ": cannot make sense of " + std::to_string(n_in) +
                           " input_blocks (first downsampler at " + std::to_string(first_op) + ")");
  const int64_t levels = n_in / (lpb + 1);
  if (n_out != levels * (lpb + 1))
    throw ModelFormatError(w.describe() + ": " + std::to_string(n_out) + " output_blocks, expected " +
                           std::to_string(levels * (lpb + 1)) + " for " + std::to_string(levels) + " levels of " +
                           std::to_string(lpb) + " layers");
  c.layers_per_block = lpb;

  c.block_out_channels.clear();
  c.down_has_attention.clear();
  std::vector<std::string> attention_blocks;
  for (int64_t b = 0; b < levels; ++b) {
    const int64_t first = 1 + b * (lpb + 1);
    const std::string blk = "input_blocks." + idx(first);
    c.block_out_channels.push_back(need_shape(w, blk + ".0.in_layers.2.weight", 4, kWhat)[0]);
    const bool attn = w.has(blk + ".1.proj_in.weight");
    c.down_has_attention.push_back(attn);
    for (int64_t l = 0; l < lpb; ++l) {
      const std::string at = "input_blocks." + idx(first + l) + ".1";
      if (w.has(at + ".proj_in.weight") != attn)
        throw ModelFormatError(w.describe() + ": level " + std::to_string(b) +
                               " has attention in some blocks but not in others");
      if (attn) attention_blocks.push_back(at);
    }
    const bool op = w.has("input_blocks." + idx((b + 1) * (lpb + 1)) + ".0.op.weight");
    if (op != (b + 1 < levels))
      throw ModelFormatError(w.describe() + ": downsampler missing or misplaced at level " + std::to_string(b));
  }
  for (int64_t b = 0; b < levels; ++b) {
    const int64_t ob = (levels - 1 - b) * (lpb + 1);  // first output block of the mirror level
    if (w.has("output_blocks." + idx(ob) + ".1.proj_in.weight") != c.down_has_attention[b])
      throw ModelFormatError(w.describe() + ": output_blocks do not mirror the attention of input level " +
                             std::to_string(b));
    for (int64_t l = 0; l <= lpb && c.down_has_attention[b]; ++l)
      attention_blocks.push_back("output_blocks." + idx(ob + l) + ".1");
  }

  c.mid_block = w.has("middle_block.0.in_layers.2.weight");
  if (c.mid_block) {
    if (!w.has("middle_block.1.proj_in.weight"))
      throw UnsupportedError(w.describe() + ": UNet mid block without attention is not supported");
    attention_blocks.push_back("middle_block.1");
  }
  if (attention_blocks.empty())
    throw UnsupportedError(w.describe() + ": UNet without cross-attention is not supported");

  const std::string& a0 = attention_blocks.front();
  c.transformer_layers = transformer_depth(w, a0);
  if (c.transformer_layers == 0)
    throw ModelFormatError(w.describe() + ": '" + w.full_name(a0) + "' has no transformer_blocks");
  for (const std::string& a : attention_blocks)
    if (transformer_depth(w, a) != c.transformer_layers)
      throw UnsupportedError(w.describe() + ": transformer depth differs between blocks ('" + a0 + "' vs '" + a +
                             "'); not supported");
  c.use_linear_projection = need_shape(w, a0 + ".proj_in.weight", 0, kWhat).size() == 2;
  const Shape k2 = need_shape(w, a0 + ".transformer_blocks.0.attn2.to_k.weight", 2, kWhat);
  c.cross_attention_dim = k2[1];

  // LDM constants: what the original configs fix and shapes cannot show.
  c.norm_num_groups = opt.norm_num_groups;
  c.norm_eps = 1e-5f;
  c.flip_sin_to_cos = true;
  c.freq_shift = 0;
  const bool sd2 = family == ModelFamily::SD2 || (family == ModelFamily::Unknown && c.cross_attention_dim == 1024);
  c.upcast_attention = opt.upcast_attention.value_or(sd2);
  c.heads.clear();
  if (!opt.heads.empty()) {
    SD_CHECK_ARG(int64_t(opt.heads.size()) == levels, "infer_unet_config_ldm: " + std::to_string(opt.heads.size()) +
                                                          " head counts given for " + std::to_string(levels) +
                                                          " levels");
    c.heads = opt.heads;
  } else {
    const int64_t head_dim = opt.head_dim > 0 ? opt.head_dim : (sd2 ? 64 : 0);
    for (int64_t ch : c.block_out_channels) c.heads.push_back(head_dim ? std::max<int64_t>(1, ch / head_dim) : 8);
  }

  for (int64_t b = 0; b < levels; ++b) {
    const int64_t ch = c.block_out_channels[b];
    if (ch % c.norm_num_groups != 0)
      throw ModelFormatError(w.describe() + ": UNet channels " + std::to_string(ch) + " not divisible by " +
                             std::to_string(c.norm_num_groups) + " norm groups");
    const bool attn = c.down_has_attention[b] || (c.mid_block && b == levels - 1);
    if (attn && (c.heads[b] <= 0 || ch % c.heads[b] != 0))
      throw ModelFormatError(w.describe() + ": UNet channels " + std::to_string(ch) + " at level " + std::to_string(b) +
                             " not divisible by " + std::to_string(c.heads[b]) + " heads");
  }
  return c;
}

VAEConfig infer_vae_config_ldm(const WeightSource& w, int64_t norm_groups) {
  constexpr const char* kWhat = "single-file VAE";
  SD_CHECK_ARG(norm_groups > 0, "infer_vae_config_ldm: norm_groups must be positive");
  VAEConfig c;
  const std::vector<std::string> keys = w.keys();
  const int64_t levels = dense_count(indices_after(keys, "encoder.down."), w, "encoder.down");
  if (levels == 0) throw ModelFormatError(w.describe() + ": no VAE encoder under '" + w.prefix() + "'");
  if (dense_count(indices_after(keys, "decoder.up."), w, "decoder.up") != levels)
    throw ModelFormatError(w.describe() + ": VAE decoder and encoder have different numbers of levels");
  c.layers_per_block = dense_count(indices_after(keys, "encoder.down.0.block."), w, "encoder.down.0.block");
  if (c.layers_per_block == 0) throw ModelFormatError(w.describe() + ": VAE encoder level 0 has no blocks");
  const int64_t dec_blocks = dense_count(indices_after(keys, "decoder.up.0.block."), w, "decoder.up.0.block");
  if (dec_blocks != c.layers_per_block + 1)
    throw ModelFormatError(w.describe() + ": VAE decoder has " + std::to_string(dec_blocks) +
                           " blocks per level, expected " + std::to_string(c.layers_per_block + 1));

  c.in_channels = need_shape(w, "encoder.conv_in.weight", 4, kWhat)[1];
  c.out_channels = need_shape(w, "decoder.conv_out.weight", 4, kWhat)[0];
  c.latent_channels = need_shape(w, "decoder.conv_in.weight", 4, kWhat)[1];
  c.block_out_channels.clear();
  for (int64_t i = 0; i < levels; ++i)
    c.block_out_channels.push_back(need_shape(w, "encoder.down." + idx(i) + ".block.0.conv2.weight", 4, kWhat)[0]);
  c.norm_num_groups = norm_groups;
  c.scaling_factor = 0.18215f;
  c.shift_factor = 0.f;
  c.use_quant_conv = w.has("quant_conv.weight");
  c.use_post_quant_conv = w.has("post_quant_conv.weight");
  c.mid_block_attention = w.has("encoder.mid.attn_1.q.weight");
  for (int64_t ch : c.block_out_channels)
    if (ch % norm_groups != 0)
      throw ModelFormatError(w.describe() + ": VAE channels " + std::to_string(ch) + " not divisible by " +
                             std::to_string(norm_groups) + " norm groups");
  return c;
}

NameMap unet_ldm_name_map(const UNetConfig& c) {
  NameMap m;
  const int64_t levels = int64_t(c.block_out_channels.size());
  SD_CHECK_ARG(levels > 0 && int64_t(c.down_has_attention.size()) == levels,
               "unet_ldm_name_map: block_out_channels and down_has_attention differ in length");
  const int64_t lpb = c.layers_per_block, depth = c.transformer_layers;
  const auto& ch = c.block_out_channels;

  add_wb(m, "time_embedding.linear_1", "time_embed.0");
  add_wb(m, "time_embedding.linear_2", "time_embed.2");
  add_wb(m, "conv_in", "input_blocks.0.0");
  add_wb(m, "conv_norm_out", "out.0");
  add_wb(m, "conv_out", "out.2");

  for (int64_t b = 0; b < levels; ++b) {
    const std::string d = "down_blocks." + idx(b);
    for (int64_t l = 0; l < lpb; ++l) {
      const std::string ib = "input_blocks." + idx(1 + b * (lpb + 1) + l);
      const int64_t in = l > 0 ? ch[b] : (b > 0 ? ch[b - 1] : ch[0]);
      unet_resnet(m, d + ".resnets." + idx(l), ib + ".0", in != ch[b]);
      if (c.down_has_attention[b]) unet_transformer(m, d + ".attentions." + idx(l), ib + ".1", depth);
    }
    if (b + 1 < levels) add_wb(m, d + ".downsamplers.0.conv", "input_blocks." + idx((b + 1) * (lpb + 1)) + ".0.op");
  }

  if (c.mid_block) {
    unet_resnet(m, "mid_block.resnets.0", "middle_block.0", false);
    unet_transformer(m, "mid_block.attentions.0", "middle_block.1", depth);
    unet_resnet(m, "mid_block.resnets.1", "middle_block.2", false);
  }

  for (int64_t i = 0; i < levels; ++i) {
    const int64_t level = levels - 1 - i;  // the down level this up block mirrors
    const bool attn = c.down_has_attention[level];
    const std::string d = "up_blocks." + idx(i);
    // Each up resnet takes the previous output concatenated with a skip, so in != out: always a shortcut.
    for (int64_t l = 0; l <= lpb; ++l) {
      const std::string ob = "output_blocks." + idx(i * (lpb + 1) + l);
      unet_resnet(m, d + ".resnets." + idx(l), ob + ".0", true);
      if (attn) unet_transformer(m, d + ".attentions." + idx(l), ob + ".1", depth);
    }
    if (i + 1 < levels)
      add_wb(m, d + ".upsamplers.0.conv", "output_blocks." + idx(i * (lpb + 1) + lpb) + (attn ? ".2" : ".1") + ".conv");
  }
  return m;
}

NameMap vae_ldm_name_map(const VAEConfig& c) {
  NameMap m;
  const int64_t levels = int64_t(c.block_out_channels.size());
  SD_CHECK_ARG(levels > 0, "vae_ldm_name_map: no blocks");
  const int64_t lpb = c.layers_per_block;
  const auto& ch = c.block_out_channels;

  for (const char* coder : {"encoder", "decoder"}) {
    const std::string s = coder;
    add_wb(m, s + ".conv_in", s + ".conv_in");
    add_wb(m, s + ".conv_out", s + ".conv_out");
    add_wb(m, s + ".conv_norm_out", s + ".norm_out");
    vae_mid(m, s, c.mid_block_attention);
  }
  for (int64_t i = 0; i < levels; ++i) {
    const std::string d = "encoder.down_blocks." + idx(i), l = "encoder.down." + idx(i);
    for (int64_t j = 0; j < lpb; ++j) {
      const int64_t in = j > 0 ? ch[i] : (i > 0 ? ch[i - 1] : ch[0]);
      vae_resnet(m, d + ".resnets." + idx(j), l + ".block." + idx(j), in != ch[i]);
    }
    if (i + 1 < levels) add_wb(m, d + ".downsamplers.0.conv", l + ".downsample.conv");
  }
  // The decoder's up blocks run from the deepest level; LDM numbers them by resolution (up.0 is
  // the full-resolution one), so the indices are reversed.
  for (int64_t i = 0; i < levels; ++i) {
    const int64_t out = ch[levels - 1 - i];
    const int64_t prev = i == 0 ? ch[levels - 1] : ch[levels - i];
    const std::string d = "decoder.up_blocks." + idx(i), l = "decoder.up." + idx(levels - 1 - i);
    for (int64_t j = 0; j <= lpb; ++j) {
      const int64_t in = j == 0 ? prev : out;
      vae_resnet(m, d + ".resnets." + idx(j), l + ".block." + idx(j), in != out);
    }
    if (i + 1 < levels) add_wb(m, d + ".upsamplers.0.conv", l + ".upsample.conv");
  }
  if (c.use_quant_conv) add_wb(m, "quant_conv", "quant_conv");
  if (c.use_post_quant_conv) add_wb(m, "post_quant_conv", "post_quant_conv");
  return m;
}

NameMap vae_legacy_attention_name_map(const VAEConfig& c) {
  NameMap m;
  if (!c.mid_block_attention) return m;
  for (const char* coder : {"encoder", "decoder"}) {
    const std::string a = std::string(coder) + ".mid_block.attentions.0";
    add_wb(m, a + ".to_q", a + ".query");
    add_wb(m, a + ".to_k", a + ".key");
    add_wb(m, a + ".to_v", a + ".value");
    add_wb(m, a + ".to_out.0", a + ".proj_attn");
  }
  return m;
}

WeightSource unet_weights_from_ldm(const WeightSource& ldm, const UNetConfig& config) {
  return ldm.with_renames(std::make_shared<const NameMap>(unet_ldm_name_map(config)));
}

WeightSource vae_weights_from_ldm(const WeightSource& ldm, const VAEConfig& config) {
  return ldm.with_renames(std::make_shared<const NameMap>(vae_ldm_name_map(config)));
}

WeightSource vae_weights_diffusers(const WeightSource& vae, const VAEConfig& config) {
  if (!config.mid_block_attention || vae.has("encoder.mid_block.attentions.0.to_q.weight") ||
      !vae.has("encoder.mid_block.attentions.0.query.weight"))
    return vae;
  return vae.with_renames(std::make_shared<const NameMap>(vae_legacy_attention_name_map(config)),
                          /*pass_through=*/true);
}

}  // namespace sdserve
