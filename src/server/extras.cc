#include "server/extras.h"

#include <algorithm>
#include <cmath>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/utf8.h"
#include "io/image.h"
#include "io/resize.h"
#include "pipeline/stable_diffusion.h"
#include "pipeline/upscale.h"
#include "server/http_util.h"

namespace sdserve::server {

using json = nlohmann::json;

namespace {

[[noreturn]] void bad(const std::string& field, const std::string& what) {
  throw InvalidArgument("field '" + printable(field) + "' " + what);
}

double get_number(const json& v, const std::string& f, double lo, double hi) {
  if (!v.is_number()) bad(f, "must be a number");
  const double d = v.get<double>();
  if (!std::isfinite(d) || d < lo || d > hi) bad(f, "must be between " + json(lo).dump() + " and " + json(hi).dump());
  return d;
}

int get_int(const json& v, const std::string& f, int lo, int hi) {
  const double d = get_number(v, f, lo, hi);
  if (d != std::floor(d)) bad(f, "must be an integer");
  return int(d);
}

bool get_flag(const json& v, const std::string& f) {  // A1111 clients send true/false or 0/1
  if (v.is_boolean()) return v.get<bool>();
  return get_int(v, f, 0, 1) == 1;
}

std::string get_str(const json& v, const std::string& f, size_t max_len) {
  if (!v.is_string()) bad(f, "must be a string");
  std::string s = v.get<std::string>();
  if (s.size() > max_len) bad(f, "is longer than " + std::to_string(max_len) + " bytes");
  return s;
}

bool builtin(const std::string& name, const char* which) {
  std::string l = name;
  for (char& c : l) c = char(std::tolower(static_cast<unsigned char>(c)));
  return l == which;
}

// The path of model `name` in `dir` (a file stem: never a path), or empty.
std::string upscaler_file(const std::optional<std::string>& dir, const std::string& name) {
  if (!dir || name.empty() || name.find('/') != std::string::npos || name.find('\\') != std::string::npos ||
      name == "." || name == ".." ||
      std::any_of(name.begin(), name.end(), [](char c) { return static_cast<unsigned char>(c) < 0x20; }))
    return {};
  for (const char* ext : {".safetensors", ".pth", ".pt"}) {
    const std::filesystem::path p = std::filesystem::path(*dir) / (name + ext);
    std::error_code ec;
    if (std::filesystem::is_regular_file(p, ec)) return p.string();
  }
  return {};
}

void check_upscaler(const std::string& name, const std::string& field, const std::optional<std::string>& dir) {
  if (builtin(name, "none") || builtin(name, "lanczos") || builtin(name, "nearest") ||
      !upscaler_file(dir, name).empty())
    return;
  std::string list;
  for (const std::string& n : extras_upscaler_names(dir)) list += (list.empty() ? "" : ", ") + n;
  throw NotFoundError("field '" + field + "': upscaler \"" + printable(name, 128) + "\" is not available: use one of " +
                      list + (dir ? "" : " (ESRGAN models need --upscaler-dir)"));
}

UpscaleInput decode_input(const json& v, const std::string& f, const RequestLimits& lim) {
  std::string s = get_str(v, f, size_t(256) << 20);
  if (s.rfind("data:", 0) == 0) {
    const size_t comma = s.find(',');
    if (comma == std::string::npos) bad(f, "is a data: URI without data");
    s.erase(0, comma + 1);
  }
  const std::string bytes = base64_decode(s);
  ImageLimits il;
  il.max_width = il.max_height = lim.max_image_side;
  il.max_pixels = lim.max_image_pixels;
  DecodedImage img;
  try {
    img = to_rgb(decode_image(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), il));
  } catch (const Error& e) {
    bad(f, std::string("is not a usable image: ") + e.what());
  }
  UpscaleInput in;
  in.width = img.width;
  in.height = img.height;
  in.rgb = std::move(img.pixels);
  in.text = std::move(img.text);
  return in;
}

struct Plan {
  double by = 1;           // the factor the upscalers are asked for
  int64_t uw = 0, uh = 0;  // int(w * by) x int(h * by)
  int64_t ow = 0, oh = 0;  // after the crop (mode 1)
};

Plan plan(const UpscaleSpec& s, int w, int h) {
  Plan p;
  p.by = s.mode == 1 ? std::max(double(s.width) / w, double(s.height) / h) : s.scale;
  p.uw = int64_t(std::floor(w * p.by));
  p.uh = int64_t(std::floor(h * p.by));
  p.ow = s.mode == 1 && s.crop ? s.width : p.uw;
  p.oh = s.mode == 1 && s.crop ? s.height : p.uh;
  return p;
}

void check_size(const UpscaleSpec& s, const UpscaleInput& in, const std::string& what, const RequestLimits& lim) {
  if (builtin(s.upscaler_1, "none")) return;
  const Plan p = plan(s, in.width, in.height);
  const std::string field = s.mode == 1 ? "upscaling_resize_w" : "upscaling_resize";
  const auto size = [](int64_t a, int64_t b) { return std::to_string(a) + "x" + std::to_string(b); };
  if (p.uw < 1 || p.uh < 1) bad(field, "makes " + what + " empty (" + size(p.uw, p.uh) + ")");
  for (auto [w, h] : {std::pair{p.uw, p.uh}, std::pair{p.ow, p.oh}})
    if (w > int64_t(lim.max_image_side) || h > int64_t(lim.max_image_side) || uint64_t(w * h) > lim.max_image_pixels)
      bad(field, "makes " + what + " " + size(w, h) + ", over this server's limit of " +
                     std::to_string(lim.max_image_side) + " pixels a side and " + std::to_string(lim.max_image_pixels) +
                     " pixels (--max-image-side, --max-image-pixels)");
}

// One upscaler over one image, by the plan's factor (A1111's Upscaler.upscale; sdserve upscale --scale).
std::vector<uint8_t> upscale_one(const std::string& name, const UpscaleWork& work, const UpscaleInput& in,
                                 const Plan& p, const std::function<bool(int, int)>& progress) {
  if (builtin(name, "lanczos") || builtin(name, "nearest"))
    return resize_image(in.rgb.data(), in.width, in.height, 3, int(p.uw), int(p.uh),
                        builtin(name, "lanczos") ? ResizeFilter::Lanczos : ResizeFilter::Nearest);
  const Upscaler up = Upscaler::open(upscaler_file(work.upscaler_dir, name), work.device, work.dtype);
  // The network runs until the image reaches the target (at most 3 times, stopping when it does not
  // grow): the largest image it makes must fit in 4x the pixel cap.
  int64_t w = in.width, h = in.height;
  for (int i = 0; i < 3 && up.scale() > 1; ++i) {
    if (w >= p.uw && h >= p.uh && (i > 0 || p.by != 1)) break;
    w *= up.scale(), h *= up.scale();
  }
  if (uint64_t(w) * uint64_t(h) > 4 * work.limits.max_image_pixels || w > 4 * int64_t(work.limits.max_image_side) ||
      h > 4 * int64_t(work.limits.max_image_side))
    throw InvalidArgument("upscaler \"" + name + "\" (x" + std::to_string(up.scale()) + ") would make a " +
                          std::to_string(w) + "x" + std::to_string(h) +
                          " image on the way, over 4 times this server's --max-image-pixels");
  UpscaleOptions opt;
  opt.progress = progress;
  try {
    return up.upscale_by(in.rgb.data(), in.width, in.height, p.by, opt).rgb;
  } catch (const UpscaleCancelled&) {
    throw Cancelled();
  }
}

// A1111's postprocessing_upscale crop: the image pasted centred on a black width x height canvas.
std::vector<uint8_t> center_crop(const std::vector<uint8_t>& rgb, int64_t w, int64_t h, int64_t W, int64_t H) {
  std::vector<uint8_t> out(size_t(W * H * 3), 0);
  const int64_t ox = W / 2 - w / 2, oy = H / 2 - h / 2;
  for (int64_t y = 0; y < h; ++y) {
    const int64_t ty = y + oy;
    if (ty < 0 || ty >= H) continue;
    const int64_t x0 = std::max<int64_t>(0, -ox), x1 = std::min<int64_t>(w, W - ox);
    if (x1 <= x0) continue;
    std::copy(rgb.begin() + (y * w + x0) * 3, rgb.begin() + (y * w + x1) * 3, out.begin() + (ty * W + x0 + ox) * 3);
  }
  return out;
}

std::string py_float(double v) { return json(v).dump(); }  // 2.0 -> "2.0", as Python's str(float)

}  // namespace

