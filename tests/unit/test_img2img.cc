// img2img and inpaint against diffusers' StableDiffusionImg2ImgPipeline and
// StableDiffusionInpaintPipeline, pixel for pixel: tests/fixtures/golden/img2img/<model>.safetensors,
// made by tools/make_img2img_goldens.py.
//
// img2img: every sampler on the tiny SD1 (epsilon), SD2 (v-prediction) and odd-sized SD1 models, at
// several strengths (one step, full strength), a batch with one generator per image, from both the
// diffusers folder and the single file. Inpaint: the 4-channel models (latent blending) and a
// 9-channel inpainting model (mask + masked-image latents as UNet input), strengths 1 and 0.7. Every
// channel of every pixel must be within 2 of diffusers' uint8 image.
// SDSERVE_IMG2IMG_REPORT=1 prints the largest difference of every case.
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

#include "io/resize.h"
#include "io/safetensors.h"
#include "pipeline/stable_diffusion.h"
#include "pipeline/upscale.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace sdserve::test {
namespace {

const fs::path kRoot = fs::path(SDSERVE_SOURCE_DIR) / "tests" / "fixtures";
const fs::path kModels = kRoot / "models";
const fs::path kGolden = kRoot / "golden" / "img2img";
constexpr int kTolerance = 2;  // per channel, out of 255

constexpr const char* kGoldenModels[] = {"sd1-tiny", "sd2-tiny", "odd-tiny", "sd1-tiny-inpaint"};

struct Case {
  std::string model, layout, key, mode, sampler, schedule;
  int steps = 0;
  double strength = 1;
  int batch = 1;
};

const SafeTensorsFile& golden_file(const std::string& model) {
  static std::mutex mu;
  static std::map<std::string, std::unique_ptr<SafeTensorsFile>> files;
  std::lock_guard<std::mutex> lock(mu);
  auto& f = files[model];
  if (!f) f = std::make_unique<SafeTensorsFile>(SafeTensorsFile::open((kGolden / (model + ".safetensors")).string()));
  return *f;
}

bool single_file_only(const std::string& model) { return model == "sd1-tiny-inpaint"; }

std::vector<Case> all_cases() {
  std::vector<Case> out;
  for (const std::string model : kGoldenModels) {
    if (!fs::exists(kGolden / (model + ".safetensors"))) continue;  // reported by GoldensPresent
    const auto cases = nlohmann::json::parse(golden_file(model).metadata().at("cases"));
    for (const std::string layout : {"diffusers", "single"}) {
      if (layout == "diffusers" && single_file_only(model)) continue;
      for (const auto& c : cases)
        out.push_back({model, layout, c.at("key").get<std::string>(), c.at("mode").get<std::string>(),
                       c.at("sampler").get<std::string>(), c.at("schedule").get<std::string>(),
                       c.at("steps").get<int>(), c.at("strength").get<double>(), c.at("batch").get<int>()});
    }
  }
  return out;
}

const StableDiffusion& model_for(const std::string& model, const std::string& layout) {
  static std::mutex mu;
  static std::map<std::string, std::unique_ptr<StableDiffusion>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto& m = cache[model + "|" + layout];
  if (!m) {
    if (layout == "diffusers") {
      m = StableDiffusion::load((kModels / model).string());
    } else {
      // The inpainting variant shares sd1-tiny's configs (only conv_in differs).
      const std::string base = single_file_only(model) ? "sd1-tiny" : model;
      m = StableDiffusion::load((kModels / (model + ".safetensors")).string(), tiny_single_file_options(base));
    }
  }
  return *m;
}

std::shared_ptr<const RgbImage> golden_init(const SafeTensorsFile& g) {
  const Tensor t = g.get("init");
  auto im = std::make_shared<RgbImage>();
  im->height = int(t.size(0));
  im->width = int(t.size(1));
  im->pixels.assign(t.data<uint8_t>(), t.data<uint8_t>() + t.numel());
  return im;
}

std::shared_ptr<const GrayImage> golden_mask(const SafeTensorsFile& g) {
  const Tensor t = g.get("mask");
  auto im = std::make_shared<GrayImage>();
  im->height = int(t.size(0));
  im->width = int(t.size(1));
  im->pixels.assign(t.data<uint8_t>(), t.data<uint8_t>() + t.numel());
  return im;
}

GenerateRequest case_request(const SafeTensorsFile& g, const Case& c) {
  GenerateRequest r = golden_request(g, c.sampler, c.schedule, c.steps);
  r.init_image = golden_init(g);
  if (c.mode == "inpaint") r.mask = golden_mask(g);
  r.strength = c.strength;
  r.batch_size = c.batch;
  return r;
}

// Largest per-channel difference; `where` describes it.
int compare(const std::vector<uint8_t>& got, const uint8_t* want, int width, std::string* where) {
  int worst = 0;
  size_t worst_i = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const int d = std::abs(int(got[i]) - int(want[i]));
    if (d > worst) worst = d, worst_i = i;
  }
  const size_t px = worst_i / 3;
  *where = "(y " + std::to_string(px / size_t(width)) + ", x " + std::to_string(px % size_t(width)) + ", c " +
           std::to_string(worst_i % 3) + "): ours " + std::to_string(got[worst_i]) + ", diffusers " +
           std::to_string(want[worst_i]);
  return worst;
}

