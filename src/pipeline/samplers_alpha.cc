// The samplers that work on x = alpha_t * x0 + sigma_t * eps with unscaled model input:
// DPM++ 2M and DPM++ 2M SDE (DPMSolverMultistepScheduler), UniPC (UniPCMultistepScheduler, bh2),
// DDIM, PLMS (PNDMScheduler with skip_prk_steps) and LCM, mirroring diffusers 0.42.1.
#include <algorithm>
#include <cmath>

#include "pipeline/samplers_internal.h"

#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace sdserve::samplers {

namespace {

using Vec = std::vector<float>;

Vec randn(NoiseGenerator& rng, const Shape& shape, size_t n) {
  Vec v = rng.randn(shape).to_vector();
  if (v.size() != n) throw InternalError("noise generator returned the wrong number of values");
  return v;
}

void clip(bool on, float range, Vec& v) {
  if (!on) return;
  for (float& x : v) x = std::clamp(x, -range, range);
}

// _sigma_to_alpha_sigma_t and lambda = log(alpha) - log(sigma), in float32.
struct AlphaSigma {
  float alpha, sigma, lambda;
};
AlphaSigma alpha_sigma(float s) {
  AlphaSigma a;
  a.alpha = 1.0f / std::sqrt(s * s + 1.0f);
  a.sigma = s * a.alpha;
  a.lambda = std::log(a.alpha) - std::log(a.sigma);
  return a;
}

// Sigmas (with the final zero) and integer timesteps of DPMSolverMultistep / UniPC.
void multistep_schedule(const Train& tr, int n, bool unipc, Vec& sigmas, std::vector<float>& timesteps) {
  std::vector<int64_t> ts = dpm_spacing(tr, n);
  std::vector<double> sig;
  if (tr.karras || tr.exponential) {
    const double smin = tr.sigmas.front(), smax = tr.sigmas.back();  // np.flip(train sigmas)
    sig = tr.karras ? karras_sigmas(smin, smax, n) : exponential_sigmas(smin, smax, n);
    ts.clear();
    const bool round = tr.karras && (unipc || tr.beta_schedule != "squaredcos_cap_v2");
    for (double s : sig) {
      double t = sigma_to_t(s, tr.log_sigmas);
      if (round) t = std::nearbyint(t);
      ts.push_back(int64_t(t));  // .to(torch.int64) truncates
    }
  } else {
    for (int64_t t : ts) sig.push_back(interp_sigma(tr, double(t)));
  }
  sigmas.clear();
  for (double s : sig) sigmas.push_back(float(s));
  sigmas.push_back(0.0f);
  timesteps.clear();
  for (int64_t t : ts) timesteps.push_back(float(t));
}

// ---------------------------------------------------------------- DPM++ 2M (SDE)

class DPMSolverSampler : public Sampler {
 public:
  DPMSolverSampler(const Train& tr, int n, bool sde) : v_pred_(tr.v_pred), sde_(sde) {
    multistep_schedule(tr, n, false, sigmas_, timesteps_);
  }

