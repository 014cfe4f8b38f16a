// Single-file (LDM/A1111) UNet and VAE weights under diffusers names, and the UNet/VAE configs.
//  * inferred configs of the tiny single files equal the configs of their diffusers twins;
//  * the name maps cover exactly the diffusers state dicts and exactly the single-file tensors;
//  * every tensor read through the renamed single file equals the diffusers tensor bit for bit
//    (the fixtures' single files are f16 copies of f16-representable f32 weights);
//  * config.json parsing: real SD1.5/SD2.1 configs, and every rejected or malformed field.
#include <algorithm>
#include <cstring>
#include <filesystem>
#include <set>

#include <nlohmann/json.hpp>

#include "io/ldm_names.h"
#include "io/model_files.h"
#include "models/configs.h"
#include "test_util.h"

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace sdserve::test {
namespace {

const fs::path kModels = fs::path(SDSERVE_SOURCE_DIR) / "tests" / "fixtures" / "models";

template <typename E, typename F>
void expect_error(F&& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "no exception; expected one mentioning '" << needle << "'";
  } catch (const E& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "wrong exception type: " << e.what();
  }
}

std::set<std::string> key_set(const std::vector<std::string>& v) { return {v.begin(), v.end()}; }

void expect_same_unet(const UNetConfig& a, const UNetConfig& b) {
  EXPECT_EQ(a.in_channels, b.in_channels);
  EXPECT_EQ(a.out_channels, b.out_channels);
  EXPECT_EQ(a.block_out_channels, b.block_out_channels);
  EXPECT_EQ(a.down_has_attention, b.down_has_attention);
  EXPECT_EQ(a.layers_per_block, b.layers_per_block);
  EXPECT_EQ(a.heads, b.heads);
  EXPECT_EQ(a.transformer_layers, b.transformer_layers);
  EXPECT_EQ(a.cross_attention_dim, b.cross_attention_dim);
  EXPECT_EQ(a.norm_num_groups, b.norm_num_groups);
  EXPECT_EQ(a.norm_eps, b.norm_eps);
  EXPECT_EQ(a.use_linear_projection, b.use_linear_projection);
  EXPECT_EQ(a.upcast_attention, b.upcast_attention);
  EXPECT_EQ(a.flip_sin_to_cos, b.flip_sin_to_cos);
  EXPECT_EQ(a.freq_shift, b.freq_shift);
  EXPECT_EQ(a.mid_block, b.mid_block);
  EXPECT_EQ(a.summary(), b.summary());
}

void expect_same_vae(const VAEConfig& a, const VAEConfig& b) {
  EXPECT_EQ(a.in_channels, b.in_channels);
  EXPECT_EQ(a.out_channels, b.out_channels);
  EXPECT_EQ(a.latent_channels, b.latent_channels);
  EXPECT_EQ(a.block_out_channels, b.block_out_channels);
  EXPECT_EQ(a.layers_per_block, b.layers_per_block);
  EXPECT_EQ(a.norm_num_groups, b.norm_num_groups);
  EXPECT_EQ(a.scaling_factor, b.scaling_factor);
  EXPECT_EQ(a.shift_factor, b.shift_factor);
  EXPECT_EQ(a.use_quant_conv, b.use_quant_conv);
  EXPECT_EQ(a.use_post_quant_conv, b.use_post_quant_conv);
  EXPECT_EQ(a.mid_block_attention, b.mid_block_attention);
  EXPECT_EQ(a.summary(), b.summary());
}

// Bitwise equality of two weights after converting both to f32. The LDM VAE attention
// projections are 1x1 convs; diffusers' are Linear: the only allowed shape difference.
void expect_bitwise_equal(const Tensor& want, Tensor got, const std::string& what) {
  if (got.shape() != want.shape()) {
    Shape squeezed = got.shape();
    while (squeezed.size() > want.shape().size() && squeezed.back() == 1) squeezed.pop_back();
    ASSERT_EQ(squeezed, want.shape()) << what << ": " << shape_str(got.shape()) << " vs " << shape_str(want.shape());
    got = got.view(want.shape());
  }
  const std::vector<float> a = want.to_vector(), b = got.to_vector();
  ASSERT_EQ(a.size(), b.size()) << what;
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0) << what;
}

