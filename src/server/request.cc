#include "server/request.h"

#include <cmath>
#include <limits>
#include <optional>
#include <set>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/utf8.h"
#include "io/image.h"
#include "net/fetch.h"
#include "pipeline/rng.h"
#include "server/http_util.h"

namespace sdserve::server {

using json = nlohmann::json;

namespace {

[[noreturn]] void bad(const std::string& field, const std::string& what) {
  throw InvalidArgument("field '" + printable(field) + "' " + what);
}

int64_t get_int(const json& v, const std::string& f, int64_t lo, int64_t hi) {
  if (v.is_number_integer() || v.is_number_unsigned()) {
    if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max()))
      bad(f, "is out of range");
    const int64_t x = v.get<int64_t>();
    if (x < lo || x > hi) bad(f, "must be between " + std::to_string(lo) + " and " + std::to_string(hi));
    return x;
  }
  if (v.is_number_float()) {  // 512.0 from clients that only have doubles
    const double d = v.get<double>();
    if (std::isfinite(d) && d == std::floor(d) && d >= double(lo) && d <= double(hi)) return int64_t(d);
  }
  bad(f, "must be an integer between " + std::to_string(lo) + " and " + std::to_string(hi));
}

float get_float(const json& v, const std::string& f) {
  if (!v.is_number()) bad(f, "must be a number");
  const double d = v.get<double>();
  if (!std::isfinite(d) || std::abs(d) > 1e6) bad(f, "must be a finite number");
  return float(d);
}

std::string get_string(const json& v, const std::string& f, size_t max_len) {
  if (!v.is_string()) bad(f, "must be a string");
  std::string s = v.get<std::string>();
  if (s.size() > max_len) bad(f, "is longer than " + std::to_string(max_len) + " bytes");
  return s;
}

bool get_bool(const json& v, const std::string& f) {
  if (!v.is_boolean()) bad(f, "must be true or false");
  return v.get<bool>();
}

// Image file bytes (PNG/JPEG/WebP) decoded under the limits.
DecodedImage decode_image_bytes(const std::string& bytes, const std::string& f, const RequestLimits& lim) {
  ImageLimits il;
  il.max_width = il.max_height = lim.max_image_side;
  il.max_pixels = lim.max_image_pixels;
  try {
    return decode_image(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), il);
  } catch (const Error& e) {
    bad(f, std::string("is not a usable image: ") + e.what());
  }
}

// A base64 image (bare, or a data: URI as browsers make them), decoded under the limits.
DecodedImage get_image(const json& v, const std::string& f, const RequestLimits& lim) {
  std::string s = get_string(v, f, size_t(256) << 20);
  if (s.rfind("data:", 0) == 0) {
    const size_t comma = s.find(',');
    if (comma == std::string::npos) bad(f, "is a data: URI without data");
    s.erase(0, comma + 1);
  }
  std::string bytes;
  try {
    bytes = base64_decode(s);
  } catch (const Error&) {
    bad(f, "is not valid base64");
  }
  return decode_image_bytes(bytes, f, lim);
}

// An image named by URL: downloaded by the server's guarded GET (net/fetch.h), then decoded as
// an inline one. The net errors keep their types (http_error maps them) with the field named.
DecodedImage get_image_url(const std::string& url, const std::string& f, const RequestLimits& lim,
                           const UrlFetcher& fetch) {
  const std::string where = "field '" + f + "': ";
  if (!fetch)
    throw net::UrlFetchDisabled(where +
                                "this server does not fetch images by URL; start it with --allow-url-fetch "
                                "(or SDSERVE_ALLOW_URL_FETCH=1), or send the image inline as base64");
  std::string bytes;
  try {
    bytes = fetch(url);
  } catch (const net::UrlRefused& e) {
    throw net::UrlRefused(where + e.what());
  } catch (const net::FetchFailed& e) {
    throw net::FetchFailed(where + e.what());
  } catch (const InvalidArgument& e) {
    throw InvalidArgument(where + e.what());
  }
  return decode_image_bytes(bytes, f, lim);
}

OutpaintMargins get_outpaint(const json& v, const std::string& f) {
  if (v.is_string()) return parse_outpaint(v.get<std::string>());
  if (!v.is_object()) bad(f, "must be {\"left\", \"right\", \"top\", \"bottom\"} pixel counts");
  OutpaintMargins m;
  for (auto [name, ptr] : {std::pair{"left", &m.left}, {"right", &m.right}, {"top", &m.top}, {"bottom", &m.bottom}})
    if (v.contains(name)) *ptr = int(get_int(v[name], f + "." + name, 0, 4096));
  return m;
}

}  // namespace

json parse_json_body(const std::string& body) {
  // nlohmann's lexer stops at a NUL byte, so "{}\0anything" would pass: refuse NULs outright.
  if (body.find('\0') != std::string::npos) throw InvalidArgument("the body is not valid JSON: it holds a NUL byte");
  json j;
  try {
    j = json::parse(body);
  } catch (const json::exception& e) {
    throw InvalidArgument("the body is not valid JSON: " + printable(e.what(), 300));
  }
  if (!j.is_object()) throw InvalidArgument("the body must be a JSON object");
  return j;
}

