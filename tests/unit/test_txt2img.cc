// txt2img against diffusers' StableDiffusionPipeline, pixel for pixel:
// tests/fixtures/golden/txt2img/<model>.safetensors, made by tools/make_txt2img_goldens.py.
//
// Every sampler x schedule type we accept (DPM++ SDE included: its Brownian tree is seeded with
// the image seed, and the golden sets diffusers' noise_sampler_seed to it) on the tiny SD1
// (epsilon), SD2 (v-prediction) and
// odd-sized SD1 (odd channel/head counts, 24x16 images) models, loaded both from the diffusers
// folder and from the single-file checkpoint. Every
// channel of every pixel must be within 2 of diffusers' uint8 image.
// SDSERVE_TXT2IMG_REPORT=1 prints the largest difference of every case.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "pipeline/stable_diffusion.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace sdserve::test {
namespace {

const fs::path kRoot = fs::path(SDSERVE_SOURCE_DIR) / "tests" / "fixtures";
const fs::path kModels = kRoot / "models";
const fs::path kGolden = kRoot / "golden" / "txt2img";
constexpr int kTolerance = 2;  // per channel, out of 255

struct Case {
  std::string model;   // sd1-tiny | sd2-tiny | odd-tiny
  std::string layout;  // diffusers | single
  std::string key;     // "<sampler>|<schedule>"
  std::string sampler, schedule;
  int steps = 0;
};

constexpr const char* kTinyModels[] = {"sd1-tiny", "sd2-tiny", "odd-tiny"};

const SafeTensorsFile& golden_file(const std::string& model) {
  static std::mutex mu;
  static std::map<std::string, std::unique_ptr<SafeTensorsFile>> files;
  std::lock_guard<std::mutex> lock(mu);
  auto& f = files[model];
  if (!f) f = std::make_unique<SafeTensorsFile>(SafeTensorsFile::open((kGolden / (model + ".safetensors")).string()));
  return *f;
}

std::vector<Case> all_cases() {
  std::vector<Case> out;
  for (const std::string model : kTinyModels) {
    if (!fs::exists(kGolden / (model + ".safetensors"))) continue;  // reported by GoldensPresent
    const auto cases = nlohmann::json::parse(golden_file(model).metadata().at("cases"));
    for (const std::string layout : {"diffusers", "single"})
      for (const auto& c : cases)
        out.push_back({model, layout, c.at("key").get<std::string>(), c.at("sampler").get<std::string>(),
                       c.at("schedule").get<std::string>(), c.at("steps").get<int>()});
  }
  return out;
}

// Loading is the slow part: each model and layout once per run.
const StableDiffusion& model_for(const std::string& model, const std::string& layout) {
  static std::mutex mu;
  static std::map<std::string, std::unique_ptr<StableDiffusion>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto& m = cache[model + "|" + layout];
  if (!m) {
    m = layout == "diffusers"
            ? StableDiffusion::load((kModels / model).string())
            : StableDiffusion::load((kModels / (model + ".safetensors")).string(), tiny_single_file_options(model));
  }
  return *m;
}

class Txt2ImgParity : public testing::TestWithParam<Case> {};

TEST_P(Txt2ImgParity, MatchesDiffusers) {
  const Case& c = GetParam();
  const SafeTensorsFile& g = golden_file(c.model);
  const Tensor want = g.get(c.key);
  ASSERT_EQ(want.dtype(), DType::U8);
  ASSERT_EQ(want.shape().size(), 3u);
  const StableDiffusion& sd = model_for(c.model, c.layout);
  const auto images = sd.txt2img(golden_request(g, c.sampler, c.schedule, c.steps));
  ASSERT_EQ(images.size(), 1u);
  const GeneratedImage& im = images[0];
  ASSERT_EQ(im.height, want.size(0));
  ASSERT_EQ(im.width, want.size(1));
  ASSERT_EQ(int64_t(im.rgb.size()), want.numel());
  const uint8_t* w = want.data<uint8_t>();
  int worst = 0;
  size_t worst_i = 0, over = 0;
  for (size_t i = 0; i < im.rgb.size(); ++i) {
    const int d = std::abs(int(im.rgb[i]) - int(w[i]));
    if (d > kTolerance) ++over;
    if (d > worst) worst = d, worst_i = i;
  }
  RecordProperty("max_abs_diff", worst);
  if (std::getenv("SDSERVE_TXT2IMG_REPORT"))
    std::printf("[txt2img] %-9s %-9s %-28s max |diff| %d\n", c.model.c_str(), c.layout.c_str(), c.key.c_str(), worst);
  const size_t px = worst_i / 3;
  EXPECT_LE(worst, kTolerance) << c.model << " " << c.layout << " " << c.key << ": " << over
                               << " channels differ by more than " << kTolerance << "; worst " << worst << " at (y "
                               << px / size_t(im.width) << ", x " << px % size_t(im.width) << ", c " << worst_i % 3
                               << "): ours " << int(im.rgb[worst_i]) << ", diffusers " << int(w[worst_i]);
}

std::string case_name(const testing::TestParamInfo<Case>& i) {
  std::string s = i.param.model.substr(0, 3) + "_" + i.param.layout + "_" + i.param.key;
  for (char& ch : s)
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return s;
}

INSTANTIATE_TEST_SUITE_P(Goldens, Txt2ImgParity, testing::ValuesIn(all_cases()), case_name);

TEST(Txt2Img, GoldensPresent) {
  for (const char* m : kTinyModels) {
    const fs::path p = kGolden / (std::string(m) + ".safetensors");
    ASSERT_TRUE(fs::exists(p)) << p << " missing: run tools/make_txt2img_goldens.py";
    const auto cases = nlohmann::json::parse(golden_file(m).metadata().at("cases"));
    // 13 samplers x 4 schedule types, less the refused pairs (DDIM, PLMS: 2 each; LCM: 3).
    EXPECT_EQ(cases.size(), 45u) << m;
  }
}

// DPM++ SDE in a batch: one Brownian tree per image, seeded with that image's seed (A1111's
// batch semantics), so image 1 of a batch is the image that seed + 1 gives alone.
TEST(Txt2Img, DpmppSdeBatchTreesPerImage) {
  const SafeTensorsFile& g = golden_file("sd1-tiny");
  const StableDiffusion& sd = model_for("sd1-tiny", "diffusers");
  GenerateRequest r = golden_request(g, "DPM++ SDE", "Karras", 4);
  r.batch_size = 2;
  const auto batch = sd.txt2img(r);
  ASSERT_EQ(batch.size(), 2u);
  r.batch_size = 1;
  r.seed += 1;
  const auto alone = sd.txt2img(r);
  ASSERT_EQ(alone.size(), 1u);
  ASSERT_EQ(batch[1].rgb.size(), alone[0].rgb.size());
  int worst = 0;
  for (size_t i = 0; i < alone[0].rgb.size(); ++i)
    worst = std::max(worst, std::abs(int(batch[1].rgb[i]) - int(alone[0].rgb[i])));
  EXPECT_LE(worst, kTolerance);
  EXPECT_EQ(batch[1].seed, r.seed);
}

}  // namespace
}  // namespace sdserve::test