 protected:
  std::pair<float, float> noise_coefficients(size_t index) const override {
    const AlphaSigma a = alpha_sigma(sigmas_[index]);
    return {a.alpha, a.sigma};
  }
  void step_impl(const Vec& m, size_t i, const Vec& x, const Shape& shape, NoiseGenerator& rng, Vec& out) override {
    const size_t n = timesteps_.size();
    const bool lower_order_final = i == n - 1;  // final_sigmas_type "zero" always ends first order
    // convert_model_output (dpmsolver++): x0 prediction.
    const AlphaSigma cur = alpha_sigma(sigmas_[i]);
    Vec x0(x.size());
    for (size_t k = 0; k < x.size(); ++k)
      x0[k] = v_pred_ ? cur.alpha * x[k] - cur.sigma * m[k] : (x[k] - cur.sigma * m[k]) / cur.alpha;
    Vec noise;
    if (sde_) noise = randn(rng, shape, x.size());
    const AlphaSigma t = alpha_sigma(sigmas_[i + 1]), s0 = alpha_sigma(sigmas_[i]);
    const float h = t.lambda - s0.lambda;
    if (lower_order_nums_ < 1 || lower_order_final) {
      if (!sde_) {
        const float c_x = t.sigma / s0.sigma, c_d = t.alpha * (std::exp(-h) - 1.0f);
        for (size_t k = 0; k < x.size(); ++k) out[k] = c_x * x[k] - c_d * x0[k];
      } else {
        const float e2 = std::exp(-2.0f * h);
        const float c_x = t.sigma / s0.sigma * std::exp(-h), c_d = t.alpha * (1.0f - e2);
        const float c_n = t.sigma * std::sqrt(1.0f - e2);
        for (size_t k = 0; k < x.size(); ++k) out[k] = c_x * x[k] + c_d * x0[k] + c_n * noise[k];
      }
    } else {
      const AlphaSigma s1 = alpha_sigma(sigmas_[i - 1]);
      const float h_0 = s0.lambda - s1.lambda;
      const float r0 = h_0 / h;
      const float inv_r0 = 1.0f / r0;
      if (!sde_) {
        const float c_x = t.sigma / s0.sigma, c_d0 = t.alpha * (std::exp(-h) - 1.0f);
        const float c_d1 = 0.5f * (t.alpha * (std::exp(-h) - 1.0f));
        for (size_t k = 0; k < x.size(); ++k) {
          const float d1 = inv_r0 * (x0[k] - prev_x0_[k]);
          out[k] = c_x * x[k] - c_d0 * x0[k] - c_d1 * d1;
        }
      } else {
        const float e2 = std::exp(-2.0f * h);
        const float c_x = t.sigma / s0.sigma * std::exp(-h), c_d0 = t.alpha * (1.0f - e2);
        const float c_d1 = 0.5f * (t.alpha * (1.0f - e2));
        const float c_n = t.sigma * std::sqrt(1.0f - e2);
        for (size_t k = 0; k < x.size(); ++k) {
          const float d1 = inv_r0 * (x0[k] - prev_x0_[k]);
          out[k] = c_x * x[k] + c_d0 * x0[k] + c_d1 * d1 + c_n * noise[k];
        }
      }
    }
    if (lower_order_nums_ < 2) ++lower_order_nums_;
    prev_x0_ = std::move(x0);
  }

 private:
  bool v_pred_, sde_;
  int lower_order_nums_ = 0;
  Vec prev_x0_;
};

// ---------------------------------------------------------------- UniPC (bh2, predict_x0, order 2)

class UniPCSampler : public Sampler {
 public:
  explicit UniPCSampler(const Train& tr, int n) : v_pred_(tr.v_pred) {
    multistep_schedule(tr, n, true, sigmas_, timesteps_);
  }

 protected:
  std::pair<float, float> noise_coefficients(size_t index) const override {
    const AlphaSigma a = alpha_sigma(sigmas_[index]);
    return {a.alpha, a.sigma};
  }
  void step_impl(const Vec& m, size_t i, const Vec& x, const Shape&, NoiseGenerator&, Vec& out) override {
    const size_t n = timesteps_.size();
    const AlphaSigma cur = alpha_sigma(sigmas_[i]);
    Vec conv(x.size());
    for (size_t k = 0; k < x.size(); ++k)
      conv[k] = v_pred_ ? cur.alpha * x[k] - cur.sigma * m[k] : (x[k] - cur.sigma * m[k]) / cur.alpha;
    Vec sample = x;
    if (i > 0 && !last_sample_.empty()) corrector(conv, i, sample);
    m_prev_ = std::move(m_cur_);
    m_cur_ = std::move(conv);
    const int this_order = std::min<int>(2, int(n - i));
    this_order_ = std::min(this_order, lower_order_nums_ + 1);
    last_sample_ = sample;
    predictor(i, sample, out);
    if (lower_order_nums_ < 2) ++lower_order_nums_;
  }

 private:
  void predictor(size_t i, const Vec& x, Vec& out) const {
    const AlphaSigma t = alpha_sigma(sigmas_[i + 1]), s0 = alpha_sigma(sigmas_[i]);
    const float h = t.lambda - s0.lambda;
    const float hh = -h;
    const float h_phi_1 = std::expm1(hh);
    const float B_h = std::expm1(hh);
    const float c_x = t.sigma / s0.sigma, c_m = t.alpha * h_phi_1, c_res = t.alpha * B_h;
    if (this_order_ == 2) {
      const AlphaSigma si = alpha_sigma(sigmas_[i - 1]);
      const float rk = (si.lambda - s0.lambda) / h;
      for (size_t k = 0; k < x.size(); ++k) {
        const float d1 = (m_prev_[k] - m_cur_[k]) / rk;
        const float x_t_ = c_x * x[k] - c_m * m_cur_[k];
        out[k] = x_t_ - c_res * (0.5f * d1);
      }
    } else {
      for (size_t k = 0; k < x.size(); ++k) {
        const float x_t_ = c_x * x[k] - c_m * m_cur_[k];
        out[k] = x_t_ - c_res * 0.0f;
      }
    }
  }