class Img2ImgParity : public testing::TestWithParam<Case> {};

TEST_P(Img2ImgParity, MatchesDiffusers) {
  const Case& c = GetParam();
  const SafeTensorsFile& g = golden_file(c.model);
  const Tensor want = g.get(c.key);
  ASSERT_EQ(want.dtype(), DType::U8);
  ASSERT_EQ(want.dim(), 4);
  ASSERT_EQ(want.size(0), c.batch);
  const StableDiffusion& sd = model_for(c.model, c.layout);
  int calls = 0, total = 0;
  const auto images = sd.generate(case_request(g, c), [&](int step, int n) {
    calls = step;
    total = n;
    return true;
  });
  EXPECT_EQ(size_t(total), sd.model_calls(case_request(g, c)));
  EXPECT_EQ(calls, total);
  ASSERT_EQ(images.size(), size_t(c.batch));
  const int64_t per = want.numel() / c.batch;
  for (int b = 0; b < c.batch; ++b) {
    const GeneratedImage& im = images[size_t(b)];
    ASSERT_EQ(im.height, want.size(1));
    ASSERT_EQ(im.width, want.size(2));
    ASSERT_EQ(int64_t(im.rgb.size()), per);
    EXPECT_EQ(im.seed, std::stoll(g.metadata().at("seed")) + b);
    std::string where;
    const int worst = compare(im.rgb, want.data<uint8_t>() + b * per, im.width, &where);
    RecordProperty("max_abs_diff", worst);
    if (std::getenv("SDSERVE_IMG2IMG_REPORT"))
      std::printf("[img2img] %-16s %-9s %-40s #%d max |diff| %d\n", c.model.c_str(), c.layout.c_str(), c.key.c_str(), b,
                  worst);
    EXPECT_LE(worst, kTolerance) << c.model << " " << c.layout << " " << c.key << " image " << b << ": worst " << worst
                                 << " at " << where;
  }
}

std::string case_name(const testing::TestParamInfo<Case>& i) {
  std::string s = i.param.model + "_" + i.param.layout + "_" + i.param.key;
  for (char& ch : s)
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return s;
}

INSTANTIATE_TEST_SUITE_P(Goldens, Img2ImgParity, testing::ValuesIn(all_cases()), case_name);

TEST(Img2Img, GoldensPresent) {
  for (const char* m : kGoldenModels) {
    const fs::path p = kGolden / (std::string(m) + ".safetensors");
    ASSERT_TRUE(fs::exists(p)) << p << " missing: run tools/make_img2img_goldens.py";
  }
  ASSERT_TRUE(fs::exists(kModels / "sd1-tiny-inpaint.safetensors"))
      << "run tools/make_tiny_models.py --inpaint --models sd1-tiny";
}

// txt2img on a 9-channel inpainting model is inpaint with everything masked (A1111's conditioning):
// the init image is never seen.
TEST(Img2Img, InpaintModelTxt2ImgIsFullMaskInpaint) {
  const SafeTensorsFile& g = golden_file("sd1-tiny-inpaint");
  const StableDiffusion& sd = model_for("sd1-tiny-inpaint", "single");
  ASSERT_EQ(sd.unet_in_channels(), 9);
  GenerateRequest t = golden_request(g, "Euler a", "Automatic", 4);
  const auto a = sd.generate(t);
  GenerateRequest i = t;
  i.init_image = golden_init(g);
  auto white = std::make_shared<GrayImage>(*golden_mask(g));
  std::fill(white->pixels.begin(), white->pixels.end(), 255);
  i.mask = white;
  i.strength = 1.0;
  const auto b = sd.generate(i);
  ASSERT_EQ(a.size(), 1u);
  ASSERT_EQ(b.size(), 1u);
  EXPECT_EQ(a[0].rgb, b[0].rgb);
}

