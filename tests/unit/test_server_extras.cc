// server/extras.h: the live preview's latent -> RGB map, output formats, the extras request parser
// and its caps, and A1111's crop and blend. The routes are black-box tested in
// tests/e2e/test_api_extra.py.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/image.h"
#include "server/extras.h"
#include "server/http_util.h"
#include "server/request.h"

namespace sdserve::server {
namespace {

using json = nlohmann::json;

std::string png_b64(int w, int h, uint8_t fill = 100) {
  std::vector<uint8_t> px(size_t(w * h * 3), fill);
  for (size_t i = 0; i < px.size(); ++i) px[i] = uint8_t(fill + i % 7);
  const auto png = encode_png(px.data(), w, h, 3, {{"parameters", "a cat\nSteps: 1"}});
  return base64_encode(std::string(png.begin(), png.end()));
}

TEST(ServerExtras, CheapPreviewIsA1111sMatrix) {
  // One pixel, 2 x 1 latents: channel l of pixel 0 is 1 for l == 0, pixel 1 is all latent channel 3 = -1.
  const float lat[4 * 2] = {1, 0, 0, 0, 0, 0, 0, -1};  // [1, 4, 1, 2]
  const auto png = latent_preview_png(lat, 4, 1, 2, 0);
  const DecodedImage im = decode_png(png.data(), png.size());
  ASSERT_EQ(im.width, 2);
  ASSERT_EQ(im.height, 1);
  // pixel 0: (0.298, 0.207, 0.208) * 0.5 + 0.5, * 255, truncated
  EXPECT_EQ(im.pixels[0], uint8_t(255.f * (0.298f * 0.5f + 0.5f)));
  EXPECT_EQ(im.pixels[1], uint8_t(255.f * (0.207f * 0.5f + 0.5f)));
  EXPECT_EQ(im.pixels[2], uint8_t(255.f * (0.208f * 0.5f + 0.5f)));
  // pixel 1: -(-0.184, -0.271, -0.473) * 0.5 + 0.5
  EXPECT_EQ(im.pixels[3], uint8_t(255.f * (0.184f * 0.5f + 0.5f)));
  EXPECT_EQ(im.pixels[5], uint8_t(255.f * (0.473f * 0.5f + 0.5f)));
  EXPECT_TRUE(latent_preview_png(lat, 8, 1, 1, 0).empty());  // not SD1 latents
}

TEST(ServerExtras, OutputFormats) {
  EXPECT_EQ(parse_output_format("JPG", "f"), "jpeg");
  EXPECT_EQ(parse_output_format("image/webp", "f"), "webp");
  EXPECT_THROW(parse_output_format("gif", "f"), InvalidArgument);
  EXPECT_STREQ(image_mime("webp"), "image/webp");
  JobOptions o = parse_job_options(json::parse(R"({"output_format": "jpg", "quality": 90, "preview_every": 2})"));
  EXPECT_EQ(o.output_format, "jpeg");
  EXPECT_EQ(o.quality, 90);
  EXPECT_EQ(o.preview_every, 2);
  EXPECT_EQ(parse_job_options(json::parse(R"({"quality": "hd"})")).quality, 80);  // OpenAI's string: ignored
  EXPECT_THROW(parse_job_options(json::parse(R"({"preview_every": -1})")), InvalidArgument);
  EXPECT_THROW(parse_job_options(json::parse(R"({"quality": 101})")), InvalidArgument);
  EXPECT_EQ(plaintext_to_html("a<b\nc"), "<p>a&lt;b<br>\nc</p>");
}

TEST(ServerExtras, ParseAndCaps) {
  RequestLimits lim;
  auto w = parse_upscale_request(
      json::parse(R"({"image": ")" + png_b64(10, 6) + R"(", "upscaler_1": "lanczos", "upscaling_resize": 3})"), false,
      std::nullopt, lim);
  ASSERT_EQ(w->images.size(), 1u);
  EXPECT_EQ(w->images[0].width, 10);
  EXPECT_EQ(w->spec.scale, 3);
  const auto bad_field = [&](const std::string& body, const char* needle, bool batch = false) {
    try {
      parse_upscale_request(json::parse(body), batch, std::nullopt, lim);
      ADD_FAILURE() << body;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  const std::string img = png_b64(10, 6);
  bad_field(R"({"image": ")" + img + R"(", "upscaler_1": "4x-foo"})", "Lanczos");
  bad_field(R"({"image": ")" + img + R"(", "upscaler_1": "Lanczos", "gfpgan_visibility": 1})", "gfpgan_visibility");
  bad_field(R"({"image": ")" + img + R"(", "upscaler_1": "Lanczos", "upscaling_resize": 0})", "upscaling_resize");
  bad_field(R"({"image": ")" + img + R"(", "upscaler_1": "Lanczos", "resize_mode": 2})", "resize_mode");
  bad_field(R"({"upscaler_1": "Lanczos"})", "image");
  bad_field(R"({"imageList": []})", "imageList", true);
  bad_field(R"({"type": "upscale", "image": ")" + img + R"("})", "upscaler");
  lim.max_image_side = 25;
  bad_field(R"({"image": ")" + img + R"(", "upscaler_1": "Nearest", "upscaling_resize": 3})", "--max-image-side");
  // "None" never upscales, so no cap applies
  parse_upscale_request(json::parse(R"({"image": ")" + img + R"(", "upscaling_resize": 16})"), false, std::nullopt,
                        lim);
}

TEST(ServerExtras, CropBlendAndText) {
  const RequestLimits lim;
  const std::string img = png_b64(10, 6);
  // Resize to 8 x 8, cropped: by max(0.8, 1.333) -> 13 x 8, centred (x from 2).
  auto crop = parse_upscale_request(json::parse(R"({"image": ")" + img +
                                                R"(", "upscaler_1": "Nearest", "resize_mode": 1,
      "upscaling_resize_w": 8, "upscaling_resize_h": 8})"),
                                    false, std::nullopt, lim);
  auto full = parse_upscale_request(json::parse(R"({"image": ")" + img +
                                                R"(", "upscaler_1": "Nearest", "resize_mode": 1,
      "upscaling_resize_w": 8, "upscaling_resize_h": 8, "upscaling_crop": false})"),
                                    false, std::nullopt, lim);
  const auto a = run_upscale(*crop, {}), b = run_upscale(*full, {});
  const DecodedImage ca = decode_png(a.pngs[0].data(), a.pngs[0].size());
  const DecodedImage fb = decode_png(b.pngs[0].data(), b.pngs[0].size());
  ASSERT_EQ(ca.width, 8);
  ASSERT_EQ(fb.width, 13);
  ASSERT_EQ(fb.height, 8);
  for (int y = 0; y < 8; ++y)
    for (int x = 0; x < 8; ++x)
      for (int c = 0; c < 3; ++c)
        ASSERT_EQ(ca.pixels[size_t((y * 8 + x) * 3 + c)], fb.pixels[size_t((y * 13 + x + 2) * 3 + c)]);
  EXPECT_EQ(a.infotexts[0], "Postprocess upscale to: 8x8, Postprocess crop to: 8x8, Postprocess upscaler: Nearest");
  ASSERT_NE(find_png_text(ca.text, "parameters"), nullptr);  // the input's text is kept
  EXPECT_EQ(*find_png_text(ca.text, "parameters"), "a cat\nSteps: 1");
  // Blend at 0.25: in1 + 0.25 * (in2 - in1), truncated
  auto blend = parse_upscale_request(json::parse(R"({"image": ")" + img +
                                                 R"(", "upscaler_1": "Lanczos", "upscaler_2": "Nearest",
      "extras_upscaler_2_visibility": 0.25})"),
                                     false, std::nullopt, lim);
  auto lz = parse_upscale_request(json::parse(R"({"image": ")" + img + R"(", "upscaler_1": "Lanczos"})"), false,
                                  std::nullopt, lim);
  auto nn = parse_upscale_request(json::parse(R"({"image": ")" + img + R"(", "upscaler_1": "Nearest"})"), false,
                                  std::nullopt, lim);
  const auto decode = [](const UpscaleResult& r) { return decode_png(r.pngs[0].data(), r.pngs[0].size()).pixels; };
  const auto pb = decode(run_upscale(*blend, {})), pl = decode(run_upscale(*lz, {})), pn = decode(run_upscale(*nn, {}));
  for (size_t k = 0; k < pb.size(); ++k)
    ASSERT_EQ(pb[k], uint8_t(float(pl[k]) + 0.25f * float(int(pn[k]) - int(pl[k])))) << k;
}

}  // namespace
}  // namespace sdserve::server
