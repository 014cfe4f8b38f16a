// ESRGAN-family upscalers (models/esrgan.h, pipeline/upscale.h): every fixture network against
// spandrel's output, tiled against untiled, the tile layout, upscaling to other sizes, .pth files, the
// new ops, architecture detection and its errors. Fixtures: tests/fixtures/upscalers/, made by
// tools/make_upscaler_fixtures.py.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/png.h"
#include "io/resize.h"
#include "io/safetensors.h"
#include "io/weights.h"
#include "models/esrgan.h"
#include "ops/conv2d.h"
#include "ops/upscale_ops.h"
#include "pipeline/upscale.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace sdserve::test {
namespace {

const fs::path kDir = fs::path(SDSERVE_SOURCE_DIR) / "tests" / "fixtures" / "upscalers";

std::vector<uint8_t> read_bytes(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

const Rgb8Image& input_image() {
  static const Rgb8Image img = [] {
    const std::vector<uint8_t> bytes = read_bytes(kDir / "input.png");
    const DecodedImage d = decode_png(bytes.data(), bytes.size());
    EXPECT_EQ(d.channels, 3);
    return Rgb8Image{d.width, d.height, d.pixels};
  }();
  return img;
}

const SafeTensorsFile& goldens() {
  static const SafeTensorsFile f = SafeTensorsFile::open((kDir / "golden.safetensors").string());
  return f;
}

struct Diff {
  int worst = 0;
  size_t worst_index = 0;
};

Diff compare(const Rgb8Image& got, const Tensor& want) {
  Diff d;
  EXPECT_EQ(int64_t(got.rgb.size()), want.numel());
  if (int64_t(got.rgb.size()) != want.numel()) return {255, 0};
  const uint8_t* w = want.data<uint8_t>();
  for (size_t i = 0; i < got.rgb.size(); ++i) {
    const int e = std::abs(int(got.rgb[i]) - int(w[i]));
    if (e > d.worst) d = {e, i};
  }
  return d;
}

// Upscaler from in-memory tensors (a safetensors file serialized and parsed back).
Upscaler from_tensors(const std::vector<std::pair<std::string, Tensor>>& tensors, const std::string& name = "mem") {
  auto bytes = std::make_shared<const std::vector<uint8_t>>(serialize_safetensors(tensors));
  auto file = std::make_shared<const SafeTensorsFile>(SafeTensorsFile::from_memory(bytes, name));
  return Upscaler::from_source(WeightSource({file}), name);
}

// A fixture's tensors, renamed or filtered by `edit` (return "" to drop a tensor).
std::vector<std::pair<std::string, Tensor>> fixture_tensors(
    const std::string& stem, const std::function<std::string(const std::string&)>& edit) {
  const SafeTensorsFile f = SafeTensorsFile::open((kDir / (stem + ".safetensors")).string());
  std::vector<std::pair<std::string, Tensor>> out;
  for (const TensorInfo& t : f.tensors()) {
    const std::string n = edit(t.name);
    if (!n.empty()) out.emplace_back(n, f.get(t.name).clone());
  }
  return out;
}

const std::vector<std::string> kModels = {"rrdb-x4-basicsr", "rrdb-x2-realesrgan", "rrdb-x1-realesrgan",
                                          "esrgan-x4-old",   "esrgan-x2-old",      "compact-x4"};

class UpscalerModel : public testing::TestWithParam<std::string> {};

TEST_P(UpscalerModel, DetectsArchitectureLikeSpandrel) {
  const Upscaler up = Upscaler::open((kDir / (GetParam() + ".safetensors")).string());
  const nlohmann::json want = nlohmann::json::parse(goldens().metadata().at("models"))[GetParam()];
  const UpscalerConfig& c = up.config();
  EXPECT_EQ(c.arch == UpscalerArch::Compact ? "Compact" : "ESRGAN", want["arch"].get<std::string>());
  EXPECT_EQ(c.scale, want["scale"].get<int64_t>());
  EXPECT_EQ(c.in_channels, want["in_nc"].get<int64_t>());
  EXPECT_EQ(c.out_channels, want["out_nc"].get<int64_t>());
  EXPECT_EQ(c.features, want["nf"].get<int64_t>());
  EXPECT_EQ(c.blocks, want["nb"].get<int64_t>());
  EXPECT_EQ(c.growth, want["gc"].get<int64_t>());
  EXPECT_EQ(c.unshuffle, want["shuffle"].get<int64_t>());
  const std::string layout = GetParam().find("old") != std::string::npos       ? "ESRGAN"
                             : GetParam().find("compact") != std::string::npos ? "Compact"
                                                                               : "BasicSR";
  EXPECT_EQ(c.layout, layout);
}

TEST_P(UpscalerModel, MatchesSpandrelUntiled) {
  const Upscaler up = Upscaler::open((kDir / (GetParam() + ".safetensors")).string());
  const Rgb8Image& in = input_image();
  UpscaleOptions untiled;
  untiled.tile = 0;
  const Rgb8Image out = up.upscale(in, untiled);
  EXPECT_EQ(out.width, in.width * up.scale());
  EXPECT_EQ(out.height, in.height * up.scale());
  const Diff d = compare(out, goldens().get(GetParam()));
  EXPECT_LE(d.worst, 1) << GetParam() << ": pixel " << d.worst_index / 3 << " channel " << d.worst_index % 3;
  // The default options tile at 192 px: this image fits one tile, so it is the same pass.
  EXPECT_EQ(up.upscale(in).rgb, out.rgb);
}

// The GPU hands channels-last activations from one convolution to the next (docs/CUDA.md); with
// the CPU convolutions doing the same, every op of the networks meets that layout, and the image
// must come out the same.
TEST_P(UpscalerModel, ChannelsLastActivationsGiveTheSameImage) {
  const Upscaler up = Upscaler::open((kDir / (GetParam() + ".safetensors")).string());
  UpscaleOptions untiled;
  untiled.tile = 0;
  const Rgb8Image ref = up.upscale(input_image(), untiled);
  ops::set_cpu_channels_last_for_testing(true);
  Rgb8Image cl;
  try {
    cl = up.upscale(input_image(), untiled);
  } catch (...) {
    ops::set_cpu_channels_last_for_testing(false);
    throw;
  }
  ops::set_cpu_channels_last_for_testing(false);
  EXPECT_EQ(cl.rgb, ref.rgb);
}

// A larger natural-looking test image: rrdb-x4-basicsr's golden output, 100 x 76.
const Rgb8Image& large_image() {
  static const Rgb8Image img = [] {
    const Tensor g = goldens().get("rrdb-x4-basicsr");  // [76, 100, 3]
    EXPECT_EQ(g.shape(), (Shape{76, 100, 3}));
    return Rgb8Image{100, 76, std::vector<uint8_t>(g.data<uint8_t>(), g.data<uint8_t>() + g.numel())};
  }();
  return img;
}

// Tiles smaller than the image: within 1/255 of the untiled result away from the bands neighbouring
// tiles share, within 2/255 in them. 48-pixel tiles, overlapping by 16 pixels (the default), 32 for
// the pixel-unshuffle-4 network, whose layers look 4x further in input pixels.
TEST_P(UpscalerModel, TiledMatchesUntiled) {
  const Upscaler up = Upscaler::open((kDir / (GetParam() + ".safetensors")).string());
  const Rgb8Image& in = large_image();
  const int64_t align = up.config().unshuffle, s = up.scale();
  UpscaleOptions untiled, tiled;
  untiled.tile = 0;
  tiled.tile = 48;
  tiled.tile_overlap = align == 4 ? 32 : 16;
  int tiles = 0;
  tiled.progress = [&](int done, int total) {
    tiles = total;
    return done <= total;
  };
  const Rgb8Image a = up.upscale(in, untiled), b = up.upscale(in, tiled);
  ASSERT_EQ(a.rgb.size(), b.rgb.size());
  const auto xs = tile_spans(in.width, tiled.tile, tiled.tile_overlap, align);
  const auto ys = tile_spans(in.height, tiled.tile, tiled.tile_overlap, align);
  EXPECT_EQ(tiles, int(xs.size() * ys.size()));
  EXPECT_GE(xs.size(), 3u);
  EXPECT_GE(ys.size(), 2u);
  auto in_seam = [&](const std::vector<TileSpan>& spans, int64_t p) {  // p in output pixels
    for (size_t i = 1; i < spans.size(); ++i)
      if (p >= spans[i].begin * s && p < spans[i - 1].end * s) return true;
    return false;
  };
  int worst_seam = 0, worst_rest = 0;
  for (int y = 0; y < a.height; ++y)
    for (int x = 0; x < a.width; ++x)
      for (int c = 0; c < 3; ++c) {
        const size_t i = (size_t(y) * a.width + x) * 3 + c;
        const int e = std::abs(int(a.rgb[i]) - int(b.rgb[i]));
        int& worst = in_seam(xs, x) || in_seam(ys, y) ? worst_seam : worst_rest;
        worst = std::max(worst, e);
      }
  EXPECT_LE(worst_rest, 1) << GetParam();
  EXPECT_LE(worst_seam, 2) << GetParam();
}

// The same networks on a GPU (ops/upscale_ops.h's CUDA kernels, cuDNN convolutions): f32 within
// spandrel's 1/255 like the CPU; f16 (A1111's GPU default) within 3/255 of the CPU f32 image.
// Skips without a GPU.
TEST_P(UpscalerModel, CudaMatchesSpandrelAndTheCpu) {
  const Device gpu{DeviceType::CUDA, 0};
  SKIP_UNLESS_AVAILABLE(gpu);
  const std::string path = (kDir / (GetParam() + ".safetensors")).string();
  const Rgb8Image& in = large_image();
  UpscaleOptions untiled;
  untiled.tile = 0;
  const Rgb8Image cpu = Upscaler::open(path).upscale(in, untiled);
  const Rgb8Image f32 = Upscaler::open(path, gpu, DType::F32).upscale(input_image(), untiled);
  const Diff d = compare(f32, goldens().get(GetParam()));
  EXPECT_LE(d.worst, 1) << GetParam() << " cuda f32 vs spandrel";
  const Rgb8Image f16 = Upscaler::open(path, gpu, DType::F16).upscale(in, untiled);
  ASSERT_EQ(f16.rgb.size(), cpu.rgb.size());
  int worst = 0;
  for (size_t i = 0; i < cpu.rgb.size(); ++i) worst = std::max(worst, std::abs(int(f16.rgb[i]) - int(cpu.rgb[i])));
  RecordProperty("f16_max_abs_diff", worst);
  EXPECT_LE(worst, 3) << GetParam() << " cuda f16 vs cpu f32";
}

INSTANTIATE_TEST_SUITE_P(Upscaler, UpscalerModel, testing::ValuesIn(kModels),
                         [](const testing::TestParamInfo<std::string>& i) {
                           std::string n = i.param;
                           for (char& ch : n)
                             if (ch == '-') ch = '_';
                           return n;
                         });

TEST(UpscaleTiles, A1111Layout) {
  // images.split_grid: cols = ceil((w - overlap) / (tile - overlap)), x = int(col * dx), last flush.
  auto spans = tile_spans(100, 40, 8);
  ASSERT_EQ(spans.size(), 3u);
  EXPECT_EQ(spans[0].begin, 0);
  EXPECT_EQ(spans[1].begin, 30);
  EXPECT_EQ(spans[2].begin, 60);
  EXPECT_EQ(spans[2].end, 100);
  spans = tile_spans(1000, 192, 16);
  ASSERT_EQ(spans.size(), 6u);  // ceil(984 / 176)
  for (size_t i = 0; i < spans.size(); ++i) {
    EXPECT_EQ(spans[i].end - spans[i].begin, 192);
    if (i > 0) {
      EXPECT_GE(spans[i - 1].end - spans[i].begin, 16);
    }
  }
  EXPECT_EQ(spans.back().end, 1000);
  // Fits in one tile, or no tiling.
  EXPECT_EQ(tile_spans(50, 64, 8).size(), 1u);
  EXPECT_EQ(tile_spans(50, 0, 8).size(), 1u);
  EXPECT_EQ(tile_spans(50, 50, 8).size(), 1u);
  // Aligned to a pixel-unshuffle grid of 4: starts on multiples of 4, the last tile ends at the edge.
  spans = tile_spans(103, 30, 6, 4);
  ASSERT_GT(spans.size(), 1u);
  for (size_t i = 0; i < spans.size(); ++i) {
    EXPECT_EQ(spans[i].begin % 4, 0);
    if (i > 0) {
      EXPECT_LE(spans[i].begin, spans[i - 1].end);
    }
  }
  EXPECT_EQ(spans.back().end, 103);
}

TEST(UpscaleTiles, RejectsBadOptions) {
  const Upscaler up = Upscaler::open((kDir / "compact-x4.safetensors").string());
  const Rgb8Image& in = input_image();
  UpscaleOptions o;
  o.tile = 8;
  o.tile_overlap = 8;
  EXPECT_THROW(up.upscale(in, o), InvalidArgument);
  o.tile = -1;
  EXPECT_THROW(up.upscale(in, o), InvalidArgument);
  o.tile = 8;
  o.tile_overlap = 2;
  o.progress = [](int done, int) { return done < 2; };
  EXPECT_THROW(up.upscale(in, o), UpscaleCancelled);
}

TEST(UpscaleBy, NativeScaleAndPowers) {
  const Upscaler up = Upscaler::open((kDir / "esrgan-x2-old.safetensors").string());
  const Rgb8Image& in = input_image();
  const Rgb8Image once = up.upscale(in);
  EXPECT_EQ(up.upscale_by(in.rgb.data(), in.width, in.height, 2.0).rgb, once.rgb);
  const Rgb8Image twice = up.upscale_by(in.rgb.data(), in.width, in.height, 4.0);
  EXPECT_EQ(twice.width, in.width * 4);
  EXPECT_EQ(twice.rgb, up.upscale(once).rgb);
  // Not a power of the scale: the network runs until the image is large enough, then Lanczos.
  const Rgb8Image third = up.upscale_by(in.rgb.data(), in.width, in.height, 3.0);
  EXPECT_EQ(third.width, 75);
  EXPECT_EQ(third.height, 57);
  EXPECT_EQ(third.rgb, resize_image(twice.rgb.data(), twice.width, twice.height, 3, 75, 57, ResizeFilter::Lanczos));
  const Rgb8Image down = up.upscale_to(in.rgb.data(), in.width, in.height, 48, 32);
  EXPECT_EQ(down.rgb, resize_image(once.rgb.data(), once.width, once.height, 3, 48, 32, ResizeFilter::Lanczos));
  EXPECT_THROW(up.upscale_by(in.rgb.data(), in.width, in.height, 0.0), InvalidArgument);
  EXPECT_THROW(up.upscale_by(in.rgb.data(), in.width, in.height, NAN), InvalidArgument);
}

TEST(UpscalerDetect, UnwrapsPrefixes) {
  // "module." on every key (DataParallel) and "params_ema." wrappers are removed as spandrel does.
  const Upscaler plain = Upscaler::open((kDir / "compact-x4.safetensors").string());
  const Upscaler wrapped =
      from_tensors(fixture_tensors("compact-x4", [](const std::string& n) { return "params_ema.module." + n; }));
  EXPECT_EQ(wrapped.config().describe(), plain.config().describe());
  EXPECT_EQ(wrapped.upscale(input_image()).rgb, plain.upscale(input_image()).rgb);
  // BSRGAN/RealSR names are the third RRDBNet layout.
  auto bsrgan = [](const std::string& n) -> std::string {
    std::string r = n;
    auto swap = [&](const std::string& a, const std::string& b) {
      if (r.rfind(a, 0) == 0) r = b + r.substr(a.size());
    };
    swap("body.", "RRDB_trunk.");
    swap("conv_body.", "trunk_conv.");
    swap("conv_up", "upconv");
    swap("conv_hr.", "HRconv.");
    for (const char* k : {".rdb1.", ".rdb2.", ".rdb3."}) {
      const size_t p = r.find(k);
      if (p != std::string::npos) r.replace(p, 6, std::string(".RDB") + k[4] + ".");
    }
    return r;
  };
  const Upscaler basicsr = Upscaler::open((kDir / "rrdb-x4-basicsr.safetensors").string());
  const Upscaler bs = from_tensors(fixture_tensors("rrdb-x4-basicsr", bsrgan));
  EXPECT_EQ(bs.config().layout, "BSRGAN");
  EXPECT_EQ(bs.upscale(input_image()).rgb, basicsr.upscale(input_image()).rgb);
}

TEST(UpscalerDetect, UnknownArchitectureIsUnsupported) {
  const Tensor w = Tensor::zeros({4, 4, 3, 3}, DType::F32);
  std::string msg = error_of<UnsupportedError>([&] {
    from_tensors({{"model.diffusion_model.input_blocks.0.0.weight", w}, {"first_stage_model.x", w}});
  });
  EXPECT_NE(msg.find("not an ESRGAN-family upscaler"), std::string::npos) << msg;
  EXPECT_NE(msg.find("Stable Diffusion checkpoint"), std::string::npos) << msg;
  EXPECT_NE(msg.find("RRDBNet"), std::string::npos) << msg;
  EXPECT_NE(msg.find("SRVGGNetCompact"), std::string::npos) << msg;
  msg = error_of<UnsupportedError>([&] {
    from_tensors(
        {{"conv_first.weight", w}, {"layers.0.residual_group.blocks.0.norm1.weight", Tensor::zeros({4}, DType::F32)}});
  });
  EXPECT_NE(msg.find("SwinIR"), std::string::npos) << msg;
  // ESRGAN+ (conv1x1 paths in the dense blocks) is recognised and refused.
  msg = error_of<UnsupportedError>([&] {
    from_tensors(fixture_tensors("esrgan-x4-old", [](const std::string& n) {
      return n == "model.1.sub.0.RDB1.conv1.0.bias" ? "model.1.sub.0.RDB1.conv1x1.weight" : n;
    }));
  });
  EXPECT_NE(msg.find("ESRGAN+"), std::string::npos) << msg;
  // A 1-channel (grayscale) Compact model loads but cannot upscale RGB images.
  std::vector<std::pair<std::string, Tensor>> gray = {{"body.0.weight", Tensor::zeros({4, 1, 3, 3}, DType::F32)},
                                                      {"body.0.bias", Tensor::zeros({4}, DType::F32)},
                                                      {"body.1.weight", Tensor::zeros({4}, DType::F32)},
                                                      {"body.2.weight", Tensor::zeros({4, 4, 3, 3}, DType::F32)},
                                                      {"body.2.bias", Tensor::zeros({4}, DType::F32)},
                                                      {"body.3.weight", Tensor::zeros({4}, DType::F32)},
                                                      {"body.4.weight", Tensor::zeros({4, 4, 3, 3}, DType::F32)},
                                                      {"body.4.bias", Tensor::zeros({4}, DType::F32)}};
  const Upscaler g = from_tensors(gray);
  EXPECT_EQ(g.config().in_channels, 1);
  EXPECT_EQ(g.config().scale, 2);
  EXPECT_THROW(g.upscale(input_image()), UnsupportedError);
}

TEST(UpscalerDetect, IncompleteOrInconsistentIsModelFormat) {
  // A missing layer.
  std::string msg = error_of<ModelFormatError>([&] {
    from_tensors(
        fixture_tensors("rrdb-x4-basicsr", [](const std::string& n) { return n.rfind("conv_hr.", 0) == 0 ? "" : n; }));
  });
  EXPECT_NE(msg.find("conv_hr"), std::string::npos) << msg;
  msg = error_of<ModelFormatError>([&] {
    from_tensors(fixture_tensors("rrdb-x4-basicsr",
                                 [](const std::string& n) { return n == "body.1.rdb2.conv3.bias" ? "" : n; }));
  });
  EXPECT_NE(msg.find("body.1.rdb2.conv3.bias"), std::string::npos) << msg;
  // A wrong shape.
  auto t = fixture_tensors("esrgan-x4-old", [](const std::string& n) { return n; });
  for (auto& [n, v] : t)
    if (n == "model.8.weight") v = Tensor::zeros({8, 8, 1, 1}, DType::F32);
  msg = error_of<ModelFormatError>([&] { from_tensors(t); });
  EXPECT_NE(msg.find("model.8.weight"), std::string::npos) << msg;
  // Old layout whose last layer index is not 4 + 3 x stages.
  msg = error_of<ModelFormatError>([&] {
    from_tensors(fixture_tensors("esrgan-x4-old", [](const std::string& n) {
      return n.rfind("model.10.", 0) == 0 ? "model.11." + n.substr(9) : n;
    }));
  });
  EXPECT_NE(msg.find("model.11"), std::string::npos) << msg;
  // Compact with its last conv at an odd index.
  msg = error_of<ModelFormatError>([&] {
    from_tensors(fixture_tensors(
        "compact-x4", [](const std::string& n) { return n.rfind("body.8.", 0) == 0 ? "body.9." + n.substr(7) : n; }));
  });
  EXPECT_NE(msg.find("body.9"), std::string::npos) << msg;
}

TEST(UpscalerOpen, CorruptTruncatedAndPickleFiles) {
  const fs::path tmp = fs::temp_directory_path() / ("sdserve_upscale_" + std::to_string(::getpid()));
  fs::create_directories(tmp);
  const std::vector<uint8_t> good = read_bytes(kDir / "rrdb-x4-basicsr.safetensors");
  auto write = [&](const std::string& name, const std::vector<uint8_t>& bytes) {
    const fs::path p = tmp / name;
    std::ofstream(p, std::ios::binary)
        .write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
    return p.string();
  };
  const std::string truncated = write("truncated.safetensors", {good.begin(), good.begin() + good.size() / 2});
  std::string msg = error_of<ModelFormatError>([&] { Upscaler::open(truncated); });
  EXPECT_NE(msg.find("truncated.safetensors"), std::string::npos) << msg;
  std::vector<uint8_t> bad = good;
  bad[10] = '[';  // breaks the JSON header
  EXPECT_THROW(Upscaler::open(write("corrupt.safetensors", bad)), ModelFormatError);
  EXPECT_THROW(Upscaler::open(write("empty.safetensors", {})), ModelFormatError);
  EXPECT_THROW(Upscaler::open((tmp / "missing.safetensors").string()), NotFoundError);
  // PyTorch checkpoints are read without running the pickle: Real-ESRGAN's {"params": state dict}.
  const Upscaler pth = Upscaler::open((kDir / "compact-x4.pth").string());
  EXPECT_EQ(pth.upscale(input_image()).rgb,
            Upscaler::open((kDir / "compact-x4.safetensors").string()).upscale(input_image()).rgb);
  const std::vector<uint8_t> pth_bytes = read_bytes(kDir / "compact-x4.pth");
  EXPECT_THROW(Upscaler::open(write("cut.pth", {pth_bytes.begin(), pth_bytes.begin() + pth_bytes.size() / 2})),
               ModelFormatError);
  // The same checkpoint under a .safetensors name is recognised by its bytes.
  EXPECT_EQ(Upscaler::open(write("renamed.safetensors", pth_bytes)).config().describe(), pth.config().describe());
  fs::remove_all(tmp);
}

TEST(UpscaleOps, PixelShuffleRoundTripAndLayout) {
  const Tensor x = Tensor::from_vector(random_values(2 * 8 * 3 * 5, 7), {2, 8, 3, 5});
  const Tensor y = ops::pixel_shuffle(x, 2);
  ASSERT_EQ(y.shape(), (Shape{2, 2, 6, 10}));
  // out[n, c, h*r + i, w*r + j] = in[n, c*r*r + i*r + j, h, w]
  const auto xv = x.to_vector(), yv = y.to_vector();
  EXPECT_EQ(yv[((1 * 2 + 1) * 6 + (2 * 2 + 1)) * 10 + (4 * 2 + 0)], xv[((1 * 8 + 1 * 4 + 1 * 2 + 0) * 3 + 2) * 5 + 4]);
  EXPECT_EQ(ops::pixel_unshuffle(y, 2).to_vector(), xv);
  EXPECT_THROW(ops::pixel_unshuffle(x, 2), InvalidArgument);
}

TEST(UpscaleOps, ReflectPadLeakyAndPrelu) {
  const Tensor x = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {1, 1, 2, 3});
  // F.pad(x, (0, 2, 0, 1), "reflect"): rows [0 1 0], cols [0 1 2 1 0]
  const std::vector<float> want = {1, 2, 3, 2, 1, 4, 5, 6, 5, 4, 1, 2, 3, 2, 1};
  EXPECT_EQ(ops::pad_reflect_br(x, 1, 2).to_vector(), want);
  const Tensor one = Tensor::from_vector({7}, {1, 1, 1, 1});
  EXPECT_EQ(ops::pad_reflect_br(one, 2, 1).to_vector(), std::vector<float>(6, 7.f));
  const Tensor v = Tensor::from_vector({-2, -1, 0, 1, 2, -4}, {1, 2, 3});
  EXPECT_EQ(ops::leaky_relu(v, 0.2f).to_vector(), (std::vector<float>{-0.4f, -0.2f, 0, 1, 2, -0.8f}));
  const Tensor slopes = Tensor::from_vector({0.5f, 0.25f}, {2});
  EXPECT_EQ(ops::prelu(v, slopes).to_vector(), (std::vector<float>{-1, -0.5f, 0, 1, 2, -1}));
  EXPECT_EQ(ops::scaled_add(v, 0.5f, v).to_vector(), (std::vector<float>{-3, -1.5f, 0, 1.5f, 3, -6}));
}

}  // namespace
}  // namespace sdserve::test