JobOptions parse_job_options(const json& body) {
  JobOptions o;
  if (auto it = body.find("output_format"); it != body.end() && !it->is_null()) {
    const std::string f = get_string(*it, "output_format", 16);
    std::string l = f;
    for (char& c : l) c = char(std::tolower(static_cast<unsigned char>(c)));
    if (l == "jpg") l = "jpeg";
    if (l != "png" && l != "jpeg" && l != "webp") bad("output_format", "must be png, jpeg or webp");
    o.output_format = l;
  }
  if (auto it = body.find("quality"); it != body.end() && !it->is_null() && it->is_number())
    o.quality = int(get_int(*it, "quality", 1, 100));  // (OpenAI's "quality" is a string: ignored)
  if (auto it = body.find("preview_every"); it != body.end() && !it->is_null())
    o.preview_every = int(get_int(*it, "preview_every", 0, 1000));
  if (auto it = body.find("model"); it != body.end() && !it->is_null()) o.model = get_string(*it, "model", 512);
  if (auto os = body.find("override_settings"); os != body.end() && os->is_object())
    if (auto it = os->find("sd_model_checkpoint"); it != os->end() && !it->is_null() && o.model.empty())
      o.model = get_string(*it, "override_settings.sd_model_checkpoint", 512);
  return o;
}

