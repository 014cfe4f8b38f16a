// Merging networks into a model's weights (WeightPatcher) and finding them by name (LoraLibrary).
#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/utf8.h"
#include "cpu/gemm.h"
#include "io/ldm_names.h"
#include "io/sha256.h"
#include "models/clip_text.h"
#include "models/unet.h"
#include "ops/add.h"
#include "ops/linear.h"
#include "pipeline/lora.h"

namespace sdserve {

namespace {

std::string underscored(std::string s) {
  std::replace(s.begin(), s.end(), '.', '_');
  return s;
}

bool starts_with(const std::string& s, const std::string& p) { return s.rfind(p, 0) == 0; }

// A kohya-style key's equivalents in diffusers/PEFT spelling, normalised to our canonical names:
// "base_model.model." dropped, "text_model." restored in text-encoder names (transformers >= 5.6
// omits it), attention-processor names of diffusers' first LoRA files mapped to module names.
std::string normalise_peft(std::string key) {
  if (starts_with(key, "base_model.model.")) key = key.substr(17);
  if (!starts_with(key, "unet.") && !starts_with(key, "text_encoder.")) {
    if (starts_with(key, "text_model.") || starts_with(key, "encoder.layers."))
      key = "text_encoder." + key;
    else
      key = "unet." + key;
  }
  const bool te = starts_with(key, "text_encoder.");
  if (te && !starts_with(key, "text_encoder.text_model.")) key = "text_encoder.text_model." + key.substr(13);
  for (size_t at; (at = key.find(".processor.")) != std::string::npos;) key.erase(at, 10);
  static const std::pair<const char*, const char*> kUnet[] = {
      {".to_q_lora", ".to_q"}, {".to_k_lora", ".to_k"}, {".to_v_lora", ".to_v"}, {".to_out_lora", ".to_out.0"}};
  static const std::pair<const char*, const char*> kTe[] = {
      {".to_q_lora", ".q_proj"}, {".to_k_lora", ".k_proj"}, {".to_v_lora", ".v_proj"}, {".to_out_lora", ".out_proj"}};
  for (const auto& [from, to] : te ? kTe : kUnet) {
    const std::string f = from;
    if (key.size() >= f.size() && key.compare(key.size() - f.size(), f.size(), f) == 0) {
      key = key.substr(0, key.size() - f.size()) + to;
      break;
    }
  }
  return key;
}

// A bound module's contribution to one weight: low-rank U [out, R] @ V [R, in_flat] (U already
// multiplied by multiplier * scale), or a full delta [out, in_flat] (LoKr, full diffs).
struct Piece {
  Tensor u, v, full;
};

[[noreturn]] void mismatch(const LoraNetwork& net, const LoraModule& m, const char* role, const PatchTarget& t) {
  const Tensor& f = m.t.at(role);
  throw InvalidArgument(net.path() + ": '" + printable(m.stored_key.at(role)) + "' has shape " + shape_str(f.shape()) +
                        ", which does not fit " + t.name + ".weight " + shape_str(t.weight->shape()) +
                        " of this model: the LoRA was made for another model architecture");
}

// Shapes of W seen as [out, in, K] (K = kh * kw for a conv, 1 for a Linear).
struct WShape {
  int64_t out, in, kh = 1, kw = 1;
  int64_t flat() const { return in * kh * kw; }
};
WShape wshape(const Tensor& w) {
  WShape s{w.size(0), w.dim() > 1 ? w.size(1) : 1};
  if (w.dim() == 4) s.kh = w.size(2), s.kw = w.size(3);
  return s;
}

// Checks a module against its target's shape; throws InvalidArgument naming the first bad key.
void check_fits(const LoraNetwork& net, const LoraModule& m, const PatchTarget& t) {
  const WShape w = wshape(*t.weight);
  using K = LoraModule::Kind;
  switch (m.kind) {
    case K::LoRA: {
      const Tensor &up = m.t.at("up"), &down = m.t.at("down");
      if (up.size(0) != w.out) mismatch(net, m, "up", t);
      if (m.t.count("mid")) {
        const Tensor& mid = m.t.at("mid");
        if (down.size(1) != w.in) mismatch(net, m, "down", t);
        if (mid.size(2) != w.kh || mid.size(3) != w.kw) mismatch(net, m, "mid", t);
        return;
      }
      // A 4-D down must have the weight's kernel; a 2-D one fits a Linear or a 1x1 conv.
      const bool ok = down.dim() == 4 ? (down.size(1) == w.in && down.size(2) == w.kh && down.size(3) == w.kw)
                                      : (down.numel() / down.size(0) == w.flat() && w.kh == 1 && w.kw == 1);
      if (!ok) mismatch(net, m, "down", t);
      return;
    }
    case K::LoHa:
      if (m.t.at("h1a").size(0) != w.out) mismatch(net, m, "h1a", t);
      if (m.t.at("h1b").size(1) != w.flat()) mismatch(net, m, "h1b", t);
      return;
    case K::LoKr: {
      const bool w1s = m.t.count("w1"), w2s = m.t.count("w2");
      const int64_t a = w1s ? m.t.at("w1").size(0) : m.t.at("w1a").size(0);
      const int64_t b = w1s ? m.t.at("w1").size(1) : m.t.at("w1b").size(1);
      const int64_t c = w2s ? m.t.at("w2").size(0) : m.t.at("w2a").size(0);
      const int64_t w2n = w2s ? m.t.at("w2").numel() : c * m.t.at("w2b").size(1);
      const char* role = w2s ? "w2" : "w2b";
      const int64_t k = w.kh * w.kw;
      if (a * c != w.out) mismatch(net, m, w1s ? "w1" : "w1a", t);
      if (b * (w2n / (c * k)) != w.in || w2n % (c * k) != 0) mismatch(net, m, role, t);
      if (w2s && m.t.at("w2").dim() == 4 && (m.t.at("w2").size(2) != w.kh || m.t.at("w2").size(3) != w.kw))
        mismatch(net, m, "w2", t);
      return;
    }
    case K::Full:
      if (m.t.at("diff").numel() != t.weight->numel() || m.t.at("diff").size(0) != w.out) mismatch(net, m, "diff", t);
      return;
  }
}

Tensor matmul_host(const Tensor& a, const Tensor& b) {  // [m, k] @ [k, n], f32 host
  return ops::linear(a, b.transpose(0, 1).contiguous());
}

// The contribution of module `m` (checked by check_fits) to weight `t`, times `mult`.
Piece make_piece(const LoraModule& m, const PatchTarget& t, float mult) {
  const WShape w = wshape(*t.weight);
  const float s = mult * m.scale;
  using K = LoraModule::Kind;
  Piece p;
  switch (m.kind) {
    case K::LoRA: {
      const Tensor& down = m.t.at("down");
      const int64_t r = down.size(0);
      Tensor v = down.reshape({r, down.numel() / r});
      if (m.t.count("mid")) {
        // Tucker (LoCon "cp"): delta[i, j, k, l] = sum_{n, m} mid[n, m, k, l] up[i, n] down[m, j], so
        // V[n, (j, k, l)] = sum_m mid[n, m, k, l] down[m, j].
        const Tensor& mid = m.t.at("mid");
        const int64_t in = down.size(1), kk = mid.size(2) * mid.size(3);
        Tensor vv = Tensor::zeros({r, in * kk}, DType::F32);
        const float* md = mid.data<float>();
        const float* d = v.data<float>();
        float* o = vv.data<float>();
        for (int64_t n = 0; n < r; ++n)
          for (int64_t q = 0; q < r; ++q)
            for (int64_t j = 0; j < in; ++j) {
              const float dv = d[q * in + j];
              for (int64_t k = 0; k < kk; ++k) o[(n * in + j) * kk + k] += md[(n * r + q) * kk + k] * dv;
            }
        v = vv;
      }
      Tensor u = m.t.at("up").reshape({w.out, r}).clone();
      float* pu = u.data<float>();
      for (int64_t i = 0, n = u.numel(); i < n; ++i) pu[i] *= s;
      p.u = u;
      p.v = v;
      return p;
    }
    case K::LoHa: {
      // (A1 B1) * (A2 B2) = U V with U[o, (i, j)] = A1[o, i] A2[o, j], V[(i, j), k] = B1[i, k] B2[j, k].
      const Tensor &a1 = m.t.at("h1a"), &b1 = m.t.at("h1b"), &a2 = m.t.at("h2a"), &b2 = m.t.at("h2b");
      const int64_t r1 = a1.size(1), r2 = a2.size(1), in = b1.size(1);
      if (r1 * r2 >= std::min(w.out, in)) {
        // Ranks so large the product form would be bigger than the weight: multiply out instead.
        Tensor x = matmul_host(a1, b1), y = matmul_host(a2, b2);
        float* px = x.data<float>();
        const float* py = y.data<float>();
        for (int64_t i = 0; i < x.numel(); ++i) px[i] *= s * py[i];
        p.full = x;
        return p;
      }
      Tensor u = Tensor::empty({w.out, r1 * r2}, DType::F32), v = Tensor::empty({r1 * r2, in}, DType::F32);
      float *pu = u.data<float>(), *pv = v.data<float>();
      const float *x1 = a1.data<float>(), *x2 = a2.data<float>(), *y1 = b1.data<float>(), *y2 = b2.data<float>();
      for (int64_t o = 0; o < w.out; ++o)
        for (int64_t i = 0; i < r1; ++i)
          for (int64_t j = 0; j < r2; ++j) pu[o * r1 * r2 + i * r2 + j] = s * x1[o * r1 + i] * x2[o * r2 + j];
      for (int64_t i = 0; i < r1; ++i)
        for (int64_t j = 0; j < r2; ++j)
          for (int64_t k = 0; k < in; ++k) pv[(i * r2 + j) * in + k] = y1[i * in + k] * y2[j * in + k];
      p.u = u;
      p.v = v;
      return p;
    }
    case K::LoKr: {
      const Tensor w1 = m.t.count("w1") ? m.t.at("w1") : matmul_host(m.t.at("w1a"), m.t.at("w1b"));
      Tensor w2 = m.t.count("w2") ? m.t.at("w2") : matmul_host(m.t.at("w2a"), m.t.at("w2b"));
      const int64_t a = w1.size(0), b = w1.size(1), c = w2.size(0), kk = w.kh * w.kw;
      const int64_t d = w2.numel() / (c * kk);
      w2 = w2.contiguous();
      // delta[i c + p, ((j d + q) kk + k)] = w1[i, j] w2[p, q, k]
      Tensor full = Tensor::empty({w.out, w.flat()}, DType::F32);
      float* o = full.data<float>();
      const float* x1 = w1.contiguous().data<float>();
      const float* x2 = w2.data<float>();
      for (int64_t i = 0; i < a; ++i)
        for (int64_t pp = 0; pp < c; ++pp)
          for (int64_t j = 0; j < b; ++j) {
            const float f = s * x1[i * b + j];
            float* row = o + (i * c + pp) * w.flat() + j * d * kk;
            const float* src = x2 + pp * d * kk;
            for (int64_t q = 0; q < d * kk; ++q) row[q] = f * src[q];
          }
      p.full = full;
      return p;
    }
    case K::Full: {
      Tensor full = m.t.at("diff").reshape({w.out, w.flat()}).clone();
      float* pf = full.data<float>();
      for (int64_t i = 0, n = full.numel(); i < n; ++i) pf[i] *= s;
      p.full = full;
      return p;
    }
  }
  return p;
}

}  // namespace

std::vector<PatchTarget> patch_targets(ClipTextModel* te, UNet* unet) {
  std::vector<PatchTarget> out;
  if (te)
    te->for_each_weight([&](const std::string& m, Tensor& w) {
      out.push_back({"text_encoder." + m, &w, PatchTarget::Component::TextEncoder, {}});
    });
  if (unet) {
    const NameMap ldm = unet_ldm_name_map(unet->config());
    unet->for_each_weight([&](const std::string& m, Tensor& w) {
      PatchTarget t{"unet." + m, &w, PatchTarget::Component::UNet, {}};
      if (auto it = ldm.find(m + ".weight"); it != ldm.end() && it->second.size() > 7)
        t.aliases.push_back("lora_unet_" + underscored(it->second.substr(0, it->second.size() - 7)));
      out.push_back(std::move(t));
    });
  }
  return out;
}

struct WeightPatcher::Bound {
  // target -> (module, multiplier) in set order
  std::map<size_t, std::vector<std::pair<const LoraModule*, float>>> uses;
};

WeightPatcher::WeightPatcher(std::vector<PatchTarget> targets) : targets_(std::move(targets)) {
  for (size_t i = 0; i < targets_.size(); ++i) {
    const PatchTarget& t = targets_[i];
    SD_CHECK_ARG(t.weight && t.weight->defined() && t.weight->dim() >= 2,
                 "patch target " + t.name + " has no matrix weight");
    std::vector<std::string> names{t.name};
    names.insert(names.end(), t.aliases.begin(), t.aliases.end());
    // kohya / LyCORIS spelling of the canonical name
    if (starts_with(t.name, "unet.")) names.push_back("lora_unet_" + underscored(t.name.substr(5)));
    if (starts_with(t.name, "text_encoder.")) {
      names.push_back("lora_te_" + underscored(t.name.substr(13)));
      names.push_back("lora_te1_" + underscored(t.name.substr(13)));
    }
    for (const std::string& n : names) by_name_.emplace(n, i);  // the first owner of a name keeps it
  }
}

std::optional<size_t> WeightPatcher::resolve(const std::string& key) const {
  if (auto it = by_name_.find(key); it != by_name_.end()) return it->second;
  if (starts_with(key, "lora_")) return std::nullopt;
  if (auto it = by_name_.find(normalise_peft(key)); it != by_name_.end()) return it->second;
  return std::nullopt;
}

WeightPatcher::Bound WeightPatcher::bind(const AppliedNetwork& an) const {
  SD_CHECK_ARG(an.network != nullptr, "LoRA set: a network is missing");
  SD_CHECK_ARG(std::isfinite(an.te_multiplier) && std::isfinite(an.unet_multiplier),
               an.network->name() + ": LoRA multipliers must be finite numbers");
  Bound b;
  size_t matched = 0;
  for (const LoraModule& m : an.network->modules()) {
    const auto idx = resolve(m.key);
    if (!idx) continue;
    ++matched;
    const PatchTarget& t = targets_[*idx];
    check_fits(*an.network, m, t);
    const float mult = t.component == PatchTarget::Component::TextEncoder ? an.te_multiplier : an.unet_multiplier;
    if (mult != 0.f) b.uses[*idx].push_back({&m, mult});
  }
  if (matched == 0)
    throw InvalidArgument(an.network->path() + ": none of its " + std::to_string(an.network->modules().size()) +
                          " modules (e.g. '" + printable(an.network->modules().front().key) +
                          "') is a layer of this model: the LoRA was made for another model architecture");
  return b;
}

void WeightPatcher::apply(const std::vector<AppliedNetwork>& set) {
  // The same parsed networks (a file changed on disk is a new object) with the same multipliers:
  // nothing to do. current_ holds the networks, so an address cannot be reused meanwhile.
  auto same = [](const AppliedNetwork& a, const AppliedNetwork& b) {
    return a.network == b.network && a.te_multiplier == b.te_multiplier && a.unet_multiplier == b.unet_multiplier;
  };
  if (!set.empty() && std::equal(set.begin(), set.end(), current_.begin(), current_.end(), same)) return;
  if (set.empty() && patched_.empty()) {
    current_.clear();
    return;
  }

  // Bind everything first: a bad network leaves the model untouched.
  std::map<size_t, std::vector<std::pair<const LoraModule*, float>>> uses;
  std::vector<std::string> unmatched;
  for (const AppliedNetwork& n : set) {
    Bound b = bind(n);
    for (auto& [idx, list] : b.uses) uses[idx].insert(uses[idx].end(), list.begin(), list.end());
    for (const LoraModule& m : n.network->modules())
      if (!resolve(m.key)) unmatched.push_back(n.network->name() + ": " + m.key);
  }

  // Weights the previous set changed and this one leaves alone go back to their backups (exact
  // copies of what was loaded); the others are rewritten from their backups below.
  const std::vector<size_t> dirty = patched_;
  for (size_t idx : patched_)
    if (!uses.count(idx)) targets_[idx].weight->copy_(backups_.at(idx));
  patched_.clear();
  current_.clear();
  unmatched_ = std::move(unmatched);

  try {
    for (const auto& [idx, list] : uses) {
      Tensor& w = *targets_[idx].weight;
      auto bk = backups_.find(idx);
      if (bk == backups_.end()) bk = backups_.emplace(idx, w.clone()).first;
      const Tensor& base = bk->second;
      const WShape ws = wshape(w);
      std::vector<Tensor> us, vs;
      Tensor full;
      for (const auto& [m, mult] : list) {
        Piece p = make_piece(*m, targets_[idx], mult);
        if (p.u.defined()) {
          us.push_back(p.u);
          vs.push_back(p.v);
        }
        if (p.full.defined()) full = full.defined() ? ops::add(full, p.full) : p.full;
      }
      int64_t rank = 0;
      for (const Tensor& u : us) rank += u.size(1);
      // All low-rank pieces in one GEMM: [U1 U2 ...] @ [V1; V2; ...].
      Tensor u = Tensor::empty({ws.out, std::max<int64_t>(rank, 1)}, DType::F32);
      int64_t at = 0;
      for (const Tensor& x : us) {
        u.narrow(1, at, x.size(1)).copy_(x);
        at += x.size(1);
      }
      patched_.push_back(idx);
      if (w.device().type == DeviceType::CPU && w.dtype() == DType::F32 && w.is_contiguous() && base.is_contiguous()) {
        // The CPU's f32 weights: W = W0, then W += U V in place (sgemm with beta = 1) and the full
        // pieces added; no temporaries the size of the weight.
        float* pw = w.data<float>();
        std::memcpy(pw, base.data<float>(), w.nbytes());
        if (rank > 0) {
          Tensor v = Tensor::empty({rank, ws.flat()}, DType::F32);
          at = 0;
          for (const Tensor& x : vs) {
            v.narrow(0, at, x.size(0)).copy_(x);
            at += x.size(0);
          }
          cpu::sgemm(false, false, ws.out, ws.flat(), rank, 1.f, u.data<float>(), rank, v.data<float>(), ws.flat(), 1.f,
                     pw, ws.flat());
        }
        if (full.defined()) {
          const float* pf = full.data<float>();
          const int64_t n = w.numel();
#pragma omp parallel for schedule(static)
          for (int64_t i = 0; i < n; ++i) pw[i] += pf[i];
        }
        continue;
      }
      Tensor delta;  // [out, in_flat] f32 on the weight's device
      if (rank > 0) {
        Tensor vt = Tensor::empty({ws.flat(), rank}, DType::F32);
        at = 0;
        for (const Tensor& x : vs) {
          vt.narrow(1, at, x.size(0)).copy_(x.transpose(0, 1));
          at += x.size(0);
        }
        delta = ops::linear(u.to(w.device()), vt.to(w.device()));
      }
      if (full.defined()) delta = delta.defined() ? ops::add(delta, full.to(w.device())) : full.to(w.device());
      const Tensor b32 = base.view({ws.out, ws.flat()}).to(DType::F32);
      w.copy_(ops::add(b32, delta).view(w.shape()));  // rounds to the weight's dtype once
    }
  } catch (...) {
    for (size_t idx : dirty) targets_[idx].weight->copy_(backups_.at(idx));
    for (size_t idx : patched_) targets_[idx].weight->copy_(backups_.at(idx));
    patched_.clear();
    throw;
  }
  current_ = set;
}

std::string WeightPatcher::digest() const {
  std::vector<size_t> order(targets_.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return targets_[a].name < targets_[b].name; });
  Sha256 h;
  for (size_t i : order) {
    const Tensor host = targets_[i].weight->to(Device::cpu()).contiguous();
    h.update(targets_[i].name.data(), targets_[i].name.size() + 1);
    h.update(host.raw_data(), host.nbytes());
  }
  const auto d = h.digest();
  return to_hex(d.data(), d.size());
}