struct TinyModel {
  std::string dir, single;
  LdmInferOptions opt;  // what the tiny single files cannot say
};

void PrintTo(const TinyModel& m, std::ostream* os) { *os << m.dir; }

class TinyLdm : public testing::TestWithParam<TinyModel> {
 protected:
  void SetUp() override {
    dir_ = ModelFiles::open((kModels / GetParam().dir).string());
    single_ = ModelFiles::open((kModels / GetParam().single).string());
    ASSERT_EQ(single_.info().layout, ModelLayout::SingleFile);
  }
  ModelFiles dir_ = ModelFiles::open((kModels / "sd1-tiny").string());
  ModelFiles single_ = dir_;
};

TEST_P(TinyLdm, InferredConfigsMatchDiffusersConfigs) {
  const UNetConfig want_unet = UNetConfig::from_json(dir_.component_config("unet"));
  const UNetConfig got_unet = infer_unet_config_ldm(single_.component("unet"), single_.info().family, GetParam().opt);
  expect_same_unet(got_unet, want_unet);

  const VAEConfig want_vae = VAEConfig::from_json(dir_.component_config("vae"));
  const VAEConfig got_vae = infer_vae_config_ldm(single_.component("vae"), GetParam().opt.norm_num_groups);
  expect_same_vae(got_vae, want_vae);
}

// Checks one component: map keys == diffusers keys, map values == single-file keys (so nothing
// in the single file is left unmapped), and values equal bit for bit.
void check_component(const WeightSource& diffusers, const WeightSource& ldm, const NameMap& map,
                     const std::string& what) {
  const std::set<std::string> dkeys = key_set(diffusers.keys());
  const std::set<std::string> lkeys = key_set(ldm.keys());
  std::set<std::string> map_keys, map_values;
  for (const auto& [d, l] : map) map_keys.insert(d), map_values.insert(l);
  EXPECT_EQ(map_values.size(), map.size()) << what << ": two diffusers names map to one LDM key";
  for (const std::string& k : dkeys) EXPECT_TRUE(map.count(k)) << what << ": diffusers key not mapped: " << k;
  for (const std::string& k : map_keys) EXPECT_TRUE(dkeys.count(k)) << what << ": map has extra key: " << k;
  for (const std::string& k : map_values) EXPECT_TRUE(lkeys.count(k)) << what << ": mapped to a missing key: " << k;
  for (const std::string& k : lkeys) EXPECT_TRUE(map_values.count(k)) << what << ": single-file key unmapped: " << k;

  const WeightSource renamed = ldm.with_renames(std::make_shared<const NameMap>(map));
  EXPECT_EQ(key_set(renamed.keys()), dkeys) << what << ": keys() of the renamed source";
  for (const std::string& k : dkeys) {
    ASSERT_TRUE(renamed.has(k)) << what << ": " << k;
    const TensorInfo* info = renamed.info(k);
    ASSERT_NE(info, nullptr);
    EXPECT_EQ(info->name, ldm.prefix() + map.at(k));
    EXPECT_EQ(renamed.full_name(k), ldm.prefix() + map.at(k));
    expect_bitwise_equal(diffusers.get(k, DType::F32), renamed.get(k, DType::F32), what + " " + k);
  }
}

TEST_P(TinyLdm, UNetNameMapCoversBothLayoutsAndValuesMatch) {
  const UNetConfig cfg = UNetConfig::from_json(dir_.component_config("unet"));
  check_component(dir_.component("unet"), single_.component("unet"), unet_ldm_name_map(cfg), "unet");
}

TEST_P(TinyLdm, VAENameMapCoversBothLayoutsAndValuesMatch) {
  const VAEConfig cfg = VAEConfig::from_json(dir_.component_config("vae"));
  check_component(dir_.component("vae"), single_.component("vae"), vae_ldm_name_map(cfg), "vae");
}

