// Text-encoder parity with transformers' CLIPTextModel.
//  * tiny random configs (committed weights, both layouts) against committed goldens;
//  * one full-size ViT-L/14 text tower with hash-init weights, regenerated here in both
//    layouts (nothing large is committed), against a committed golden.
// Tolerance: max |ours - transformers| <= 1e-4 in f32 (the issue's bar).
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "io/hash_init.h"
#include "io/model_files.h"
#include "io/safetensors.h"
#include "models/loader.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace sdserve::test {
namespace {

const fs::path kFixtures = fs::path(SDSERVE_SOURCE_DIR) / "tests" / "fixtures";
constexpr double kTol = 1e-4;

struct Golden {
  Tensor ids, last, skip2, pooled;
  nlohmann::json config;
};

Golden read_golden(const fs::path& p) {
  const SafeTensorsFile f = SafeTensorsFile::open(p.string());
  Golden g;
  g.ids = f.get_as("input_ids", DType::I32).contiguous();
  g.last = f.get_as("last_hidden_state", DType::F32);
  g.skip2 = f.get_as("skip2", DType::F32);
  g.pooled = f.get_as("pooler_output", DType::F32);
  if (f.metadata().count("config")) g.config = nlohmann::json::parse(f.metadata().at("config"));
  return g;
}

void check_against(const ClipTextModel& m, const Golden& g, const std::string& what) {
  const auto out = m.forward(g.ids, 1, true);
  EXPECT_LE(max_abs_diff(out.hidden, g.last), kTol) << what << ": last_hidden_state";
  EXPECT_LE(max_abs_diff(out.pooled, g.pooled), kTol) << what << ": pooler_output";
  const auto skip = m.forward(g.ids, 2, false);
  EXPECT_LE(max_abs_diff(skip.hidden, g.skip2), kTol) << what << ": clip skip 2";
}

int64_t head_dim_of(const nlohmann::json& cfg) {
  return cfg.at("hidden_size").get<int64_t>() / cfg.at("num_attention_heads").get<int64_t>();
}

// ---- full-size ViT-L/14 with hash-init weights ----

const char* kVitL14Config = R"({"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072,
  "num_hidden_layers": 12, "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
  "layer_norm_eps": 1e-05, "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407})";

std::vector<std::pair<std::string, Tensor>> vit_l14_hashinit(const std::string& prefix) {
  const ClipTextConfig c = ClipTextConfig::from_json(nlohmann::json::parse(kVitL14Config));
  const int64_t D = c.hidden_size, F = c.intermediate_size;
  std::vector<std::pair<std::string, Shape>> names = {
      {"text_model.embeddings.token_embedding.weight", {c.vocab_size, D}},
      {"text_model.embeddings.position_embedding.weight", {c.max_positions, D}},
      {"text_model.final_layer_norm.weight", {D}},
      {"text_model.final_layer_norm.bias", {D}},
  };
  for (int64_t i = 0; i < c.num_layers; ++i) {
    const std::string p = "text_model.encoder.layers." + std::to_string(i) + ".";
    for (const char* ln : {"layer_norm1", "layer_norm2"}) {
      names.push_back({p + ln + ".weight", {D}});
      names.push_back({p + ln + ".bias", {D}});
    }
    for (const char* proj : {"q_proj", "k_proj", "v_proj", "out_proj"}) {
      names.push_back({p + "self_attn." + proj + ".weight", {D, D}});
      names.push_back({p + "self_attn." + proj + ".bias", {D}});
    }
    names.push_back({p + "mlp.fc1.weight", {F, D}});
    names.push_back({p + "mlp.fc1.bias", {F}});
    names.push_back({p + "mlp.fc2.weight", {D, F}});
    names.push_back({p + "mlp.fc2.bias", {D}});
  }
  std::vector<std::pair<std::string, Tensor>> out;
  for (const auto& [n, s] : names) out.push_back({prefix + n, hash_init_tensor(n, s)});
  return out;
}

class VitL14HashInit : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = fs::temp_directory_path() / ("sdserve_vitl14_" + std::to_string(::getpid()));
    fs::create_directories(dir_ / "diffusers" / "text_encoder");
    std::ofstream(dir_ / "diffusers" / "model_index.json") << R"({"_class_name": "StableDiffusionPipeline"})";
    std::ofstream(dir_ / "diffusers" / "text_encoder" / "config.json") << kVitL14Config;
    write_safetensors((dir_ / "diffusers" / "text_encoder" / "model.safetensors").string(), vit_l14_hashinit(""));
    write_safetensors((dir_ / "single.safetensors").string(), vit_l14_hashinit("cond_stage_model.transformer."));
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }
  static fs::path dir_;
};
fs::path VitL14HashInit::dir_;

