// LoRA-family networks: images against diffusers (and, for LoHa/LoKr, which diffusers does not
// load for SD, against tools/make_lora_fixtures.py's reference merge), the exact restore of the
// base weights, the merge arithmetic of every factor form against direct formulas, and the errors.
//
// Goldens: tests/fixtures/golden/lora/<model>.safetensors (uint8 images, one per case); networks:
// tests/fixtures/lora/<model>/ (the tests' LoRA folder); both made by tools/make_lora_fixtures.py. Tolerance: 2/255 per
// channel.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/safetensors.h"
#include "pipeline/lora.h"
#include "pipeline/stable_diffusion.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace sdserve::test {
namespace {

const fs::path kRoot = fs::path(SDSERVE_SOURCE_DIR) / "tests" / "fixtures";
const fs::path kModels = kRoot / "models";
const fs::path kLora = kRoot / "lora";
const fs::path kGoldens = kRoot / "golden" / "lora";
constexpr int kTolerance = 2;

std::unique_ptr<StableDiffusion> load_model(const std::string& model, const std::string& layout,
                                            Device device = Device::cpu()) {
  LoadOptions o = layout == "single" ? tiny_single_file_options(model) : LoadOptions{};
  o.device = device;
  o.lora_dir = (kLora / model).string();
  const fs::path p = layout == "single" ? kModels / (model + ".safetensors") : kModels / model;
  return StableDiffusion::load(p.string(), o);
}

StableDiffusion& cached_model(const std::string& model, const std::string& layout, Device device) {
  static std::mutex mu;
  static std::map<std::string, std::unique_ptr<StableDiffusion>> cache;
  std::lock_guard<std::mutex> lk(mu);
  auto& m = cache[model + "|" + layout + "|" + device.str()];
  if (!m) m = load_model(model, layout, device);
  return *m;
}

const SafeTensorsFile& goldens(const std::string& model) {
  static std::mutex mu;
  static std::map<std::string, std::unique_ptr<SafeTensorsFile>> files;
  std::lock_guard<std::mutex> lk(mu);
  auto& f = files[model];
  if (!f) f = std::make_unique<SafeTensorsFile>(SafeTensorsFile::open((kGoldens / (model + ".safetensors")).string()));
  return *f;
}

GenerateRequest request(const std::string& model) {
  const SafeTensorsFile& g = goldens(model);
  return golden_request(g, g.metadata().at("sampler"), g.metadata().at("schedule"),
                        std::stoi(g.metadata().at("steps")));
}

// Largest per-channel difference from the golden image `key`.
int worst_diff(const GeneratedImage& im, const SafeTensorsFile& g, const std::string& key) {
  const Tensor want = g.get(key);
  EXPECT_EQ(int64_t(im.rgb.size()), want.numel());
  if (int64_t(im.rgb.size()) != want.numel()) return 255;
  int worst = 0;
  for (size_t i = 0; i < im.rgb.size(); ++i)
    worst = std::max(worst, std::abs(int(im.rgb[i]) - int(want.data<uint8_t>()[i])));
  return worst;
}

// One golden case run one way: networks from prompt tags (names in the model's LoRA folder) or
// from explicit requests by path.
struct Case {
  std::string model, layout, golden, label;
  std::vector<std::pair<std::string, float>> networks;  // file stem, multiplier
  bool tags = false;
  Device device = Device::cpu();
  bool device_path = false;  // the CPU's f32 weights merged the way GPU weights are
};

// Makes the CPU's f32 weights take WeightPatcher's device path while it lives.
struct DevicePathOnCpu {
  explicit DevicePathOnCpu(bool on) { WeightPatcher::set_device_path_on_cpu_for_testing(on); }
  ~DevicePathOnCpu() { WeightPatcher::set_device_path_on_cpu_for_testing(false); }
};

std::vector<Case> cases() {
  std::vector<Case> v;
  std::vector<Device> devices{Device::cpu()};
#ifdef SDSERVE_WITH_CUDA
  devices.push_back(Device::cuda(0));
#endif
  for (const Device& d : devices) {
    for (const std::string layout : {"diffusers", "single"}) {
      const std::string m = "sd1-tiny";
      v.push_back({m, layout, "none", "none", {}, false, d});
      v.push_back({m, layout, "a", "a_peft", {{"a_peft", 1.f}}, false, d});
      v.push_back({m, layout, "a", "a_kohya_tag", {{"a_kohya", 1.f}}, true, d});
      v.push_back({m, layout, "a0.7+b0.4", "peft_peft", {{"a_peft", 0.7f}, {"b_peft", 0.4f}}, false, d});
      v.push_back({m, layout, "a0.7+b0.4", "kohya_kohya_tags", {{"a_kohya", 0.7f}, {"b_kohya", 0.4f}}, true, d});
      v.push_back({m, layout, "a0.7+b0.4", "kohya_peft", {{"a_kohya", 0.7f}, {"b_peft", 0.4f}}, false, d});
      v.push_back({m, layout, "loha0.8", "loha", {{"loha", 0.8f}}, true, d});
      v.push_back({m, layout, "lokr0.8", "lokr", {{"lokr", 0.8f}}, false, d});
      // SD2: OpenCLIP text encoder (fused in_proj in the single file), Linear proj_in/proj_out.
      v.push_back({"sd2-tiny", layout, "none", "none", {}, false, d});
      v.push_back({"sd2-tiny", layout, "a", "a_kohya_tag", {{"a_kohya", 1.f}}, true, d});
    }
  }
  // The GPU's merge path (factors prepared for the device, one GEMM per piece) run on the CPU,
  // so it is checked against the goldens on every machine.
  std::vector<Case> device_path;
  for (Case c : v)
    if (c.device.type == DeviceType::CPU && c.model == "sd1-tiny" && c.layout == "diffusers" && !c.networks.empty()) {
      c.device_path = true;
      c.label += "_device_path";
      device_path.push_back(c);
    }
  v.insert(v.end(), device_path.begin(), device_path.end());
  return v;
}

class LoraParity : public testing::TestWithParam<Case> {};

TEST_P(LoraParity, MatchesReference) {
  const Case& c = GetParam();
  SKIP_UNLESS_AVAILABLE(c.device);
  const DevicePathOnCpu path(c.device_path);
  StableDiffusion& sd = cached_model(c.model, c.layout, c.device);
  // The cached model may hold this very set from the in-place case (one process running both):
  // start from the base weights so the device path really merges.
  if (c.device_path) sd.apply_loras({});
  GenerateRequest r = request(c.model);
  for (const auto& [name, w] : c.networks) {
    if (c.tags) {
      char tag[128];
      std::snprintf(tag, sizeof tag, " <lora:%s:%g>", name.c_str(), double(w));
      r.prompt += tag;
    } else {
      LoraRequest l;
      l.path = (kLora / c.model / (name + ".safetensors")).string();
      l.te_multiplier = l.unet_multiplier = w;
      r.loras.push_back(l);
    }
  }
  const auto images = sd.txt2img(r);
  ASSERT_EQ(images.size(), 1u);
  const int worst = worst_diff(images[0], goldens(c.model), c.golden);
  RecordProperty("max_abs_diff", worst);
  EXPECT_LE(worst, kTolerance) << c.model << " " << c.layout << " " << c.label;
}

std::string case_name(const testing::TestParamInfo<Case>& i) {
  std::string s = (i.param.device.type == DeviceType::CPU ? "cpu_" : "cuda_") + i.param.model.substr(0, 3) + "_" +
                  i.param.layout + "_" + i.param.golden + "_" + i.param.label;
  for (char& ch : s)
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return s;
}

INSTANTIATE_TEST_SUITE_P(Goldens, LoraParity, testing::ValuesIn(cases()), case_name);

AppliedNetwork net(const std::string& model, const std::string& stem, float te, float unet) {
  return {LoraNetwork::open((kLora / model / (stem + ".safetensors")).string()), te, unet};
}

// The acceptance check: 1,000 alternating sets, then the base weights hash as a fresh load's.
TEST(LoraRestore, ThousandSwitchesLeaveBaseWeightsBitIdentical) {
  for (const std::string layout : {"diffusers", "single"}) {
    auto sd = load_model("sd1-tiny", layout);
    const std::string fresh = load_model("sd1-tiny", layout)->weights_digest();
    ASSERT_EQ(sd->weights_digest(), fresh);
    const std::vector<std::vector<AppliedNetwork>> sets = {
        {net("sd1-tiny", "a_peft", 1, 1)},
        {net("sd1-tiny", "a_kohya", 0.7f, 0.7f), net("sd1-tiny", "b_peft", 0.4f, 0.4f)},
        {net("sd1-tiny", "loha", 0.8f, 0.8f)},
        {},
        {net("sd1-tiny", "lokr", 0.8f, -1.3f), net("sd1-tiny", "b_kohya", 1, 0.25f)},
        {net("sd1-tiny", "a_kohya", 0.3f, 1.7f)},
    };
    std::vector<std::string> seen(sets.size());
    for (int i = 0; i < 1000; ++i) {
      const size_t k = size_t(i) % sets.size();
      sd->apply_loras(sets[k]);
      if (i < int(sets.size())) {
        seen[k] = sd->weights_digest();
        if (!sets[k].empty()) {
          EXPECT_NE(seen[k], fresh) << "set " << k << " changed nothing";
        }
      } else if (i % 97 == 0) {
        EXPECT_EQ(sd->weights_digest(), seen[k]) << "set " << k << " merged differently at switch " << i;
      }
    }
    sd->apply_loras({});
    EXPECT_EQ(sd->weights_digest(), fresh) << layout;
  }
}

// A request without networks after requests with them gets the base model's image, bit for bit.
TEST(LoraRestore, ImageAfterNetworksEqualsBaseImage) {
  auto sd = load_model("sd1-tiny", "diffusers");
  const GenerateRequest base = request("sd1-tiny");
  const auto before = sd->txt2img(base);
  GenerateRequest with = base;
  with.prompt += " <lora:a_kohya:0.9> <lora:lokr:0.5>";
  const auto changed = sd->txt2img(with);
  EXPECT_NE(changed[0].rgb, before[0].rgb);
  const auto after = sd->txt2img(base);
  EXPECT_EQ(after[0].rgb, before[0].rgb);
  EXPECT_LE(worst_diff(after[0], goldens("sd1-tiny"), "none"), kTolerance);
}

// ---------------------------------------------------------------- merge arithmetic, by formula

Tensor rand_tensor(const Shape& s, uint32_t seed) {
  return Tensor::from_vector(random_values(size_t(shape_numel(s)), seed), s);
}

fs::path temp_file(const std::string& name) {
  const fs::path d = fs::temp_directory_path() / ("sdserve_lora_" + std::to_string(::getpid()));
  fs::create_directories(d);
  return d / name;
}

// The merge arithmetic runs three ways: the CPU's in-place sgemm (its f32 weights), the device
// path (factors prepared for the weight's device, one GEMM per piece) on the CPU, and that path on
// a GPU in f32. The expected values and the tolerance are the same for all three.
enum class MergePath { CpuInPlace, CpuDevicePath, Cuda };
Device g_merge_device = Device::cpu();

class LoraMath : public testing::TestWithParam<MergePath> {
 protected:
  void SetUp() override {
    g_merge_device = GetParam() == MergePath::Cuda ? Device::cuda(0) : Device::cpu();
    SKIP_UNLESS_AVAILABLE(g_merge_device);
    WeightPatcher::set_device_path_on_cpu_for_testing(GetParam() == MergePath::CpuDevicePath);
  }
  void TearDown() override {
    WeightPatcher::set_device_path_on_cpu_for_testing(false);
    g_merge_device = Device::cpu();
  }
};

// Merges `tensors` (a network file) into a fresh copy of `base` (on the path's device) under the
// kohya name lora_unet_blk_conv and returns the merged weight, on the host.
Tensor merged(const Tensor& base, const std::vector<std::pair<std::string, Tensor>>& tensors, float mult,
              const std::map<std::string, std::string>& md = {}) {
  const fs::path f = temp_file("net.safetensors");
  write_safetensors(f.string(), tensors, md);
  Tensor w = base.to(g_merge_device).clone();
  WeightPatcher p({PatchTarget{"unet.blk.conv", &w, PatchTarget::Component::UNet, {}}});
  p.apply({{LoraNetwork::open(f.string()), 1.f, mult}});
  return w.to(Device::cpu());
}

void expect_delta(const Tensor& base, const Tensor& got, const std::vector<double>& delta, const std::string& what) {
  const auto b = base.to_vector();
  std::vector<double> want(b.size());
  for (size_t i = 0; i < b.size(); ++i) want[i] = double(b[i]) + delta[i];
  expect_close(got.to_vector(), want, 1e-5, 1e-5, what);
}

TEST_P(LoraMath, LoConTuckerMid) {
  const int64_t out = 5, in = 3, r = 2, k = 3;
  const Tensor base = rand_tensor({out, in, k, k}, 1);
  const Tensor up = rand_tensor({out, r, 1, 1}, 2), down = rand_tensor({r, in, 1, 1}, 3),
               mid = rand_tensor({r, r, k, k}, 4);
  const float alpha = 1.5f, mult = 0.6f;
  const Tensor w = merged(base,
                          {{"lora_unet_blk_conv.lora_up.weight", up},
                           {"lora_unet_blk_conv.lora_down.weight", down},
                           {"lora_unet_blk_conv.lora_mid.weight", mid},
                           {"lora_unet_blk_conv.alpha", Tensor::from_vector({alpha}, {})}},
                          mult);
  std::vector<double> d(size_t(base.numel()));
  const float *U = up.data<float>(), *D = down.data<float>(), *M = mid.data<float>();
  for (int64_t i = 0; i < out; ++i)
    for (int64_t j = 0; j < in; ++j)
      for (int64_t y = 0; y < k * k; ++y) {
        double acc = 0;
        for (int64_t n = 0; n < r; ++n)
          for (int64_t m = 0; m < r; ++m) acc += double(M[(n * r + m) * k * k + y]) * U[i * r + n] * D[m * in + j];
        d[size_t((i * in + j) * k * k + y)] = mult * alpha / r * acc;
      }
  expect_delta(base, w, d, "tucker");
}

TEST_P(LoraMath, LoHaConv) {
  const int64_t out = 4, in = 3, r = 2, k = 3, flat = in * k * k;
  const Tensor base = rand_tensor({out, in, k, k}, 5);
  const Tensor a1 = rand_tensor({out, r}, 6), b1 = rand_tensor({r, flat}, 7), a2 = rand_tensor({out, 3}, 8),
               b2 = rand_tensor({3, flat}, 9);
  const float alpha = 1.f, mult = -0.8f;
  const Tensor w = merged(base,
                          {{"lora_unet_blk_conv.hada_w1_a", a1},
                           {"lora_unet_blk_conv.hada_w1_b", b1},
                           {"lora_unet_blk_conv.hada_w2_a", a2},
                           {"lora_unet_blk_conv.hada_w2_b", b2},
                           {"lora_unet_blk_conv.alpha", Tensor::from_vector({alpha}, {})}},
                          mult);
  std::vector<double> d(size_t(base.numel()));
  for (int64_t o = 0; o < out; ++o)
    for (int64_t j = 0; j < flat; ++j) {
      double x = 0, y = 0;
      for (int64_t i = 0; i < r; ++i) x += double(a1.data<float>()[o * r + i]) * b1.data<float>()[i * flat + j];
      for (int64_t i = 0; i < 3; ++i) y += double(a2.data<float>()[o * 3 + i]) * b2.data<float>()[i * flat + j];
      d[size_t(o * flat + j)] = mult * alpha / r * x * y;  // scale: alpha / hada_w1_b rows
    }
  expect_delta(base, w, d, "loha");
}

TEST_P(LoraMath, LoKrConvFourDimensionalW2AndLinearDecomposed) {
  {  // 3x3 conv: whole w1 [2, 3], 4-D w2 [3, 2, 3, 3]: out 6, in 6; scale 1 whatever alpha says
    const Tensor base = rand_tensor({6, 6, 3, 3}, 10);
    const Tensor w1 = rand_tensor({2, 3}, 11), w2 = rand_tensor({3, 2, 3, 3}, 12);
    const Tensor w = merged(base,
                            {{"lora_unet_blk_conv.lokr_w1", w1},
                             {"lora_unet_blk_conv.lokr_w2", w2},
                             {"lora_unet_blk_conv.alpha", Tensor::from_vector({7.f}, {})}},
                            0.5f);
    std::vector<double> d(size_t(base.numel()));
    for (int64_t i = 0; i < 2; ++i)
      for (int64_t p = 0; p < 3; ++p)
        for (int64_t j = 0; j < 3; ++j)
          for (int64_t q = 0; q < 2; ++q)
            for (int64_t y = 0; y < 9; ++y)
              d[size_t(((i * 3 + p) * 6 + (j * 2 + q)) * 9 + y)] =
                  0.5 * double(w1.data<float>()[i * 3 + j]) * w2.data<float>()[(p * 2 + q) * 9 + y];
    expect_delta(base, w, d, "lokr conv");
  }
  {  // Linear [8, 6]: w1 = w1a @ w1b [2, 3], w2 = w2a @ w2b [4, 2]; scale alpha / rank(w2b)
    const Tensor base = rand_tensor({8, 6}, 13);
    const Tensor w1a = rand_tensor({2, 1}, 14), w1b = rand_tensor({1, 3}, 15), w2a = rand_tensor({4, 2}, 16),
                 w2b = rand_tensor({2, 2}, 17);
    const Tensor w = merged(base,
                            {{"lora_unet_blk_conv.lokr_w1_a", w1a},
                             {"lora_unet_blk_conv.lokr_w1_b", w1b},
                             {"lora_unet_blk_conv.lokr_w2_a", w2a},
                             {"lora_unet_blk_conv.lokr_w2_b", w2b},
                             {"lora_unet_blk_conv.alpha", Tensor::from_vector({1.f}, {})}},
                            1.f);
    auto W1 = [&](int64_t i, int64_t j) { return double(w1a.data<float>()[i]) * w1b.data<float>()[j]; };
    auto W2 = [&](int64_t p, int64_t q) {
      return double(w2a.data<float>()[p * 2]) * w2b.data<float>()[q] +
             double(w2a.data<float>()[p * 2 + 1]) * w2b.data<float>()[2 + q];
    };
    std::vector<double> d(size_t(base.numel()));
    for (int64_t i = 0; i < 2; ++i)
      for (int64_t p = 0; p < 4; ++p)
        for (int64_t j = 0; j < 3; ++j)
          for (int64_t q = 0; q < 2; ++q) d[size_t((i * 4 + p) * 6 + j * 2 + q)] = 0.5 * W1(i, j) * W2(p, q);
    expect_delta(base, w, d, "lokr linear");
  }
}

TEST_P(LoraMath, PeftHeaderAlphaPatternAndRsLora) {
  const Tensor base = rand_tensor({4, 3}, 20);
  const Tensor A = rand_tensor({2, 3}, 21), B = rand_tensor({4, 2}, 22);
  const std::vector<std::pair<std::string, Tensor>> t = {{"unet.blk.conv.lora_A.weight", A},
                                                         {"unet.blk.conv.lora_B.weight", B}};
  auto delta = [&](double scale) {
    std::vector<double> d(12);
    for (int64_t o = 0; o < 4; ++o)
      for (int64_t i = 0; i < 3; ++i)
        d[size_t(o * 3 + i)] = scale * (double(B.data<float>()[o * 2]) * A.data<float>()[i] +
                                        double(B.data<float>()[o * 2 + 1]) * A.data<float>()[3 + i]);
    return d;
  };
  expect_delta(base, merged(base, t, 1.f), delta(1.0), "no metadata: alpha = rank");
  expect_delta(base, merged(base, t, 1.f, {{"lora_adapter_metadata", R"({"unet.lora_alpha": 8, "unet.r": 2})"}}),
               delta(4.0), "lora_alpha");
  expect_delta(base,
               merged(base, t, 0.5f,
                      {{"lora_adapter_metadata", R"({"unet.lora_alpha": 8, "unet.alpha_pattern": {"conv": 1}})"}}),
               delta(0.25), "alpha_pattern");
  expect_delta(base,
               merged(base, t, 1.f, {{"lora_adapter_metadata", R"({"unet.lora_alpha": 8, "unet.use_rslora": true})"}}),
               delta(8.0 / std::sqrt(2.0)), "rslora");
}

TEST_P(LoraMath, FullDiffAndOldDiffusersNames) {
  const Tensor base = rand_tensor({4, 3}, 30);
  const Tensor diff = rand_tensor({4, 3}, 31);
  std::vector<double> d(12);
  for (size_t i = 0; i < 12; ++i) d[i] = 2.0 * diff.data<float>()[i];
  expect_delta(base, merged(base, {{"lora_unet_blk_conv.diff", diff}}, 2.f), d, "full diff");

  // diffusers' first LoRA files: attention processors.
  Tensor w = rand_tensor({4, 3}, 32).to(g_merge_device);
  const Tensor w0 = w.to(Device::cpu()).clone();
  WeightPatcher p({PatchTarget{"unet.down_blocks.0.attn1.to_out.0", &w, PatchTarget::Component::UNet, {}}});
  const fs::path f = temp_file("old.safetensors");
  write_safetensors(f.string(),
                    {{"unet.down_blocks.0.attn1.processor.to_out_lora.down.weight", rand_tensor({1, 3}, 33)},
                     {"unet.down_blocks.0.attn1.processor.to_out_lora.up.weight", rand_tensor({4, 1}, 34)}});
  p.apply({{LoraNetwork::open(f.string()), 1.f, 1.f}});
  EXPECT_GT(max_abs_diff(w.to(Device::cpu()), w0), 0.0);
  p.restore();
  EXPECT_EQ(w.to(Device::cpu()).to_vector(), w0.to_vector());
}

// A1111's "addnet" short hash (infotext "Lora hashes"): SHA-256 of the bytes after the header,
// 12 hex digits; the value is hashlib's over the committed file.
TEST(LoraFile, A1111ShortHash) {
  EXPECT_EQ(LoraNetwork::open((kLora / "sd1-tiny" / "a_kohya.safetensors").string())->short_hash(), "07441f50141f");
}

// A file rewritten on disk (same path, same multipliers) is a new network and is merged anew; the
// same network object again is a no-op.
TEST_P(LoraMath, RewrittenFileIsMergedAgain) {
  Tensor w = rand_tensor({4, 3}, 60).to(g_merge_device);
  const Tensor w0 = w.to(Device::cpu()).clone();
  WeightPatcher p({PatchTarget{"unet.blk.conv", &w, PatchTarget::Component::UNet, {}}});
  const fs::path f = temp_file("rewritten.safetensors");
  write_safetensors(f.string(), {{"lora_unet_blk_conv.diff", rand_tensor({4, 3}, 61)}});
  const auto first = LoraNetwork::open(f.string());
  p.apply({{first, 1, 1}});
  const auto after_first = w.to_vector();
  p.apply({{first, 1, 1}});
  EXPECT_EQ(w.to_vector(), after_first);
  write_safetensors(f.string(), {{"lora_unet_blk_conv.diff", rand_tensor({4, 3}, 62)}});
  p.apply({{LoraNetwork::open(f.string()), 1, 1}});
  EXPECT_NE(w.to_vector(), after_first);
  p.restore();
  EXPECT_EQ(w.to_vector(), w0.to_vector());
}

const auto kMergePaths = testing::Values(MergePath::CpuInPlace, MergePath::CpuDevicePath, MergePath::Cuda);
std::string merge_path_name(const testing::TestParamInfo<MergePath>& i) {
  return i.param == MergePath::CpuInPlace      ? "cpu_in_place"
         : i.param == MergePath::CpuDevicePath ? "cpu_device_path"
                                               : "cuda_f32";
}
INSTANTIATE_TEST_SUITE_P(Paths, LoraMath, kMergePaths, merge_path_name);

// ------------------------------------------------------------------ factors kept between switches

// Weights of three shapes (a Linear, a 1x1 and a 3x3 conv) and two kohya networks touching all
// three, on the path's device; the device path (forced on the CPU) keeps their prepared factors.
class LoraFactorCache : public LoraMath {
 protected:
  void SetUp() override {
    LoraMath::SetUp();
    if (IsSkipped()) return;
    base_ = {rand_tensor({6, 5}, 70), rand_tensor({4, 6, 1, 1}, 71), rand_tensor({5, 4, 3, 3}, 72)};
    for (const Tensor& b : base_) w_.push_back(b.to(g_merge_device).clone());
    for (int n = 0; n < 2; ++n) {
      std::vector<std::pair<std::string, Tensor>> t;
      const char* names[] = {"lin", "pw", "conv"};
      for (size_t i = 0; i < 3; ++i) {
        const Tensor& b = base_[i];
        const int64_t r = 3 - n, flat = b.numel() / b.size(0);  // b is the smaller network
        const std::string k = std::string("lora_unet_") + names[i];
        t.push_back({k + ".lora_up.weight", rand_tensor({b.size(0), r}, uint32_t(80 + 10 * n + i))});
        t.push_back({k + ".lora_down.weight",
                     b.dim() == 4 ? rand_tensor({r, b.size(1), b.size(2), b.size(3)}, uint32_t(90 + 10 * n + i))
                                  : rand_tensor({r, flat}, uint32_t(90 + 10 * n + i))});
        t.push_back({k + ".alpha", Tensor::from_vector({1.5f}, {})});
      }
      const fs::path f = temp_file("cache_" + std::to_string(n) + ".safetensors");
      write_safetensors(f.string(), t);
      nets_.push_back(LoraNetwork::open(f.string()));
    }
  }
  std::unique_ptr<WeightPatcher> patcher() {
    std::vector<PatchTarget> t;
    const char* names[] = {"unet.lin", "unet.pw", "unet.conv"};
    for (size_t i = 0; i < w_.size(); ++i) t.push_back({names[i], &w_[i], PatchTarget::Component::UNet, {}});
    return std::make_unique<WeightPatcher>(std::move(t));
  }
  std::vector<std::vector<float>> weights() const {
    std::vector<std::vector<float>> v;
    for (const Tensor& w : w_) v.push_back(w.to_vector());
    return v;
  }
  std::vector<AppliedNetwork> a() const { return {{nets_[0], 1.f, 0.8f}}; }
  std::vector<AppliedNetwork> b() const { return {{nets_[1], 1.f, -0.6f}}; }
  std::vector<AppliedNetwork> mix() const { return {{nets_[0], 1.f, 0.5f}, {nets_[1], 1.f, 0.7f}}; }