TEST_P(TinyLdm, ConvenienceSourcesAndNarrowing) {
  const WeightSource d = dir_.component("unet");
  const UNetConfig cfg = infer_unet_config_ldm(single_.component("unet"), single_.info().family, GetParam().opt);
  const WeightSource u = unet_weights_from_ldm(single_.component("unet"), cfg);
  // with_prefix() after the renames narrows the diffusers-side names.
  const WeightSource r0 = u.with_prefix("down_blocks.0.").with_prefix("resnets.0.");
  EXPECT_TRUE(r0.has("conv1.weight"));
  EXPECT_FALSE(r0.has("in_layers.2.weight"));
  EXPECT_EQ(r0.full_name("conv1.weight"), "model.diffusion_model.input_blocks.1.0.in_layers.2.weight");
  expect_bitwise_equal(d.get("down_blocks.0.resnets.0.conv1.weight", DType::F32), r0.get("conv1.weight", DType::F32),
                       "narrowed conv1");
  const std::set<std::string> r0keys = key_set(r0.keys());
  EXPECT_TRUE(r0keys.count("conv1.weight"));
  EXPECT_TRUE(r0keys.count("time_emb_proj.bias"));
  EXPECT_EQ(r0keys.size(), 10u);  // norm1, conv1, time_emb_proj, norm2, conv2 (weight + bias)
  // A missing name names both the asked and the stored key.
  expect_error<NotFoundError>([&] { u.get("down_blocks.9.resnets.0.conv1.weight", DType::F32); },
                              "down_blocks.9.resnets.0.conv1.weight");

  const VAEConfig vcfg = infer_vae_config_ldm(single_.component("vae"), GetParam().opt.norm_num_groups);
  const WeightSource v = vae_weights_from_ldm(single_.component("vae"), vcfg);
  const TensorInfo* q = v.info("decoder.mid_block.attentions.0.to_q.weight");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->shape.size(), 4u);  // stored as a 1x1 conv; callers view() it
  EXPECT_TRUE(v.has("decoder.up_blocks.0.upsamplers.0.conv.weight"));
  EXPECT_EQ(
      v.full_name("decoder.up_blocks.0.upsamplers.0.conv.weight"),
      "first_stage_model.decoder.up." + std::to_string(vcfg.block_out_channels.size() - 1) + ".upsample.conv.weight");
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TinyLdm,
                         testing::Values(TinyModel{"sd1-tiny", "sd1-tiny.safetensors", {4, {4, 4, 4}, 0, {}}},
                                         TinyModel{"sd2-tiny", "sd2-tiny.safetensors", {4, {}, 4, false}},
                                         TinyModel{"odd-tiny", "odd-tiny.safetensors", {3, {3, 5}, 0, {}}}),
                         [](const testing::TestParamInfo<TinyModel>& i) { return i.param.dir.substr(0, 3); });

TEST(LdmInfer, FamilyDefaultsForHeadsAndUpcast) {
  const ModelFiles sd1 = ModelFiles::open((kModels / "sd1-tiny.safetensors").string());
  const ModelFiles sd2 = ModelFiles::open((kModels / "sd2-tiny.safetensors").string());
  ASSERT_EQ(sd1.info().family, ModelFamily::SD1);
  ASSERT_EQ(sd2.info().family, ModelFamily::SD2);
  LdmInferOptions opt;
  opt.norm_num_groups = 4;
  const UNetConfig c1 = infer_unet_config_ldm(sd1.component("unet"), ModelFamily::SD1, opt);
  EXPECT_EQ(c1.heads, (std::vector<int64_t>{8, 8, 8}));  // SD1: 8 heads (8-wide channels allow it)
  EXPECT_FALSE(c1.upcast_attention);
  // SD2: 64-wide heads; the tiny channels are narrower, so every level has one head.
  const UNetConfig c2 = infer_unet_config_ldm(sd2.component("unet"), ModelFamily::SD2, opt);
  EXPECT_EQ(c2.heads, (std::vector<int64_t>{1, 1}));
  EXPECT_TRUE(c2.upcast_attention);
  // The default 32 groups do not divide the tiny channels: a clear error, not a bad model.
  expect_error<ModelFormatError>([&] { infer_unet_config_ldm(sd1.component("unet"), ModelFamily::SD1); },
                                 "norm groups");
  expect_error<ModelFormatError>([&] { infer_vae_config_ldm(sd1.component("vae")); }, "norm groups");
}

