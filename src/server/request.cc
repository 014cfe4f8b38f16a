#include "server/request.h"

#include <cmath>
#include <limits>
#include <set>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/utf8.h"
#include "pipeline/rng.h"

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

ParsedRequest parse_generate_request(const json& body, const RequestLimits& lim) {
  if (!body.is_object()) throw InvalidArgument("the body must be a JSON object");
  ParsedRequest p;
  GenerateRequest& r = p.req;
  bool have_prompt = false;
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
  validate_request(r);  // sampler names, ranges the engine enforces
  return p;
}

}  // namespace sdserve::server
