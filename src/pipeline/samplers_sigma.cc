// The k-diffusion style samplers, which work on x = x0 + sigma * eps and scale the model input by
// 1 / sqrt(sigma^2 + 1): Euler, Euler a, Heun, DPM2, DPM2 a, LMS and DPM++ SDE, mirroring
// diffusers' Euler(Ancestral)Discrete, HeunDiscrete, KDPM2(Ancestral)Discrete, LMSDiscrete and
// DPMSolverSDE schedulers (0.42.1).
#include <algorithm>
#include <cmath>
#include <deque>

#include "pipeline/brownian.h"
#include "pipeline/samplers_internal.h"

#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace sdserve::samplers {

namespace {

using Vec = std::vector<float>;

// The sigma schedule of the Euler-family schedulers (n sigmas, no trailing zero) and its
// timesteps, before any interleaving.
struct KSchedule {
  std::vector<double> sigmas;
  std::vector<double> timesteps;
};

KSchedule k_schedule(const Train& tr, int n, bool round_karras_timesteps, bool f64_spacing = false) {
  KSchedule ks;
  if (f64_spacing) {
    ks.timesteps = k_spacing_f64(tr, n);
  } else {
    for (float t : k_spacing(tr, n)) ks.timesteps.push_back(t);
  }
  for (double t : ks.timesteps) ks.sigmas.push_back(interp_sigma(tr, t));
  if (tr.karras || tr.exponential) {
    const double smin = ks.sigmas.back(), smax = ks.sigmas.front();
    ks.sigmas = tr.karras ? karras_sigmas(smin, smax, n) : exponential_sigmas(smin, smax, n);
    ks.timesteps.clear();
    for (double s : ks.sigmas) {
      double t = sigma_to_t(s, tr.log_sigmas);
      if (tr.karras && round_karras_timesteps) t = std::nearbyint(t);
      ks.timesteps.push_back(t);
    }
  }
  return ks;
}

Vec to_f32_with_zero(const std::vector<double>& s) {
  Vec v;
  for (double x : s) v.push_back(float(x));
  v.push_back(0.0f);
  return v;
}

float init_sigma(const Train& tr, const Vec& sigmas) {
  float mx = 0;
  for (float s : sigmas)
    if (s > mx || std::isnan(s)) mx = s;
  if (tr.spacing == "linspace" || tr.spacing == "trailing") return mx;
  return std::sqrt(mx * mx + 1.0f);
}

float input_div(float sigma) { return std::sqrt(sigma * sigma + 1.0f); }

// x0 from the model output at noise level `sigma` (the "sigma_input" of the schedulers).
void pred_x0(bool v_pred, float sigma, const Vec& m, const Vec& x, Vec& out) {
  if (!v_pred) {
    for (size_t k = 0; k < x.size(); ++k) out[k] = x[k] - sigma * m[k];
  } else {
    const float c_out = -sigma / std::sqrt(sigma * sigma + 1.0f);
    const float c_in = sigma * sigma + 1.0f;
    for (size_t k = 0; k < x.size(); ++k) out[k] = m[k] * c_out + x[k] / c_in;
  }
}

void clip(bool on, float range, Vec& v) {
  if (!on) return;
  for (float& x : v) x = std::clamp(x, -range, range);
}

Vec randn(NoiseGenerator& rng, const Shape& shape, size_t n) {
  Vec v = rng.randn(shape).to_vector();
  if (v.size() != n) throw InternalError("noise generator returned the wrong number of values");
  return v;
}

// Interleaves like torch.cat([x[:1], x[1:].repeat_interleave(2), x[-1:]]).
Vec interleave_all(const Vec& x) {
  Vec v = {x.front()};
  for (size_t k = 1; k < x.size(); ++k) {
    v.push_back(x[k]);
    v.push_back(x[k]);
  }
  v.push_back(x.back());
  return v;
}

// ... and torch.cat([x[:1], x[1:-1].repeat_interleave(2), x[-1:]]).
Vec interleave_inner(const Vec& x) {
  Vec v = {x.front()};
  for (size_t k = 1; k + 1 < x.size(); ++k) {
    v.push_back(x[k]);
    v.push_back(x[k]);
  }
  v.push_back(x.back());
  return v;
}

// torch.lerp(start, end, 0.5) on the CPU: end - (end - start) * 0.5.
float lerp_half(float start, float end) { return end - (end - start) * 0.5f; }

// ---------------------------------------------------------------- Euler, Euler a

class EulerSampler : public Sampler {
 public:
  EulerSampler(const Train& tr, int n, bool ancestral) : v_pred_(tr.v_pred), ancestral_(ancestral) {
    const KSchedule ks = k_schedule(tr, n, false);
    sigmas_ = to_f32_with_zero(ks.sigmas);
    for (double t : ks.timesteps) timesteps_.push_back(float(t));
    for (size_t i = 0; i < timesteps_.size(); ++i) input_divisor_.push_back(input_div(sigmas_[i]));
    init_noise_sigma_ = init_sigma(tr, sigmas_);
  }