TEST(LdmInfer, Errors) {
  const ModelFiles sd1 = ModelFiles::open((kModels / "sd1-tiny.safetensors").string());
  LdmInferOptions opt;
  opt.norm_num_groups = 4;
  expect_error<UnsupportedError>([&] { infer_unet_config_ldm(sd1.component("unet"), ModelFamily::SDXL, opt); },
                                 "SDXL UNet not supported yet");
  opt.heads = {4, 4};
  expect_error<InvalidArgument>([&] { infer_unet_config_ldm(sd1.component("unet"), ModelFamily::SD1, opt); },
                                "2 head counts given for 3 levels");
  opt.heads = {3, 3, 3};
  expect_error<ModelFormatError>([&] { infer_unet_config_ldm(sd1.component("unet"), ModelFamily::SD1, opt); },
                                 "not divisible by 3 heads");
  // The text encoder is no UNet.
  const WeightSource te(
      {std::make_shared<const SafeTensorsFile>(SafeTensorsFile::open((kModels / "sd1-tiny.safetensors").string()))},
      "cond_stage_model.");
  expect_error<ModelFormatError>([&] { infer_unet_config_ldm(te, ModelFamily::SD1); }, "missing tensor");
  expect_error<ModelFormatError>([&] { infer_vae_config_ldm(te); }, "no VAE encoder");
}

// ---- renames on a diffusers folder saved by old diffusers (query/key/value/proj_attn) ----

TEST(LdmNames, LegacyDiffusersVaeAttentionNames) {
  const ModelFiles m = ModelFiles::open((kModels / "sd1-tiny").string());
  const WeightSource vae = m.component("vae");
  const VAEConfig cfg = VAEConfig::from_json(m.component_config("vae"));
  const NameMap legacy = vae_legacy_attention_name_map(cfg);
  EXPECT_EQ(legacy.size(), 16u);  // {encoder, decoder} x {q, k, v, out} x {weight, bias}
  std::unordered_map<std::string, std::string> to_old(legacy.begin(), legacy.end());
  std::vector<std::pair<std::string, Tensor>> old;
  for (const std::string& k : vae.keys()) {
    auto it = to_old.find(k);
    old.emplace_back(it == to_old.end() ? k : it->second, vae.get(k, DType::F32));
  }
  auto bytes = std::make_shared<const std::vector<uint8_t>>(serialize_safetensors(old));
  const WeightSource old_src({std::make_shared<const SafeTensorsFile>(SafeTensorsFile::from_memory(bytes, "old"))});
  ASSERT_FALSE(old_src.has("encoder.mid_block.attentions.0.to_q.weight"));
  const WeightSource fixed = vae_weights_diffusers(old_src, cfg);
  EXPECT_TRUE(fixed.has_renames());
  EXPECT_EQ(key_set(fixed.keys()), key_set(vae.keys()));
  for (const std::string& k : vae.keys())
    expect_bitwise_equal(vae.get(k, DType::F32), fixed.get(k, DType::F32), "legacy " + k);
  // A current folder is left alone.
  EXPECT_FALSE(vae_weights_diffusers(vae, cfg).has_renames());
}