ParsedRequest parse_generate_request(const json& body, const RequestLimits& lim, const UrlFetcher& fetch_url) {
  if (!body.is_object()) throw InvalidArgument("the body must be a JSON object");
  ParsedRequest p;
  GenerateRequest& r = p.req;
  bool have_prompt = false;
  std::optional<DecodedImage> init, mask;
  std::optional<std::pair<std::string, std::string>> init_url, mask_url;  // (field, URL), fetched last
  std::optional<double> denoise;
  Img2ImgOptions io;
  for (const auto& [key, v] : body.items()) {
    if (v.is_null()) continue;  // A1111 clients send null for "default"
    if (key == "type") {
      p.type = get_string(v, key, 32);
    } else if (key == "prompt") {
      r.prompt = get_string(v, key, lim.max_prompt_chars);
      have_prompt = true;
    } else if (key == "negative_prompt") {
      r.negative_prompt = get_string(v, key, lim.max_prompt_chars);
    } else if (key == "width") {
      r.width = int(get_int(v, key, 8, lim.max_width));
    } else if (key == "height") {
      r.height = int(get_int(v, key, 8, lim.max_height));
    } else if (key == "steps" || key == "num_inference_steps") {
      r.steps = int(get_int(v, key, 1, lim.max_steps));
    } else if (key == "cfg_scale" || key == "guidance_scale") {
      r.cfg_scale = get_float(v, key);
    } else if (key == "sampler" || key == "sampler_name" || key == "sampler_index") {
      r.sampler = get_string(v, key, 64);
    } else if (key == "scheduler" || key == "schedule") {
      r.schedule = get_string(v, key, 64);
    } else if (key == "seed") {
      r.seed = get_int(v, key, -1, std::numeric_limits<int64_t>::max() - 64);
    } else if (key == "batch_size" || key == "n") {
      r.batch_size = int(get_int(v, key, 1, lim.max_batch));
    } else if (key == "clip_skip") {
      r.clip_skip = int(get_int(v, key, 1, 12));
    } else if (key == "eta") {
      r.eta = get_float(v, key);
    } else if (key == "guidance_rescale") {
      r.guidance_rescale = get_float(v, key);
    } else if (key == "rng") {
      r.rng = parse_rng(get_string(v, key, 16));
    } else if (key == "vae_tiling" || key == "tiling") {
      r.vae_tiling = get_bool(v, key);
    } else if (key == "init_images") {
      if (!v.is_array() || v.empty()) bad(key, "must be a list with one base64 image");
      if (v.size() > 1) bad(key, "holds " + std::to_string(v.size()) + " images; send one per request");
      init = get_image(v[0], "init_images[0]", lim);
    } else if (key == "init_image" || key == "image") {
      init = get_image(v, key, lim);
    } else if (key == "mask" || key == "mask_image") {
      mask = get_image(v, key, lim);
    } else if (key == "url" || key == "init_image_url") {
      init_url.emplace(key, get_string(v, key, 16384));
    } else if (key == "mask_url") {
      mask_url.emplace(key, get_string(v, key, 16384));
    } else if (key == "denoising_strength" || key == "strength") {
      get_float(v, key);          // the checks: a finite number
      denoise = v.get<double>();  // as sent: 0.6 stays 0.6 in the answer (not float(0.6))
    } else if (key == "resize_mode") {
      io.resize_mode =
          parse_resize_mode(v.is_string() ? get_string(v, key, 32) : std::to_string(get_int(v, key, 0, 3)));
    } else if (key == "mask_blur") {
      // 64 as in A1111's UI: the cv2 kernel grows with the blur, so larger values from an untrusted
      // body would cost minutes of CPU on a large image.
      io.mask_blur_x = io.mask_blur_y = double(get_int(v, key, 0, 64));
    } else if (key == "mask_blur_x") {
      io.mask_blur_x = double(get_int(v, key, 0, 64));
    } else if (key == "mask_blur_y") {
      io.mask_blur_y = double(get_int(v, key, 0, 64));
    } else if (key == "inpainting_fill") {
      io.masked_content = MaskedContent(get_int(v, key, 0, 3));
    } else if (key == "inpaint_full_res") {
      io.only_masked = v.is_boolean() ? v.get<bool>() : get_int(v, key, 0, 1) == 1;
    } else if (key == "inpaint_full_res_padding") {
      io.only_masked_padding = int(get_int(v, key, 0, 4096));
    } else if (key == "inpainting_mask_invert") {
      io.mask_invert = v.is_boolean() ? v.get<bool>() : get_int(v, key, 0, 1) == 1;
    } else if (key == "outpaint") {
      io.outpaint = get_outpaint(v, key);
    } else if (key == "enable_hr") {
      r.hires.enabled = get_bool(v, key);
    } else if (key == "hr_scale") {
      r.hires.scale = get_float(v, key);
    } else if (key == "hr_upscaler") {
      r.hires.upscaler = get_string(v, key, 128);
    } else if (key == "hr_second_pass_steps") {
      r.hires.steps = int(get_int(v, key, 0, lim.max_steps));
    } else if (key == "hr_resize_x") {
      r.hires.width = int(get_int(v, key, 0, lim.max_width));
    } else if (key == "hr_resize_y") {
      r.hires.height = int(get_int(v, key, 0, lim.max_height));
    } else if (key == "output_format" || key == "quality" || key == "preview_every" || key == "model" ||
               key == "override_settings") {
      // job options: parse_job_options below
    } else if (key == "loras") {
      if (!v.is_array()) bad(key, "must be a list of {\"name\", \"weight\"} objects");
      if (v.size() > lim.max_loras) bad(key, "lists more than " + std::to_string(lim.max_loras) + " networks");
      for (size_t i = 0; i < v.size(); ++i) {
        const json& e = v[i];
        const std::string f = "loras[" + std::to_string(i) + "]";
        if (!e.is_object() || !e.contains("name")) bad(f, "must be an object with a \"name\"");
        LoraRequest l;
        l.name = get_string(e["name"], f + ".name", 256);
        if (l.name.empty()) bad(f + ".name", "must not be empty");
        if (e.contains("weight")) l.te_multiplier = l.unet_multiplier = get_float(e["weight"], f + ".weight");
        if (e.contains("te_weight")) l.te_multiplier = get_float(e["te_weight"], f + ".te_weight");
        if (e.contains("unet_weight")) l.unet_multiplier = get_float(e["unet_weight"], f + ".unet_weight");
        r.loras.push_back(l);
      }
    } else {
      p.ignored.push_back(key);
    }
  }
  if (!have_prompt) throw InvalidArgument("field 'prompt' is required");
  p.options = parse_job_options(body);
  if (r.hires.enabled) {
    const GenerateRequest second = hires_second_pass(r);
    if (second.width > lim.max_width || second.height > lim.max_height)
      bad("hr_scale", "makes a " + std::to_string(second.width) + "x" + std::to_string(second.height) +
                          " image, over this server's limit of " + std::to_string(lim.max_width) + "x" +
                          std::to_string(lim.max_height));
    if (denoise) r.hires.denoise = *denoise;
  }
  if (init && init_url) bad(init_url->first, "and an inline init image were both given: send one");
  if (mask && mask_url) bad(mask_url->first, "and an inline mask were both given: send one");
  if ((mask || mask_url || io.outpaint.any()) && !init && !init_url)
    bad(mask ? "mask" : mask_url ? "mask_url" : "outpaint", "needs an init image (init_images)");
  if (init || init_url) {
    if (r.hires.enabled) bad("enable_hr", "is for txt2img; send the target size with the init image instead");
    if (denoise) r.strength = *denoise;
    validate_request(r);  // cheap checks before the image work
    if (init_url) init = get_image_url(init_url->second, init_url->first, lim, fetch_url);
    if (mask_url) mask = get_image_url(mask_url->second, mask_url->first, lim, fetch_url);
    auto prep =
        std::make_shared<PreparedImg2Img>(prepare_img2img(*init, mask ? &*mask : nullptr, r.width, r.height, io));
    r.init_image = prep->init;
    r.mask = prep->mask;
    r.masked_content = prep->masked_content;
    r.init_latent_resize = prep->latent_resize;
    p.prep = prep;
    p.type = "img2img";
  }
  validate_request(r);  // sampler names, ranges the engine enforces
  return p;
}

}  // namespace sdserve::server
