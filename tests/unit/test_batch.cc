// StableDiffusion::generate_batch (the server's batching of compatible jobs): every request in a
// shared UNet batch gets exactly, byte for byte, the images generate() gives it alone - its own
// prompts, seeds, noise streams (ancestral and SDE samplers included), CFG scale and batch size.
// A request whose progress function returns false drops out and the others go on.
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "pipeline/stable_diffusion.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace sdserve::test {
namespace {

const fs::path kModels = fs::path(SDSERVE_SOURCE_DIR) / "tests" / "fixtures" / "models";

const StableDiffusion& tiny(const std::string& name = "sd1-tiny") {
  static std::mutex mu;
  static std::map<std::string, std::unique_ptr<StableDiffusion>> cache;
  std::lock_guard<std::mutex> lk(mu);
  auto& m = cache[name];
  if (!m) m = StableDiffusion::load((kModels / name).string());
  return *m;
}

GenerateRequest base(const std::string& sampler, const std::string& schedule = "Automatic") {
  GenerateRequest r;
  r.width = 64;
  r.height = 48;
  r.steps = 4;
  r.cfg_scale = 7.f;
  r.sampler = sampler;
  r.schedule = schedule;
  r.rng = RngKind::CPU;
  return r;
}

// Three requests that differ in everything a batch allows: prompts, seeds, batch size, CFG scale.
std::vector<GenerateRequest> three(const std::string& sampler, const std::string& schedule = "Automatic") {
  std::vector<GenerateRequest> rs(3, base(sampler, schedule));
  rs[0].prompt = "a red cube on a table";
  rs[0].negative_prompt = "blurry";
  rs[0].seed = 11;
  rs[1].prompt = "a (green:1.3) sphere, studio light";
  rs[1].seed = 12345;
  rs[1].batch_size = 2;
  rs[1].cfg_scale = 4.5f;
  rs[2].prompt = "an owl";
  rs[2].negative_prompt = "lowres, bad anatomy";
  rs[2].seed = 7;
  rs[2].eta = 0.5f;  // DDIM's eta is per request too
  return rs;
}

std::vector<BatchResult> run_batch(const StableDiffusion& sd, const std::vector<GenerateRequest>& rs,
                                   std::vector<ProgressFn> progress = {}, size_t* model_calls = nullptr) {
  std::vector<BatchResult> out(rs.size());
  std::vector<int> done(rs.size(), 0);
  size_t calls = 0;
  sd.generate_batch(
      rs, progress, [&](size_t k, BatchResult r) { out[k] = std::move(r), ++done[k]; }, [&] { ++calls; });
  for (size_t k = 0; k < rs.size(); ++k)
    EXPECT_EQ(done[k], 1) << "request " << k << " reported " << done[k] << " times";
  if (model_calls) *model_calls = calls;
  return out;
}

void expect_same(const std::vector<GeneratedImage>& got, const std::vector<GeneratedImage>& want,
                 const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_EQ(got[i].width, want[i].width) << what;
    ASSERT_EQ(got[i].height, want[i].height) << what;
    EXPECT_EQ(got[i].seed, want[i].seed) << what;
    size_t differ = 0;
    int worst = 0;
    for (size_t k = 0; k < got[i].rgb.size(); ++k) {
      const int d = std::abs(int(got[i].rgb[k]) - int(want[i].rgb[k]));
      differ += d != 0;
      worst = std::max(worst, d);
    }
    EXPECT_EQ(differ, 0u) << what << " image " << i << ": " << differ << " channels differ, worst by " << worst;
  }
}

struct SamplerCase {
  const char* sampler;
  const char* schedule;
};

class BatchEqualsAlone : public testing::TestWithParam<SamplerCase> {};

TEST_P(BatchEqualsAlone, Txt2Img) {
  const StableDiffusion& sd = tiny();
  const auto rs = three(GetParam().sampler, GetParam().schedule);
  const std::string key = sd.batch_key(rs[0]);
  ASSERT_FALSE(key.empty());
  for (const auto& r : rs) ASSERT_EQ(sd.batch_key(r), key);
  size_t calls = 0;
  const auto got = run_batch(sd, rs, {}, &calls);
  EXPECT_EQ(calls, sd.model_calls(rs[0]));  // one UNet evaluation per step for all three
  for (size_t k = 0; k < rs.size(); ++k) {
    ASSERT_FALSE(got[k].error) << "request " << k;
    ASSERT_FALSE(got[k].canceled);
    expect_same(got[k].images, sd.generate(rs[k]), std::string(GetParam().sampler) + " request " + std::to_string(k));
  }
}

INSTANTIATE_TEST_SUITE_P(Samplers, BatchEqualsAlone,
                         testing::Values(SamplerCase{"Euler", "Automatic"}, SamplerCase{"Euler a", "Automatic"},
                                         SamplerCase{"DPM++ 2M", "Karras"}, SamplerCase{"DPM++ SDE", "Karras"},
                                         SamplerCase{"DPM++ 2M SDE", "Exponential"}, SamplerCase{"Heun", "Automatic"},
                                         SamplerCase{"LMS", "Automatic"}, SamplerCase{"DDIM", "Automatic"},
                                         SamplerCase{"UniPC", "Automatic"}),
                         [](const testing::TestParamInfo<SamplerCase>& i) {
                           std::string s = std::string(i.param.sampler) + "_" + i.param.schedule;
                           for (char& c : s)
                             if (!std::isalnum(static_cast<unsigned char>(c))) c = '_';
                           return s;
                         });