TEST(WeightSourceRenames, FullAndPassThroughMapsStackingAndKeys) {
  std::vector<std::pair<std::string, Tensor>> ts = {
      {"p.a", Tensor::from_vector({1.f}, {1})},
      {"p.b", Tensor::from_vector({2.f}, {1})},
      {"p.c", Tensor::from_vector({3.f}, {1})},
  };
  auto bytes = std::make_shared<const std::vector<uint8_t>>(serialize_safetensors(ts));
  const WeightSource w({std::make_shared<const SafeTensorsFile>(SafeTensorsFile::from_memory(bytes, "mem"))}, "p.");
  const auto m1 = std::make_shared<const NameMap>(NameMap{{"x", "a"}, {"b", "c"}});
  auto val = [](const WeightSource& s, const char* n) { return s.get(n, DType::F32).to_vector().at(0); };

  // A full map: only its names exist.
  const WeightSource full = w.with_renames(m1);
  EXPECT_EQ(val(full, "x"), 1.f);
  EXPECT_EQ(val(full, "b"), 3.f);
  EXPECT_FALSE(full.has("a"));
  EXPECT_EQ(full.info("a"), nullptr);
  EXPECT_EQ(full.full_name("a"), "");
  expect_error<NotFoundError>([&] { full.get("a", DType::F32); }, "'a' in the name map");
  EXPECT_EQ(key_set(full.keys()), (std::set<std::string>{"x", "b"}));

  // Pass-through: unmapped names are looked up as they are.
  const WeightSource pt = w.with_renames(m1, /*pass_through=*/true);
  EXPECT_EQ(val(pt, "x"), 1.f);
  EXPECT_EQ(val(pt, "b"), 3.f);  // b is redirected to c
  EXPECT_EQ(val(pt, "a"), 1.f);
  EXPECT_EQ(val(pt, "c"), 3.f);
  // Renamed tensors are listed under their new names only; "p.b" is shadowed by the map.
  EXPECT_EQ(key_set(pt.keys()), (std::set<std::string>{"x", "b"}));
  const WeightSource pt2 = w.with_renames(std::make_shared<const NameMap>(NameMap{{"z", "c"}}), true);
  EXPECT_EQ(key_set(pt2.keys()), (std::set<std::string>{"a", "b", "z"}));

  // Stacked: y -> x -> a. A full map on top keeps only its own names.
  const WeightSource s1 = full.with_renames(std::make_shared<const NameMap>(NameMap{{"y", "x"}, {"q", "a"}}));
  EXPECT_EQ(val(s1, "y"), 1.f);
  EXPECT_EQ(s1.full_name("y"), "p.a");
  EXPECT_FALSE(s1.has("q"));  // "a" is not a name of `full`
  EXPECT_FALSE(s1.has("x"));
  // A pass-through map on top of a full one: its misses fall back on the full map.
  const WeightSource s2 = full.with_renames(std::make_shared<const NameMap>(NameMap{{"y", "x"}}), true);
  EXPECT_EQ(val(s2, "y"), 1.f);
  EXPECT_EQ(val(s2, "b"), 3.f);
  EXPECT_FALSE(s2.has("a"));
  // Pass-through on pass-through.
  const WeightSource s3 = pt.with_renames(std::make_shared<const NameMap>(NameMap{{"y", "x"}}), true);
  EXPECT_EQ(val(s3, "y"), 1.f);
  EXPECT_EQ(val(s3, "a"), 1.f);
  EXPECT_EQ(val(s3, "b"), 3.f);

  EXPECT_THROW(full.with_prefix("q.").with_renames(m1), InvalidArgument);
  EXPECT_THROW(w.with_renames(nullptr), InvalidArgument);
  // Without renames nothing changes.
  EXPECT_FALSE(w.has_renames());
  EXPECT_EQ(w.full_name("a"), "p.a");
  EXPECT_EQ(w.with_prefix("a").prefix(), "p.a");
}

// ---- config.json ----

// stable-diffusion-v1-5/unet/config.json
const char* kSD15 = R"({
  "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.6.0", "act_fn": "silu",
  "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": false,
  "cross_attention_dim": 768,
  "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
  "downsample_padding": 1, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
  "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
  "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
})";

// stable-diffusion-2-1/unet/config.json
const char* kSD21 = R"({
  "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.10.0.dev0", "act_fn": "silu",
  "attention_head_dim": [5, 10, 20, 20], "block_out_channels": [320, 640, 1280, 1280],
  "center_input_sample": false, "cross_attention_dim": 1024,
  "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
  "downsample_padding": 1, "dual_cross_attention": false, "flip_sin_to_cos": true, "freq_shift": 0,
  "in_channels": 4, "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
  "num_class_embeds": null, "only_cross_attention": false, "out_channels": 4, "sample_size": 96,
  "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
  "upcast_attention": true, "use_linear_projection": true
})";