std::vector<std::string> extras_upscaler_names(const std::optional<std::string>& dir) {
  std::vector<std::string> names{"None", "Lanczos", "Nearest"};
  if (!dir) return names;
  std::vector<std::string> files;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(*dir, ec)) {
    const std::string ext = e.path().extension().string();
    if (e.is_regular_file(ec) && (ext == ".safetensors" || ext == ".pth" || ext == ".pt"))
      files.push_back(e.path().stem().string());
  }
  std::sort(files.begin(), files.end());
  files.erase(std::unique(files.begin(), files.end()), files.end());
  names.insert(names.end(), files.begin(), files.end());
  return names;
}

std::shared_ptr<UpscaleWork> parse_upscale_request(const json& body, bool batch,
                                                   const std::optional<std::string>& upscaler_dir,
                                                   const RequestLimits& lim) {
  if (!body.is_object()) throw InvalidArgument("the body must be a JSON object");
  auto work = std::make_shared<UpscaleWork>();
  work->upscaler_dir = upscaler_dir;
  work->limits = lim;
  UpscaleSpec& s = work->spec;
  const bool native = body.contains("type");
  bool have_image = false, have_upscaler = false, have_w = false, have_h = false;
  for (const auto& [key, v] : body.items()) {
    if (v.is_null()) continue;
    if (key == "resize_mode") {
      s.mode = get_int(v, key, 0, 1);
    } else if (key == "upscaling_resize" || key == "scale") {
      s.scale = get_number(v, key, 0.01, 16);
    } else if (key == "upscaling_resize_w" || key == "width") {
      s.width = get_int(v, key, 1, 65536);
      have_w = true;
    } else if (key == "upscaling_resize_h" || key == "height") {
      s.height = get_int(v, key, 1, 65536);
      have_h = true;
    } else if (key == "upscaling_crop" || key == "crop") {
      s.crop = get_flag(v, key);
    } else if (key == "upscaler_1" || key == "upscaler") {
      s.upscaler_1 = get_str(v, key, 256);
      have_upscaler = true;
    } else if (key == "upscaler_2") {
      s.upscaler_2 = get_str(v, key, 256);
    } else if (key == "extras_upscaler_2_visibility" || key == "upscaler_2_visibility") {
      s.visibility_2 = get_number(v, key, 0, 1);
    } else if (key == "gfpgan_visibility" || key == "codeformer_visibility") {
      if (get_number(v, key, 0, 1) != 0)
        throw UnsupportedError("field '" + key +
                               "': face restoration (GFPGAN, CodeFormer) is not available here; send 0");
    } else if (!batch && (key == "image" || key == "init_image")) {
      work->images.push_back(decode_input(v, key, lim));
      have_image = true;
    } else if (batch && key == "imageList") {
      if (!v.is_array() || v.empty()) bad(key, "must be a list of {\"data\", \"name\"} objects");
      if (v.size() > 64) bad(key, "holds " + std::to_string(v.size()) + " images; at most 64 per request");
      // Decoded pixels add up: a few KB of flat PNG can each decode to the full pixel cap, so the
      // batch as a whole may hold at most 4x the per-image cap.
      int64_t total_pixels = 0;
      for (size_t i = 0; i < v.size(); ++i) {
        const std::string f = "imageList[" + std::to_string(i) + "]";
        if (!v[i].is_object() || !v[i].contains("data")) bad(f, "must be an object with \"data\" (base64)");
        UpscaleInput in = decode_input(v[i]["data"], f + ".data", lim);
        total_pixels += int64_t(in.width) * in.height;
        if (total_pixels > 4 * int64_t(lim.max_image_pixels))
          bad(key, "decodes to more than " + std::to_string(4 * int64_t(lim.max_image_pixels)) +
                       " pixels in all (4x --max-image-pixels); send fewer or smaller images per request");
        if (v[i].contains("name") && v[i]["name"].is_string()) in.name = v[i]["name"].get<std::string>();
        work->images.push_back(std::move(in));
      }
      have_image = true;
    }
    // Everything else (show_extras_results, upscale_first, codeformer_weight, type, output_format,
    // quality, A1111 options we do not have) is accepted and has no effect here.
  }
  if (!have_image) {
    if (batch) bad("imageList", "is required (a list of {\"data\": base64, \"name\"})");
    bad("image", "is required (a base64 PNG, JPEG or WebP, or a data: URI)");
  }
  if (native) {
    if (!have_upscaler) bad("upscaler", "is required: \"Lanczos\", \"Nearest\" or a model's name");
    if (have_w || have_h) {
      if (!(have_w && have_h))
        bad(have_w ? "height" : "width", "is required with " + std::string(have_w ? "width" : "height"));
      s.mode = 1;
    }
  }
  check_upscaler(s.upscaler_1, native ? "upscaler" : "upscaler_1", upscaler_dir);
  check_upscaler(s.upscaler_2, "upscaler_2", upscaler_dir);
  for (size_t i = 0; i < work->images.size(); ++i)
    check_size(s, work->images[i], batch ? "image " + std::to_string(i) : "the image", lim);
  return work;
}