  std::vector<Tensor> base_, w_;
  std::vector<std::shared_ptr<const LoraNetwork>> nets_;
};

TEST_P(LoraFactorCache, SwitchesReuseThePreparedFactorsAndMergeTheSame) {
  if (GetParam() == MergePath::CpuInPlace) GTEST_SKIP() << "the CPU's f32 weights merge in place, without the cache";
  // Reference: a patcher that keeps nothing.
  auto plain = patcher();
  plain->set_factor_cache_limit(0);
  std::map<std::string, std::vector<std::vector<float>>> want;
  for (const auto& [name, set] : {std::pair{"a", a()}, {"b", b()}, {"mix", mix()}}) {
    plain->apply(set);
    want[name] = weights();
    EXPECT_EQ(plain->factor_cache_bytes(), 0u);
  }
  plain->restore();
  plain.reset();

  auto p = patcher();
  p->apply(a());
  const size_t bytes_a = p->factor_cache_bytes();
  EXPECT_GT(bytes_a, 0u);
  EXPECT_EQ(weights(), want["a"]);
  p->apply(b());
  const size_t bytes_ab = p->factor_cache_bytes();
  EXPECT_GT(bytes_ab, bytes_a);
  EXPECT_EQ(weights(), want["b"]);
  for (int i = 0; i < 3; ++i) {  // from the cache now: same bits, nothing more kept
    p->apply(mix());
    EXPECT_EQ(weights(), want["mix"]);
    p->apply(a());
    EXPECT_EQ(weights(), want["a"]);
    p->apply(b());
    EXPECT_EQ(weights(), want["b"]);
  }
  EXPECT_EQ(p->factor_cache_bytes(), bytes_ab);
  p->restore();
  for (size_t i = 0; i < w_.size(); ++i) EXPECT_EQ(w_[i].to_vector(), base_[i].to_vector()) << i;

  // Room for one network: switching drops the one the new set does not use; a set larger than the
  // limit still merges right, preparing what does not fit anew.
  p->set_factor_cache_limit(bytes_a);
  EXPECT_LE(p->factor_cache_bytes(), bytes_a);
  p->apply(a());
  EXPECT_EQ(weights(), want["a"]);
  EXPECT_EQ(p->factor_cache_bytes(), bytes_a);
  p->apply(b());
  EXPECT_EQ(weights(), want["b"]);
  EXPECT_LE(p->factor_cache_bytes(), bytes_a);
  EXPECT_EQ(p->factor_cache_bytes(), bytes_ab - bytes_a);
  for (int i = 0; i < 2; ++i) {
    p->apply(mix());
    EXPECT_EQ(weights(), want["mix"]);
    EXPECT_LE(p->factor_cache_bytes(), bytes_a);
  }
  p->set_factor_cache_limit(0);
  EXPECT_EQ(p->factor_cache_bytes(), 0u);
  p->apply(a());
  EXPECT_EQ(weights(), want["a"]);
  EXPECT_EQ(p->factor_cache_bytes(), 0u);

  // A network nobody holds any more (here: opened for one set) leaves the cache at the next switch.
  p->set_factor_cache_limit(size_t(1) << 30);
  p->apply({{LoraNetwork::open(nets_[0]->path()), 1.f, 0.8f}});
  EXPECT_EQ(weights(), want["a"]);
  EXPECT_EQ(p->factor_cache_bytes(), bytes_a);
  p->apply(b());
  EXPECT_EQ(p->factor_cache_bytes(), bytes_ab - bytes_a);
  p->restore();
}

TEST_P(LoraFactorCache, LimitFromTheEnvironmentAndItsErrors) {
  const char* var = "SDSERVE_LORA_FACTOR_CACHE_MB";
  const char* had = std::getenv(var);
  const std::optional<std::string> before = had ? std::optional<std::string>(had) : std::nullopt;
  ::setenv(var, "0", 1);
  {
    auto p = patcher();
    p->apply(a());
    EXPECT_EQ(p->factor_cache_bytes(), 0u);
    p->restore();
  }
  for (const char* bad : {"lots", "-1", "+5", " 5", "12MB", "99999999999999999999"}) {
    ::setenv(var, bad, 1);
    std::string msg;
    try {
      patcher();
    } catch (const InvalidArgument& e) {
      msg = e.what();
    }
    EXPECT_NE(msg.find(var), std::string::npos) << bad << ": " << msg;
    EXPECT_NE(msg.find(bad), std::string::npos) << msg;
  }
  if (before)
    ::setenv(var, before->c_str(), 1);
  else
    ::unsetenv(var);
}

INSTANTIATE_TEST_SUITE_P(Paths, LoraFactorCache, kMergePaths, merge_path_name);

// ------------------------------------------------------------------------------------- errors

TEST(LoraErrors, UnknownNameListsAvailable) {
  StableDiffusion& sd = cached_model("sd1-tiny", "diffusers", Device::cpu());
  GenerateRequest r = request("sd1-tiny");
  r.prompt += " <lora:no_such_lora:1>";
  const std::string msg = error_of<NotFoundError>([&] { sd.validate(r); });
  EXPECT_NE(msg.find("no_such_lora"), std::string::npos) << msg;
  for (const char* n : {"a_kohya", "a_peft", "b_kohya", "b_peft", "loha", "lokr"})
    EXPECT_NE(msg.find(n), std::string::npos) << msg;
  r.prompt = request("sd1-tiny").prompt;
  r.loras.push_back({"also_missing", "", 1, 1});
  EXPECT_NE(error_of<NotFoundError>([&] { sd.txt2img(r); }).find("also_missing"), std::string::npos);
}

TEST(LoraErrors, NoFolderSaysHowToGiveOne) {
  auto sd = StableDiffusion::load((kModels / "sd1-tiny").string());
  GenerateRequest r = request("sd1-tiny");
  r.prompt += "<lora:a_kohya>";
  EXPECT_NE(error_of<NotFoundError>([&] { sd->validate(r); }).find("--lora-dir"), std::string::npos);
  LoadOptions o;
  o.lora_dir = "/nonexistent/lora/dir";
  EXPECT_NE(error_of<NotFoundError>([&] {
              StableDiffusion::load((kModels / "sd1-tiny").string(), o);
            }).find("/nonexistent/lora/dir"),
            std::string::npos);
}

TEST(LoraErrors, ShapeMismatchNamesFirstKeyAndChangesNothing) {
  auto sd = load_model("sd1-tiny", "diffusers");
  const std::string before = sd->weights_digest();
  // sd2-tiny's network on sd1-tiny: the first module whose shapes differ is refused.
  const std::string msg = error_of<InvalidArgument>([&] {
    sd->apply_loras({net("sd1-tiny", "a_kohya", 1, 1), net("sd2-tiny", "a_kohya", 1, 1)});
  });
  EXPECT_NE(msg.find("lora_"), std::string::npos) << msg;
  EXPECT_NE(msg.find("does not fit"), std::string::npos) << msg;
  EXPECT_EQ(sd->weights_digest(), before);

  // A known key with a wrong shape.
  const SafeTensorsFile a = SafeTensorsFile::open((kLora / "sd1-tiny" / "a_kohya.safetensors").string());
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const TensorInfo& t : a.tensors()) tensors.emplace_back(t.name, a.get(t.name));
  const std::string bad = "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight";
  bool replaced = false;
  for (auto& [name, t] : tensors)
    if (name == bad) {
      t = Tensor::zeros({t.size(0), t.size(1) + 1}, DType::F16);
      replaced = true;
    }
  ASSERT_TRUE(replaced);
  const fs::path f = temp_file("wrong_shape.safetensors");
  write_safetensors(f.string(), tensors);
  const std::string m2 = error_of<InvalidArgument>([&] { sd->apply_loras({{LoraNetwork::open(f.string()), 1, 1}}); });
  EXPECT_NE(m2.find(bad), std::string::npos) << m2;
  EXPECT_EQ(sd->weights_digest(), before);
}

