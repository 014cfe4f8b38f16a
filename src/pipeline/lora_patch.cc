// Merging networks into a model's weights (WeightPatcher) and finding them by name (LoraLibrary).
#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "core/error.h"
#include "core/utf8.h"
#include "cpu/gemm.h"
#include "io/ldm_names.h"
#include "io/sha256.h"
#include "models/clip_text.h"
#include "models/unet.h"
#include "ops/linear.h"
#include "ops/upscale_ops.h"
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

// A bound module's contribution to one weight before its multiplier: low-rank U [out, R] @ V [R,
// in_flat], or a full delta [out, in_flat] (LoKr, full diffs, LoHa of large ranks). The merge
// multiplies it by the request's multiplier times the module's scale (alpha / rank).
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

// The contribution of module `m` (checked by check_fits) to weight `t`, unscaled (f32, host).
Piece make_piece(const LoraModule& m, const PatchTarget& t) {
  const WShape w = wshape(*t.weight);
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
      p.u = m.t.at("up").reshape({w.out, r}).contiguous();
      p.v = v.contiguous();
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
        for (int64_t i = 0; i < x.numel(); ++i) px[i] *= py[i];
        p.full = x;
        return p;
      }
      Tensor u = Tensor::empty({w.out, r1 * r2}, DType::F32), v = Tensor::empty({r1 * r2, in}, DType::F32);
      float *pu = u.data<float>(), *pv = v.data<float>();
      const float *x1 = a1.data<float>(), *x2 = a2.data<float>(), *y1 = b1.data<float>(), *y2 = b2.data<float>();
      for (int64_t o = 0; o < w.out; ++o)
        for (int64_t i = 0; i < r1; ++i)
          for (int64_t j = 0; j < r2; ++j) pu[o * r1 * r2 + i * r2 + j] = x1[o * r1 + i] * x2[o * r2 + j];
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
            const float f = x1[i * b + j];
            float* row = o + (i * c + pp) * w.flat() + j * d * kk;
            const float* src = x2 + pp * d * kk;
            for (int64_t q = 0; q < d * kk; ++q) row[q] = f * src[q];
          }
      p.full = full;
      return p;
    }
    case K::Full: {
      p.full = m.t.at("diff").reshape({w.out, w.flat()}).contiguous();
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

struct WeightPatcher::Use {
  std::shared_ptr<const LoraNetwork> net;
  const LoraModule* module;
  float mult;
};

struct WeightPatcher::Bound {
  std::map<size_t, std::vector<Use>> uses;  // target -> its modules, in set order
};

namespace {

bool g_device_path_on_cpu = false;

size_t factor_cache_limit_from_env() {
  const char* v = std::getenv("SDSERVE_LORA_FACTOR_CACHE_MB");
  if (!v || !*v) return size_t(1) << 30;
  char* end = nullptr;
  errno = 0;
  const unsigned long long mb = std::strtoull(v, &end, 10);
  if (errno != 0 || *end != '\0' || !std::isdigit(static_cast<unsigned char>(*v)) || mb > (uint64_t(1) << 40))
    throw InvalidArgument(
        "SDSERVE_LORA_FACTOR_CACHE_MB must be a whole number of MiB (0 turns the LoRA factor cache "
        "off), got '" +
        printable(v) + "'");
  return size_t(mb) << 20;
}

}  // namespace

void WeightPatcher::set_device_path_on_cpu_for_testing(bool on) { g_device_path_on_cpu = on; }

size_t WeightPatcher::Factors::bytes() const {
  size_t n = 0;
  for (const Tensor* t : {&u, &vt, &full})
    if (t->defined()) n += t->nbytes();
  return n;
}

WeightPatcher::WeightPatcher(std::vector<PatchTarget> targets)
    : targets_(std::move(targets)), factor_cache_limit_(factor_cache_limit_from_env()) {
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
    if (mult != 0.f) b.uses[*idx].push_back({an.network, &m, mult});
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
  std::map<size_t, std::vector<Use>> uses;
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

  // Factors of networks nobody else holds any more (a file changed on disk, a network the library
  // let go, the last set's network opened for one request) can never be asked for again: free
  // them now rather than when the cache is full.
  std::erase_if(factor_cache_, [](const FactorCache& c) { return c.net.use_count() == 1; });
  ++clock_;
  for (FactorCache& c : factor_cache_)
    for (const AppliedNetwork& n : set)
      if (c.net == n.network) c.used = clock_;

  try {
    for (const auto& [idx, list] : uses) {
      Tensor& w = *targets_[idx].weight;
      auto bk = backups_.find(idx);
      if (bk == backups_.end()) bk = backups_.emplace(idx, w.clone()).first;
      patched_.push_back(idx);
      if (w.device().type == DeviceType::CPU && w.dtype() == DType::F32 && w.is_contiguous() &&
          bk->second.is_contiguous() && !g_device_path_on_cpu)
        merge_in_place(idx, list);
      else
        merge_on_device(idx, list);
    }
  } catch (...) {
    for (size_t idx : dirty) targets_[idx].weight->copy_(backups_.at(idx));
    for (size_t idx : patched_) targets_[idx].weight->copy_(backups_.at(idx));
    patched_.clear();
    throw;
  }
  current_ = set;
}

// The CPU's f32 weights: W = W0, then W += [s1 U1  s2 U2 ...] @ [V1; V2; ...] in place (one sgemm
// with beta = 1) and the full pieces added; no temporaries the size of the weight.
void WeightPatcher::merge_in_place(size_t idx, const std::vector<Use>& list) {
  Tensor& w = *targets_[idx].weight;
  const WShape ws = wshape(w);
  std::vector<Piece> pieces;
  std::vector<float> scales;
  int64_t rank = 0;
  for (const Use& use : list) {
    pieces.push_back(make_piece(*use.module, targets_[idx]));
    scales.push_back(use.mult * use.module->scale);
    if (pieces.back().u.defined()) rank += pieces.back().u.size(1);
  }
  float* pw = w.data<float>();
  std::memcpy(pw, backups_.at(idx).data<float>(), w.nbytes());
  if (rank > 0) {
    Tensor u = Tensor::empty({ws.out, rank}, DType::F32), v = Tensor::empty({rank, ws.flat()}, DType::F32);
    float *pu = u.data<float>(), *pv = v.data<float>();
    int64_t at = 0;
    for (size_t i = 0; i < pieces.size(); ++i) {
      const Piece& p = pieces[i];
      if (!p.u.defined()) continue;
      const int64_t r = p.u.size(1);
      const float* x = p.u.data<float>();
      for (int64_t o = 0; o < ws.out; ++o)
        for (int64_t j = 0; j < r; ++j) pu[o * rank + at + j] = x[o * r + j] * scales[i];
      std::memcpy(pv + at * ws.flat(), p.v.data<float>(), size_t(r * ws.flat()) * sizeof(float));
      at += r;
    }
    cpu::sgemm(false, false, ws.out, ws.flat(), rank, 1.f, pu, rank, pv, ws.flat(), 1.f, pw, ws.flat());
  }
  for (size_t i = 0; i < pieces.size(); ++i) {
    if (!pieces[i].full.defined()) continue;
    const float* pf = pieces[i].full.data<float>();
    const float s = scales[i];
    const int64_t n = w.numel();
#pragma omp parallel for schedule(static)
    for (int64_t k = 0; k < n; ++k) pw[k] += s * pf[k];
  }
}

// Any other device or dtype: W = round(f32(W0) + s1 U1 V1 + s2 U2 V2 + ...) on the weight's device,
// one GEMM per piece, from the factors prepared for that device (kept between switches).
void WeightPatcher::merge_on_device(size_t idx, const std::vector<Use>& list) {
  Tensor& w = *targets_[idx].weight;
  const WShape ws = wshape(w);
  const Device dev = w.device();
  Tensor acc = backups_.at(idx).view({ws.out, ws.flat()}).to(DType::F32);
  for (const Use& use : list) {
    const Factors f = device_factors(use.net, *use.module, idx, dev);
    const float s = use.mult * use.module->scale;
    if (f.u.defined()) acc = ops::scaled_add(ops::linear(f.u, f.vt), s, acc);
    if (f.full.defined()) acc = ops::scaled_add(f.full, s, acc);
  }
  w.copy_(acc.view(w.shape()));  // rounds to the weight's dtype once
}

WeightPatcher::Factors WeightPatcher::device_factors(const std::shared_ptr<const LoraNetwork>& net, const LoraModule& m,
                                                     size_t idx, const Device& dev) {
  auto find = [&] {
    return std::find_if(factor_cache_.begin(), factor_cache_.end(),
                        [&](const FactorCache& c) { return c.net == net && c.device == dev; });
  };
  auto entry = find();
  if (entry != factor_cache_.end())
    if (auto it = entry->modules.find(&m); it != entry->modules.end()) return it->second;

  // Upload the factors as stored and transpose V on the device (session 6's GPU switches scaled,
  // packed and transposed every factor on the host and uploaded it again at every switch).
  const Piece p = make_piece(m, targets_[idx]);
  Factors f;
  if (p.u.defined()) {
    f.u = p.u.to(dev);
    f.vt = p.v.to(dev).transpose(0, 1).contiguous();
  }
  if (p.full.defined()) f.full = p.full.to(dev);

  // Keep them if they fit, making room from the networks the current set does not use, least
  // recently used first; a set bigger than the cache is prepared again on every switch.
  const size_t need = f.bytes();
  size_t in_use = 0;  // what the networks of the set being applied hold: never evicted for this
  for (const FactorCache& c : factor_cache_)
    if (c.used == clock_) in_use += c.bytes;
  if (in_use + need > factor_cache_limit_) return f;
  while (factor_cache_bytes() + need > factor_cache_limit_)
    if (!evict_least_recent(clock_)) return f;
  entry = find();
  if (entry == factor_cache_.end()) {
    factor_cache_.push_back(FactorCache{net, dev, {}, 0, clock_});
    entry = std::prev(factor_cache_.end());
  }
  entry->modules.emplace(&m, f);
  entry->bytes += need;
  return f;
}

size_t WeightPatcher::factor_cache_bytes() const {
  size_t n = 0;
  for (const FactorCache& c : factor_cache_) n += c.bytes;
  return n;
}

bool WeightPatcher::evict_least_recent(uint64_t used_before) {
  auto victim = factor_cache_.end();
  for (auto c = factor_cache_.begin(); c != factor_cache_.end(); ++c)
    if (c->used < used_before && (victim == factor_cache_.end() || c->used < victim->used)) victim = c;
  if (victim == factor_cache_.end()) return false;
  factor_cache_.erase(victim);
  return true;
}

void WeightPatcher::set_factor_cache_limit(size_t bytes) {
  factor_cache_limit_ = bytes;
  while (factor_cache_bytes() > factor_cache_limit_)
    if (!evict_least_recent(UINT64_MAX)) break;
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
