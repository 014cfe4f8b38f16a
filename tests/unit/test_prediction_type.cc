// Prediction type of single-file checkpoints without a scheduler config: SD2 files default to
// v-prediction (diffusers' from_single_file), an A1111 sidecar <checkpoint>.yaml
// (`parameterization: "eps"` / `"v"`) overrides that, LoadOptions::prediction_type
// (`--prediction-type`) overrides both. Checked on the v-prediction sd2-tiny single file.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "io/safetensors.h"
#include "pipeline/stable_diffusion.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace sdserve::test {
namespace {

const fs::path kRoot = fs::path(SDSERVE_SOURCE_DIR) / "tests" / "fixtures";

fs::path scratch_dir(const std::string& name) {
  const fs::path d = fs::temp_directory_path() / ("sdserve-" + name + "-" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

void write(const fs::path& p, const std::string& text) { std::ofstream(p) << text; }

TEST(PredictionType, SidecarYaml) {
  const fs::path d = scratch_dir("yaml");
  const std::string ckpt = (d / "m.safetensors").string();
  EXPECT_FALSE(sidecar_prediction_type(ckpt).has_value()) << "no yaml";
  write(d / "m.yaml", "model:\n  params:\n    parameterization: \"v\"\n    linear_start: 0.00085\n");
  EXPECT_EQ(sidecar_prediction_type(ckpt), "v_prediction");
  write(d / "m.yaml", "model:\n  params:\n    parameterization: eps  # default\n");
  EXPECT_EQ(sidecar_prediction_type(ckpt), "epsilon");
  write(d / "m.yaml", "model:\n  params:\n    # parameterization: \"v\"\n    linear_start: 0.00085\n");
  EXPECT_FALSE(sidecar_prediction_type(ckpt).has_value()) << "a commented-out key is not a setting";
  write(d / "m.yaml", "model:\n  params:\n    parameterization: \"x0\"\n");
  EXPECT_THROW(sidecar_prediction_type(ckpt), UnsupportedError);
  fs::remove_all(d);
}

int worst_diff(const std::vector<uint8_t>& a, const Tensor& b) {
  int worst = 0;
  for (size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(int(a[i]) - int(b.data<uint8_t>()[i])));
  return worst;
}

TEST(PredictionType, MakesTheSd2SingleFileMatchDiffusers) {
  const SafeTensorsFile golden =
      SafeTensorsFile::open((kRoot / "golden" / "txt2img" / "sd2-tiny.safetensors").string());
  // DDIM: its default spacing, "leading", is what sd2-tiny's config says.
  const GenerateRequest r = golden_request(golden, "DDIM", "Automatic", std::stoi(golden.metadata().at("steps")));
  const Tensor want = golden.get("DDIM|Automatic");

  // What the file cannot say about the tiny model (as in test_txt2img.cc), but no scheduler config.
  LoadOptions o;
  o.text_head_dim = 8;
  o.ldm.norm_num_groups = 4;
  o.ldm.head_dim = 4;
  o.ldm.upcast_attention = false;
  o.tokenizer_dir = (kRoot / "models" / "sd2-tiny" / "tokenizer").string();
  const fs::path d = scratch_dir("sidecar");
  const fs::path ckpt = d / "sd2-tiny.safetensors";
  fs::copy_file(kRoot / "models" / "sd2-tiny.safetensors", ckpt);

  // Without any hint an SD2 file is taken as v-prediction (SD2.1-768), as diffusers does.
  EXPECT_LE(worst_diff(StableDiffusion::load(ckpt.string(), o)->txt2img(r)[0].rgb, want), 2);
  // An A1111 sidecar saying eps (SD2-base) makes it epsilon: a different image.
  write(d / "sd2-tiny.yaml", "model:\n  params:\n    parameterization: \"eps\"\n");
  EXPECT_GT(worst_diff(StableDiffusion::load(ckpt.string(), o)->txt2img(r)[0].rgb, want), 2);
  // The explicit option wins over the sidecar.
  o.prediction_type = "v_prediction";
  EXPECT_LE(worst_diff(StableDiffusion::load(ckpt.string(), o)->txt2img(r)[0].rgb, want), 2);
  // A sidecar saying v, overridden by the option.
  write(d / "sd2-tiny.yaml", "model:\n  params:\n    parameterization: \"v\"\n");
  o.prediction_type = "epsilon";
  EXPECT_GT(worst_diff(StableDiffusion::load(ckpt.string(), o)->txt2img(r)[0].rgb, want), 2);
  o.prediction_type = "sample";
  EXPECT_THROW(StableDiffusion::load(ckpt.string(), o), InvalidArgument);
  fs::remove_all(d);
}

}  // namespace
}  // namespace sdserve::test