  // multistep_uni_c_bh_update: corrects `sample` (the current x_t) with the new model output.
  void corrector(const Vec& model_t, size_t i, Vec& sample) const {
    const int order = this_order_;
    const AlphaSigma t = alpha_sigma(sigmas_[i]), s0 = alpha_sigma(sigmas_[i - 1]);
    const float h = t.lambda - s0.lambda;
    const float hh = -h;
    const float h_phi_1 = std::expm1(hh);
    float h_phi_k = h_phi_1 / hh - 1.0f;
    const float B_h = std::expm1(hh);
    float rk = 1.0f;
    if (order == 2) {
      const AlphaSigma si = alpha_sigma(sigmas_[i - 2]);
      rk = (si.lambda - s0.lambda) / h;
    }
    float b[2];
    int factorial = 1;
    for (int j = 1; j <= order; ++j) {
      b[j - 1] = h_phi_k * float(factorial) / B_h;
      factorial *= j + 1;
      h_phi_k = h_phi_k / hh - float(1.0 / factorial);
    }
    float rho0 = 0.0f, rho_last = 0.5f;
    if (order == 2) {
      // torch.linalg.solve([[1, 1], [rk, 1]], b): LU with partial pivoting, as LAPACK's sgesv.
      float a00 = 1.0f, a01 = 1.0f, a10 = rk, a11 = 1.0f, b0 = b[0], b1 = b[1];
      if (std::abs(a10) > std::abs(a00)) {
        std::swap(a00, a10);
        std::swap(a01, a11);
        std::swap(b0, b1);
      }
      const float l = a10 * (1.0f / a00);
      const float u11 = a11 - l * a01;
      const float y1 = b1 - l * b0;
      const float x1 = y1 / u11;
      const float x0 = (b0 - a01 * x1) / a00;
      rho0 = x0;
      rho_last = x1;
    }
    const float c_x = t.sigma / s0.sigma, c_m = t.alpha * h_phi_1, c_res = t.alpha * B_h;
    const Vec& x = last_sample_;
    const Vec& m0 = m_cur_;  // the previous step's converted output
    for (size_t k = 0; k < x.size(); ++k) {
      const float x_t_ = c_x * x[k] - c_m * m0[k];
      const float corr_res = order == 2 ? rho0 * ((m_prev_[k] - m0[k]) / rk) : 0.0f;
      const float d1_t = model_t[k] - m0[k];
      sample[k] = x_t_ - c_res * (corr_res + rho_last * d1_t);
    }
  }

  bool v_pred_;
  int lower_order_nums_ = 0;
  int this_order_ = 1;
  Vec m_cur_, m_prev_, last_sample_;
};

// ---------------------------------------------------------------- DDIM

class DDIMSampler : public Sampler {
 public:
  DDIMSampler(const Train& tr, int n, float eta) : tr_(tr), eta_(eta) {
    ts_ = ddim_spacing(tr, n);
    for (int64_t t : ts_) timesteps_.push_back(float(t));
    step_ratio_ = tr.T / n;
    final_alpha_ = tr.set_alpha_to_one ? 1.0f : tr.alphas_cumprod[0];
  }

 protected:
  float ac(int64_t t) const {
    if (t >= int64_t(tr_.alphas_cumprod.size())) throw InvalidArgument("DDIM: timestep past the training schedule");
    return t >= 0 ? tr_.alphas_cumprod[size_t(t)] : final_alpha_;
  }

  std::pair<float, float> noise_coefficients(size_t index) const override {
    const float a = tr_.alphas_cumprod.at(size_t(ts_[index]));
    return {std::sqrt(a), std::sqrt(1.0f - a)};
  }
  void step_impl(const Vec& m, size_t i, const Vec& x, const Shape& shape, NoiseGenerator& rng, Vec& out) override {
    const int64_t t = ts_[i], prev_t = t - step_ratio_;
    const float a_t = ac(t), a_prev = ac(prev_t);
    const float b_t = 1.0f - a_t;
    const float sa = std::sqrt(a_t), sb = std::sqrt(b_t);
    Vec x0(x.size()), eps(x.size());
    for (size_t k = 0; k < x.size(); ++k) {
      if (!tr_.v_pred) {
        x0[k] = (x[k] - sb * m[k]) / sa;
        eps[k] = m[k];
      } else {
        x0[k] = sa * x[k] - sb * m[k];
        eps[k] = sa * m[k] + sb * x[k];
      }
    }
    clip(tr_.clip_sample, tr_.clip_range, x0);
    const float b_prev = 1.0f - a_prev;
    const float variance = b_prev / b_t * (1.0f - a_t / a_prev);
    const float std_dev = eta_ * std::sqrt(variance);
    const float c_dir = std::sqrt(1.0f - a_prev - std_dev * std_dev);
    const float c_x0 = std::sqrt(a_prev);
    for (size_t k = 0; k < x.size(); ++k) out[k] = c_x0 * x0[k] + c_dir * eps[k];
    if (eta_ > 0) {
      const Vec noise = randn(rng, shape, x.size());
      for (size_t k = 0; k < x.size(); ++k) out[k] = out[k] + std_dev * noise[k];
    }
  }