// stable-diffusion-v1-5/vae/config.json
const char* kSDVae = R"({
  "_class_name": "AutoencoderKL", "_diffusers_version": "0.6.0", "act_fn": "silu",
  "block_out_channels": [128, 256, 512, 512],
  "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"],
  "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3,
  "sample_size": 512,
  "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]
})";

TEST(Configs, RealSD15AndSD21) {
  const UNetConfig a = UNetConfig::from_json(json::parse(kSD15));
  EXPECT_EQ(a.block_out_channels, (std::vector<int64_t>{320, 640, 1280, 1280}));
  EXPECT_EQ(a.down_has_attention, (std::vector<bool>{true, true, true, false}));
  EXPECT_EQ(a.heads, (std::vector<int64_t>{8, 8, 8, 8}));
  EXPECT_EQ(a.cross_attention_dim, 768);
  EXPECT_EQ(a.layers_per_block, 2);
  EXPECT_EQ(a.transformer_layers, 1);
  EXPECT_FALSE(a.use_linear_projection);
  EXPECT_FALSE(a.upcast_attention);
  EXPECT_TRUE(a.mid_block);
  EXPECT_EQ(a.norm_num_groups, 32);

  const UNetConfig b = UNetConfig::from_json(json::parse(kSD21));
  EXPECT_EQ(b.heads, (std::vector<int64_t>{5, 10, 20, 20}));
  EXPECT_EQ(b.cross_attention_dim, 1024);
  EXPECT_TRUE(b.use_linear_projection);
  EXPECT_TRUE(b.upcast_attention);
  EXPECT_NE(b.summary().find("heads [5,10,20,20]"), std::string::npos) << b.summary();

  const VAEConfig v = VAEConfig::from_json(json::parse(kSDVae));
  EXPECT_EQ(v.block_out_channels, (std::vector<int64_t>{128, 256, 512, 512}));
  EXPECT_EQ(v.layers_per_block, 2);
  EXPECT_EQ(v.scaling_factor, 0.18215f);
  EXPECT_EQ(v.shift_factor, 0.f);
  EXPECT_TRUE(v.use_quant_conv && v.use_post_quant_conv && v.mid_block_attention);
}

TEST(Configs, UNetOptionalFields) {
  json j = json::parse(kSD15);
  j["mid_block_type"] = nullptr;
  EXPECT_FALSE(UNetConfig::from_json(j).mid_block);
  j = json::parse(kSD15);
  j["num_attention_heads"] = json::array({4, 4, 8, 8});  // wins over attention_head_dim
  EXPECT_EQ(UNetConfig::from_json(j).heads, (std::vector<int64_t>{4, 4, 8, 8}));
  j = json::parse(kSD15);
  j["transformer_layers_per_block"] = json::array({2, 2, 2, 2});
  j["layers_per_block"] = json::array({1, 1, 1, 1});
  const UNetConfig c = UNetConfig::from_json(j);
  EXPECT_EQ(c.transformer_layers, 2);
  EXPECT_EQ(c.layers_per_block, 1);
  j = json::parse(kSD15);
  j["addition_embed_type"] = nullptr;
  j["class_embed_type"] = nullptr;
  j["resnet_time_scale_shift"] = "default";
  j["only_cross_attention"] = json::array({false, false, false, false});
  EXPECT_NO_THROW(UNetConfig::from_json(j));

  json v = json::parse(kSDVae);
  v["shift_factor"] = 0.0609;
  v["scaling_factor"] = 1.5305;
  v["latent_channels"] = 16;
  v["use_quant_conv"] = false;
  v["use_post_quant_conv"] = false;
  v["mid_block_add_attention"] = false;
  const VAEConfig vc = VAEConfig::from_json(v);
  EXPECT_FLOAT_EQ(vc.shift_factor, 0.0609f);
  EXPECT_FLOAT_EQ(vc.scaling_factor, 1.5305f);
  EXPECT_EQ(vc.latent_channels, 16);
  EXPECT_FALSE(vc.use_quant_conv || vc.use_post_quant_conv || vc.mid_block_attention);
  // The map follows the config: no quant convs, no attention.
  const NameMap m = vae_ldm_name_map(vc);
  EXPECT_FALSE(m.count("quant_conv.weight"));
  EXPECT_FALSE(m.count("encoder.mid_block.attentions.0.to_q.weight"));
  EXPECT_TRUE(m.count("encoder.mid_block.resnets.1.conv2.weight"));
}