 protected:
  void step_impl(const Vec& m, size_t i, const Vec& x, const Shape& shape, NoiseGenerator& rng, Vec& out) override {
    const float sigma = sigmas_[i], sigma_next = sigmas_[i + 1];
    Vec pred(x.size());
    if (!ancestral_) {
      const float sigma_hat = sigma * (0.0f + 1.0f);
      pred_x0(v_pred_, v_pred_ ? sigma : sigma_hat, m, x, pred);
      const float dt = sigma_next - sigma_hat;
      for (size_t k = 0; k < x.size(); ++k) {
        const float d = (x[k] - pred[k]) / sigma_hat;
        out[k] = x[k] + d * dt;
      }
      return;
    }
    pred_x0(v_pred_, sigma, m, x, pred);
    const float sigma_up = std::sqrt(sqf(sigma_next) * (sqf(sigma) - sqf(sigma_next)) / sqf(sigma));
    const float sigma_down = std::sqrt(sqf(sigma_next) - sqf(sigma_up));
    const float dt = sigma_down - sigma;
    for (size_t k = 0; k < x.size(); ++k) {
      const float d = (x[k] - pred[k]) / sigma;
      out[k] = x[k] + d * dt;
    }
    const Vec noise = randn(rng, shape, x.size());
    for (size_t k = 0; k < x.size(); ++k) out[k] = out[k] + noise[k] * sigma_up;
  }

 private:
  bool v_pred_, ancestral_;
};

// ---------------------------------------------------------------- Heun

class HeunSampler : public Sampler {
 public:
  HeunSampler(const Train& tr, int n) : v_pred_(tr.v_pred), clip_(tr.clip_sample), clip_range_(tr.clip_range) {
    const KSchedule ks = k_schedule(tr, n, false);
    sigmas_ = interleave_inner(to_f32_with_zero(ks.sigmas));
    timesteps_.push_back(float(ks.timesteps[0]));
    for (size_t k = 1; k < ks.timesteps.size(); ++k) {
      timesteps_.push_back(float(ks.timesteps[k]));
      timesteps_.push_back(float(ks.timesteps[k]));
    }
    for (size_t i = 0; i < timesteps_.size(); ++i) input_divisor_.push_back(input_div(sigmas_[i]));
    init_noise_sigma_ = init_sigma(tr, sigmas_);
  }