size_t WeightPatcher::backup_bytes() const {
  size_t n = 0;
  for (const auto& [idx, t] : backups_) n += t.nbytes();
  return n;
}

// ---------------------------------------------------------------------------------- library

LoraLibrary::LoraLibrary(std::optional<std::string> dir, size_t cache_bytes)
    : dir_(std::move(dir)), cache_bytes_(cache_bytes) {
  if (dir_ && !std::filesystem::is_directory(*dir_)) throw NotFoundError("LoRA directory not found: " + *dir_);
}

void LoraLibrary::scan() {
  files_.clear();
  if (!dir_) return;
  namespace fs = std::filesystem;
  std::error_code ec;
  std::vector<fs::path> found;
  for (auto it = fs::recursive_directory_iterator(*dir_, fs::directory_options::skip_permission_denied, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    std::string ext = it->path().extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return char(std::tolower(c)); });
    if (ext == ".safetensors" && it->is_regular_file(ec)) found.push_back(it->path());
  }
  if (ec) throw IoError("cannot list LoRA directory " + *dir_ + ": " + ec.message());
  std::sort(found.begin(), found.end());
  for (const fs::path& p : found) files_.emplace(p.stem().string(), p);
}

std::vector<std::string> LoraLibrary::names() {
  std::lock_guard<std::mutex> lk(mu_);
  scan();
  std::vector<std::string> out;
  for (const auto& [n, p] : files_) out.push_back(n);
  return out;
}