TEST(Batch, CanceledRequestDropsOutOthersGoOn) {
  const StableDiffusion& sd = tiny();
  const auto rs = three("Euler a");
  std::vector<int> seen(rs.size(), 0);
  std::vector<ProgressFn> progress;
  for (size_t k = 0; k < rs.size(); ++k)
    progress.push_back([&, k](int step, int total) {
      seen[k] = step;
      EXPECT_EQ(total, 4);
      return !(k == 1 && step == 2);  // request 1 cancels after its second step
    });
  const auto got = run_batch(sd, rs, progress);
  EXPECT_TRUE(got[1].canceled);
  EXPECT_TRUE(got[1].images.empty());
  EXPECT_EQ(seen[1], 2);
  EXPECT_EQ(seen[0], 4);
  expect_same(got[0].images, sd.generate(rs[0]), "request 0");
  expect_same(got[2].images, sd.generate(rs[2]), "request 2");
}

TEST(Batch, Img2ImgAndInpaintEqualAlone) {
  const StableDiffusion& sd = tiny();
  std::vector<GenerateRequest> rs(3, base("Euler a"));
  for (size_t k = 0; k < rs.size(); ++k) {
    auto im = std::make_shared<RgbImage>();
    im->width = 64;
    im->height = 48;
    for (int i = 0; i < 64 * 48 * 3; ++i) im->pixels.push_back(uint8_t((i * (7 + k * 5)) % 251));
    rs[k].init_image = im;
    rs[k].strength = 0.6;
    rs[k].prompt = "picture " + std::to_string(k);
    rs[k].seed = 100 + int64_t(k);
  }
  const auto got = run_batch(sd, rs);
  for (size_t k = 0; k < rs.size(); ++k) {
    ASSERT_FALSE(got[k].error);
    expect_same(got[k].images, sd.generate(rs[k]), "img2img request " + std::to_string(k));
  }
  // Inpaint (a mask per request; each keeps its own).
  for (size_t k = 0; k < rs.size(); ++k) {
    auto m = std::make_shared<GrayImage>();
    m->width = 64;
    m->height = 48;
    for (int y = 0; y < 48; ++y)
      for (int x = 0; x < 64; ++x) m->pixels.push_back(x < 16 + int(k) * 16 ? 255 : 0);
    rs[k].mask = m;
  }
  ASSERT_EQ(sd.batch_key(rs[0]), sd.batch_key(rs[2]));
  const auto inpainted = run_batch(sd, rs);
  for (size_t k = 0; k < rs.size(); ++k) {
    ASSERT_FALSE(inpainted[k].error);
    expect_same(inpainted[k].images, sd.generate(rs[k]), "inpaint request " + std::to_string(k));
  }
}

TEST(Batch, Sd2VPrediction) {
  for (const char* name : {"sd2-tiny"}) {
    const StableDiffusion& sd = tiny(name);
    const auto rs = three("DPM++ 2M", "Karras");
    const auto got = run_batch(sd, rs);
    for (size_t k = 0; k < rs.size(); ++k) expect_same(got[k].images, sd.generate(rs[k]), name);
  }
}

TEST(Batch, KeysSeparateIncompatibleRequests) {
  const StableDiffusion& sd = tiny();
  const GenerateRequest a = base("Euler");
  const std::string key = sd.batch_key(a);
  GenerateRequest b = a;
  b.prompt = "another prompt";
  b.seed = 99;
  b.cfg_scale = 3;
  b.batch_size = 3;
  b.clip_skip = 2;
  EXPECT_EQ(sd.batch_key(b), key);  // per-request things
  b = a, b.steps = 5;
  EXPECT_NE(sd.batch_key(b), key);
  b = a, b.width = 72;
  EXPECT_NE(sd.batch_key(b), key);
  b = a, b.sampler = "Euler a";
  EXPECT_NE(sd.batch_key(b), key);
  b = a, b.schedule = "Karras";
  EXPECT_NE(sd.batch_key(b), key);
  b = a, b.cfg_scale = 1;  // no CFG: another UNet batch layout
  EXPECT_NE(sd.batch_key(b), key);
  b = a;
  for (int i = 0; i < 40; ++i) b.prompt += "word" + std::to_string(i) + " ";  // two 75-token chunks
  EXPECT_NE(sd.batch_key(b), key);
  b = a, b.hires.enabled = true;
  EXPECT_EQ(sd.batch_key(b), "");  // runs alone
  // Mismatched requests are refused, each with the error.
  b = a, b.steps = 5;
  const auto got = run_batch(sd, {a, b});
  EXPECT_TRUE(got[0].error);
  EXPECT_TRUE(got[1].error);
}

}  // namespace
}  // namespace sdserve::test