TEST(Configs, UNetUnsupportedFeaturesNameTheField) {
  struct Case {
    const char* field;
    json value;
    const char* needle;
  };
  const std::vector<Case> cases = {
      {"addition_embed_type", "text_time", "SDXL UNet not supported yet"},
      {"addition_time_embed_dim", 256, "addition_time_embed_dim"},
      {"class_embed_type", "projection", "class_embed_type"},
      {"num_class_embeds", 1000, "num_class_embeds"},
      {"time_cond_proj_dim", 256, "time_cond_proj_dim"},
      {"resnet_time_scale_shift", "scale_shift", "resnet_time_scale_shift"},
      {"dual_cross_attention", true, "dual_cross_attention"},
      {"only_cross_attention", json::array({true, false, false, false}), "only_cross_attention"},
      {"encoder_hid_dim", 768, "encoder_hid_dim"},
      {"time_embedding_type", "fourier", "time_embedding_type"},
      {"attention_type", "gated", "attention_type"},
      {"act_fn", "gelu", "act_fn"},
      {"conv_in_kernel", 7, "conv_in_kernel"},
      {"mid_block_type", "UNetMidBlock2DSimpleCrossAttn", "mid_block_type"},
      {"_class_name", "UNet2DModel", "_class_name"},
      {"cross_attention_dim", json::array({768, 768, 768, 768}), "cross_attention_dim"},
      {"transformer_layers_per_block", json::array({1, 2, 10, 10}), "transformer_layers_per_block"},
      {"reverse_transformer_layers_per_block", json::array({1, 2}), "reverse_transformer_layers_per_block"},
      {"down_block_types",
       json::array({"SimpleCrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"}),
       "SimpleCrossAttnDownBlock2D"},
      {"up_block_types",
       json::array({"CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"}), "mirror"},
      {"norm_num_groups", nullptr, "norm_num_groups"},
  };
  for (const Case& c : cases) {
    json j = json::parse(kSD15);
    j[c.field] = c.value;
    SCOPED_TRACE(c.field);
    expect_error<UnsupportedError>([&] { UNetConfig::from_json(j); }, c.needle);
  }
}

TEST(Configs, UNetMalformed) {
  struct Case {
    const char* field;
    json value;
    const char* needle;
  };
  const std::vector<Case> cases = {
      {"in_channels", "4", "in_channels"},
      {"in_channels", 0, "in_channels"},
      {"layers_per_block", 1.5, "layers_per_block"},
      {"block_out_channels", "320", "block_out_channels"},
      {"block_out_channels", json::array({320, 640, 1280}), "block_out_channels"},
      {"block_out_channels", json::array({320, 640, 1280, "x"}), "block_out_channels"},
      {"block_out_channels", json::array({320, 640, 1280, 1000}), "norm_num_groups"},
      {"attention_head_dim", json::array({8, 8}), "attention_head_dim"},
      {"attention_head_dim", 7, "head count 7"},
      {"down_block_types", "CrossAttnDownBlock2D", "down_block_types"},
      {"up_block_types", json::array({"UpBlock2D"}), "up_block_types"},
      {"use_linear_projection", "yes", "use_linear_projection"},
      {"norm_eps", "1e-5", "norm_eps"},
      {"cross_attention_dim", -1, "cross_attention_dim"},
  };
  for (const Case& c : cases) {
    json j = json::parse(kSD15);
    j[c.field] = c.value;
    SCOPED_TRACE(c.field);
    expect_error<ModelFormatError>([&] { UNetConfig::from_json(j); }, c.needle);
  }
  expect_error<ModelFormatError>([&] { UNetConfig::from_json(json::array()); }, "not a JSON object");
}

