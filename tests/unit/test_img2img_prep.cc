// A1111's img2img/inpaint image preparation (pipeline/img2img.h): resize modes, masks, only masked,
// outpaint and the overlay that puts results back over the original.
#include <gtest/gtest.h>

#include "io/resize.h"
#include "pipeline/img2img.h"

namespace sdserve::test {
namespace {

RgbImage pattern(int w, int h) {
  RgbImage im;
  im.width = w;
  im.height = h;
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      im.pixels.push_back(uint8_t(x * 255 / std::max(1, w - 1)));
      im.pixels.push_back(uint8_t(y * 255 / std::max(1, h - 1)));
      im.pixels.push_back(uint8_t((x * 7 + y * 13) % 256));
    }
  return im;
}

DecodedImage decoded(const RgbImage& im) {
  DecodedImage d;
  d.width = im.width;
  d.height = im.height;
  d.channels = 3;
  d.pixels = im.pixels;
  return d;
}

DecodedImage gray_mask(int w, int h, int x1, int y1, int x2, int y2) {
  DecodedImage m;
  m.width = w;
  m.height = h;
  m.channels = 3;
  m.pixels.assign(size_t(w) * size_t(h) * 3, 0);
  for (int y = y1; y < y2; ++y)
    for (int x = x1; x < x2; ++x)
      for (int c = 0; c < 3; ++c) m.pixels[(size_t(y) * size_t(w) + size_t(x)) * 3 + size_t(c)] = 255;
  return m;
}

const uint8_t* px(const RgbImage& im, int x, int y) {
  return &im.pixels[(size_t(y) * size_t(im.width) + size_t(x)) * 3];
}

TEST(Img2ImgPrep, JustResizeIsLanczos) {
  const RgbImage im = pattern(40, 20);
  const RgbImage r = resize_rgb(im, 16, 16, ResizeMode::JustResize);
  EXPECT_EQ(r.pixels, resize_image(im.pixels.data(), 40, 20, 3, 16, 16, ResizeFilter::Lanczos));
}

TEST(Img2ImgPrep, CropAndResizeCropsTheCentre) {
  // 40x20 to 16x16: scaled to 32x16 (height fits), then the middle 16 columns.
  const RgbImage im = pattern(40, 20);
  const RgbImage r = resize_rgb(im, 16, 16, ResizeMode::CropAndResize);
  const std::vector<uint8_t> full = resize_image(im.pixels.data(), 40, 20, 3, 32, 16, ResizeFilter::Lanczos);
  ASSERT_EQ(r.width, 16);
  for (int y = 0; y < 16; ++y)
    for (int x = 0; x < 16; ++x)
      for (int c = 0; c < 3; ++c)
        ASSERT_EQ(px(r, x, y)[c], full[(size_t(y) * 32 + size_t(x + 8)) * 3 + size_t(c)]) << x << "," << y;
}

TEST(Img2ImgPrep, ResizeAndFillRepeatsTheEdges) {
  // 40x20 to 16x16: scaled to 16x8 in the middle (rows 4-11), rows above/below repeat its edge rows.
  const RgbImage im = pattern(40, 20);
  const RgbImage r = resize_rgb(im, 16, 16, ResizeMode::ResizeAndFill);
  const std::vector<uint8_t> mid = resize_image(im.pixels.data(), 40, 20, 3, 16, 8, ResizeFilter::Lanczos);
  for (int y = 0; y < 16; ++y) {
    const int sy = std::clamp(y - 4, 0, 7);
    for (int x = 0; x < 16; ++x)
      for (int c = 0; c < 3; ++c) ASSERT_EQ(px(r, x, y)[c], mid[(size_t(sy) * 16 + size_t(x)) * 3 + size_t(c)]);
  }
}

TEST(Img2ImgPrep, NoMaskIsPlainImg2Img) {
  const PreparedImg2Img p = prepare_img2img(decoded(pattern(24, 24)), nullptr, 16, 16, {});
  ASSERT_TRUE(p.init);
  EXPECT_FALSE(p.mask);
  EXPECT_EQ(p.init->width, 16);
  GeneratedImage g;
  g.width = g.height = 16;
  g.rgb.assign(16 * 16 * 3, 7);
  EXPECT_EQ(finish_img2img(p, g).rgb, g.rgb);
}

TEST(Img2ImgPrep, OverlayKeepsPixelsOutsideTheMask) {
  Img2ImgOptions o;
  o.mask_blur_x = o.mask_blur_y = 2;
  const DecodedImage m = gray_mask(32, 32, 8, 8, 20, 20);
  const PreparedImg2Img p = prepare_img2img(decoded(pattern(32, 32)), &m, 32, 32, o);
  ASSERT_TRUE(p.mask);
  EXPECT_EQ(p.masked_content, MaskedContent::Original);
  EXPECT_EQ(p.init->pixels, pattern(32, 32).pixels);  // "original": the image as it is
  GeneratedImage g;
  g.width = g.height = 32;
  g.rgb.assign(32 * 32 * 3, 0);
  const GeneratedImage out = finish_img2img(p, g);
  const RgbImage orig = pattern(32, 32);
  for (int y = 0; y < 32; ++y)
    for (int x = 0; x < 32; ++x) {
      const bool far = x < 2 || x >= 27 || y < 2 || y >= 27;
      const bool inside = x >= 12 && x < 16 && y >= 12 && y < 16;
      const size_t k = (size_t(y) * 32 + size_t(x)) * 3;
      if (far) {
        ASSERT_EQ(out.rgb[k], orig.pixels[k]) << x << "," << y;
      }
      if (inside) {
        ASSERT_EQ(out.rgb[k], 0) << x << "," << y;
      }
    }
}

TEST(Img2ImgPrep, InvertAndAlphaMasks) {
  Img2ImgOptions o;
  o.mask_blur_x = o.mask_blur_y = 0;
  o.mask_invert = true;
  const DecodedImage m = gray_mask(16, 16, 0, 0, 8, 16);
  const PreparedImg2Img p = prepare_img2img(decoded(pattern(16, 16)), &m, 16, 16, o);
  EXPECT_EQ(p.mask->pixels[0], 0);
  EXPECT_EQ(p.mask->pixels[15], 255);
  // A transparent RGBA mask is its alpha, thresholded at 128 (A1111's create_binary_mask).
  DecodedImage rgba;
  rgba.width = rgba.height = 16;
  rgba.channels = 4;
  for (int k = 0; k < 256; ++k) {
    const uint8_t a = k % 16 < 4 ? 200 : (k % 16 < 8 ? 128 : 0);
    for (uint8_t v : {uint8_t(0), uint8_t(0), uint8_t(0), a}) rgba.pixels.push_back(v);
  }
  o.mask_invert = false;
  const PreparedImg2Img q = prepare_img2img(decoded(pattern(16, 16)), &rgba, 16, 16, o);
  EXPECT_EQ(q.mask->pixels[0], 255);
  EXPECT_EQ(q.mask->pixels[5], 0);  // 128 is not above 128
  EXPECT_EQ(q.mask->pixels[9], 0);
}

TEST(Img2ImgPrep, MaskOfAnotherSizeIsStretched) {
  Img2ImgOptions o;
  o.mask_blur_x = o.mask_blur_y = 0;
  const DecodedImage m = gray_mask(8, 8, 0, 0, 4, 8);  // left half
  const PreparedImg2Img p = prepare_img2img(decoded(pattern(32, 32)), &m, 32, 32, o);
  EXPECT_EQ(p.mask->pixels[2], 255);
  EXPECT_EQ(p.mask->pixels[29], 0);
}

TEST(Img2ImgPrep, OnlyMaskedCutsTheBoxAndPastesItBack) {
  Img2ImgOptions o;
  o.mask_blur_x = o.mask_blur_y = 0;
  o.only_masked = true;
  o.only_masked_padding = 4;
  const DecodedImage m = gray_mask(64, 48, 30, 20, 38, 26);  // 8x6 box
  const PreparedImg2Img p = prepare_img2img(decoded(pattern(64, 48)), &m, 16, 16, o);
  ASSERT_TRUE(p.paste);
  // bbox 30..38 x 20..26, padded by 4: 26..42 x 16..30 (16x14), grown to square: 16x16.
  EXPECT_EQ(p.paste_w, p.paste_h);
  EXPECT_LE(p.paste_x, 26);
  EXPECT_GE(p.paste_x + p.paste_w, 42);
  EXPECT_LE(p.paste_y, 16);
  EXPECT_GE(p.paste_y + p.paste_h, 30);
  EXPECT_EQ(p.init->width, 16);
  EXPECT_EQ(p.mask->width, 16);
  GeneratedImage g;
  g.width = g.height = 16;
  g.rgb.assign(16 * 16 * 3, 0);
  const GeneratedImage out = finish_img2img(p, g);
  EXPECT_EQ(out.width, 64);
  EXPECT_EQ(out.height, 48);
  const RgbImage orig = pattern(64, 48);
  for (int y = 0; y < 48; ++y)
    for (int x = 0; x < 64; ++x) {
      const size_t k = (size_t(y) * 64 + size_t(x)) * 3;
      const bool in_mask = x >= 30 && x < 38 && y >= 20 && y < 26;
      ASSERT_EQ(out.rgb[k], in_mask ? 0 : orig.pixels[k]) << x << "," << y;
    }
  // An all-black mask leaves nothing to inpaint: plain img2img (A1111's fallback).
  const DecodedImage black = gray_mask(64, 48, 0, 0, 0, 0);
  EXPECT_FALSE(prepare_img2img(decoded(pattern(64, 48)), &black, 16, 16, o).mask);
}

TEST(Img2ImgPrep, OutpaintGrowsTheCanvasAndMasksTheNewArea) {
  Img2ImgOptions o;
  o.mask_blur_x = o.mask_blur_y = 2;
  o.outpaint = parse_outpaint("8,0,0,16");
  const PreparedImg2Img p = prepare_img2img(decoded(pattern(16, 16)), nullptr, 24, 32, o);
  EXPECT_EQ(p.masked_content, MaskedContent::Fill);
  ASSERT_TRUE(p.mask);
  EXPECT_EQ(p.mask->width, 24);
  EXPECT_EQ(p.mask->height, 32);
  const auto at = [&](int x, int y) { return p.mask->pixels[size_t(y) * 24 + size_t(x)]; };
  EXPECT_EQ(at(0, 0), 255);    // new area on the left
  EXPECT_EQ(at(20, 30), 255);  // new area at the bottom
  EXPECT_EQ(at(18, 4), 0);     // the original, away from the seams
  EXPECT_THROW(parse_outpaint("1,2,3"), InvalidArgument);
  EXPECT_THROW(parse_outpaint("1,2,3,-4"), InvalidArgument);
  EXPECT_THROW(parse_outpaint("1,2,3,x"), InvalidArgument);
  const DecodedImage m = gray_mask(16, 16, 0, 0, 4, 4);
  EXPECT_THROW(prepare_img2img(decoded(pattern(16, 16)), &m, 24, 32, o), InvalidArgument);
}

TEST(Img2ImgPrep, FillTakesSurroundingColours) {
  // A red image with a masked square: "fill" paints the square red-ish, whatever was there.
  RgbImage im = pattern(32, 32);
  for (size_t k = 0; k < im.pixels.size(); k += 3) im.pixels[k] = 250, im.pixels[k + 1] = 10, im.pixels[k + 2] = 10;
  for (int y = 12; y < 20; ++y)
    for (int x = 12; x < 20; ++x) std::fill_n(&im.pixels[(size_t(y) * 32 + size_t(x)) * 3], 3, uint8_t(0));
  Img2ImgOptions o;
  o.mask_blur_x = o.mask_blur_y = 0;
  o.masked_content = MaskedContent::Fill;
  const DecodedImage m = gray_mask(32, 32, 12, 12, 20, 20);
  const PreparedImg2Img p = prepare_img2img(decoded(im), &m, 32, 32, o);
  const uint8_t* c = px(*p.init, 16, 16);
  EXPECT_GT(c[0], 200);
  EXPECT_LT(c[1], 40);
}

// Latent upscale keeps the image's size (down to a multiple of 8); the engine resizes the latents.
TEST(Img2ImgPrep, LatentUpscaleKeepsTheImageSize) {
  Img2ImgOptions o;
  o.resize_mode = ResizeMode::LatentUpscale;
  const PreparedImg2Img p = prepare_img2img(decoded(pattern(20, 17)), nullptr, 64, 64, o);
  EXPECT_TRUE(p.latent_resize);
  EXPECT_EQ(p.init->width, 16);
  EXPECT_EQ(p.init->height, 16);
  const DecodedImage m = gray_mask(20, 17, 0, 0, 4, 4);
  EXPECT_THROW(prepare_img2img(decoded(pattern(20, 17)), &m, 64, 64, o), InvalidArgument);
}

TEST(Img2ImgPrep, ParseResizeMode) {
  EXPECT_EQ(parse_resize_mode("Crop and resize"), ResizeMode::CropAndResize);
  EXPECT_EQ(parse_resize_mode("2"), ResizeMode::ResizeAndFill);
  EXPECT_EQ(parse_resize_mode("3"), ResizeMode::LatentUpscale);
  EXPECT_EQ(parse_resize_mode("Just resize (latent upscale)"), ResizeMode::LatentUpscale);
  EXPECT_THROW(parse_resize_mode("stretch"), InvalidArgument);
}

}  // namespace
}  // namespace sdserve::test