 protected:
  void step_impl(const Vec& m, size_t i, const Vec& x, const Shape&, NoiseGenerator&, Vec& out) override {
    const bool first = i % 2 == 0;
    const float sigma = first ? sigmas_[i] : sigmas_[i - 1];
    const float sigma_next = first ? sigmas_[i + 1] : sigmas_[i];
    const float sigma_hat = sigma * (0.0f + 1.0f);
    Vec pred(x.size());
    pred_x0(v_pred_, first ? sigma_hat : sigma_next, m, x, pred);
    clip(clip_, clip_range_, pred);
    if (first) {
      prev_derivative_.resize(x.size());
      for (size_t k = 0; k < x.size(); ++k) prev_derivative_[k] = (x[k] - pred[k]) / sigma_hat;
      dt_ = sigma_next - sigma_hat;
      for (size_t k = 0; k < x.size(); ++k) out[k] = x[k] + prev_derivative_[k] * dt_;
      sample_ = x;
    } else {
      for (size_t k = 0; k < x.size(); ++k) {
        float d = (x[k] - pred[k]) / sigma_next;
        d = (prev_derivative_[k] + d) / 2.0f;
        out[k] = sample_[k] + d * dt_;
      }
    }
  }

 private:
  bool v_pred_, clip_;
  float clip_range_;
  Vec prev_derivative_, sample_;
  float dt_ = 0;
};

// ---------------------------------------------------------------- DPM2, DPM2 a

// Interleaving of the KDPM2 arrays: X[0] = x0, X[2k-1] = X[2k] = x_k (k = 1..n), X[2n+1] = x_n.
class DPM2Sampler : public Sampler {
 public:
  DPM2Sampler(const Train& tr, int n, bool ancestral) : v_pred_(tr.v_pred), ancestral_(ancestral) {
    const KSchedule ks = k_schedule(tr, n, true);
    const Vec s = to_f32_with_zero(ks.sigmas);  // n + 1
    Vec si(s.size(), 0.0f), up(s.size(), 0.0f), down(s.size(), 0.0f);
    if (!ancestral) {
      si[0] = NAN;  // log(0) lerp: never used
      for (size_t k = 1; k < s.size(); ++k)
        si[k] = s[k] == 0.0f ? 0.0f : std::exp(lerp_half(std::log(s[k]), std::log(s[k - 1])));
    } else {
      for (size_t k = 0; k < s.size(); ++k) {
        const float sn = k + 1 < s.size() ? s[k + 1] : 0.0f;
        up[k] = std::sqrt(sqf(sn) * (sqf(s[k]) - sqf(sn)) / sqf(s[k]));
        down[k] = k + 1 < s.size() ? std::sqrt(sqf(sn) - sqf(up[k])) : 0.0f;
      }
      for (size_t k = 0; k + 2 < s.size(); ++k) si[k] = std::exp(lerp_half(std::log(s[k]), std::log(down[k])));
    }
    std::vector<float> ti(s.size(), 0.0f);
    for (size_t k = 0; k < s.size(); ++k) ti[k] = std::isnan(si[k]) ? NAN : sigma_to_t_f32(si[k], tr.log_sigmas);
    sigmas_ = interleave_all(s);
    si_ = interleave_all(si);
    up_ = interleave_all(up);
    down_ = interleave_all(down);
    timesteps_.push_back(float(ks.timesteps[0]));
    for (size_t k = 1; k < ks.timesteps.size(); ++k) {
      timesteps_.push_back(ancestral ? ti[k - 1] : ti[k]);
      timesteps_.push_back(float(ks.timesteps[k]));
    }
    for (size_t i = 0; i < timesteps_.size(); ++i) {
      const bool first = i % 2 == 0;
      input_divisor_.push_back(input_div(first ? sigmas_[i] : (ancestral ? si_[i - 1] : si_[i])));
    }
    init_noise_sigma_ = init_sigma(tr, sigmas_);
  }

