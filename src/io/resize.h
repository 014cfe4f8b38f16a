// Resampling and blurring of interleaved 8-bit images, pixel-exact with the Python libraries A1111
// uses: Pillow's Image.resize (separable convolution in 8-bit fixed point; RGBA is resized
// premultiplied, as Pillow does) and OpenCV's cv2.GaussianBlur on 8-bit images (its bit-exact
// fixed-point path, BORDER_REFLECT_101). See docs/IMAGES.md.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace sdserve {

enum class ResizeFilter { Nearest, Box, Bilinear, Hamming, Bicubic, Lanczos };

// Whose pass order to follow. Both run Pillow's two separable passes; Pillow <= 12 (A1111 pins
// Pillow 9.5.0) always resamples horizontally first, Pillow >= 13 vertically first when the height
// shrinks and the width does not. Results differ (by a level or two) only in that case.
enum class PillowVersion { V9, V13 };

// "nearest", "box", "bilinear", "hamming", "bicubic", "lanczos" (any case); throws InvalidArgument.
ResizeFilter parse_resize_filter(const std::string& name);
const char* resize_filter_name(ResizeFilter f);

// Image.resize((out_width, out_height), filter) of a width x height image with `channels` 1 (L),
// 3 (RGB) or 4 (RGBA) interleaved bytes per pixel. Returns out_width * out_height * channels bytes.
// Throws InvalidArgument for bad sizes or channel counts.
std::vector<uint8_t> resize_image(const uint8_t* pixels, int width, int height, int channels, int out_width,
                                  int out_height, ResizeFilter filter, PillowVersion pillow = PillowVersion::V9);

// cv2.GaussianBlur(img, (ksize_x, ksize_y), sigma_x, sigmaY=sigma_y) of a single-channel 8-bit image
// with BORDER_REFLECT_101. As OpenCV: a size <= 0 is computed from its sigma (round(6 sigma + 1) | 1),
// sigma_y <= 0 means sigma_x, a sigma <= 0 is derived from the size, and sizes must be odd.
std::vector<uint8_t> gaussian_blur(const uint8_t* gray, int width, int height, int ksize_x, int ksize_y, double sigma_x,
                                   double sigma_y = 0);

// A1111's inpainting mask blur (modules/processing.py, 1.6+): for blur_x > 0,
// cv2.GaussianBlur(mask, (k, 1), blur_x) with k = 2 * int(2.5 * blur_x + 0.5) + 1, then likewise
// (1, k) with blur_y. A blur <= 0 skips that direction (both <= 0: the mask unchanged).
std::vector<uint8_t> mask_blur(const uint8_t* gray, int width, int height, double blur_x, double blur_y);

}  // namespace sdserve