// Pixels outside the mask stay close to the original on a 4-channel model (the latents there are the
// original's, noised to the schedule), and the masked area changes.
TEST(Img2Img, InpaintKeepsUnmaskedArea) {
  const SafeTensorsFile& g = golden_file("sd1-tiny");
  const StableDiffusion& sd = model_for("sd1-tiny", "diffusers");
  GenerateRequest r = golden_request(g, "Euler", "Automatic", 5);
  r.init_image = golden_init(g);
  r.mask = golden_mask(g);
  r.strength = 1.0;
  const auto out = sd.generate(r);
  ASSERT_EQ(out.size(), 1u);
  EXPECT_NE(out[0].rgb, r.init_image->pixels);
}

TEST(Img2Img, BadRequests) {
  const SafeTensorsFile& g = golden_file("sd1-tiny");
  const StableDiffusion& sd = model_for("sd1-tiny", "diffusers");
  GenerateRequest r = golden_request(g, "Euler", "Automatic", 5);
  r.init_image = golden_init(g);
  auto expect_invalid = [&](GenerateRequest q, const std::string& what) {
    try {
      sd.generate(q);
      ADD_FAILURE() << "accepted: " << what;
    } catch (const InvalidArgument& e) {
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  GenerateRequest q = r;
  q.strength = 0;
  expect_invalid(q, "strength");
  q.strength = 1.5;
  expect_invalid(q, "strength");
  q.strength = 0.1;  // 5 * 0.1 = 0 steps
  expect_invalid(q, "no step to run");
  q = r;
  q.width = 64;
  expect_invalid(q, "resize it first");
  q = r;
  auto small = std::make_shared<GrayImage>();
  small->width = small->height = 8;
  small->pixels.assign(64, 255);
  q.mask = small;
  expect_invalid(q, "mask is 8x8");
  q = golden_request(g, "Euler", "Automatic", 5);
  q.mask = golden_mask(g);
  expect_invalid(q, "needs an init image");
}

}  // namespace
}  // namespace sdserve::test