 protected:
  void step_impl(const Vec& m, size_t i, const Vec& x, const Shape& shape, NoiseGenerator& rng, Vec& out) override {
    const bool first = i % 2 == 0;
    Vec pred(x.size());
    if (!ancestral_) {
      const float sigma = first ? sigmas_[i] : sigmas_[i - 1];
      const float sigma_interpol = first ? si_[i + 1] : si_[i];
      const float sigma_next = first ? sigmas_[i + 1] : sigmas_[i];
      const float sigma_hat = sigma * (0.0f + 1.0f);
      pred_x0(v_pred_, first ? sigma_hat : sigma_interpol, m, x, pred);
      if (first) {
        const float dt = sigma_interpol - sigma_hat;
        for (size_t k = 0; k < x.size(); ++k) out[k] = x[k] + ((x[k] - pred[k]) / sigma_hat) * dt;
        sample_ = x;
      } else {
        const float dt = sigma_next - sigma_hat;
        for (size_t k = 0; k < x.size(); ++k) out[k] = sample_[k] + ((x[k] - pred[k]) / sigma_interpol) * dt;
      }
      return;
    }
    const size_t j = first ? i : i - 1;
    const float sigma = sigmas_[j], sigma_interpol = si_[j], sigma_up = up_[j];
    const float sigma_down = first ? down_[i == 0 ? down_.size() - 1 : i - 1] : down_[i - 1];
    const float sigma_hat = sigma * (0.0f + 1.0f);
    pred_x0(v_pred_, first ? sigma_hat : sigma_interpol, m, x, pred);
    if (first) {
      const float dt = sigma_interpol - sigma_hat;
      for (size_t k = 0; k < x.size(); ++k) out[k] = x[k] + ((x[k] - pred[k]) / sigma_hat) * dt;
      sample_ = x;
    } else {
      const float dt = sigma_down - sigma_hat;
      for (size_t k = 0; k < x.size(); ++k) out[k] = sample_[k] + ((x[k] - pred[k]) / sigma_interpol) * dt;
      const Vec noise = randn(rng, shape, x.size());
      for (size_t k = 0; k < x.size(); ++k) out[k] = out[k] + noise[k] * sigma_up;
    }
  }

 private:
  bool v_pred_, ancestral_;
  Vec si_, up_, down_, sample_;
};

// ---------------------------------------------------------------- LMS

class LMSSampler : public Sampler {
 public:
  LMSSampler(const Train& tr, int n) : v_pred_(tr.v_pred) {
    const KSchedule ks = k_schedule(tr, n, false);
    sigmas_ = to_f32_with_zero(ks.sigmas);
    for (double t : ks.timesteps) timesteps_.push_back(float(t));
    for (size_t i = 0; i < timesteps_.size(); ++i) input_divisor_.push_back(input_div(sigmas_[i]));
    init_noise_sigma_ = init_sigma(tr, sigmas_);
  }

 protected:
  // integral over [sigma_i, sigma_{i+1}] of the Lagrange basis polynomial of node i - current
  // (diffusers uses scipy.integrate.quad; the integrand is a polynomial of degree <= 3, which
  // three-point Gauss-Legendre integrates exactly).
  double coefficient(int order, size_t i, int current) const {
    auto f = [&](double tau) {
      double prod = 1.0;
      for (int k = 0; k < order; ++k) {
        if (k == current) continue;
        prod *= (tau - sigmas_[i - size_t(k)]) / (double(sigmas_[i - size_t(current)]) - sigmas_[i - size_t(k)]);
      }
      return prod;
    };
    const double a = sigmas_[i], b = sigmas_[i + 1];
    const double c = (a + b) / 2, h = (b - a) / 2, r = std::sqrt(3.0 / 5.0);
    return h * (5.0 / 9.0 * f(c - h * r) + 8.0 / 9.0 * f(c) + 5.0 / 9.0 * f(c + h * r));
  }

