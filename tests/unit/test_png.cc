#include "io/png.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>

#include "core/error.h"
#include "io/infotext.h"

namespace sdserve {
namespace {

namespace fs = std::filesystem;

const std::string kFixtures = std::string(SDSERVE_SOURCE_DIR) + "/tests/fixtures/png/";

// Shared with tests/fixtures/png/make_fixtures.py (LATIN1 / UNICODE).
const char* kLatin1Infotext =
    "caf\xC3\xA9, 1girl, \"quoted\"\nNegative prompt: blurry\n"
    "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 123, Size: 5x3";
const char* kUnicodeInfotext =
    "\xE5\xAF\x8C\xE5\xA3\xAB\xE5\xB1\xB1, \xF0\x9F\x8C\xB8 sakura\nNegative prompt: "
    "\xD0\xBD\xD0\xB8\xD0\xB7\xD0\xBA\xD0\xBE\xD0\xB5 "
    "\xD0\xBA\xD0\xB0\xD1\x87\xD0\xB5\xD1\x81\xD1\x82\xD0\xB2\xD0\xBE\n"
    "Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5, Seed: 42, Size: 5x3, Model: \"a,b\"";

std::vector<uint8_t> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << path;
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

uint32_t be32(const uint8_t* p) { return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | p[3]; }

// (type, payload) of every chunk, in order.
std::vector<std::pair<std::string, std::vector<uint8_t>>> chunks(const std::vector<uint8_t>& png) {
  std::vector<std::pair<std::string, std::vector<uint8_t>>> out;
  for (size_t i = 8; i + 12 <= png.size();) {
    const uint32_t n = be32(&png[i]);
    out.emplace_back(std::string(png.begin() + i + 4, png.begin() + i + 8),
                     std::vector<uint8_t>(png.begin() + i + 8, png.begin() + i + 8 + n));
    i += 12 + n;
  }
  return out;
}

int rgb(int x, int y, int c) { return (x * 40 + y * 70 + c * 25) % 256; }
int gray(int x, int y) { return (x * 50 + y * 20) % 256; }

std::vector<uint8_t> fixture_rgb() {
  std::vector<uint8_t> px;
  for (int y = 0; y < 3; ++y)
    for (int x = 0; x < 5; ++x)
      for (int c = 0; c < 3; ++c) px.push_back(uint8_t(rgb(x, y, c)));
  return px;
}

TEST(Png, EncodeDecodeRoundTrip) {
  std::mt19937 rng(7);
  for (int channels : {3, 4}) {
    for (auto [w, h] : {std::pair{1, 1}, {17, 5}, {64, 33}}) {
      std::vector<uint8_t> px(size_t(w) * h * channels);
      for (auto& v : px) v = uint8_t(rng());
      const PngText text = {{"parameters", kUnicodeInfotext}, {"Software", "sdserve"}};
      for (int level : {0, 6, 9}) {
        const auto bytes = encode_png(px.data(), w, h, channels, text, level);
        const DecodedImage d = decode_png(bytes.data(), bytes.size());
        EXPECT_EQ(d.width, w);
        EXPECT_EQ(d.height, h);
        EXPECT_EQ(d.channels, channels);
        EXPECT_EQ(d.pixels, px);
        EXPECT_EQ(d.text, text);
      }
    }
  }
}

TEST(Png, TextChunksAreByteIdenticalToPil) {
  // PIL (as A1111 calls it) writes tEXt for Latin-1 text and iTXt otherwise; ours must match exactly.
  const auto px = fixture_rgb();
  for (auto [file, text] : {std::pair{"pil_latin1.png", kLatin1Infotext}, {"pil_unicode.png", kUnicodeInfotext}}) {
    SCOPED_TRACE(file);
    const auto ours = chunks(encode_png(px.data(), 5, 3, 3, {{"parameters", text}}));
    const auto pil = chunks(read_file(kFixtures + file));
    auto text_chunk = [](const auto& cs) {
      for (const auto& c : cs)
        if (c.first == "tEXt" || c.first == "iTXt" || c.first == "zTXt") return c;
      return std::pair<std::string, std::vector<uint8_t>>{};
    };
    EXPECT_EQ(text_chunk(ours), text_chunk(pil));
    EXPECT_EQ(text_chunk(ours).first, std::string(file) == "pil_latin1.png" ? "tEXt" : "iTXt");
    // Text before the image data, as PIL puts it.
    ASSERT_GE(ours.size(), 4u);
    EXPECT_EQ(ours[0].first, "IHDR");
    EXPECT_EQ(ours[1].first, text_chunk(ours).first);
    EXPECT_EQ(ours.back().first, "IEND");

    const auto bytes = read_file(kFixtures + file);
    const DecodedImage d = decode_png(bytes.data(), bytes.size());
    EXPECT_EQ(d.pixels, px);
    ASSERT_NE(find_png_text(d.text, "parameters"), nullptr);
    EXPECT_EQ(*find_png_text(d.text, "parameters"), text);
    EXPECT_EQ(to_infotext(parse_infotext(text)), text);
  }
}

TEST(Png, SdserveWrittenFixtureReadsBackInPil) {
  // tests/fixtures/png/sdserve_written.png was written by encode_png below and checked with PIL by
  // tests/fixtures/png/check_sdserve_written.py. Set SDSERVE_UPDATE_PNG_FIXTURES=1 to rewrite it.
  const auto px = fixture_rgb();
  const auto bytes = encode_png(px.data(), 5, 3, 3, {{"parameters", kUnicodeInfotext}});
  const std::string path = kFixtures + "sdserve_written.png";
  if (std::getenv("SDSERVE_UPDATE_PNG_FIXTURES") != nullptr)
    write_png_file(path, px.data(), 5, 3, 3, {{"parameters", kUnicodeInfotext}});
  const auto fixture = read_file(path);
  const DecodedImage a = decode_png(bytes.data(), bytes.size()), b = decode_png(fixture.data(), fixture.size());
  EXPECT_EQ(a.pixels, b.pixels);
  EXPECT_EQ(a.text, b.text);
}

TEST(Png, DecodesEveryPilMode) {
  struct Case {
    const char* file;
    int channels;
    std::function<std::vector<int>(int, int)> px;
  };
  const std::vector<Case> cases = {
      {"pil_rgba.png", 4,
       [](int x, int y) {
         return std::vector<int>{rgb(x, y, 0), rgb(x, y, 1), rgb(x, y, 2), (x * 60) % 256};
       }},
      {"pil_l.png", 3,
       [](int x, int y) {
         return std::vector<int>{gray(x, y), gray(x, y), gray(x, y)};
       }},
      {"pil_la.png", 4,
       [](int x, int y) {
         return std::vector<int>{gray(x, y), gray(x, y), gray(x, y), 255 - gray(x, y)};
       }},
      {"pil_i16.png", 3,
       [](int x, int y) {
         return std::vector<int>{gray(x, y), gray(x, y), gray(x, y)};
       }},
      {"pil_p.png", 4,
       [](int x, int y) {
         const int pal[4][3] = {{255, 0, 0}, {0, 255, 0}, {0, 0, 255}, {10, 20, 30}};
         const int i = (x + y) % 4;
         return std::vector<int>{pal[i][0], pal[i][1], pal[i][2], i == 2 ? 0 : 255};
       }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.file);
    const auto bytes = read_file(kFixtures + c.file);
    const DecodedImage d = decode_png(bytes.data(), bytes.size());
    ASSERT_EQ(d.width, 5);
    ASSERT_EQ(d.height, 3);
    ASSERT_EQ(d.channels, c.channels);
    for (int y = 0; y < 3; ++y)
      for (int x = 0; x < 5; ++x) {
        const auto want = c.px(x, y);
        for (int k = 0; k < c.channels; ++k) EXPECT_EQ(d.pixels[(size_t(y) * 5 + x) * c.channels + k], want[k]);
      }
  }
}

// A PNG header for w x h RGB, optionally followed by nothing else.
std::vector<uint8_t> header_only(uint32_t w, uint32_t h) {
  const auto px = fixture_rgb();
  auto bytes = encode_png(px.data(), 5, 3, 3, {});
  // Patch IHDR width/height and fix its CRC.
  auto put32 = [&](size_t at, uint32_t v) {
    for (int i = 0; i < 4; ++i) bytes[at + i] = uint8_t(v >> (24 - 8 * i));
  };
  put32(16, w);
  put32(20, h);
  uint32_t crc = 0xFFFFFFFFu;
  for (size_t i = 12; i < 29; ++i) {
    crc ^= bytes[i];
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  put32(29, ~crc);
  return bytes;
}

TEST(Png, RejectsOversizedHeaderBeforeAllocating) {
  const auto bytes = header_only(20000, 20000);
  try {
    decode_png(bytes.data(), bytes.size());
    FAIL() << "no error";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("20000x20000"), std::string::npos) << e.what();
  }
  PngLimits tight;
  tight.max_pixels = 10;
  const auto ok = header_only(5, 3);
  EXPECT_THROW(decode_png(ok.data(), ok.size(), tight), InvalidArgument);
  // Within the limits but far more pixels than the file could hold.
  const auto liar = header_only(8000, 8000);
  try {
    decode_png(liar.data(), liar.size());
    FAIL() << "no error";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("cannot fit"), std::string::npos) << e.what();
  }
}

TEST(Png, CorruptInputGivesOneLineInvalidArgument) {
  const auto px = fixture_rgb();
  const auto good = encode_png(px.data(), 5, 3, 3, {{"parameters", "x"}});
  std::vector<std::vector<uint8_t>> bad = {{}, {0x89, 'P', 'N', 'G'}, std::vector<uint8_t>(100, 0)};
  for (size_t n = 8; n < good.size(); n += 7) bad.emplace_back(good.begin(), good.begin() + n);  // truncations
  for (size_t i = 8; i < good.size(); ++i) {  // single-byte flips (critical chunk CRCs catch most)
    auto b = good;
    b[i] ^= 0x5A;
    bad.push_back(b);
  }
  int rejected = 0;
  for (const auto& b : bad) {
    try {
      decode_png(b.data(), b.size());
    } catch (const InvalidArgument& e) {
      EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos);
      EXPECT_EQ(std::string(e.what()).rfind("png: ", 0), 0u) << e.what();
      ++rejected;
    }
  }
  EXPECT_GT(rejected, int(bad.size()) / 2);
  PngLimits small;
  small.max_input_bytes = 10;
  EXPECT_THROW(decode_png(good.data(), good.size(), small), InvalidArgument);
}