namespace sdserve::test {
namespace {

// The hires fix's first pass is the txt2img image of the same seed: with a pixel upscaler, the
// result is exactly img2img (same seed, hires steps and strength) of that image upscaled.
TEST(HiresFix, FirstPassIsTxt2ImgOfTheSameSeed) {
  const SafeTensorsFile& g = golden_file("sd1-tiny");
  const StableDiffusion& sd = model_for("sd1-tiny", "diffusers");
  GenerateRequest t = golden_request(g, "Euler a", "Automatic", 4);
  t.width = t.height = 16;
  t.batch_size = 2;
  const auto first = sd.generate(t);

  GenerateRequest h = t;
  h.hires.enabled = true;
  h.hires.scale = 2;
  h.hires.upscaler = "Lanczos";
  h.hires.steps = 5;
  h.hires.denoise = 0.6;
  int last = 0, total = 0;
  const auto out = sd.generate(h, [&](int step, int n) {
    EXPECT_EQ(step, last + 1);
    last = step, total = n;
    return true;
  });
  EXPECT_EQ(size_t(total), sd.model_calls(h));
  EXPECT_EQ(total, 4 + 3);  // 4 first-pass calls, int(5 * 0.6) second-pass calls
  ASSERT_EQ(out.size(), 2u);
  for (int b = 0; b < 2; ++b) {
    EXPECT_EQ(out[size_t(b)].width, 32);
    EXPECT_EQ(out[size_t(b)].height, 32);
    auto up = std::make_shared<RgbImage>();
    up->width = up->height = 32;
    up->pixels = resize_image(first[size_t(b)].rgb.data(), 16, 16, 3, 32, 32, ResizeFilter::Lanczos);
    GenerateRequest i = t;
    i.batch_size = 1;
    i.seed = t.seed + b;
    i.width = i.height = 32;
    i.steps = 5;
    i.strength = 0.6;
    i.init_image = up;
    const auto want = sd.generate(i);
    // A batch of 2 and a batch of 1 may round differently in the last bits (GEMM blocking).
    std::string where;
    EXPECT_LE(compare(out[size_t(b)].rgb, want[0].rgb.data(), 32, &where), 1) << "image " << b << " " << where;
    EXPECT_EQ(out[size_t(b)].seed, t.seed + b);
  }
  const GenerationParams gp = sd.infotext_params(h, out[0]);
  EXPECT_EQ(gp.width, 16);
  EXPECT_EQ(gp.denoising_strength, 0.6f);
}

// An ESRGAN-family file from LoadOptions::upscaler_dir as the hires upscaler: upscale_to the target
// size, then img2img.
TEST(HiresFix, EsrganUpscalerFromTheFolder) {
  const SafeTensorsFile& g = golden_file("sd1-tiny");
  LoadOptions lo;
  lo.upscaler_dir = (kRoot / "upscalers").string();
  const auto sd = StableDiffusion::load((kModels / "sd1-tiny").string(), lo);
  const auto names = sd->upscaler_names();
  EXPECT_NE(std::find(names.begin(), names.end(), "compact-x4"), names.end());
  EXPECT_NE(std::find(names.begin(), names.end(), "Lanczos"), names.end());
  GenerateRequest t = golden_request(g, "Euler", "Automatic", 3);
  t.width = t.height = 16;
  const auto first = sd->generate(t);
  GenerateRequest h = t;
  h.hires.enabled = true;
  h.hires.upscaler = "compact-x4";
  h.hires.denoise = 0.5;
  h.hires.steps = 4;
  const auto out = sd->generate(h);
  ASSERT_EQ(out.size(), 1u);
  const Upscaler net = Upscaler::open((kRoot / "upscalers" / "compact-x4.safetensors").string());
  const Rgb8Image big = net.upscale_to(first[0].rgb.data(), 16, 16, 32, 32);
  GenerateRequest i = t;
  i.width = i.height = 32;
  i.steps = 4;
  i.strength = 0.5;
  auto init = std::make_shared<RgbImage>();
  init->width = init->height = 32;
  init->pixels = big.rgb;
  i.init_image = init;
  EXPECT_EQ(out[0].rgb, sd->generate(i)[0].rgb);
  h.hires.upscaler = "../upscalers/compact-x4";  // names only, never paths
  EXPECT_THROW(sd->generate(h), NotFoundError);
}

// Resize mode 3: a 16x16 init image's latents resized to a 32x32 request. At the request's own
// size it is plain img2img.
TEST(HiresFix, Img2ImgLatentResize) {
  const SafeTensorsFile& g = golden_file("sd1-tiny");
  const StableDiffusion& sd = model_for("sd1-tiny", "diffusers");
  GenerateRequest r = case_request(g, {"sd1-tiny", "diffusers", "", "img2img", "Euler", "Automatic", 5, 0.6, 1});
  const auto plain = sd.generate(r);
  r.init_latent_resize = true;
  EXPECT_EQ(sd.generate(r)[0].rgb, plain[0].rgb);
  auto small = std::make_shared<RgbImage>();
  small->width = small->height = 16;
  small->pixels = resize_image(r.init_image->pixels.data(), 32, 32, 3, 16, 16, ResizeFilter::Lanczos);
  r.init_image = small;
  const auto up = sd.generate(r);
  EXPECT_EQ(up[0].width, 32);
  EXPECT_EQ(up[0].height, 32);
  r.init_latent_resize = false;
  EXPECT_THROW(sd.generate(r), InvalidArgument);  // a 16x16 image for a 32x32 request
}

TEST(HiresFix, LatentUpscaleAndValidation) {
  const SafeTensorsFile& g = golden_file("sd1-tiny");
  const StableDiffusion& sd = model_for("sd1-tiny", "diffusers");
  GenerateRequest h = golden_request(g, "DPM++ 2M", "Karras", 4);
  h.width = 16;
  h.height = 24;
  h.hires.enabled = true;
  h.hires.width = 40;  // height follows the ratio: 60, rounded down to 56
  const auto a = sd.generate(h);
  ASSERT_EQ(a.size(), 1u);
  EXPECT_EQ(a[0].width, 40);
  EXPECT_EQ(a[0].height, 56);
  EXPECT_EQ(sd.generate(h)[0].rgb, a[0].rgb);  // same seed, same image
  h.hires.upscaler = "Latent (nearest)";
  EXPECT_NE(sd.generate(h)[0].rgb, a[0].rgb);
  h.hires.upscaler = "R-ESRGAN 4x+";
  EXPECT_THROW(sd.generate(h), NotFoundError);
  h.hires.upscaler = "Latent";
  h.hires.denoise = 0.1;  // 4 * 0.1 < 1 step
  EXPECT_THROW(sd.generate(h), InvalidArgument);
  h.hires.denoise = 0.5;
  h.hires.scale = 9;
  h.hires.width = 0;
  EXPECT_THROW(sd.generate(h), InvalidArgument);
  h.hires.scale = 2;
  h.init_image = golden_init(g);
  EXPECT_THROW(sd.generate(h), InvalidArgument);
}

}  // namespace
}  // namespace sdserve::test
