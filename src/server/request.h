// Generation requests from JSON bodies: the seed's /txt2img body ({prompt, height, width, ...}),
// the native /v1/jobs schema and A1111's field names (sampler_name, scheduler, n_iter is not a
// batch), one parser for all. docs/API.md lists the fields.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "pipeline/img2img.h"
#include "pipeline/stable_diffusion.h"

namespace sdserve::server {

// Server-side caps on what one request may ask (flags --max-*), checked on top of the engine's
// own limits (validate_request).
struct RequestLimits {
  int max_width = 2048;
  int max_height = 2048;
  int max_steps = 150;
  int max_batch = 8;
  size_t max_prompt_chars = 20000;
  size_t max_loras = 16;
  // Init images and masks: checked from the header before any pixel is decoded.
  uint32_t max_image_side = 8192;
  uint64_t max_image_pixels = uint64_t(4096) * 4096;
};

// Per-job output settings (docs/API.md): the format images are served in unless a request asks
// for another, and a cheap preview of the latents every `preview_every` sampling steps (0: none).
struct JobOptions {
  std::string output_format = "png";  // png | jpeg | webp
  int quality = 80;                   // jpeg/webp, 1-100
  int preview_every = 0;              // 0 to 1000
  // The model to run on: a name in the models folder ("model"; A1111's
  // override_settings.sd_model_checkpoint). Empty: the current model.
  std::string model;
};
// Reads "output_format", "quality" and "preview_every" from a body (InvalidArgument naming the field).
JobOptions parse_job_options(const nlohmann::json& body);

struct ParsedRequest {
  GenerateRequest req;
  std::string type = "txt2img";  // "img2img" when the body has an init image
  // img2img/inpaint: how the result is put back over the original (A1111's overlay).
  std::shared_ptr<const PreparedImg2Img> prep;
  JobOptions options;                // output_format, quality, preview_every
  std::vector<std::string> ignored;  // unknown fields (A1111 clients send many)
};

// Throws InvalidArgument naming the field for a value of the wrong type or out of the limits.
// An init image ("init_images": [base64] as A1111, or "init_image") makes it img2img; "mask" inpaint;
// images are PNG/JPEG/WebP, base64 or data: URIs, decoded and prepared here (pipeline/img2img.h).
// LoRAs are taken by name only ({"name", "weight"} or {"name", "te_weight", "unet_weight"}):
// an HTTP body never names a file path.
// "url" / "init_image_url" and "mask_url" name images to download with `fetch_url` (the server's
// guarded GET, net/fetch.h); without one (the default: --allow-url-fetch off) they are refused
// with net::UrlFetchDisabled. The download happens after every cheap check of the body.
using UrlFetcher = std::function<std::string(const std::string& url)>;
ParsedRequest parse_generate_request(const nlohmann::json& body, const RequestLimits& limits,
                                     const UrlFetcher& fetch_url = {});
// The body text parsed as a JSON object, or InvalidArgument saying where it is malformed.
nlohmann::json parse_json_body(const std::string& body);

}  // namespace sdserve::server