UpscaleResult run_upscale(const UpscaleWork& work, const std::function<bool(int, int)>& progress) {
  const UpscaleSpec& s = work.spec;
  UpscaleResult out;
  const bool use2 = !builtin(s.upscaler_2, "none") && s.visibility_2 > 0;
  const int total = int(work.images.size());
  for (int idx = 0; idx < total; ++idx) {
    const UpscaleInput& in = work.images[size_t(idx)];
    if (progress && !progress(idx, total)) throw Cancelled();
    std::vector<std::pair<std::string, std::string>> info;  // A1111's pp.info, in its order
    std::vector<uint8_t> rgb = in.rgb;
    int64_t w = in.width, h = in.height;
    if (!builtin(s.upscaler_1, "none")) {
      const Plan p = plan(s, in.width, in.height);
      const auto pass = [&](const std::string& name) {
        std::vector<uint8_t> px = upscale_one(name, work, in, p, progress);
        return s.mode == 1 && s.crop ? center_crop(px, p.uw, p.uh, p.ow, p.oh) : px;
      };
      if (s.mode == 1)
        info.emplace_back("Postprocess upscale to", std::to_string(s.width) + "x" + std::to_string(s.height));
      else
        info.emplace_back("Postprocess upscale by", py_float(s.scale));
      if (s.mode == 1 && s.crop)
        info.emplace_back("Postprocess crop to", std::to_string(p.ow) + "x" + std::to_string(p.oh));
      rgb = pass(s.upscaler_1);
      info.emplace_back("Postprocess upscaler", s.upscaler_1);
      if (use2) {
        const std::vector<uint8_t> second = pass(s.upscaler_2);
        // PIL's Image.blend: in1 + alpha * (in2 - in1) in float, clipped, truncated.
        const float a = float(s.visibility_2);
        if (a == 1.f) {
          rgb = second;
        } else if (a != 0.f) {
          for (size_t k = 0; k < rgb.size(); ++k) {
            const float t = float(int(rgb[k])) + a * float(int(second[k]) - int(rgb[k]));
            rgb[k] = t <= 0.f ? 0 : t >= 255.f ? 255 : uint8_t(t);
          }
        }
        info.emplace_back("Postprocess upscaler 2", s.upscaler_2);
      }
      w = p.ow, h = p.oh;
    }
    std::string text;
    for (const auto& [k, v] : info) {
      const bool plain = v.find_first_of(",\n:") == std::string::npos;
      text += (text.empty() ? "" : ", ") + k + ": " + (plain ? v : json(v).dump());
    }
    PngText chunks;
    for (const auto& kv : in.text)
      if (kv.first != "postprocessing") chunks.push_back(kv);
    if (!text.empty()) chunks.emplace_back("postprocessing", text);
    out.pngs.push_back(encode_png(rgb.data(), int(w), int(h), 3, chunks));
    out.infotexts.push_back(text);
  }
  if (progress) progress(total, total);
  return out;
}