bool LoraLibrary::has(const std::string& name) {
  std::lock_guard<std::mutex> lk(mu_);
  if (files_.count(name)) return true;
  scan();
  return files_.count(name) > 0;
}

std::string LoraLibrary::not_found_message(const std::string& name) const {
  if (!dir_)
    return "unknown LoRA '" + printable(name) +
           "': no LoRA folder is configured (start with --lora-dir DIR; a tag names a " + "file DIR/NAME.safetensors)";
  std::string avail;
  size_t k = 0;
  for (const auto& [n, p] : files_) {
    if (k == 40) {
      avail += ", and " + std::to_string(files_.size() - 40) + " more";
      break;
    }
    avail += (k++ ? ", " : "") + printable(n);
  }
  return "unknown LoRA '" + printable(name) + "'; available in " + *dir_ + ": " + (avail.empty() ? "none" : avail);
}

std::shared_ptr<const LoraNetwork> LoraLibrary::by_name(const std::string& name) {
  std::filesystem::path p;
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (!files_.count(name)) scan();
    auto it = files_.find(name);
    if (it == files_.end()) throw NotFoundError(not_found_message(name));
    p = it->second;
  }
  return by_path(p.string());
}

std::shared_ptr<const LoraNetwork> LoraLibrary::by_path(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) throw NotFoundError("LoRA file not found: " + printable(path, 4096));
  const auto mtime = fs::last_write_time(path, ec);
  const uintmax_t size = fs::file_size(path, ec);
  std::lock_guard<std::mutex> lk(mu_);
  auto it = cache_.find(path);
  if (it != cache_.end() && it->second.mtime == mtime && it->second.size == size) {
    it->second.used = ++clock_;
    return it->second.net;
  }
  auto net = LoraNetwork::open(path);
  cache_[path] = Cached{net, mtime, size, ++clock_};
  size_t total = 0;
  for (const auto& [k, c] : cache_) total += c.net->bytes();
  while (total > cache_bytes_ && cache_.size() > 1) {
    auto victim = cache_.end();
    for (auto c = cache_.begin(); c != cache_.end(); ++c)
      if (c->first != path && (victim == cache_.end() || c->second.used < victim->second.used)) victim = c;
    if (victim == cache_.end()) break;
    total -= victim->second.net->bytes();
    cache_.erase(victim);
  }
  return net;
}

}  // namespace sdserve