 private:
  Train tr_;
  float eta_;
  std::vector<int64_t> ts_;
  int64_t step_ratio_ = 1;
  float final_alpha_ = 1.0f;
};

// ---------------------------------------------------------------- PLMS

class PLMSSampler : public Sampler {
 public:
  PLMSSampler(const Train& tr, int n) : tr_(tr) {
    const std::vector<int64_t> asc = pndm_spacing(tr, n);
    // plms_timesteps = concat(ts[:-1], ts[-2:-1], ts[-1:])[::-1]
    std::vector<int64_t> plms(asc.begin(), asc.end() - 1);
    if (asc.size() >= 2) plms.push_back(asc[asc.size() - 2]);
    plms.push_back(asc.back());
    std::reverse(plms.begin(), plms.end());
    ts_ = plms;
    for (int64_t t : ts_) timesteps_.push_back(float(t));
    step_ratio_ = tr.T / n;
    final_alpha_ = tr.set_alpha_to_one ? 1.0f : tr.alphas_cumprod[0];
  }

 protected:
  float ac(int64_t t) const {
    if (t >= int64_t(tr_.alphas_cumprod.size())) throw InvalidArgument("PLMS: timestep past the training schedule");
    return t >= 0 ? tr_.alphas_cumprod[size_t(t)] : final_alpha_;
  }

  std::pair<float, float> noise_coefficients(size_t index) const override {
    const float a = tr_.alphas_cumprod.at(size_t(ts_[index]));
    return {std::sqrt(a), std::sqrt(1.0f - a)};
  }
  void step_impl(const Vec& m, size_t i, const Vec& x, const Shape&, NoiseGenerator&, Vec& out) override {
    int64_t t = ts_[i];
    int64_t prev_t = t - step_ratio_;
    if (counter_ != 1) {
      if (ets_.size() > 3) ets_.erase(ets_.begin(), ets_.end() - 3);
      ets_.push_back(m);
    } else {
      prev_t = t;
      t = t + step_ratio_;
    }
    const size_t n = x.size();
    Vec mo(n);
    const Vec* sample = &x;
    const size_t e = ets_.size();
    if (e == 1 && counter_ == 0) {
      mo = m;
      cur_sample_ = x;
    } else if (e == 1 && counter_ == 1) {
      for (size_t k = 0; k < n; ++k) mo[k] = (m[k] + ets_[e - 1][k]) / 2.0f;
      sample = &cur_sample_;
    } else if (e == 2) {
      for (size_t k = 0; k < n; ++k) mo[k] = (3.0f * ets_[e - 1][k] - ets_[e - 2][k]) / 2.0f;
    } else if (e == 3) {
      for (size_t k = 0; k < n; ++k)
        mo[k] = (23.0f * ets_[e - 1][k] - 16.0f * ets_[e - 2][k] + 5.0f * ets_[e - 3][k]) / 12.0f;
    } else {
      const float c = float(1.0 / 24.0);
      for (size_t k = 0; k < n; ++k)
        mo[k] = c * (55.0f * ets_[e - 1][k] - 59.0f * ets_[e - 2][k] + 37.0f * ets_[e - 3][k] - 9.0f * ets_[e - 4][k]);
    }
    // _get_prev_sample
    const Vec& s = *sample;
    const float a_t = ac(t), a_prev = ac(prev_t);
    const float b_t = 1.0f - a_t, b_prev = 1.0f - a_prev;
    if (tr_.v_pred) {
      const float sa = std::sqrt(a_t), sb = std::sqrt(b_t);
      for (size_t k = 0; k < n; ++k) mo[k] = sa * mo[k] + sb * s[k];
    }
    const float c_s = std::sqrt(a_prev / a_t);
    const float denom = a_t * std::sqrt(b_prev) + std::sqrt(a_t * b_t * a_prev);
    const float c_m = a_prev - a_t;
    for (size_t k = 0; k < n; ++k) out[k] = c_s * s[k] - c_m * mo[k] / denom;
    ++counter_;
  }