std::string plaintext_to_html(const std::string& text) {
  std::string out = "<p>";
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#x27;";
        break;
      case '\n':
        out += "<br>\n";
        break;
      default:
        out += c;
    }
  }
  return out + "</p>";
}

std::string parse_output_format(const std::string& value, const std::string& field) {
  std::string l = value;
  for (char& c : l) c = char(std::tolower(static_cast<unsigned char>(c)));
  if (l == "png" || l == "image/png") return "png";
  if (l == "jpeg" || l == "jpg" || l == "image/jpeg") return "jpeg";
  if (l == "webp" || l == "image/webp") return "webp";
  throw InvalidArgument("field '" + field + "' must be png, jpeg or webp (got \"" + printable(value, 64) + "\")");
}

const char* image_mime(const std::string& format) {
  return format == "jpeg" ? "image/jpeg" : format == "webp" ? "image/webp" : "image/png";
}

std::string convert_image(const std::vector<uint8_t>& png, const std::string& format, int quality,
                          const std::string& infotext) {
  if (format == "png") return std::string(png.begin(), png.end());
  const DecodedImage im = decode_png(png.data(), png.size());
  const std::vector<uint8_t> out =
      encode_image(format, im.pixels.data(), im.width, im.height, im.channels, quality, infotext);
  return std::string(out.begin(), out.end());
}