TEST(Configs, VAEErrors) {
  json v = json::parse(kSDVae);
  v["shift_factor"] = "0.1";
  expect_error<ModelFormatError>([&] { VAEConfig::from_json(v); }, "shift_factor");
  v = json::parse(kSDVae);
  v["block_out_channels"] = json::array({128, 256, 500, 512});
  expect_error<ModelFormatError>([&] { VAEConfig::from_json(v); }, "norm_num_groups");
  v = json::parse(kSDVae);
  v["down_block_types"] = json::array({"DownEncoderBlock2D"});
  expect_error<ModelFormatError>([&] { VAEConfig::from_json(v); }, "down_block_types");
  v = json::parse(kSDVae);
  v["up_block_types"][0] = "UpDecoderBlockCausal3D";
  expect_error<UnsupportedError>([&] { VAEConfig::from_json(v); }, "UpDecoderBlockCausal3D");
  v = json::parse(kSDVae);
  v["_class_name"] = "AutoencoderTiny";
  expect_error<UnsupportedError>([&] { VAEConfig::from_json(v); }, "_class_name");
  v = json::parse(kSDVae);
  v["use_quant_conv"] = 1;
  expect_error<ModelFormatError>([&] { VAEConfig::from_json(v); }, "use_quant_conv");
  expect_error<ModelFormatError>([&] { VAEConfig::from_json(json("x")); }, "not a JSON object");
}

// The real SD1.5 map has the well-known anchors (upsampler placement, shortcut presence).
TEST(LdmNames, SD15UNetAnchors) {
  const NameMap m = unet_ldm_name_map(UNetConfig::from_json(json::parse(kSD15)));
  EXPECT_EQ(m.size(), 686u);  // parameters of the SD1.5 UNet2DConditionModel
  EXPECT_EQ(m.at("up_blocks.0.upsamplers.0.conv.weight"), "output_blocks.2.1.conv.weight");  // no attention
  EXPECT_EQ(m.at("up_blocks.1.upsamplers.0.conv.weight"), "output_blocks.5.2.conv.weight");  // with attention
  EXPECT_EQ(m.at("down_blocks.1.resnets.0.conv_shortcut.weight"), "input_blocks.4.0.skip_connection.weight");
  EXPECT_FALSE(m.count("down_blocks.3.resnets.0.conv_shortcut.weight"));  // 1280 -> 1280
  EXPECT_EQ(m.at("down_blocks.2.downsamplers.0.conv.bias"), "input_blocks.9.0.op.bias");
  EXPECT_EQ(m.at("up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_k.weight"),
            "output_blocks.11.1.transformer_blocks.0.attn2.to_k.weight");
  EXPECT_EQ(m.at("mid_block.resnets.1.time_emb_proj.weight"), "middle_block.2.emb_layers.1.weight");
  EXPECT_EQ(m.at("conv_norm_out.weight"), "out.0.weight");

  const NameMap v = vae_ldm_name_map(VAEConfig::from_json(json::parse(kSDVae)));
  EXPECT_EQ(v.size(), 248u);  // parameters of the SD AutoencoderKL
  EXPECT_EQ(v.at("decoder.up_blocks.0.resnets.2.conv1.weight"), "decoder.up.3.block.2.conv1.weight");
  EXPECT_EQ(v.at("decoder.up_blocks.2.resnets.0.conv_shortcut.weight"), "decoder.up.1.block.0.nin_shortcut.weight");
  EXPECT_EQ(v.at("encoder.mid_block.attentions.0.to_out.0.weight"), "encoder.mid.attn_1.proj_out.weight");
  EXPECT_EQ(v.at("decoder.conv_norm_out.bias"), "decoder.norm_out.bias");
}

}  // namespace
}  // namespace sdserve::test
