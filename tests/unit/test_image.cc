// Image input/output and image ops against what PIL and OpenCV give (fixtures from
// tools/make_image_fixtures.py, listed in tests/fixtures/images/manifest.json).
#include "io/image.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/png.h"
#include "io/resize.h"

namespace sdserve {
namespace {

const std::string kDir = std::string(SDSERVE_SOURCE_DIR) + "/tests/fixtures/images/";

std::vector<uint8_t> read_bytes(const std::string& name) {
  std::ifstream in(kDir + name, std::ios::binary);
  EXPECT_TRUE(in.good()) << kDir + name;
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

const nlohmann::json& manifest() {
  static const nlohmann::json m = [] {
    std::ifstream in(kDir + "manifest.json");
    EXPECT_TRUE(in.good()) << "missing " << kDir << "manifest.json (run tools/make_image_fixtures.py)";
    return nlohmann::json::parse(in);
  }();
  return m;
}

DecodedImage load_png(const std::string& name) {
  const auto b = read_bytes(name);
  return decode_png(b.data(), b.size());
}

// A PNG fixture as `channels` interleaved bytes (1: an L image, which decode_png expands to RGB).
std::vector<uint8_t> load_pixels(const std::string& name, int channels, int* w = nullptr, int* h = nullptr) {
  const DecodedImage d = load_png(name);
  if (w) *w = d.width;
  if (h) *h = d.height;
  if (channels == d.channels) return d.pixels;
  EXPECT_EQ(channels, 1) << name;
  std::vector<uint8_t> out(size_t(d.width) * d.height);
  for (size_t i = 0; i < out.size(); ++i) out[i] = d.pixels[i * size_t(d.channels)];
  return out;
}

int max_diff(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  if (a.size() != b.size()) return 1000;
  int m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(int(a[i]) - int(b[i])));
  return m;
}

double mean_diff(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += std::abs(int(a[i]) - int(b[i]));
  return a.empty() ? 0 : s / double(a.size());
}

template <typename Fn>
std::string error_of(Fn fn) {
  try {
    fn();
  } catch (const InvalidArgument& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("WRONG EXCEPTION TYPE: ") + e.what();
  }
  return "NO ERROR";
}

// ---- decoding ----

TEST(ImageDecode, MatchesPil) {
  // libjpeg-turbo 2.1 (ours) and 3.x (PIL's wheel) decode with the same integer IDCT and "fancy"
  // upsampling, and libwebp's decoder is bit-exact across versions, so decodes are equal.
  for (const auto& c : manifest()["decode"]) {
    SCOPED_TRACE(c["file"].get<std::string>());
    const auto bytes = read_bytes(c["file"]);
    const DecodedImage got = decode_image(bytes.data(), bytes.size());
    const DecodedImage want = load_png(c["expected"]);
    EXPECT_EQ(got.width, want.width);
    EXPECT_EQ(got.height, want.height);
    ASSERT_EQ(got.channels, want.channels);
    EXPECT_LE(max_diff(got.pixels, want.pixels), c["tolerance"].get<int>());
  }
}

TEST(ImageDecode, OnePixelImages) {
  for (const char* name : {"one_px.jpg", "one_px.webp", "one_px_lossless.webp", "one_px.png"}) {
    const auto b = read_bytes(name);
    const DecodedImage d = decode_image(b.data(), b.size());
    EXPECT_EQ(d.width, 1) << name;
    EXPECT_EQ(d.height, 1) << name;
    EXPECT_EQ(d.pixels.size(), size_t(d.channels)) << name;
  }
}

TEST(ImageDecode, FormatsAreSniffed) {
  const auto j = read_bytes("one_px.jpg"), w = read_bytes("one_px.webp"), p = read_bytes("one_px.png");
  EXPECT_EQ(sniff_image_format(j.data(), j.size()), ImageFormat::Jpeg);
  EXPECT_EQ(sniff_image_format(w.data(), w.size()), ImageFormat::Webp);
  EXPECT_EQ(sniff_image_format(p.data(), p.size()), ImageFormat::Png);
  EXPECT_EQ(sniff_image_format(j.data(), 2), ImageFormat::Unknown);
  EXPECT_STREQ(image_format_name(ImageFormat::Webp), "webp");
}

TEST(ImageDecode, NonImageBytesAreRefused) {
  const std::vector<std::string> inputs = {"",
                                           "hello world",
                                           std::string("GIF89a\x01\x00\x01\x00", 10),
                                           "BM\x3a\0\0\0",
                                           std::string("II*\0\x08\0\0\0", 8),
                                           std::string("\0\0\0\x20"
                                                       "ftypavif",
                                                       12),
                                           std::string(100, '\0')};
  for (const std::string& s : inputs) {
    const std::string e = error_of([&] { decode_image(reinterpret_cast<const uint8_t*>(s.data()), s.size()); });
    EXPECT_NE(e.find("accepted formats are PNG, JPEG and WebP"), std::string::npos) << e;
    EXPECT_EQ(e.find('\n'), std::string::npos) << e;
  }
  std::mt19937 rng(3);
  for (int i = 0; i < 200; ++i) {
    std::vector<uint8_t> junk(size_t(rng() % 64));
    for (auto& b : junk) b = uint8_t(rng());
    if (i % 3 == 0 && junk.size() >= 3) junk[0] = 0xFF, junk[1] = 0xD8, junk[2] = 0xFF;  // JPEG-looking junk
    if (i % 3 == 1 && junk.size() >= 12) std::memcpy(junk.data(), "RIFF\0\0\0\0WEBP", 12);
    EXPECT_NE(error_of([&] { decode_image(junk.data(), junk.size()); }), "NO ERROR");
  }
}

TEST(ImageDecode, TruncatedFilesAreErrors) {
  for (const char* name : {"jpeg_420_q90.jpg", "jpeg_progressive.jpg", "jpeg_gray.jpg", "webp_lossy.webp",
                           "webp_lossless.webp", "webp_lossy_alpha.webp", "src_rgb.png", "one_px.jpg"}) {
    const auto b = read_bytes(name);
    for (size_t keep : {b.size() - 1, b.size() - 2, b.size() * 3 / 4, b.size() / 2, size_t(40), size_t(12)}) {
      const std::string e = error_of([&] { decode_image(b.data(), keep); });
      EXPECT_NE(e, "NO ERROR") << name << " cut to " << keep;
      EXPECT_EQ(e.find("WRONG"), std::string::npos) << e;
      EXPECT_EQ(e.find('\n'), std::string::npos) << e;
    }
  }
}

TEST(ImageDecode, HugeHeadersAreRefusedBeforeAllocation) {
  // Each claims 20000x20000 (16383x16383 for the VP8L header, the most WebP can say) in a file of a
  // few hundred bytes; decoding would need >1 GB. The refusal must come from the header alone.
  for (const auto& c : manifest()["refuse"]) {
    const auto b = read_bytes(c["file"]);
    const std::string e = error_of([&] { decode_image(b.data(), b.size()); });
    const std::string why = c["why"];
    EXPECT_NE(e.find(why == "limit" ? "the limit is" : "animated"), std::string::npos) << c["file"] << ": " << e;
  }
}

TEST(ImageDecode, LimitsApplyToEveryFormat) {
  for (const char* name : {"jpeg_420_q90.jpg", "webp_lossy.webp", "webp_lossless.webp", "src_rgb.png"}) {
    const auto b = read_bytes(name);
    ImageLimits l;
    l.max_width = 36;  // the fixtures are 37x23
    EXPECT_NE(error_of([&] { decode_image(b.data(), b.size(), l); }).find("the limit is"), std::string::npos) << name;
    l = ImageLimits{};
    l.max_pixels = 37 * 23 - 1;
    EXPECT_NE(error_of([&] { decode_image(b.data(), b.size(), l); }).find("the limit is"), std::string::npos) << name;
    l = ImageLimits{};
    l.max_input_bytes = b.size() - 1;
    EXPECT_NE(error_of([&] { decode_image(b.data(), b.size(), l); }).find("bytes; the limit"), std::string::npos)
        << name;
    l = ImageLimits{};
    l.max_width = 37;
    l.max_height = 23;
    l.max_pixels = 37 * 23;
    l.max_input_bytes = b.size();
    EXPECT_NO_THROW(decode_image(b.data(), b.size(), l)) << name;
  }
}

// ---- EXIF ----

TEST(ImageExif, OrientationsMatchPilExifTranspose) {
  for (const auto& c : manifest()["exif"]) {
    SCOPED_TRACE(c["file"].get<std::string>());
    const auto bytes = read_bytes(c["file"]);
    const DecodedImage got = decode_image(bytes.data(), bytes.size());
    const DecodedImage want = load_png(c["expected"]);
    EXPECT_EQ(got.width, want.width);
    EXPECT_EQ(got.height, want.height);
    EXPECT_EQ(to_rgb(got).pixels, want.pixels);
    const DecodedImage raw = decode_image(bytes.data(), bytes.size(), {}, false);
    EXPECT_EQ(raw.width, 9);  // unrotated when asked
  }
}

std::vector<uint8_t> tiff_with_orientation(bool le, uint16_t type, uint32_t count, uint32_t value) {
  std::vector<uint8_t> t;
  auto p16 = [&](uint32_t v) {
    if (le)
      t.insert(t.end(), {uint8_t(v), uint8_t(v >> 8)});
    else
      t.insert(t.end(), {uint8_t(v >> 8), uint8_t(v)});
  };
  auto p32 = [&](uint32_t v) {
    if (le)
      t.insert(t.end(), {uint8_t(v), uint8_t(v >> 8), uint8_t(v >> 16), uint8_t(v >> 24)});
    else
      t.insert(t.end(), {uint8_t(v >> 24), uint8_t(v >> 16), uint8_t(v >> 8), uint8_t(v)});
  };
  t.insert(t.end(), le ? std::initializer_list<uint8_t>{'I', 'I'} : std::initializer_list<uint8_t>{'M', 'M'});
  p16(42);
  p32(8);
  p16(1);
  p16(0x0112), p16(type), p32(count);
  if (type == 3)
    p16(value), p16(0);
  else
    p32(value);
  p32(0);
  return t;
}

TEST(ImageExif, ParserReadsBothByteOrdersAndTypes) {
  for (bool le : {true, false}) {
    auto t = tiff_with_orientation(le, 3, 1, 6);
    ExifInfo e = parse_exif(t.data(), t.size());
    EXPECT_TRUE(e.has_orientation);
    EXPECT_EQ(e.orientation, 6);
    t = tiff_with_orientation(le, 4, 1, 8);  // LONG works too (PIL reads any integer type)
    EXPECT_EQ(parse_exif(t.data(), t.size()).orientation, 8);
    std::vector<uint8_t> prefixed = {'E', 'x', 'i', 'f', 0, 0};
    prefixed.insert(prefixed.end(), t.begin(), t.end());
    EXPECT_EQ(parse_exif(prefixed.data(), prefixed.size()).orientation, 8);
    t = tiff_with_orientation(le, 3, 2, 6);  // two values: not an orientation PIL would use
    EXPECT_EQ(parse_exif(t.data(), t.size()).orientation, 1);
  }
  EXPECT_FALSE(parse_exif(nullptr, 0).has_orientation);
}

TEST(ImageExif, ParserNeverReadsOutOfBounds) {
  // Every prefix of a valid block, and random corruptions of it: no crash (ASan builds check reads).
  std::vector<uint8_t> t = exif_user_comment("a prompt\nSteps: 20");
  const auto o = tiff_with_orientation(true, 3, 1, 3);
  for (size_t n = 0; n <= t.size(); ++n) {
    std::vector<uint8_t> cut(t.begin(), t.begin() + long(n));  // exact-size heap copies: ASan sees overreads
    (void)parse_exif(cut.data(), cut.size());
  }
  for (size_t n = 0; n <= o.size(); ++n) {
    std::vector<uint8_t> cut(o.begin(), o.begin() + long(n));
    EXPECT_EQ(parse_exif(cut.data(), cut.size()).has_orientation, n >= 22) << n;  // IFD entry ends at 22
  }
  std::mt19937 rng(11);
  for (int i = 0; i < 5000; ++i) {
    std::vector<uint8_t> m = i % 2 ? t : o;
    for (int k = 0; k < 1 + int(rng() % 4); ++k) m[rng() % m.size()] = uint8_t(rng());
    m.resize(rng() % (m.size() + 1));
    (void)parse_exif(m.data(), m.size());
  }
  // Offsets and counts that point far outside.
  auto big = tiff_with_orientation(false, 3, 0xFFFFFFFF, 6);
  EXPECT_FALSE(parse_exif(big.data(), big.size()).has_orientation);
  big = tiff_with_orientation(true, 5, 1, 0xFFFFFFF0);  // RATIONAL at an offset past the end
  EXPECT_FALSE(parse_exif(big.data(), big.size()).has_orientation);
}

TEST(ImageExif, UserCommentRoundTripsInfotext) {
  const std::string text =
      "caf\xC3\xA9, \xF0\x9F\x8C\xB8 sakura, \xE5\xAF\x8C\xE5\xA3\xAB\xE5\xB1\xB1\nNegative prompt: blurry\n"
      "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 123, Size: 512x512";
  const auto t = exif_user_comment(text);
  const ExifInfo e = parse_exif(t.data(), t.size());
  EXPECT_TRUE(e.has_user_comment);
  EXPECT_EQ(e.user_comment, text);
  EXPECT_FALSE(e.has_orientation);
}

TEST(ImageExif, XmpOrientationAsPil) {
  EXPECT_EQ(xmp_orientation("<x tiff:Orientation=\"6\"/>"), 6);
  EXPECT_EQ(xmp_orientation("<tiff:Orientation>3</tiff:Orientation>"), 3);
  EXPECT_EQ(xmp_orientation("tiff:Orientation='6' tiff:Orientation=\"2\""), 2);  // first match of the pattern
  EXPECT_EQ(xmp_orientation("tiff:Orientation=\""), 0);
  EXPECT_EQ(xmp_orientation(""), 0);
}

// ---- pixel ops ----

TEST(ImageOps, FlattenMatchesA1111) {
  for (const auto& c : manifest()["flatten"]) {
    const DecodedImage src = load_png(c["src"]);
    ASSERT_EQ(src.channels, 4);
    const DecodedImage got = flatten_alpha(src, c["color"][0], c["color"][1], c["color"][2]);
    EXPECT_EQ(got.channels, 3);
    EXPECT_EQ(got.pixels, load_png(c["expected"]).pixels) << c["expected"];
  }
  const DecodedImage rgb = load_png("src_rgb.png");
  EXPECT_EQ(flatten_alpha(rgb, 1, 2, 3).pixels, rgb.pixels);
}

TEST(ImageOps, GrayMatchesPilConvertL) {
  for (const auto& c : manifest()["gray"]) {
    const DecodedImage src = load_png(c["src"]);
    EXPECT_EQ(to_gray(src), load_pixels(c["expected"], 1)) << c["expected"];
  }
}

TEST(ImageOps, ToRgbDropsAlpha) {
  const DecodedImage src = load_png("src_rgba.png");
  const DecodedImage rgb = to_rgb(src);
  ASSERT_EQ(rgb.channels, 3);
  for (size_t i = 0; i < size_t(src.width) * src.height; ++i)
    for (int c = 0; c < 3; ++c) ASSERT_EQ(rgb.pixels[i * 3 + size_t(c)], src.pixels[i * 4 + size_t(c)]);
}

TEST(Resize, MatchesPillow) {
  int cases = 0;
  for (const auto& c : manifest()["resize"]) {
    const int ch = c["channels"];
    int w = 0, h = 0;
    const auto src = load_pixels(c["src"], ch, &w, &h);
    const auto want = load_pixels(c["expected"], ch);
    const std::string pillow = c["pillow"];
    for (PillowVersion v : {PillowVersion::V9, PillowVersion::V13}) {
      if ((pillow == "9" && v != PillowVersion::V9) || (pillow == "13" && v != PillowVersion::V13)) continue;
      const auto got = resize_image(src.data(), w, h, ch, c["width"], c["height"], parse_resize_filter(c["filter"]), v);
      EXPECT_EQ(max_diff(got, want), 0) << c["expected"] << " as Pillow " << (v == PillowVersion::V9 ? 9 : 13);
      ++cases;
    }
  }
  EXPECT_GE(cases, 90);
}

TEST(Resize, SameSizeIsACopyAndBadArgumentsAreRefused) {
  const std::vector<uint8_t> px = {1, 2, 3, 4, 5, 6};
  EXPECT_EQ(resize_image(px.data(), 2, 1, 3, 2, 1, ResizeFilter::Lanczos), px);
  EXPECT_THROW(resize_image(px.data(), 2, 1, 2, 1, 1, ResizeFilter::Lanczos), InvalidArgument);
  EXPECT_THROW(resize_image(px.data(), 2, 1, 3, 0, 1, ResizeFilter::Lanczos), InvalidArgument);
  EXPECT_THROW(parse_resize_filter("antialias"), InvalidArgument);
  EXPECT_EQ(parse_resize_filter("LANCZOS"), ResizeFilter::Lanczos);
}

TEST(MaskBlur, MatchesA1111OpenCV) {
  for (const auto& c : manifest()["mask_blur"]) {
    int w = 0, h = 0;
    const auto src = load_pixels(c["src"], 1, &w, &h);
    const auto got = mask_blur(src.data(), w, h, c["blur_x"].get<double>(), c["blur_y"].get<double>());
    EXPECT_EQ(max_diff(got, load_pixels(c["expected"], 1)), 0) << c["expected"];
  }
}

TEST(GaussianBlur, MatchesOpenCV) {
  for (const auto& c : manifest()["gaussian"]) {
    int w = 0, h = 0;
    const auto src = load_pixels(c["src"], 1, &w, &h);
    const auto got = gaussian_blur(src.data(), w, h, c["ksize_x"], c["ksize_y"], c["sigma_x"].get<double>(),
                                   c["sigma_y"].get<double>());
    EXPECT_EQ(max_diff(got, load_pixels(c["expected"], 1)), 0) << c["expected"];
  }
  const std::vector<uint8_t> px(6, 7);
  EXPECT_THROW(gaussian_blur(px.data(), 3, 2, 4, 3, 1.0), InvalidArgument);  // even size
  EXPECT_THROW(gaussian_blur(px.data(), 3, 2, 0, 0, 0.0), InvalidArgument);  // no size, no sigma
  EXPECT_EQ(mask_blur(px.data(), 3, 2, 0, 0), px);
}

// ---- encoding ----

// A smooth image (what lossy codecs are for): gradients, w x h x channels.
DecodedImage smooth(int w, int h, int channels) {
  DecodedImage d;
  d.width = w;
  d.height = h;
  d.channels = channels;
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      d.pixels.push_back(uint8_t(x * 255 / (w - 1)));
      d.pixels.push_back(uint8_t(y * 255 / (h - 1)));
      d.pixels.push_back(uint8_t(128 + (x - y) / 2));
      if (channels == 4) d.pixels.push_back(uint8_t(255 - x * 2));
    }
  return d;
}

TEST(ImageEncode, JpegRoundTrip) {
  const DecodedImage src = smooth(64, 48, 3);
  const std::string info = "a cat \xF0\x9F\x90\x88\nSteps: 20, Seed: 1";
  const auto bytes = encode_jpeg(src.pixels.data(), src.width, src.height, 95, info);
  EXPECT_EQ(sniff_image_format(bytes.data(), bytes.size()), ImageFormat::Jpeg);
  const DecodedImage back = decode_image(bytes.data(), bytes.size());
  EXPECT_EQ(back.width, src.width);
  EXPECT_EQ(back.height, src.height);
  EXPECT_EQ(back.channels, 3);
  EXPECT_LT(mean_diff(back.pixels, src.pixels), 1.5);
  const std::string* p = find_png_text(back.text, "parameters");
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(*p, info);
  // RGBA through encode_image: alpha dropped, as A1111 saves JPEGs.
  const DecodedImage rgba = smooth(64, 48, 4);
  const auto j = encode_image("JPEG", rgba.pixels.data(), rgba.width, rgba.height, 4, 90);
  const DecodedImage jb = decode_image(j.data(), j.size());
  EXPECT_EQ(jb.channels, 3);
  EXPECT_LT(mean_diff(jb.pixels, to_rgb(rgba).pixels), 2.0);
  EXPECT_THROW(encode_jpeg(src.pixels.data(), src.width, src.height, 0), InvalidArgument);
  EXPECT_THROW(encode_jpeg(src.pixels.data(), src.width, src.height, 90, std::string(40000, 'x')), InvalidArgument);
  const std::vector<uint8_t> one = {9, 200, 77};
  const auto o = encode_jpeg(one.data(), 1, 1, 100);
  EXPECT_LE(max_diff(decode_image(o.data(), o.size()).pixels, one), 3);
}

TEST(ImageEncode, WebpRoundTrip) {
  const DecodedImage rgba = load_png("src_rgba.png");
  const std::string info = "prompt, \xE5\xAF\x8C\xE5\xA3\xAB\nSteps: 30";
  const auto lossless = encode_webp(rgba.pixels.data(), rgba.width, rgba.height, 4, 80, true, info);
  const DecodedImage a = decode_image(lossless.data(), lossless.size());
  EXPECT_EQ(a.channels, 4);
  EXPECT_EQ(a.pixels, rgba.pixels);  // exact, RGB under transparent pixels included
  ASSERT_NE(find_png_text(a.text, "parameters"), nullptr);
  EXPECT_EQ(*find_png_text(a.text, "parameters"), info);

  const DecodedImage rgb = smooth(64, 48, 3);
  const auto lossy = encode_image("webp", rgb.pixels.data(), rgb.width, rgb.height, 3, 90);
  const DecodedImage b = decode_image(lossy.data(), lossy.size());
  EXPECT_EQ(b.channels, 3);
  EXPECT_LT(mean_diff(b.pixels, rgb.pixels), 2.0);
  EXPECT_EQ(find_png_text(b.text, "parameters"), nullptr);
  const auto ll = encode_image("webp", rgb.pixels.data(), rgb.width, rgb.height, 3, 80, "", true);
  EXPECT_EQ(decode_image(ll.data(), ll.size()).pixels, rgb.pixels);
  EXPECT_THROW(encode_webp(rgb.pixels.data(), rgb.width, rgb.height, 2, 80, false), InvalidArgument);
}

TEST(ImageEncode, PngAndUnknownFormats) {
  const DecodedImage rgb = load_png("src_rgb.png");
  const auto png = encode_image("png", rgb.pixels.data(), rgb.width, rgb.height, 3, 80, "Steps: 1");
  const DecodedImage d = decode_image(png.data(), png.size());
  EXPECT_EQ(d.pixels, rgb.pixels);
  ASSERT_NE(find_png_text(d.text, "parameters"), nullptr);
  EXPECT_EQ(*find_png_text(d.text, "parameters"), "Steps: 1");
  EXPECT_THROW(encode_image("gif", rgb.pixels.data(), rgb.width, rgb.height, 3), InvalidArgument);
}

TEST(ImageOps, OrientationRoundTrips) {
  DecodedImage img;
  img.width = 3;
  img.height = 2;
  img.channels = 3;
  for (int i = 0; i < 18; ++i) img.pixels.push_back(uint8_t(i));
  // 6 (rotate clockwise) undone by 8 (counter-clockwise); 2, 3, 4, 5 and 7 are their own inverses.
  EXPECT_EQ(apply_orientation(apply_orientation(img, 6), 8).pixels, img.pixels);
  for (int o : {2, 3, 4, 5, 7}) EXPECT_EQ(apply_orientation(apply_orientation(img, o), o).pixels, img.pixels) << o;
  EXPECT_EQ(apply_orientation(img, 1).pixels, img.pixels);
  EXPECT_EQ(apply_orientation(img, 9).pixels, img.pixels);
}

}  // namespace
}  // namespace sdserve