TEST(Png, RejectsBadArguments) {
  const std::vector<uint8_t> px(48);
  EXPECT_THROW(encode_png(px.data(), 0, 4, 3, {}), InvalidArgument);
  EXPECT_THROW(encode_png(px.data(), 4, 4, 2, {}), InvalidArgument);
  EXPECT_THROW(encode_png(nullptr, 4, 4, 3, {}), InvalidArgument);
  EXPECT_THROW(encode_png(px.data(), 4, 4, 3, {}, 10), InvalidArgument);
  EXPECT_THROW(encode_png(px.data(), 4, 4, 3, {{"", "v"}}), InvalidArgument);
  EXPECT_THROW(encode_png(px.data(), 4, 4, 3, {{std::string(80, 'k'), "v"}}), InvalidArgument);
  EXPECT_THROW(encode_png(px.data(), 4, 4, 3, {{" lead", "v"}}), InvalidArgument);
  EXPECT_THROW(encode_png(px.data(), 4, 4, 3, {{"\xE6\x97\xA5", "v"}}), InvalidArgument);  // not Latin-1
  // Latin-1 keys are fine; NUL in values is dropped; invalid UTF-8 becomes U+FFFD.
  const auto bytes = encode_png(px.data(), 4, 4, 3, {{"caf\xC3\xA9", std::string("a\0b\xFF", 4)}});
  const DecodedImage d = decode_png(bytes.data(), bytes.size());
  ASSERT_EQ(d.text.size(), 1u);
  EXPECT_EQ(d.text[0].first, "caf\xC3\xA9");
  EXPECT_EQ(d.text[0].second, "ab\xEF\xBF\xBD");
}