std::vector<uint8_t> latent_preview_png(const float* latents, int64_t channels, int64_t height, int64_t width,
                                        int64_t index) {
  if (channels != 4 || height < 1 || width < 1) return {};
  // sd_vae_approx.cheap_approximation's SD1 coefficients: rgb[c] = sum_l latent[l] * coeffs[l][c].
  static const float coeffs[4][3] = {
      {0.298f, 0.207f, 0.208f}, {0.187f, 0.286f, 0.173f}, {-0.158f, 0.189f, 0.264f}, {-0.184f, -0.271f, -0.473f}};
  const int64_t plane = height * width;
  const float* x = latents + index * channels * plane;
  std::vector<uint8_t> rgb(size_t(plane * 3));
  for (int64_t p = 0; p < plane; ++p)
    for (int c = 0; c < 3; ++c) {
      float v = 0;
      for (int l = 0; l < 4; ++l) v += x[l * plane + p] * coeffs[l][c];
      v = std::clamp(v * 0.5f + 0.5f, 0.f, 1.f);  // single_sample_to_image: * 0.5 + 0.5, clamp, * 255, astype(uint8)
      rgb[size_t(p * 3 + c)] = uint8_t(255.f * v);
    }
  return encode_png(rgb.data(), int(width), int(height), 3, {}, 1);
}

}  // namespace sdserve::server
