#include "pipeline/img2img.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <sstream>
#include <type_traits>

#include "core/error.h"
#include "io/image.h"
#include "io/resize.h"

namespace sdserve {

namespace {

std::string lower(std::string s) {
  for (char& c : s) c = char(std::tolower(uint8_t(c)));
  return s;
}

// Image.new("RGB", (w, h)) (black) with `src` pasted at (x, y); parts outside are cut off.
RgbImage paste_onto_black(const RgbImage& src, int w, int h, int x, int y) {
  RgbImage out;
  out.width = w;
  out.height = h;
  out.pixels.assign(size_t(w) * size_t(h) * 3, 0);
  for (int sy = 0; sy < src.height; ++sy) {
    const int dy = y + sy;
    if (dy < 0 || dy >= h) continue;
    for (int sx = 0; sx < src.width; ++sx) {
      const int dx = x + sx;
      if (dx < 0 || dx >= w) continue;
      std::copy_n(&src.pixels[(size_t(sy) * size_t(src.width) + size_t(sx)) * 3], 3,
                  &out.pixels[(size_t(dy) * size_t(w) + size_t(dx)) * 3]);
    }
  }
  return out;
}

// Pillow's Lanczos resize of an RgbImage (3 channels) or GrayImage (1).
template <class Img>
Img lanczos(const Img& im, int w, int h) {
  if (im.width == w && im.height == h) return im;
  constexpr int channels = std::is_same_v<Img, RgbImage> ? 3 : 1;
  Img out;
  out.width = w;
  out.height = h;
  out.pixels = resize_image(im.pixels.data(), im.width, im.height, channels, w, h, ResizeFilter::Lanczos);
  return out;
}

// Gray masks go through the RGB code path as three equal channels.
RgbImage gray_to_rgb(const GrayImage& g) {
  RgbImage out;
  out.width = g.width;
  out.height = g.height;
  out.pixels.resize(g.pixels.size() * 3);
  for (size_t k = 0; k < g.pixels.size(); ++k)
    out.pixels[3 * k] = out.pixels[3 * k + 1] = out.pixels[3 * k + 2] = g.pixels[k];
  return out;
}

GrayImage rgb_to_gray_channel(const RgbImage& im) {
  GrayImage out;
  out.width = im.width;
  out.height = im.height;
  out.pixels.resize(size_t(im.width) * size_t(im.height));
  for (size_t k = 0; k < out.pixels.size(); ++k) out.pixels[k] = im.pixels[3 * k];
  return out;
}

GrayImage resize_gray(const GrayImage& g, int w, int h, ResizeMode mode) {
  if (mode == ResizeMode::JustResize) return lanczos(g, w, h);
  return rgb_to_gray_channel(resize_rgb(gray_to_rgb(g), w, h, mode));
}

// A1111's masking.get_crop_region_v2 + expand_crop_region: the mask's bounding box grown by
// `pad`, then to the aspect ratio of the processing size. False for an all-black mask.
bool crop_region(const GrayImage& m, int pad, int pw, int ph, int* rx1, int* ry1, int* rx2, int* ry2) {
  int x1 = m.width, y1 = m.height, x2 = 0, y2 = 0;
  for (int y = 0; y < m.height; ++y)
    for (int x = 0; x < m.width; ++x)
      if (m.pixels[size_t(y) * size_t(m.width) + size_t(x)]) {
        x1 = std::min(x1, x), y1 = std::min(y1, y);
        x2 = std::max(x2, x + 1), y2 = std::max(y2, y + 1);
      }
  if (x2 <= x1 || y2 <= y1) return false;
  x1 = std::max(x1 - pad, 0), y1 = std::max(y1 - pad, 0);
  x2 = std::min(x2 + pad, m.width), y2 = std::min(y2 + pad, m.height);
  const double ratio_crop = double(x2 - x1) / double(y2 - y1), ratio_proc = double(pw) / double(ph);
  auto grow = [](int& a1, int& a2, double desired, int size) {
    const int diff = int(desired - double(a2 - a1));
    a1 -= diff / 2;
    a2 += diff - diff / 2;
    if (a2 >= size) {
      const int d = a2 - size;
      a2 -= d;
      a1 -= d;
    }
    if (a1 < 0) {
      a2 -= a1;
      a1 = 0;
    }
    if (a2 >= size) a2 = size;
  };
  if (ratio_crop > ratio_proc)
    grow(y1, y2, double(x2 - x1) / ratio_proc, m.height);
  else
    grow(x1, x2, double(y2 - y1) * ratio_proc, m.width);
  *rx1 = x1, *ry1 = y1, *rx2 = x2, *ry2 = y2;
  return true;
}

template <class Img>
Img crop(const Img& im, int x1, int y1, int x2, int y2, int channels) {
  Img out;
  out.width = x2 - x1;
  out.height = y2 - y1;
  out.pixels.assign(size_t(out.width) * size_t(out.height) * size_t(channels), 0);
  for (int y = y1; y < y2; ++y)
    for (int x = x1; x < x2; ++x) {
      if (x < 0 || y < 0 || x >= im.width || y >= im.height) continue;
      std::copy_n(&im.pixels[(size_t(y) * size_t(im.width) + size_t(x)) * size_t(channels)], channels,
                  &out.pixels[(size_t(y - y1) * size_t(out.width) + size_t(x - x1)) * size_t(channels)]);
    }
  return out;
}

// Three box-blur passes over a float plane (about a Gaussian of the given radius), edges clamped.
void box_blur3(std::vector<float>& v, int w, int h, int radius) {
  if (radius <= 0) return;
  std::vector<float> tmp(v.size());
  const int r = std::max(1, int(std::lround(radius / 1.7320508)));  // 3 boxes of width 2r+1 ~ sigma
  auto pass = [&](bool horizontal) {
    const int n = horizontal ? w : h, lines = horizontal ? h : w;
    const size_t step = horizontal ? 1 : size_t(w);
    for (int l = 0; l < lines; ++l) {
      const size_t base = horizontal ? size_t(l) * size_t(w) : size_t(l);
      double acc = 0;
      for (int k = -r; k <= r; ++k) acc += v[base + size_t(std::clamp(k, 0, n - 1)) * step];
      for (int i = 0; i < n; ++i) {
        tmp[base + size_t(i) * step] = float(acc / (2 * r + 1));
        acc += v[base + size_t(std::min(i + r + 1, n - 1)) * step] - v[base + size_t(std::max(i - r, 0)) * step];
      }
    }
    v.swap(tmp);
  };
  for (int k = 0; k < 3; ++k) {
    pass(true);
    pass(false);
  }
}

// A1111's masking.fill: the image outside the mask, premultiplied, blurred at radii 256 .. 0 and
// composited repeatedly, so the masked area takes the surrounding colours.
RgbImage fill_masked(const RgbImage& im, const GrayImage& mask) {
  const int w = im.width, h = im.height;
  const size_t n = size_t(w) * size_t(h);
  std::vector<float> a0(n), c0[3];
  for (auto& c : c0) c.resize(n);
  for (size_t k = 0; k < n; ++k) {
    a0[k] = float(255 - mask.pixels[k]) / 255.f;
    for (int c = 0; c < 3; ++c) c0[c][k] = float(im.pixels[3 * k + size_t(c)]) * a0[k];
  }
  std::vector<float> out_a(n, 0.f), out_c[3];  // premultiplied accumulator
  for (auto& c : out_c) c.assign(n, 0.f);
  const std::pair<int, int> passes[] = {{256, 1}, {64, 1}, {16, 2}, {4, 4}, {2, 2}, {0, 1}};
  for (const auto& [radius, repeats] : passes) {
    std::vector<float> a = a0, c[3] = {c0[0], c0[1], c0[2]};
    box_blur3(a, w, h, radius);
    for (auto& ch : c) box_blur3(ch, w, h, radius);
    for (int rep = 0; rep < repeats; ++rep)
      for (size_t k = 0; k < n; ++k) {
        const float keep = 1.f - a[k];  // source over destination
        out_a[k] = a[k] + out_a[k] * keep;
        for (int ch = 0; ch < 3; ++ch) out_c[ch][k] = c[ch][k] + out_c[ch][k] * keep;
      }
  }
  RgbImage out = im;
  for (size_t k = 0; k < n; ++k)
    for (int ch = 0; ch < 3; ++ch) {
      const float v = out_a[k] > 0 ? out_c[ch][k] / out_a[k] : 0.f;
      out.pixels[3 * k + size_t(ch)] = uint8_t(std::clamp(std::lround(v), 0l, 255l));
    }
  return out;
}

// A1111's create_binary_mask: an RGBA mask with any transparency is its alpha, thresholded at 128;
// anything else its luminance.
GrayImage binary_mask(const DecodedImage& m) {
  GrayImage g;
  g.width = m.width;
  g.height = m.height;
  const size_t n = size_t(m.width) * size_t(m.height);
  bool transparent = false;
  if (m.channels == 4)
    for (size_t k = 0; k < n && !transparent; ++k) transparent = m.pixels[4 * k + 3] != 255;
  if (transparent) {
    g.pixels.resize(n);
    for (size_t k = 0; k < n; ++k) g.pixels[k] = m.pixels[4 * k + 3] > 128 ? 255 : 0;
  } else {
    g.pixels = to_gray(m.pixels.data(), m.width, m.height, m.channels);
  }
  return g;
}

RgbImage flatten(const DecodedImage& im, const uint8_t bg[3]) {
  const DecodedImage rgb = im.channels == 4 ? flatten_alpha(im, bg[0], bg[1], bg[2]) : to_rgb(im);
  RgbImage out;
  out.width = rgb.width;
  out.height = rgb.height;
  out.pixels = rgb.pixels;
  return out;
}

}  // namespace

ResizeMode parse_resize_mode(const std::string& s) {
  const std::string v = lower(s);
  if (v == "0" || v == "just resize" || v == "just_resize" || v == "resize") return ResizeMode::JustResize;
  if (v == "1" || v == "crop and resize" || v == "crop_and_resize" || v == "crop") return ResizeMode::CropAndResize;
  if (v == "2" || v == "resize and fill" || v == "resize_and_fill" || v == "fill") return ResizeMode::ResizeAndFill;
  if (v == "3" || v == "latent upscale" || v == "latent_upscale" || v == "latent" ||
      v == "just resize (latent upscale)")
    return ResizeMode::LatentUpscale;
  throw InvalidArgument("unknown resize mode \"" + s +
                        "\": use just resize, crop and resize, resize and fill or latent upscale");
}

OutpaintMargins parse_outpaint(const std::string& s) {
  OutpaintMargins m;
  int* f[4] = {&m.left, &m.right, &m.top, &m.bottom};
  std::stringstream ss(s);
  std::string part;
  int i = 0;
  while (std::getline(ss, part, ',')) {
    SD_CHECK_ARG(i < 4, "outpaint takes four numbers LEFT,RIGHT,TOP,BOTTOM, got \"" + s + "\"");
    size_t used = 0;
    int v = -1;
    try {
      v = std::stoi(part, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    SD_CHECK_ARG(used == part.size() && !part.empty() && v >= 0 && v <= 4096,
                 "outpaint margins are pixel counts 0-4096 as LEFT,RIGHT,TOP,BOTTOM, got \"" + s + "\"");
    *f[i++] = v;
  }
  SD_CHECK_ARG(i == 4, "outpaint takes four numbers LEFT,RIGHT,TOP,BOTTOM, got \"" + s + "\"");
  return m;
}

RgbImage resize_rgb(const RgbImage& im, int width, int height, ResizeMode mode) {
  SD_CHECK_ARG(im.width > 0 && im.height > 0 && width > 0 && height > 0, "resize: empty image or size");
  if (mode == ResizeMode::JustResize) return lanczos(im, width, height);
  if (mode == ResizeMode::LatentUpscale) mode = ResizeMode::ResizeAndFill;  // A1111's resize_image: not 0/1
  const double ratio = double(width) / double(height), src_ratio = double(im.width) / double(im.height);
  int src_w, src_h;
  if (mode == ResizeMode::CropAndResize) {
    src_w = ratio > src_ratio ? width : int(int64_t(im.width) * height / im.height);
    src_h = ratio <= src_ratio ? height : int(int64_t(im.height) * width / im.width);
  } else {
    src_w = ratio < src_ratio ? width : int(int64_t(im.width) * height / im.height);
    src_h = ratio >= src_ratio ? height : int(int64_t(im.height) * width / im.width);
  }
  src_w = std::max(src_w, 1), src_h = std::max(src_h, 1);
  const RgbImage resized = lanczos(im, src_w, src_h);
  RgbImage res = paste_onto_black(resized, width, height, width / 2 - src_w / 2, height / 2 - src_h / 2);
  if (mode == ResizeMode::ResizeAndFill) {
    // The bands left over repeat the resized image's edge rows (columns), as A1111 stretches them.
    const int ox = width / 2 - src_w / 2, oy = height / 2 - src_h / 2;
    for (int y = 0; y < height; ++y)
      for (int x = 0; x < width; ++x) {
        const int sx = std::clamp(x - ox, 0, src_w - 1), sy = std::clamp(y - oy, 0, src_h - 1);
        if (sx == x - ox && sy == y - oy) continue;
        std::copy_n(&resized.pixels[(size_t(sy) * size_t(src_w) + size_t(sx)) * 3], 3,
                    &res.pixels[(size_t(y) * size_t(width) + size_t(x)) * 3]);
      }
  }
  return res;
}

PreparedImg2Img prepare_img2img(const DecodedImage& image, const DecodedImage* mask_in, int width, int height,
                                const Img2ImgOptions& opt) {
  SD_CHECK_ARG(image.width > 0 && image.height > 0, "init image is empty");
  SD_CHECK_ARG(std::isfinite(opt.mask_blur_x) && std::isfinite(opt.mask_blur_y) && opt.mask_blur_x >= 0 &&
                   opt.mask_blur_y >= 0 && opt.mask_blur_x <= 256 && opt.mask_blur_y <= 256,
               "mask blur must be between 0 and 256");
  SD_CHECK_ARG(opt.only_masked_padding >= 0 && opt.only_masked_padding <= 4096,
               "only-masked padding must be between 0 and 4096 pixels");
  PreparedImg2Img prep;
  prep.mask_blur_x = opt.mask_blur_x;
  prep.mask_blur_y = opt.mask_blur_y;
  RgbImage img = flatten(image, opt.background);
  std::optional<GrayImage> mask;
  if (mask_in) {
    SD_CHECK_ARG(mask_in->width > 0 && mask_in->height > 0, "mask image is empty");
    mask = binary_mask(*mask_in);
    // A mask of another size is stretched to the init image (A1111 stretches both to the target).
    if (mask->width != img.width || mask->height != img.height) mask = lanczos(*mask, img.width, img.height);
  }
  if (opt.outpaint.any()) {
    SD_CHECK_ARG(!mask_in, "outpaint makes its own mask: give either a mask or outpaint margins, not both");
    const OutpaintMargins& o = opt.outpaint;
    const int64_t cw = int64_t(img.width) + o.left + o.right, ch = int64_t(img.height) + o.top + o.bottom;
    SD_CHECK_ARG(cw <= 16384 && ch <= 16384, "outpainted canvas would be " + std::to_string(cw) + "x" +
                                                 std::to_string(ch) + ", larger than 16384 pixels a side");
    // The new area starts as the nearest edge pixels; it and mask_blur pixels of overlap are masked.
    RgbImage canvas = paste_onto_black(img, int(cw), int(ch), o.left, o.top);
    GrayImage m;
    m.width = int(cw);
    m.height = int(ch);
    m.pixels.assign(size_t(cw * ch), 0);
    const int ox = int(std::ceil(opt.mask_blur_x)), oy = int(std::ceil(opt.mask_blur_y));
    const int keep_x1 = o.left ? o.left + ox : 0, keep_x2 = o.right ? o.left + img.width - ox : int(cw);
    const int keep_y1 = o.top ? o.top + oy : 0, keep_y2 = o.bottom ? o.top + img.height - oy : int(ch);
    for (int y = 0; y < int(ch); ++y)
      for (int x = 0; x < int(cw); ++x) {
        const int sx = std::clamp(x - o.left, 0, img.width - 1), sy = std::clamp(y - o.top, 0, img.height - 1);
        std::copy_n(&img.pixels[(size_t(sy) * size_t(img.width) + size_t(sx)) * 3], 3,
                    &canvas.pixels[(size_t(y) * size_t(cw) + size_t(x)) * 3]);
        if (x < keep_x1 || x >= keep_x2 || y < keep_y1 || y >= keep_y2)
          m.pixels[size_t(y) * size_t(cw) + size_t(x)] = 255;
      }
    img = std::move(canvas);
    mask = std::move(m);
  }
  prep.masked_content = opt.masked_content.value_or(opt.outpaint.any() ? MaskedContent::Fill : MaskedContent::Original);

  if (opt.resize_mode == ResizeMode::LatentUpscale) {
    // The image keeps its size (rounded down to a multiple of 8 for the VAE); the engine resizes
    // its latents.
    SD_CHECK_ARG(!mask, "latent upscale (resize mode 3) is for img2img without a mask or outpaint");
    SD_CHECK_ARG(img.width >= 8 && img.height >= 8 && img.width <= 8192 && img.height <= 8192,
                 "init image for latent upscale must be 8 to 8192 pixels a side");
    prep.init = std::make_shared<RgbImage>(lanczos(img, img.width / 8 * 8, img.height / 8 * 8));
    prep.latent_resize = true;
    return prep;
  }
  if (!mask) {
    prep.init = std::make_shared<RgbImage>(resize_rgb(img, width, height, opt.resize_mode));
    return prep;
  }
  GrayImage m = *mask;
  if (opt.mask_invert)
    for (uint8_t& v : m.pixels) v = uint8_t(255 - v);
  if (opt.mask_blur_x > 0 || opt.mask_blur_y > 0)
    m.pixels = mask_blur(m.pixels.data(), m.width, m.height, opt.mask_blur_x, opt.mask_blur_y);

  RgbImage work;
  GrayImage engine_mask;
  int x1, y1, x2, y2;
  if (opt.only_masked && crop_region(m, opt.only_masked_padding, width, height, &x1, &y1, &x2, &y2)) {
    // Only masked: the box around the mask is inpainted at the full request size, pasted back later.
    prep.original = img;
    prep.overlay_mask = m;
    prep.paste = true;
    prep.paste_x = x1, prep.paste_y = y1, prep.paste_w = x2 - x1, prep.paste_h = y2 - y1;
    engine_mask = resize_gray(crop(m, x1, y1, x2, y2, 1), width, height, ResizeMode::ResizeAndFill);
    work = resize_rgb(crop(img, x1, y1, x2, y2, 3), width, height, ResizeMode::ResizeAndFill);
  } else if (opt.only_masked) {
    // An all-black mask leaves nothing to inpaint: plain img2img, as A1111 falls back.
    prep.init = std::make_shared<RgbImage>(resize_rgb(img, width, height, opt.resize_mode));
    return prep;
  } else {
    engine_mask = resize_gray(m, width, height, opt.resize_mode);
    work = resize_rgb(img, width, height, opt.resize_mode);
    prep.original = work;
    prep.overlay_mask = engine_mask;
    for (uint8_t& v : prep.overlay_mask.pixels) v = uint8_t(std::min(255, int(v) * 2));
  }
  if (prep.masked_content == MaskedContent::Fill) work = fill_masked(work, engine_mask);
  prep.init = std::make_shared<RgbImage>(std::move(work));
  prep.mask = std::make_shared<GrayImage>(std::move(engine_mask));
  return prep;
}

GeneratedImage finish_img2img(const PreparedImg2Img& prep, const GeneratedImage& gen) {
  if (!prep.mask) return gen;
  RgbImage g;
  g.width = gen.width;
  g.height = gen.height;
  g.pixels = gen.rgb;
  RgbImage base = prep.original;  // outside the paste box the overlay is opaque anyway
  if (prep.paste) {
    const RgbImage part = resize_rgb(g, prep.paste_w, prep.paste_h, ResizeMode::CropAndResize);
    for (int y = 0; y < part.height; ++y)
      std::copy_n(&part.pixels[size_t(y) * size_t(part.width) * 3], size_t(part.width) * 3,
                  &base.pixels[(size_t(prep.paste_y + y) * size_t(base.width) + size_t(prep.paste_x)) * 3]);
  } else {
    base = g;
  }
  // The original over the result with alpha 255 - mask (A1111's overlay image).
  GeneratedImage out = gen;
  out.width = base.width;
  out.height = base.height;
  out.rgb.resize(base.pixels.size());
  for (size_t k = 0; k < prep.overlay_mask.pixels.size(); ++k) {
    const int a = 255 - prep.overlay_mask.pixels[k];
    for (size_t c = 0; c < 3; ++c) {
      const int o = prep.original.pixels[3 * k + c], b = base.pixels[3 * k + c];
      out.rgb[3 * k + c] = uint8_t((o * a + b * (255 - a) + 127) / 255);
    }
  }
  return out;
}

void add_img2img_infotext(GenerationParams& gp, const PreparedImg2Img& prep) {
  if (!prep.mask || prep.mask_blur_x != prep.mask_blur_y) return;
  char blur[32];
  std::snprintf(blur, sizeof blur, "%g", prep.mask_blur_x);
  gp.set_extra("Mask blur", blur);
}

}  // namespace sdserve