TEST(Png, WritePngFile) {
  const std::string path = (fs::path(::testing::TempDir()) / ("sdserve_png_" + std::to_string(::getpid()) + ".png"));
  const auto px = fixture_rgb();
  write_png_file(path, px.data(), 5, 3, 3, {{"parameters", kLatin1Infotext}});
  const auto bytes = read_file(path);
  const DecodedImage d = decode_png(bytes.data(), bytes.size());
  EXPECT_EQ(d.pixels, px);
  fs::remove(path);
  EXPECT_THROW(write_png_file("/nonexistent-dir/x.png", px.data(), 5, 3, 3, {}), IoError);
}

TEST(Png, ImageToRgb8MatchesDiffusers) {
  // Values chosen around rounding boundaries; expected bytes from numpy:
  // ((x * 0.5 + 0.5).clip(0, 1) * 255).round().astype(uint8) with float32 arithmetic.
  const std::vector<float> xs = {-1.f, 1.f, 0.f, -2.f, 3.f, -0.99607843f, 0.00392157f, 0.5f, -0.5f, NAN};
  std::vector<float> chw(3 * xs.size());
  for (size_t c = 0; c < 3; ++c)
    for (size_t i = 0; i < xs.size(); ++i) chw[c * xs.size() + i] = c == 1 ? -xs[i] : xs[i];
  const Tensor t = Tensor::from_vector(chw, {3, 1, int64_t(xs.size())});
  const auto out = image_to_rgb8(t);
  ASSERT_EQ(out.size(), 3 * xs.size());
  for (size_t i = 0; i < xs.size(); ++i) {
    for (int c = 0; c < 3; ++c) {
      const float x = c == 1 ? -xs[i] : xs[i];
      float d = x * 0.5f + 0.5f;
      d = std::isnan(d) ? 0.f : std::min(1.f, std::max(0.f, d));
      EXPECT_EQ(out[i * 3 + c], uint8_t(std::nearbyint(d * 255.f))) << x;
    }
  }
  EXPECT_EQ(out[0], 0);     // -1
  EXPECT_EQ(out[3], 255);   // 1
  EXPECT_EQ(out[6], 128);   // 0 -> 127.5 -> round half to even = 128
  EXPECT_EQ(out[21], 191);  // 0.5 -> 0.75 * 255 = 191.25 -> 191
  EXPECT_EQ(out[24], 64);   // -0.5 -> 0.25 * 255 = 63.75 -> 64
  EXPECT_EQ(out[27], 0);    // NaN
  EXPECT_EQ(out[4], 0);     // channel 1 of x=1 is -1
  // [1, 3, H, W] and half precision are accepted; bad shapes are not.
  EXPECT_EQ(image_to_rgb8(t.reshape({1, 3, 1, int64_t(xs.size())})), out);
  EXPECT_EQ(image_to_rgb8(t.to(DType::F16)).size(), out.size());
  EXPECT_THROW(image_to_rgb8(Tensor::zeros({4, 2, 2}, DType::F32)), InvalidArgument);
  EXPECT_THROW(image_to_rgb8(Tensor::zeros({2, 3, 2, 2}, DType::F32)), InvalidArgument);
}

}  // namespace
}  // namespace sdserve
