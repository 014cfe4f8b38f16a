// A1111's image preparation for img2img, inpaint and outpaint (modules/processing.py,
// StableDiffusionProcessingImg2Img.init and the overlay applied to its results), in front of the
// engine's diffusers-exact img2img/inpaint (StableDiffusion::generate, which wants an init image and
// a mask of exactly the request's size):
//   - alpha flattened onto a background colour; an RGBA mask with transparency uses its alpha;
//   - resize modes: just resize, crop and resize, resize and fill (Lanczos, as A1111 without an
//     img2img upscaler), latent upscale;
//   - mask: inverted on request, blurred (cv2 Gaussian, A1111's kernel size), binarized by the
//     engine at 128; the blurred mask is kept to paste the result over the original, so pixels
//     outside the mask come back unchanged and the seam is soft;
//   - masked content: fill (the masked area filled with blurred surrounding colours), original,
//     latent noise, latent nothing;
//   - "only masked" (inpaint_full_res): the mask's bounding box plus padding, grown to the request's
//     aspect ratio, is cut out, inpainted at the request size and pasted back;
//   - outpaint: the canvas grows by left/right/top/bottom pixels, the new area (plus mask_blur of
//     overlap) is the mask, and masked content defaults to fill.
// See docs/IMG2IMG.md.
#pragma once
#include <memory>
#include <optional>
#include <string>

#include "io/png.h"
#include "pipeline/stable_diffusion.h"

namespace sdserve {

// LatentUpscale (A1111's "just resize (latent upscale)"): the image is encoded at its own size
// (rounded down to a multiple of 8) and its latents resized; img2img without a mask only.
enum class ResizeMode { JustResize = 0, CropAndResize = 1, ResizeAndFill = 2, LatentUpscale = 3 };

// "just resize" / "crop and resize" / "resize and fill" / "latent upscale" (any case, also 0-3);
// throws InvalidArgument.
ResizeMode parse_resize_mode(const std::string& s);

struct OutpaintMargins {
  int left = 0, right = 0, top = 0, bottom = 0;
  bool any() const { return left > 0 || right > 0 || top > 0 || bottom > 0; }
};
// "L,R,T,B" pixel counts (each 0-4096); throws InvalidArgument.
OutpaintMargins parse_outpaint(const std::string& s);

struct Img2ImgOptions {
  ResizeMode resize_mode = ResizeMode::JustResize;
  double mask_blur_x = 4, mask_blur_y = 4;  // A1111's default mask blur 4
  bool mask_invert = false;                 // inpaint the black area instead
  // Unset: original, or fill when outpainting (A1111's defaults).
  std::optional<MaskedContent> masked_content;
  bool only_masked = false;  // A1111's "inpaint area: only masked"
  int only_masked_padding = 32;
  OutpaintMargins outpaint;
  uint8_t background[3] = {255, 255, 255};  // A1111's img2img_background_color
};

// The engine's input and what finish_img2img needs to put the result back.
struct PreparedImg2Img {
  std::shared_ptr<const RgbImage> init;   // width x height
  std::shared_ptr<const GrayImage> mask;  // width x height, or null (plain img2img)
  bool latent_resize = false;             // LatentUpscale: `init` keeps its size (GenerateRequest::init_latent_resize)
  MaskedContent masked_content = MaskedContent::Original;
  // Overlay: the original (after resizing, or the whole canvas for only-masked) and the blurred mask;
  // results are composited over it. Empty without a mask.
  RgbImage original;
  GrayImage overlay_mask;
  // Only masked: where the width x height result goes in `original` (x, y, w, h).
  bool paste = false;
  int paste_x = 0, paste_y = 0, paste_w = 0, paste_h = 0;
  double mask_blur_x = 0, mask_blur_y = 0;  // as asked for (Img2ImgOptions), for the infotext
};

// What A1111 adds to an img2img image's infotext beyond the generation's own fields: "Mask blur"
// when there is a mask and its blur is the same both ways (A1111's p.mask_blur; None otherwise).
void add_img2img_infotext(GenerationParams& gp, const PreparedImg2Img& prep);

// `image` and `mask` as decoded (any size, RGB/RGBA, mask gray or colour); width/height: the
// generation size (multiples of 8). Throws InvalidArgument for unusable inputs.
PreparedImg2Img prepare_img2img(const DecodedImage& image, const DecodedImage* mask, int width, int height,
                                const Img2ImgOptions& opt);

// A generated image (width x height) put back as A1111 does: resized into the only-masked box and
// composited over the original outside the (blurred) mask. Without a mask, the image as it is.
GeneratedImage finish_img2img(const PreparedImg2Img& prep, const GeneratedImage& generated);

// A1111's images.resize_image for the three pixel resize modes, Lanczos, RGB8.
RgbImage resize_rgb(const RgbImage& im, int width, int height, ResizeMode mode);

}  // namespace sdserve