 private:
  Train tr_;
  std::vector<int64_t> ts_;
  int64_t step_ratio_ = 1;
  float final_alpha_ = 1.0f;
  int counter_ = 0;
  std::vector<Vec> ets_;
  Vec cur_sample_;
};

// ---------------------------------------------------------------- LCM

class LCMSampler : public Sampler {
 public:
  LCMSampler(const Train& tr, int n) : tr_(tr) {
    const int orig = tr.original_inference_steps;
    if (orig < 1 || orig > tr.T) throw InvalidArgument("LCM: original_inference_steps out of range");
    if (n > orig)
      throw InvalidArgument("LCM: steps (" + std::to_string(n) + ") must not exceed original_inference_steps (" +
                            std::to_string(orig) + ")");
    const int k = tr.T / orig;
    std::vector<int64_t> origin;
    for (int j = orig; j >= 1; --j) origin.push_back(int64_t(j) * k - 1);  // reversed
    const double step = double(origin.size()) / n;                         // linspace(..., endpoint=False)
    for (int j = 0; j < n; ++j) ts_.push_back(origin[size_t(std::floor(double(j) * step))]);
    for (int64_t t : ts_) timesteps_.push_back(float(t));
    final_alpha_ = tr.set_alpha_to_one ? 1.0f : tr.alphas_cumprod[0];
  }

 protected:
  std::pair<float, float> noise_coefficients(size_t index) const override {
    const float a = tr_.alphas_cumprod.at(size_t(ts_[index]));
    return {std::sqrt(a), std::sqrt(1.0f - a)};
  }
  void step_impl(const Vec& m, size_t i, const Vec& x, const Shape& shape, NoiseGenerator& rng, Vec& out) override {
    const int64_t t = ts_[i];
    const int64_t prev_t = i + 1 < ts_.size() ? ts_[i + 1] : t;
    const float a_t = tr_.alphas_cumprod[size_t(t)];
    const float a_prev = prev_t >= 0 ? tr_.alphas_cumprod[size_t(prev_t)] : final_alpha_;
    const float b_t = 1.0f - a_t, b_prev = 1.0f - a_prev;
    const float st = float(t) * tr_.timestep_scaling;
    const float c_skip = 0.25f / (st * st + 0.25f);
    const float c_out = st / std::sqrt(st * st + 0.25f);
    const float sa = std::sqrt(a_t), sb = std::sqrt(b_t);
    Vec x0(x.size());
    for (size_t k = 0; k < x.size(); ++k) x0[k] = tr_.v_pred ? sa * x[k] - sb * m[k] : (x[k] - sb * m[k]) / sa;
    clip(tr_.clip_sample, tr_.clip_range, x0);
    for (size_t k = 0; k < x.size(); ++k) out[k] = c_out * x0[k] + c_skip * x[k];
    if (i + 1 != ts_.size()) {
      const Vec noise = randn(rng, shape, x.size());
      const float c_d = std::sqrt(a_prev), c_n = std::sqrt(b_prev);
      for (size_t k = 0; k < x.size(); ++k) out[k] = c_d * out[k] + c_n * noise[k];
    }
  }

 private:
  Train tr_;
  std::vector<int64_t> ts_;
  float final_alpha_ = 1.0f;
};

}  // namespace

std::unique_ptr<Sampler> make_alpha_sampler(SamplerKind kind, ScheduleType, const Train& tr, int steps, float eta) {
  switch (kind) {
    case SamplerKind::DPMPP2M:
      return std::make_unique<DPMSolverSampler>(tr, steps, false);
    case SamplerKind::DPMPP2MSDE:
      return std::make_unique<DPMSolverSampler>(tr, steps, true);
    case SamplerKind::UniPC:
      return std::make_unique<UniPCSampler>(tr, steps);
    case SamplerKind::DDIM:
      return std::make_unique<DDIMSampler>(tr, steps, eta);
    case SamplerKind::PLMS:
      return std::make_unique<PLMSSampler>(tr, steps);
    case SamplerKind::LCM:
      return std::make_unique<LCMSampler>(tr, steps);
    default:
      throw InternalError("make_alpha_sampler: not an alpha sampler");
  }
}

}  // namespace sdserve::samplers