  void step_impl(const Vec& m, size_t i, const Vec& x, const Shape&, NoiseGenerator&, Vec& out) override {
    const float sigma = sigmas_[i];
    Vec pred(x.size());
    pred_x0(v_pred_, sigma, m, x, pred);
    Vec d(x.size());
    for (size_t k = 0; k < x.size(); ++k) d[k] = (x[k] - pred[k]) / sigma;
    derivatives_.push_back(std::move(d));
    if (derivatives_.size() > 4) derivatives_.pop_front();
    // The order follows the absolute step index, the history what this run has seen: after an
    // img2img begin index, diffusers zips the order's coefficients with the derivatives it has.
    const int order = int(std::min<size_t>(i + 1, 4));
    const int terms = std::min(order, int(derivatives_.size()));
    Vec acc(x.size(), 0.0f);
    for (int c = 0; c < terms; ++c) {
      const float coeff = float(coefficient(order, i, c));
      const Vec& der = derivatives_[derivatives_.size() - 1 - size_t(c)];
      for (size_t k = 0; k < x.size(); ++k) acc[k] = c == 0 ? coeff * der[k] : acc[k] + coeff * der[k];
    }
    for (size_t k = 0; k < x.size(); ++k) out[k] = x[k] + acc[k];
  }

 private:
  bool v_pred_;
  std::deque<Vec> derivatives_;
};

// ---------------------------------------------------------------- DPM++ SDE

// diffusers' DPMSolverSDEScheduler. Its noise comes from a torchsde Brownian tree over
// [min sigma, max sigma] (pipeline/brownian.h): the first half of a step takes the normalised
// increment over [sigma_mid, sigma], the second the one over [sigma_next, sigma]. One tree per
// batch item, seeded with that item's seed (Sampler::set_noise_seeds); see docs/SAMPLERS.md.
class DPMSDESampler : public Sampler {
 public:
  DPMSDESampler(const Train& tr, int n) : v_pred_(tr.v_pred) {
    const KSchedule ks = k_schedule(tr, n, false, /*f64_spacing=*/true);
    // _second_order_timesteps: midpoints in t = -log(sigma), in float64.
    std::vector<double> mid_ts;
    for (size_t k = 0; k + 1 < ks.sigmas.size(); ++k) {
      const double t0 = -std::log(ks.sigmas[k]), t1 = -std::log(ks.sigmas[k + 1]);
      const double tp = t0 + (t1 - t0) * 0.5;
      mid_ts.push_back(sigma_to_t(std::exp(-tp), tr.log_sigmas));
    }
    sigmas_ = interleave_inner(to_f32_with_zero(ks.sigmas));
    timesteps_.push_back(float(ks.timesteps[0]));
    for (size_t k = 1; k < ks.timesteps.size(); ++k) {
      timesteps_.push_back(float(mid_ts[k - 1]));
      timesteps_.push_back(float(ks.timesteps[k]));
    }
    for (size_t i = 0; i < timesteps_.size(); ++i) {
      if (i % 2 == 0) {
        input_divisor_.push_back(input_div(sigmas_[i]));
      } else {
        const Halves h = halves(sigmas_[i - 1], sigmas_[i]);
        input_divisor_.push_back(input_div(h.mid));
      }
    }
    init_noise_sigma_ = init_sigma(tr, sigmas_);
  }

 protected:
  struct Halves {
    float t, t_next, t_proposed, mid;
  };
  static Halves halves(float sigma, float sigma_next) {
    Halves h;
    h.t = -std::log(sigma);
    h.t_next = -std::log(sigma_next);
    const float delta = h.t_next - h.t;
    h.t_proposed = h.t + delta * 0.5f;
    h.mid = std::exp(-h.t_proposed);
    return h;
  }