TEST(LoraErrors, CorruptTruncatedUnsupportedAndForeignFiles) {
  const fs::path src = kLora / "sd1-tiny" / "a_kohya.safetensors";
  std::ifstream in(src, std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const fs::path cut = temp_file("truncated.safetensors");
  std::ofstream(cut, std::ios::binary).write(bytes.data(), std::streamsize(bytes.size() / 2));
  EXPECT_THROW(LoraNetwork::open(cut.string()), ModelFormatError);
  const fs::path junk = temp_file("junk.safetensors");
  std::ofstream(junk, std::ios::binary) << "this is not a safetensors file at all";
  EXPECT_THROW(LoraNetwork::open(junk.string()), ModelFormatError);
  EXPECT_THROW(LoraNetwork::open((kLora / "missing.safetensors").string()), NotFoundError);

  auto write = [](const std::string& name, const std::vector<std::pair<std::string, Tensor>>& t) {
    const fs::path f = temp_file(name);
    write_safetensors(f.string(), t);
    return f.string();
  };
  const Tensor d = rand_tensor({2, 3}, 40), u = rand_tensor({4, 2}, 41);
  EXPECT_NE(error_of<UnsupportedError>([&] {
              LoraNetwork::open(write("dora.safetensors", {{"lora_unet_x.lora_down.weight", d},
                                                           {"lora_unet_x.lora_up.weight", u},
                                                           {"lora_unet_x.dora_scale", rand_tensor({4, 1}, 42)}}));
            }).find("DoRA"),
            std::string::npos);
  EXPECT_NE(error_of<UnsupportedError>([&] {
              LoraNetwork::open(write("other.safetensors", {{"model.diffusion_model.out.weight", d}}));
            }).find("model.diffusion_model.out.weight"),
            std::string::npos);
  EXPECT_NE(error_of<ModelFormatError>([&] {
              LoraNetwork::open(write("half.safetensors", {{"lora_unet_x.lora_down.weight", d}}));
            }).find("lora_unet_x"),
            std::string::npos);
  EXPECT_THROW(LoraNetwork::open(write("rank.safetensors", {{"lora_unet_x.lora_down.weight", d},
                                                            {"lora_unet_x.lora_up.weight", rand_tensor({4, 3}, 43)}})),
               ModelFormatError);
  Tensor nan = rand_tensor({2, 3}, 44);
  nan.data<float>()[3] = NAN;
  EXPECT_THROW(LoraNetwork::open(write("nan.safetensors",
                                       {{"lora_unet_x.lora_down.weight", nan}, {"lora_unet_x.lora_up.weight", u}})),
               ModelFormatError);

  // Parses, but is for layers this model does not have (e.g. an SDXL LoRA): refused by name.
  auto sd = load_model("sd1-tiny", "diffusers");
  const std::string msg = error_of<InvalidArgument>([&] {
    sd->apply_loras({{LoraNetwork::open(write("foreign.safetensors", {{"lora_unet_x.lora_down.weight", d},
                                                                      {"lora_unet_x.lora_up.weight", u}})),
                      1, 1}});
  });
  EXPECT_NE(msg.find("another model"), std::string::npos) << msg;
}

TEST(LoraLibrary, FindsNamesRecursivelyAndRereadsChangedFiles) {
  const fs::path dir = temp_file("lib");
  fs::remove_all(dir);
  fs::create_directories(dir / "sub");
  const Tensor d = rand_tensor({2, 3}, 50), u = rand_tensor({4, 2}, 51);
  write_safetensors((dir / "sub" / "deep.safetensors").string(),
                    {{"lora_unet_x.lora_down.weight", d}, {"lora_unet_x.lora_up.weight", u}});
  LoraLibrary lib(dir.string());
  EXPECT_EQ(lib.names(), std::vector<std::string>{"deep"});
  const auto n1 = lib.by_name("deep");
  EXPECT_EQ(lib.by_name("deep"), n1);  // cached
  write_safetensors((dir / "later.safetensors").string(),
                    {{"lora_unet_y.lora_down.weight", d}, {"lora_unet_y.lora_up.weight", u}});
  EXPECT_TRUE(lib.has("later"));  // found without a restart
  write_safetensors((dir / "sub" / "deep.safetensors").string(),
                    {{"lora_unet_z.lora_down.weight", d},
                     {"lora_unet_z.lora_up.weight", u},
                     {"lora_unet_z.alpha", Tensor::from_vector({1.f}, {})}});
  fs::last_write_time(dir / "sub" / "deep.safetensors",
                      fs::last_write_time(dir / "sub" / "deep.safetensors") + std::chrono::seconds(5));
  EXPECT_EQ(lib.by_name("deep")->modules().front().key, "lora_unet_z");
  EXPECT_THROW(lib.by_name("../deep"), NotFoundError);
}

}  // namespace
}  // namespace sdserve::test
