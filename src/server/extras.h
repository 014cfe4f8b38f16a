// Upscaling jobs (A1111's "Extras" tab: /sdapi/v1/extra-single-image, extra-batch-images, and the
// native /v1/jobs type "upscale"), image output formats, and live previews of the latents. The work
// runs on the JobManager's worker like every other job; this file only parses, checks the caps, and
// does the pixel work when the worker calls it. docs/API.md.
#pragma once
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "io/png.h"
#include "server/request.h"

namespace sdserve::server {

// A1111's ScriptPostprocessingUpscale settings.
struct UpscaleSpec {
  std::string upscaler_1 = "None", upscaler_2 = "None";  // "None", "Lanczos", "Nearest", a model's stem
  double visibility_2 = 0;                               // extras_upscaler_2_visibility: Image.blend weight
  int mode = 0;                                          // 0: by `scale`; 1: to width x height
  double scale = 2;                                      // upscaling_resize
  int width = 512, height = 512;                         // upscaling_resize_w / _h
  bool crop = true;                                      // upscaling_crop (mode 1)
};

struct UpscaleInput {
  std::string name;
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;  // alpha dropped, as A1111's convert("RGB")
  PngText text;              // the input's text (PNG chunks; JPEG/WebP: the EXIF UserComment as "parameters")
};

struct UpscaleWork {
  UpscaleSpec spec;
  std::vector<UpscaleInput> images;
  std::optional<std::string> upscaler_dir;  // --upscaler-dir
  Device device = Device::cpu();            // where networks run (serve --device), weights in `dtype`
  DType dtype = DType::F32;
  RequestLimits limits;
};

// "None", "Lanczos", "Nearest", then the stems of the *.safetensors, *.pth and *.pt files in `dir`
// (sorted): what the extras routes accept, as A1111's shared.sd_upscalers.
std::vector<std::string> extras_upscaler_names(const std::optional<std::string>& dir);

// Parses the upscale fields of an A1111 extras body or a native {"type": "upscale"} body (docs/API.md),
// decodes the image(s) under the limits, and checks the upscaler names (NotFoundError listing the
// names) and the output size against the caps (InvalidArgument naming the field). `batch`: A1111's
// extra-batch-images (imageList: [{data, name}]); otherwise one "image".
std::shared_ptr<UpscaleWork> parse_upscale_request(const nlohmann::json& body, bool batch,
                                                   const std::optional<std::string>& upscaler_dir,
                                                   const RequestLimits& limits);

struct UpscaleResult {
  std::vector<std::vector<uint8_t>> pngs;  // the input's text chunks plus "postprocessing"
  std::vector<std::string> infotexts;      // A1111's postprocessing infotext, per image
};
// The worker's part: every image through upscaler 1 (and 2, blended). `progress(done, total)` after
// every network tile or image; false cancels (throws Cancelled).
UpscaleResult run_upscale(const UpscaleWork& work, const std::function<bool(int, int)>& progress);

// A1111's ui_common.plaintext_to_html.
std::string plaintext_to_html(const std::string& text);

// Output formats: "png", "jpeg" (also "jpg") or "webp" -> the canonical name, else InvalidArgument
// naming `field`.
std::string parse_output_format(const std::string& value, const std::string& field);
const char* image_mime(const std::string& format);  // image/png, image/jpeg, image/webp
// A stored result PNG in `format` (png: the bytes as they are; jpeg/webp: re-encoded at `quality`
// with the infotext as EXIF UserComment, as A1111 saves them).
std::string convert_image(const std::vector<uint8_t>& png, const std::string& format, int quality,
                          const std::string& infotext);

// A1111's "Approx cheap" live preview (sd_vae_approx.cheap_approximation): SD1 latents [n, 4, h, w]
// (scaled, f32 on the host) through a fixed 4x3 linear map to RGB, * 0.5 + 0.5, clamped, truncated to
// 8 bits; image `index` of the batch as a PNG at latent resolution. Empty for latents without 4 channels.
std::vector<uint8_t> latent_preview_png(const float* latents, int64_t channels, int64_t height, int64_t width,
                                        int64_t index);

}  // namespace sdserve::server