TEST_F(VitL14HashInit, MatchesTransformersInBothLayouts) {
  const Golden g = read_golden(kFixtures / "golden" / "text_encoder" / "vit_l14_hashinit.safetensors");
  for (const fs::path& p : {dir_ / "diffusers", dir_ / "single.safetensors"}) {
    const ModelFiles m = ModelFiles::open(p.string());
    EXPECT_EQ(m.info().family, ModelFamily::SD1);
    const ClipTextModel te = load_text_encoder(m);
    EXPECT_EQ(te.config().num_layers, 12);
    EXPECT_EQ(te.config().num_heads, 12);
    check_against(te, g, p.filename().string());
  }
}

// ---- tiny configs, committed weights ----

struct TinyCase {
  std::string golden;     // file under golden/text_encoder
  std::string diffusers;  // model folder (diffusers layout) relative to fixtures/models
  std::string single;     // single-file checkpoint relative to fixtures/models
};

void PrintTo(const TinyCase& c, std::ostream* os) { *os << c.golden; }

class TinyTextEncoder : public testing::TestWithParam<TinyCase> {};

TEST_P(TinyTextEncoder, MatchesTransformersInBothLayouts) {
  const TinyCase& c = GetParam();
  const Golden g = read_golden(kFixtures / "golden" / "text_encoder" / c.golden);
  ASSERT_FALSE(g.config.is_null()) << "golden lacks its config";
  TextEncoderOptions opt;
  opt.head_dim = head_dim_of(g.config);
  for (const std::string& rel : {c.diffusers, c.single}) {
    const fs::path path = kFixtures / "models" / rel;
    ClipTextModel te;
    if (fs::is_regular_file(path / "config.json")) {
      // A lone text_encoder/ component folder (the standalone configs ship no pipeline).
      auto file = std::make_shared<const SafeTensorsFile>(SafeTensorsFile::open((path / "model.safetensors").string()));
      te = ClipTextModel::load(ClipTextConfig::from_json(read_json_file(path / "config.json")), WeightSource({file}),
                               ClipWeightLayout::HF);
    } else {
      te = load_text_encoder(ModelFiles::open(path.string()), opt);
    }
    EXPECT_EQ(te.config().num_layers, g.config.at("num_hidden_layers").get<int64_t>()) << rel;
    EXPECT_EQ(te.config().act, ops::activation_from_name(g.config.at("hidden_act").get<std::string>())) << rel;
    check_against(te, g, rel);
  }
}

std::string tiny_name(const testing::TestParamInfo<TinyCase>& i) {
  std::string s = i.param.golden.substr(0, i.param.golden.find('.'));
  for (char& ch : s)
    if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return s;
}

INSTANTIATE_TEST_SUITE_P(Configs, TinyTextEncoder,
                         testing::Values(TinyCase{"sd1_tiny.safetensors", "sd1-tiny", "sd1-tiny.safetensors"},
                                         TinyCase{"sd2_tiny.safetensors", "sd2-tiny", "sd2-tiny.safetensors"},
                                         TinyCase{"odd_tiny.safetensors", "odd-tiny", "odd-tiny.safetensors"},
                                         TinyCase{"te_h48_gelu.safetensors", "text_encoders/te_h48_gelu/text_encoder",
                                                  "text_encoders/te_h48_gelu/te_h48_gelu.safetensors"},
                                         TinyCase{"te_h40_qgelu.safetensors", "text_encoders/te_h40_qgelu/text_encoder",
                                                  "text_encoders/te_h40_qgelu/te_h40_qgelu.safetensors"}),
                         tiny_name);

TEST(TextEncoder, ClipSkipOutOfRangeIsAnError) {
  const ModelFiles m = ModelFiles::open((kFixtures / "models" / "sd1-tiny").string());
  const ClipTextModel te = load_text_encoder(m);
  const Tensor ids = Tensor::from_ids({0, 1}, {1, 2});
  EXPECT_THROW(te.forward(ids, 0), InvalidArgument);
  EXPECT_THROW(te.forward(ids, int(te.config().num_layers) + 1), InvalidArgument);
  EXPECT_THROW(te.forward(Tensor::from_ids(std::vector<int32_t>(78, 0), {1, 78})), InvalidArgument);
}

}  // namespace
}  // namespace sdserve::test