  void step_impl(const Vec& m, size_t i, const Vec& x, const Shape& shape, NoiseGenerator&, Vec& out) override {
    const bool first = i % 2 == 0;
    const float sigma = first ? sigmas_[i] : sigmas_[i - 1];
    const float sigma_next = first ? sigmas_[i + 1] : sigmas_[i];
    const Halves h = halves(sigma, sigma_next);
    Vec pred(x.size());
    pred_x0(v_pred_, first ? sigma : h.mid, m, x, pred);
    if (sigma_next == 0.0f) {
      const float dt = sigma_next - sigma;
      for (size_t k = 0; k < x.size(); ++k) out[k] = x[k] + ((x[k] - pred[k]) / sigma) * dt;
      return;
    }
    const float t_next = first ? h.t_proposed : h.t_next;
    const Vec& base = first ? x : sample_;
    const float sigma_from = std::exp(-h.t), sigma_to = std::exp(-t_next);
    const float up_candidate = std::sqrt(sqf(sigma_to) * (sqf(sigma_from) - sqf(sigma_to)) / sqf(sigma_from));
    const float sigma_up = up_candidate < sigma_to ? up_candidate : sigma_to;  // Python min(sigma_to, ...)
    const float sigma_down = std::sqrt(sqf(sigma_to) - sqf(sigma_up));
    const float ancestral_t = -std::log(sigma_down);
    const float c_sample = std::exp(-ancestral_t) / std::exp(-h.t);
    const float c_pred = std::expm1(h.t - ancestral_t);
    // self.noise_sampler(sigma_fn(t), sigma_fn(t_next)): the normalised Brownian increment.
    const Vec noise = brownian_noise(shape, x.size(), sigma_from, sigma_to);
    for (size_t k = 0; k < x.size(); ++k) {
      out[k] = c_sample * base[k] - c_pred * pred[k];
      out[k] = out[k] + noise[k] * 1.0f * sigma_up;
    }
    if (first) sample_ = x;
  }

 private:
  // BrownianTreeNoiseSampler(sample, min(sigmas > 0), max(sigmas), seed), created at the first
  // use, per batch item over sample.shape[1:] (diffusers with a list of seeds; k-diffusion's
  // BrownianTreeNoiseSampler as A1111 calls it).
  Vec brownian_noise(const Shape& shape, size_t numel, float sigma, float sigma_next) {
    if (trees_.empty()) {
      SD_CHECK_ARG(!shape.empty() && noise_seeds_.size() == size_t(shape[0]),
                   "DPM++ SDE: needs one Brownian-tree seed per batch item (Sampler::set_noise_seeds), got " +
                       std::to_string(noise_seeds_.size()) + " for a batch of " +
                       std::to_string(shape.empty() ? 0 : shape[0]));
      float smin = INFINITY, smax = -INFINITY;
      for (float s : sigmas_) {
        if (s > 0 && s < smin) smin = s;
        if (s > smax) smax = s;
      }
      const Shape item(shape.begin() + 1, shape.end());
      for (uint64_t seed : noise_seeds_)
        trees_.push_back(std::make_unique<BrownianTreeNoiseSampler>(smin, smax, item, seed, noise_kind_));
    }
    Vec noise;
    noise.reserve(numel);
    for (auto& tree : trees_) {
      const Vec part = (*tree)(sigma, sigma_next);
      noise.insert(noise.end(), part.begin(), part.end());
    }
    return noise;
  }

  bool v_pred_;
  Vec sample_;
  std::vector<std::unique_ptr<BrownianTreeNoiseSampler>> trees_;
};

}  // namespace

std::unique_ptr<Sampler> make_sigma_sampler(SamplerKind kind, ScheduleType, const Train& tr, int steps) {
  switch (kind) {
    case SamplerKind::Euler:
      return std::make_unique<EulerSampler>(tr, steps, false);
    case SamplerKind::EulerA:
      return std::make_unique<EulerSampler>(tr, steps, true);
    case SamplerKind::Heun:
      return std::make_unique<HeunSampler>(tr, steps);
    case SamplerKind::DPM2:
      return std::make_unique<DPM2Sampler>(tr, steps, false);
    case SamplerKind::DPM2A:
      return std::make_unique<DPM2Sampler>(tr, steps, true);
    case SamplerKind::LMS:
      return std::make_unique<LMSSampler>(tr, steps);
    case SamplerKind::DPMPPSDE:
      return std::make_unique<DPMSDESampler>(tr, steps);
    default:
      throw InternalError("make_sigma_sampler: not a sigma sampler");
  }
}

}  // namespace sdserve::samplers
