// Reading LoRA-family files: keys grouped into modules, factors checked, scales worked out.
#include "pipeline/lora.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/utf8.h"
#include "io/safetensors.h"
#include "io/sha256.h"

namespace sdserve {

namespace {

// Tensor-name endings, longest first where one ends another. role "" = a known feature we do not
// merge (the string after '|' says which).
struct Suffix {
  const char* suffix;
  const char* role;
};
constexpr Suffix kSuffixes[] = {
    // kohya / LyCORIS LoRA and LoCon
    {"lora_down.weight", "down"},
    {"lora_up.weight", "up"},
    {"lora_mid.weight", "mid"},
    // diffusers / PEFT
    {"lora_A.default.weight", "down"},
    {"lora_B.default.weight", "up"},
    {"lora_A.weight", "down"},
    {"lora_B.weight", "up"},
    // diffusers before PEFT (attention processors, LoRACompatibleLinear)
    {"lora_linear_layer.down.weight", "down"},
    {"lora_linear_layer.up.weight", "up"},
    {"lora.down.weight", "down"},
    {"lora.up.weight", "up"},
    // LyCORIS LoHa / LoKr / full
    {"hada_w1_a", "h1a"},
    {"hada_w1_b", "h1b"},
    {"hada_w2_a", "h2a"},
    {"hada_w2_b", "h2b"},
    {"lokr_w1_a", "w1a"},
    {"lokr_w1_b", "w1b"},
    {"lokr_w2_a", "w2a"},
    {"lokr_w2_b", "w2b"},
    {"lokr_w1", "w1"},
    {"lokr_w2", "w2"},
    {"diff", "diff"},
    {"alpha", "alpha"},
    // recognised, not merged
    {"dora_scale", "|DoRA (weight-decomposed LoRA)"},
    {"lora_magnitude_vector.weight", "|DoRA (weight-decomposed LoRA)"},
    {"lora_magnitude_vector", "|DoRA (weight-decomposed LoRA)"},
    {"hada_t1", "|LoHa with a Tucker decomposition"},
    {"hada_t2", "|LoHa with a Tucker decomposition"},
    {"lokr_t2", "|LoKr with a Tucker decomposition"},
    {"diff_b", "|bias updates"},
    {"bias_indices", "|bias updates"},
    {"bias_values", "|bias updates"},
    {"bias_size", "|bias updates"},
    {"oft_blocks", "|OFT"},
    {"oft_diag", "|OFT"},
    {"w_norm", "|norm-layer updates"},
    {"b_norm", "|norm-layer updates"},
};

bool ends_with(const std::string& s, const std::string& e) {
  return s.size() >= e.size() && s.compare(s.size() - e.size(), e.size(), e) == 0;
}

std::string shape_of(const Tensor& t) { return shape_str(t.shape()); }

// Names from a file, quoted for a one-line message whatever bytes they hold.
std::string q(std::string_view s) {
  std::string out(1, '\'');  // appended, not "'" + ...: GCC 12 warns falsely (-Wrestrict) on that
  out += printable(s);
  out += '\'';
  return out;
}

// "text_encoder." / "unet." for PEFT keys; "" otherwise.
std::string peft_component(const std::string& module) {
  for (const char* c : {"unet.", "text_encoder."})
    if (module.rfind(c, 0) == 0) return std::string(c, std::strlen(c) - 1);
  return "";
}

// diffusers' LoraConfig per component, from __metadata__["lora_adapter_metadata"].
struct PeftConfig {
  std::optional<double> alpha;
  std::map<std::string, double> alpha_pattern;
  bool rslora = false;
};

// PEFT matches a pattern key against the module path: the module is the key or ends with "." + key.
// Patterns are taken literally here (PEFT reads them as regular expressions; the names diffusers
// writes are plain module names).
bool pattern_matches(const std::string& module, const std::string& pattern) {
  return module == pattern || ends_with(module, "." + pattern);
}

std::map<std::string, PeftConfig> peft_configs(const SafeTensorsFile& f) {
  std::map<std::string, PeftConfig> out;
  auto it = f.metadata().find("lora_adapter_metadata");
  if (it == f.metadata().end()) return out;
  nlohmann::json j = nlohmann::json::parse(it->second, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) throw ModelFormatError(f.path() + ": header metadata lora_adapter_metadata is not a JSON object");
  for (const char* comp : {"unet", "text_encoder"}) {
    const std::string p = std::string(comp) + ".";
    PeftConfig c;
    if (auto a = j.find(p + "lora_alpha"); a != j.end() && a->is_number()) c.alpha = a->get<double>();
    if (auto a = j.find(p + "alpha_pattern"); a != j.end() && a->is_object())
      for (auto& [k, v] : a->items())
        if (v.is_number()) c.alpha_pattern[k] = v.get<double>();
    if (auto a = j.find(p + "use_rslora"); a != j.end() && a->is_boolean()) c.rslora = a->get<bool>();
    if (auto a = j.find(p + "use_dora"); a != j.end() && a->is_boolean() && a->get<bool>())
      throw UnsupportedError(f.path() +
                             ": DoRA adapters (use_dora in the header) are not supported; merge "
                             "the DoRA into a plain LoRA, or use a LoRA");
    out[comp] = c;
  }
  return out;
}

float scalar_value(const SafeTensorsFile& f, const TensorInfo& info) {
  if (shape_numel(info.shape) != 1)
    throw ModelFormatError(f.path() + ": tensor " + q(info.name) + " should hold one number, has shape " +
                           shape_str(info.shape));
  const auto bytes = f.tensor_bytes(info);
  switch (info.dtype) {
    case DType::I64: {
      int64_t v;
      std::memcpy(&v, bytes.data(), 8);
      return float(v);
    }
    case DType::I32: {
      int32_t v;
      std::memcpy(&v, bytes.data(), 4);
      return float(v);
    }
    case DType::F64: {
      double v;
      std::memcpy(&v, bytes.data(), 8);
      return float(v);
    }
    default:
      if (!is_float(info.dtype))
        throw ModelFormatError(f.path() + ": tensor " + q(info.name) + " has dtype " + dtype_name(info.dtype) +
                               "; alpha must be a number");
      return f.get_as(info.name, DType::F32).data<float>()[0];
  }
}

// Checks ranks and inner sizes of a module's factors; works out its kind and scale.
void finish_module(const std::string& path, LoraModule& m, std::optional<float> alpha,
                   const std::map<std::string, PeftConfig>& peft) {
  auto has = [&](const char* r) { return m.t.count(r) > 0; };
  auto where = [&](const char* r) { return path + ": tensor " + q(m.stored_key.at(r)); };
  auto need = [&](const char* r) {
    if (!has(r))
      throw ModelFormatError(path + ": module " + q(m.key) + " has no " + r + " factor (the file is incomplete)");
    return m.t.at(r);
  };
  auto dims = [&](const char* r, int lo, int hi) {
    const Tensor& t = m.t.at(r);
    if (t.dim() < lo || t.dim() > hi || t.numel() == 0)
      throw ModelFormatError(where(r) + " has shape " + shape_of(t) + "; expected " + std::to_string(lo) + " to " +
                             std::to_string(hi) + " non-empty dimensions");
  };
  const bool lora = has("up") || has("down") || has("mid");
  const bool loha = has("h1a") || has("h1b") || has("h2a") || has("h2b");
  const bool lokr = has("w1") || has("w2") || has("w1a") || has("w1b") || has("w2a") || has("w2b");
  const int kinds = int(lora) + int(loha) + int(lokr) + int(has("diff"));
  if (kinds == 0) throw ModelFormatError(path + ": module " + q(m.key) + " has an alpha but no factors");
  if (kinds > 1) throw ModelFormatError(path + ": module " + q(m.key) + " mixes factors of different network types");

  if (has("diff")) {
    m.kind = LoraModule::Kind::Full;
    dims("diff", 1, 4);
    m.scale = 1.f;  // LyCORIS "full": the difference itself
    return;
  }
  if (lora) {
    m.kind = LoraModule::Kind::LoRA;
    const Tensor up = need("up"), down = need("down");
    dims("up", 2, 4);
    dims("down", 2, 4);
    const int64_t r = down.size(0);
    if (up.size(1) != r)
      throw ModelFormatError(where("up") + " has shape " + shape_of(up) + " but its down factor has rank " +
                             std::to_string(r));
    if (up.dim() == 4 && (up.size(2) != 1 || up.size(3) != 1))
      throw ModelFormatError(where("up") + " has shape " + shape_of(up) + "; an up factor is [out, rank, 1, 1]");
    if (has("mid")) {
      dims("mid", 4, 4);
      const Tensor& mid = m.t.at("mid");
      if (mid.size(0) != r || mid.size(1) != r || down.dim() != 4 || down.size(2) != 1 || down.size(3) != 1)
        throw ModelFormatError(where("mid") + " has shape " + shape_of(mid) + "; with down " + shape_of(down) +
                               " a Tucker mid factor is [rank, rank, kh, kw] and down [rank, in, 1, 1]");
    }
    std::optional<double> a = alpha;
    bool rslora = false;
    if (!a) {
      const std::string comp = peft_component(m.key);
      if (auto it = peft.find(comp); it != peft.end()) {
        const std::string rel = m.key.substr(comp.size() + 1);
        a = it->second.alpha;
        for (const auto& [pattern, v] : it->second.alpha_pattern)
          if (pattern_matches(rel, pattern)) {
            a = v;
            break;
          }
        rslora = it->second.rslora;
      }
    }
    m.scale = a ? float(*a / (rslora ? std::sqrt(double(r)) : double(r))) : 1.f;
    return;
  }
  if (loha) {
    m.kind = LoraModule::Kind::LoHa;
    for (const char* r : {"h1a", "h1b", "h2a", "h2b"}) {
      need(r);
      dims(r, 2, 2);
    }
    const Tensor &w1a = m.t.at("h1a"), &w1b = m.t.at("h1b"), &w2a = m.t.at("h2a"), &w2b = m.t.at("h2b");
    if (w1a.size(1) != w1b.size(0) || w2a.size(1) != w2b.size(0) || w1a.size(0) != w2a.size(0) ||
        w1b.size(1) != w2b.size(1))
      throw ModelFormatError(path + ": module " + q(m.key) + ": LoHa factors " + shape_of(w1a) + " " + shape_of(w1b) +
                             " " + shape_of(w2a) + " " + shape_of(w2b) + " do not fit together");
    m.scale = alpha ? *alpha / float(w1b.size(0)) : 1.f;
    return;
  }
  m.kind = LoraModule::Kind::LoKr;
  for (const char* side : {"w1", "w2"}) {
    const std::string a = std::string(side) + "a", b = std::string(side) + "b";
    if (has(side)) {
      if (has(a.c_str()) || has(b.c_str()))
        throw ModelFormatError(path + ": module " + q(m.key) + " has both lokr_" + side + " and its factors");
      dims(side, 2, side[1] == '2' ? 4 : 2);
    } else {
      need(a.c_str());
      need(b.c_str());
      dims(a.c_str(), 2, 2);
      dims(b.c_str(), 2, 2);
      if (m.t.at(a).size(1) != m.t.at(b).size(0))
        throw ModelFormatError(path + ": module " + q(m.key) + ": lokr_" + side + "_a " + shape_of(m.t.at(a)) +
                               " and lokr_" + side + "_b " + shape_of(m.t.at(b)) + " do not fit together");
    }
  }
  int64_t rank = 0;
  if (has("w2b"))
    rank = m.t.at("w2b").size(0);
  else if (has("w1b"))
    rank = m.t.at("w1b").size(0);
  m.scale = alpha && rank > 0 ? *alpha / float(rank) : 1.f;
}

}  // namespace

std::string LoraNetwork::name() const { return std::filesystem::path(path_).stem().string(); }

std::shared_ptr<const LoraNetwork> LoraNetwork::open(const std::string& path) {
  return from_file(SafeTensorsFile::open(path));
}

std::shared_ptr<const LoraNetwork> LoraNetwork::from_file(const SafeTensorsFile& f) {
  const std::string path = printable(f.path(), 4096);
  const auto peft = peft_configs(f);
  auto net = std::make_shared<LoraNetwork>();
  net->path_ = path;

  std::map<std::string, size_t> index;  // module key -> modules_ position
  std::map<std::string, float> alphas;
  for (const TensorInfo& info : f.tensors()) {
    const std::string& key = info.name;
    std::string module, role;
    for (const Suffix& s : kSuffixes) {
      const std::string e = std::string(".") + s.suffix;
      if (ends_with(key, e)) {
        module = key.substr(0, key.size() - e.size());
        role = s.role;
        break;
      }
    }
    // diffusers' first LoRA files: "...attn1.processor.to_q_lora.down.weight".
    if (module.empty() && (ends_with(key, "_lora.down.weight") || ends_with(key, "_lora.up.weight"))) {
      const bool down = ends_with(key, ".down.weight");
      module = key.substr(0, key.size() - (down ? 12 : 10));
      role = down ? "down" : "up";
    }
    if (module.empty())
      throw UnsupportedError(path + ": tensor " + q(key) +
                             " is not part of a LoRA, LoCon, LoHa, LoKr or full-diff network we can merge");
    if (!role.empty() && role[0] == '|')
      throw UnsupportedError(path + ": tensor " + q(key) + " is " + role.substr(1) + ", which is not supported");
    if (role == "alpha") {
      alphas[module] = scalar_value(f, info);
      continue;
    }
    if (!is_float(info.dtype))
      throw ModelFormatError(path + ": tensor " + q(key) + " has dtype " + dtype_name(info.dtype) +
                             "; network factors are floating point");
    auto [it, fresh] = index.emplace(module, net->modules_.size());
    if (fresh) {
      net->modules_.emplace_back();
      net->modules_.back().key = module;
    }
    LoraModule& m = net->modules_[it->second];
    if (m.t.count(role))
      throw ModelFormatError(path + ": module " + q(module) + " has two " + role + " factors (" +
                             q(m.stored_key[role]) + " and " + q(key) + ")");
    // A copy: the cache must not keep the file mapped (a file replaced on disk would fault).
    Tensor t = f.get_as(key, DType::F32).clone();
    const float* pt = t.data<float>();
    for (int64_t i = 0, n = t.numel(); i < n; ++i)
      if (!std::isfinite(pt[i])) throw ModelFormatError(path + ": tensor " + q(key) + " holds NaN or infinite values");
    net->bytes_ += t.nbytes();
    m.t[role] = std::move(t);
    m.stored_key[role] = key;
  }
  for (const auto& [module, a] : alphas) {
    if (!index.count(module)) throw ModelFormatError(path + ": " + q(module + ".alpha") + " belongs to no module");
    if (!std::isfinite(a)) throw ModelFormatError(path + ": " + q(module + ".alpha") + " is not a finite number");
  }
  for (LoraModule& m : net->modules_) {
    auto a = alphas.find(m.key);
    finish_module(path, m, a == alphas.end() ? std::nullopt : std::optional<float>(a->second), peft);
  }
  if (net->modules_.empty()) throw ModelFormatError(path + ": the file holds no network (no tensors)");
  const auto raw = f.raw_bytes();
  const size_t data_at = std::min(raw.size(), size_t(8) + f.header_size());
  const auto h = sha256(raw.data() + data_at, raw.size() - data_at);
  net->short_hash_ = to_hex(h.data(), h.size()).substr(0, 12);
  return net;
}

}  // namespace sdserve
