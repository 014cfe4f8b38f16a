// ScheduleConfig parsing, A1111 name parsing, the shared schedule arithmetic and Sampler's
// public entry points. The samplers themselves are in samplers_sigma.cc and samplers_alpha.cc.
#include "pipeline/scheduler.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <nlohmann/json.hpp>

#include "pipeline/samplers_internal.h"

#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace sdserve {

namespace {

template <typename T>
T json_get(const nlohmann::json& j, const char* key) {
  try {
    return j.at(key).get<T>();
  } catch (const nlohmann::json::exception& e) {
    throw InvalidArgument(std::string("scheduler config: bad value for \"") + key + "\": " + e.what());
  }
}

bool has(const nlohmann::json& j, const char* key) { return j.contains(key) && !j.at(key).is_null(); }

std::string normalize(const std::string& s) {
  std::string out;
  bool space = false;
  for (char c : s) {
    if (std::isspace(static_cast<unsigned char>(c))) {
      space = !out.empty();
      continue;
    }
    if (space) out.push_back(' ');
    space = false;
    out.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
  }
  return out;
}

struct SamplerEntry {
  SamplerKind kind;
  const char* name;
  std::vector<const char*> aliases;  // normalized
};

const std::vector<SamplerEntry>& sampler_table() {
  static const std::vector<SamplerEntry> t = {
      {SamplerKind::DPMPP2M, "DPM++ 2M", {"k_dpmpp_2m", "dpmpp_2m"}},
      {SamplerKind::DPMPPSDE, "DPM++ SDE", {"k_dpmpp_sde", "dpmpp_sde"}},
      {SamplerKind::DPMPP2MSDE, "DPM++ 2M SDE", {"k_dpmpp_2m_sde", "dpmpp_2m_sde"}},
      {SamplerKind::EulerA, "Euler a", {"k_euler_a", "k_euler_ancestral", "euler_a", "euler ancestral"}},
      {SamplerKind::Euler, "Euler", {"k_euler"}},
      {SamplerKind::LMS, "LMS", {"k_lms"}},
      {SamplerKind::Heun, "Heun", {"k_heun"}},
      {SamplerKind::DPM2, "DPM2", {"k_dpm_2"}},
      {SamplerKind::DPM2A, "DPM2 a", {"k_dpm_2_a", "k_dpm_2_ancestral"}},
      {SamplerKind::DDIM, "DDIM", {}},
      {SamplerKind::PLMS, "PLMS", {}},
      {SamplerKind::UniPC, "UniPC", {}},
      {SamplerKind::LCM, "LCM", {}},
  };
  return t;
}

struct ScheduleEntry {
  ScheduleType type;
  const char* name;
  std::vector<const char*> aliases;
};

const std::vector<ScheduleEntry>& schedule_table() {
  static const std::vector<ScheduleEntry> t = {
      {ScheduleType::Automatic, "Automatic", {"", "auto", "default"}},
      {ScheduleType::Karras, "Karras", {}},
      {ScheduleType::Exponential, "Exponential", {}},
      {ScheduleType::SGMUniform, "SGM Uniform", {"sgm_uniform", "sgm-uniform", "sgmuniform"}},
  };
  return t;
}

std::string join_names(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& n : v) s += (s.empty() ? "\"" : ", \"") + n + "\"";
  return s;
}

const SamplerEntry* find_sampler(const std::string& norm) {
  for (const auto& e : sampler_table()) {
    if (normalize(e.name) == norm) return &e;
    for (const char* a : e.aliases)
      if (norm == a) return &e;
  }
  return nullptr;
}

const ScheduleEntry* find_schedule(const std::string& norm) {
  for (const auto& e : schedule_table()) {
    if (normalize(e.name) == norm) return &e;
    for (const char* a : e.aliases)
      if (norm == a) return &e;
  }
  return nullptr;
}

}  // namespace

// ---------------------------------------------------------------- ScheduleConfig

ScheduleConfig ScheduleConfig::from_json(const nlohmann::json& j) {
  if (!j.is_object()) throw InvalidArgument("scheduler config: expected a JSON object");
  ScheduleConfig c;
  c.beta_start.reset();
  c.beta_end.reset();
  c.beta_schedule.reset();
  c.set_alpha_to_one.reset();
  c.clip_sample.reset();
  c.steps_offset = 0;
  if (has(j, "num_train_timesteps")) c.num_train_timesteps = json_get<int>(j, "num_train_timesteps");
  if (c.num_train_timesteps < 2 || c.num_train_timesteps > 100000)
    throw InvalidArgument("scheduler config: num_train_timesteps must be in [2, 100000], got " +
                          std::to_string(c.num_train_timesteps));
  if (has(j, "beta_start")) c.beta_start = json_get<double>(j, "beta_start");
  if (has(j, "beta_end")) c.beta_end = json_get<double>(j, "beta_end");
  if (has(j, "beta_schedule")) {
    c.beta_schedule = json_get<std::string>(j, "beta_schedule");
    if (*c.beta_schedule != "linear" && *c.beta_schedule != "scaled_linear" && *c.beta_schedule != "squaredcos_cap_v2")
      throw UnsupportedError("scheduler config: beta_schedule \"" + *c.beta_schedule +
                             "\" is not supported (linear, scaled_linear, squaredcos_cap_v2)");
  }
  if (has(j, "trained_betas")) {
    c.trained_betas = json_get<std::vector<float>>(j, "trained_betas");
    if (int(c.trained_betas.size()) != c.num_train_timesteps)
      throw InvalidArgument("scheduler config: trained_betas has " + std::to_string(c.trained_betas.size()) +
                            " values, num_train_timesteps is " + std::to_string(c.num_train_timesteps));
  }
  if (has(j, "prediction_type")) {
    c.prediction_type = json_get<std::string>(j, "prediction_type");
    if (c.prediction_type != "epsilon" && c.prediction_type != "v_prediction")
      throw UnsupportedError("scheduler config: prediction_type \"" + c.prediction_type +
                             "\" is not supported (epsilon, v_prediction)");
  }
  if (has(j, "steps_offset")) c.steps_offset = json_get<int>(j, "steps_offset");
  if (has(j, "timestep_spacing")) {
    c.timestep_spacing = json_get<std::string>(j, "timestep_spacing");
    if (*c.timestep_spacing != "linspace" && *c.timestep_spacing != "leading" && *c.timestep_spacing != "trailing")
      throw InvalidArgument("scheduler config: timestep_spacing \"" + *c.timestep_spacing +
                            "\" is not one of linspace, leading, trailing");
  }
  if (has(j, "set_alpha_to_one")) c.set_alpha_to_one = json_get<bool>(j, "set_alpha_to_one");
  if (has(j, "clip_sample")) c.clip_sample = json_get<bool>(j, "clip_sample");
  if (has(j, "clip_sample_range")) c.clip_sample_range = json_get<float>(j, "clip_sample_range");
  if (has(j, "rescale_betas_zero_snr")) c.rescale_betas_zero_snr = json_get<bool>(j, "rescale_betas_zero_snr");
  if (has(j, "use_karras_sigmas")) c.use_karras_sigmas = json_get<bool>(j, "use_karras_sigmas");
  if (has(j, "use_exponential_sigmas")) c.use_exponential_sigmas = json_get<bool>(j, "use_exponential_sigmas");
  if (c.use_karras_sigmas && c.use_exponential_sigmas)
    throw InvalidArgument("scheduler config: use_karras_sigmas and use_exponential_sigmas are exclusive");
  if (has(j, "original_inference_steps")) c.original_inference_steps = json_get<int>(j, "original_inference_steps");
  if (has(j, "timestep_scaling")) c.timestep_scaling = json_get<float>(j, "timestep_scaling");
  return c;
}

// ---------------------------------------------------------------- names

const char* sampler_name(SamplerKind k) {
  for (const auto& e : sampler_table())
    if (e.kind == k) return e.name;
  return "?";
}

const char* schedule_name(ScheduleType s) {
  for (const auto& e : schedule_table())
    if (e.type == s) return e.name;
  return "?";
}

std::vector<std::string> sampler_names() {
  std::vector<std::string> v;
  for (const auto& e : sampler_table()) v.push_back(e.name);
  return v;
}

std::vector<std::string> schedule_names() {
  std::vector<std::string> v;
  for (const auto& e : schedule_table()) v.push_back(e.name);
  return v;
}

bool schedule_supported(SamplerKind k, ScheduleType s) {
  switch (k) {
    case SamplerKind::DDIM:
    case SamplerKind::PLMS:
      return s == ScheduleType::Automatic || s == ScheduleType::SGMUniform;
    case SamplerKind::LCM:
      return s == ScheduleType::Automatic;
    default:
      return true;
  }
}

SamplerChoice parse_sampler(const std::string& sampler, const std::string& schedule) {
  const std::string ns = normalize(sampler);
  const SamplerEntry* se = find_sampler(ns);
  const ScheduleEntry* legacy = nullptr;
  if (!se) {
    // Legacy combined names: "DPM++ 2M Karras", "LMS Karras", "DPM++ 2M SDE Exponential".
    for (const auto& e : schedule_table()) {
      const std::string suffix = " " + normalize(e.name);
      if (e.type == ScheduleType::Automatic || ns.size() <= suffix.size()) continue;
      if (ns.compare(ns.size() - suffix.size(), suffix.size(), suffix) == 0) {
        se = find_sampler(ns.substr(0, ns.size() - suffix.size()));
        if (se) {
          legacy = &e;
          break;
        }
      }
    }
  }
  if (!se)
    throw InvalidArgument("unknown sampler \"" + sampler + "\"; valid samplers: " + join_names(sampler_names()) +
                          " (a schedule suffix such as \" Karras\" is also accepted)");
  const ScheduleEntry* sch = find_schedule(normalize(schedule));
  if (!sch)
    throw InvalidArgument("unknown schedule type \"" + schedule +
                          "\"; valid schedule types: " + join_names(schedule_names()));
  ScheduleType type = sch->type;
  if (legacy) {
    if (type != ScheduleType::Automatic && type != legacy->type)
      throw InvalidArgument("sampler \"" + sampler + "\" names schedule \"" + legacy->name + "\" but schedule type \"" +
                            schedule + "\" was also given");
    type = legacy->type;
  }
  if (!schedule_supported(se->kind, type)) {
    std::vector<std::string> ok;
    for (const auto& e : schedule_table())
      if (schedule_supported(se->kind, e.type)) ok.push_back(e.name);
    throw InvalidArgument(std::string("sampler \"") + se->name + "\" does not support schedule type \"" +
                          schedule_name(type) + "\"; it supports " + join_names(ok));
  }
  return {se->kind, type};
}

// ---------------------------------------------------------------- shared schedule arithmetic

namespace samplers {

namespace {

struct ClassDefaults {
  double beta_start, beta_end;
  const char* beta_schedule;
  const char* spacing;
  bool set_alpha_to_one, clip_sample;
  bool zero_snr;       // the class accepts rescale_betas_zero_snr
  bool zero_snr_last;  // ... and then sets alphas_cumprod[-1] = 2**-24
  bool sigma_options;  // the class accepts use_karras_sigmas / use_exponential_sigmas
};

ClassDefaults class_defaults(SamplerKind k) {
  switch (k) {
    case SamplerKind::Euler:
    case SamplerKind::EulerA:
      return {0.0001, 0.02, "linear", "linspace", false, false, true, true, k == SamplerKind::Euler};
    case SamplerKind::Heun:
    case SamplerKind::DPM2:
    case SamplerKind::DPM2A:
    case SamplerKind::DPMPPSDE:
      return {0.00085, 0.012, "linear", "linspace", false, false, false, false, true};
    case SamplerKind::DPMPP2M:
    case SamplerKind::DPMPP2MSDE:
    case SamplerKind::UniPC:
      return {0.0001, 0.02, "linear", "linspace", false, false, true, true, true};
    case SamplerKind::LMS:
      return {0.0001, 0.02, "linear", "linspace", false, false, false, false, true};
    case SamplerKind::DDIM:
      return {0.0001, 0.02, "linear", "leading", true, true, true, false, false};
    case SamplerKind::PLMS:
      return {0.0001, 0.02, "linear", "leading", false, false, false, false, false};
    case SamplerKind::LCM:
      return {0.00085, 0.012, "scaled_linear", "leading", true, false, true, false, false};
  }
  return {};
}

// torch.linspace(start, end, n, dtype=float32) on the CPU: float step, fused multiply-add from
// whichever end is nearer.
std::vector<float> torch_linspace_f32(double start, double end, int n) {
  std::vector<float> v(static_cast<size_t>(n));
  const float s = float(start), e = float(end);
  if (n == 1) {
    v[0] = s;
    return v;
  }
  const float step = (e - s) / float(n - 1);
  const int half = n / 2;
  for (int i = 0; i < n; ++i)
    v[size_t(i)] = i < half ? std::fma(step, float(i), s) : std::fma(-step, float(n - i - 1), e);
  return v;
}

std::vector<float> cosine_betas(int n) {
  auto abar = [](double t) {
    const double c = std::cos((t + 0.008) / 1.008 * M_PI / 2);
    return c * c;
  };
  std::vector<float> b(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    const double t1 = double(i) / n, t2 = double(i + 1) / n;
    b[size_t(i)] = float(std::min(1 - abar(t2) / abar(t1), 0.999));
  }
  return b;
}

std::vector<float> cumprod(const std::vector<float>& a) {
  std::vector<float> out(a.size());
  double acc = 1.0;  // torch's CPU cumprod accumulates float in double
  for (size_t i = 0; i < a.size(); ++i) {
    acc *= double(a[i]);
    out[i] = float(acc);
  }
  return out;
}

std::vector<float> rescale_zero_terminal_snr(const std::vector<float>& betas) {
  std::vector<float> alphas(betas.size());
  for (size_t i = 0; i < betas.size(); ++i) alphas[i] = 1.0f - betas[i];
  std::vector<float> s = cumprod(alphas);
  for (float& x : s) x = std::sqrt(x);
  const float s0 = s.front(), sT = s.back();
  const float scale = s0 / (s0 - sT);
  for (float& x : s) {
    x = x - sT;
    x = x * scale;
  }
  std::vector<float> out(betas.size());
  for (size_t i = 0; i < s.size(); ++i) {
    const float ab = s[i] * s[i];
    const float a = i == 0 ? ab : ab / (s[i - 1] * s[i - 1]);
    out[i] = 1.0f - a;
  }
  return out;
}

// numpy's float arange(start, stop, step) (stop < start, step < 0), including its fill
// (start + i * (start + step - start)).
std::vector<double> np_arange_desc(double start, double stop, double step) {
  const double len_f = std::ceil((stop - start) / step);
  const int64_t len = len_f > 0 ? int64_t(len_f) : 0;
  std::vector<double> v(size_t(std::max<int64_t>(len, 0)));
  if (len > 0) v[0] = start;
  if (len > 1) v[1] = start + step;
  const double delta = len > 1 ? v[1] - start : 0;
  for (int64_t i = 2; i < len; ++i) v[size_t(i)] = start + double(i) * delta;
  return v;
}

// diffusers' "trailing" points: np.arange(T, 0, -T / n). For some n (61, 103, 121, ...) rounding
// makes numpy return n + 1 points, the last rounding to timestep -1; diffusers then runs an
// extra step at t = -1 (DDIM/PLMS even index alphas_cumprod[-1]). We keep the first n points.
std::vector<double> trailing_points(int T, int n) {
  std::vector<double> v = np_arange_desc(T, 0, -(double(T) / n));
  if (v.size() > size_t(n)) v.resize(size_t(n));
  return v;
}

// np.linspace(start, stop, n) (endpoint=True).
std::vector<double> np_linspace(double start, double stop, int n) {
  std::vector<double> v(static_cast<size_t>(n));
  if (n == 1) {
    v[0] = start;
    return v;
  }
  const double step = (stop - start) / double(n - 1);
  for (int i = 0; i < n; ++i) v[size_t(i)] = double(i) * step + start;
  v[size_t(n - 1)] = stop;
  return v;
}

double np_round(double x) { return std::nearbyint(x); }  // half to even, like numpy

}  // namespace

Train make_train(SamplerKind kind, ScheduleType schedule, const ScheduleConfig& cfg) {
  const ClassDefaults d = class_defaults(kind);
  Train tr;
  tr.T = cfg.num_train_timesteps;
  if (cfg.prediction_type != "epsilon" && cfg.prediction_type != "v_prediction")
    throw InvalidArgument("prediction_type must be epsilon or v_prediction, got \"" + cfg.prediction_type + "\"");
  tr.v_pred = cfg.prediction_type == "v_prediction";
  tr.spacing = cfg.timestep_spacing.value_or(d.spacing);
  tr.steps_offset = cfg.steps_offset;
  tr.set_alpha_to_one = cfg.set_alpha_to_one.value_or(d.set_alpha_to_one);
  tr.clip_sample = cfg.clip_sample.value_or(d.clip_sample);
  tr.clip_range = cfg.clip_sample_range;
  tr.original_inference_steps = cfg.original_inference_steps;
  tr.timestep_scaling = cfg.timestep_scaling;
  switch (schedule) {
    case ScheduleType::Automatic:
      tr.karras = d.sigma_options && cfg.use_karras_sigmas;
      tr.exponential = d.sigma_options && cfg.use_exponential_sigmas;
      break;
    case ScheduleType::Karras:
      tr.karras = true;
      break;
    case ScheduleType::Exponential:
      tr.exponential = true;
      break;
    case ScheduleType::SGMUniform:
      tr.spacing = "trailing";
      break;
  }

  std::vector<float> betas;
  const std::string bs = cfg.beta_schedule.value_or(d.beta_schedule);
  tr.beta_schedule = cfg.trained_betas.empty() ? bs : "trained";
  const double b0 = cfg.beta_start.value_or(d.beta_start), b1 = cfg.beta_end.value_or(d.beta_end);
  if (!cfg.trained_betas.empty()) {
    SD_CHECK_ARG(int(cfg.trained_betas.size()) == tr.T, "trained_betas must have num_train_timesteps values");
    betas = cfg.trained_betas;
  } else if (bs == "linear") {
    betas = torch_linspace_f32(b0, b1, tr.T);
  } else if (bs == "scaled_linear") {
    betas = torch_linspace_f32(std::sqrt(b0), std::sqrt(b1), tr.T);
    for (float& b : betas) b = b * b;
  } else if (bs == "squaredcos_cap_v2") {
    betas = cosine_betas(tr.T);
  } else {
    throw UnsupportedError("beta_schedule \"" + bs + "\" is not supported");
  }
  const bool zero_snr = cfg.rescale_betas_zero_snr && d.zero_snr;
  if (zero_snr) betas = rescale_zero_terminal_snr(betas);
  std::vector<float> alphas(betas.size());
  for (size_t i = 0; i < betas.size(); ++i) alphas[i] = 1.0f - betas[i];
  tr.alphas_cumprod = cumprod(alphas);
  if (zero_snr && d.zero_snr_last) tr.alphas_cumprod.back() = std::ldexp(1.0f, -24);
  tr.sigmas.resize(tr.alphas_cumprod.size());
  tr.log_sigmas.resize(tr.alphas_cumprod.size());
  for (size_t i = 0; i < tr.sigmas.size(); ++i) {
    const float ac = tr.alphas_cumprod[i];
    tr.sigmas[i] = std::sqrt((1.0f - ac) / ac);
    tr.log_sigmas[i] = std::log(tr.sigmas[i]);
  }
  return tr;
}

std::vector<double> k_spacing_f64(const Train& tr, int n) {
  std::vector<double> ts;
  if (tr.spacing == "linspace") {
    ts = np_linspace(0, tr.T - 1, n);
    std::reverse(ts.begin(), ts.end());
  } else if (tr.spacing == "leading") {
    const int ratio = tr.T / n;
    for (int i = n - 1; i >= 0; --i) ts.push_back(double(i * ratio) + tr.steps_offset);
  } else if (tr.spacing == "trailing") {
    ts = trailing_points(tr.T, n);
    for (double& t : ts) t = np_round(t) - 1;
  } else {
    throw InvalidArgument("timestep_spacing \"" + tr.spacing + "\" is not one of linspace, leading, trailing");
  }
  return ts;
}

std::vector<float> k_spacing(const Train& tr, int n) {
  // Same values, but diffusers casts to float32 before adding steps_offset / subtracting 1; all
  // of these are small integers or linspace points, so only the linspace cast matters.
  std::vector<double> d = k_spacing_f64(tr, n);
  std::vector<float> f(d.size());
  for (size_t i = 0; i < d.size(); ++i) f[i] = float(d[i]);
  return f;
}

std::vector<int64_t> dpm_spacing(const Train& tr, int n) {
  std::vector<int64_t> ts;
  const int last = tr.T;  // lambda_min_clipped = -inf clips nothing
  if (tr.spacing == "linspace") {
    std::vector<double> v = np_linspace(0, last - 1, n + 1);
    for (int i = n; i >= 1; --i) ts.push_back(int64_t(np_round(v[size_t(i)])));
  } else if (tr.spacing == "leading") {
    const int ratio = last / (n + 1);
    for (int i = n; i >= 1; --i) ts.push_back(int64_t(i) * ratio + tr.steps_offset);
  } else if (tr.spacing == "trailing") {
    for (double t : trailing_points(last, n)) ts.push_back(int64_t(np_round(t)) - 1);
  } else {
    throw InvalidArgument("timestep_spacing \"" + tr.spacing + "\" is not one of linspace, leading, trailing");
  }
  return ts;
}

std::vector<int64_t> ddim_spacing(const Train& tr, int n) {
  std::vector<int64_t> ts;
  if (tr.spacing == "linspace") {
    std::vector<double> v = np_linspace(0, tr.T - 1, n);
    for (int i = n - 1; i >= 0; --i) ts.push_back(int64_t(np_round(v[size_t(i)])));
  } else if (tr.spacing == "leading") {
    const int ratio = tr.T / n;
    for (int i = n - 1; i >= 0; --i) ts.push_back(int64_t(i) * ratio + tr.steps_offset);
  } else if (tr.spacing == "trailing") {
    for (double t : trailing_points(tr.T, n)) ts.push_back(int64_t(np_round(t)) - 1);
  } else {
    throw InvalidArgument("timestep_spacing \"" + tr.spacing + "\" is not one of linspace, leading, trailing");
  }
  return ts;
}

std::vector<int64_t> pndm_spacing(const Train& tr, int n) {
  std::vector<int64_t> ts = ddim_spacing(tr, n);
  std::reverse(ts.begin(), ts.end());
  return ts;
}

double interp_sigma(const Train& tr, double t) {
  const std::vector<float>& fp = tr.sigmas;
  const int64_t last = int64_t(fp.size()) - 1;
  if (!(t > 0)) return fp[0];
  if (t >= double(last)) return fp[size_t(last)];
  const int64_t j = int64_t(std::floor(t));
  if (double(j) == t) return fp[size_t(j)];
  const double slope = (double(fp[size_t(j + 1)]) - double(fp[size_t(j)])) / 1.0;
  return slope * (t - double(j)) + double(fp[size_t(j)]);
}

std::vector<double> karras_sigmas(double sigma_min, double sigma_max, int n) {
  const double rho = 7.0;
  const std::vector<double> ramp = np_linspace(0, 1, n);
  const double min_inv = std::pow(sigma_min, 1 / rho), max_inv = std::pow(sigma_max, 1 / rho);
  std::vector<double> s(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) s[size_t(i)] = std::pow(max_inv + ramp[size_t(i)] * (min_inv - max_inv), rho);
  return s;
}

std::vector<double> exponential_sigmas(double sigma_min, double sigma_max, int n) {
  std::vector<double> s = np_linspace(std::log(sigma_max), std::log(sigma_min), n);
  for (double& x : s) x = std::exp(x);
  return s;
}

namespace {
// low_idx of _sigma_to_t: the last index whose log-sigma is <= log_sigma (0 if none), at most n-2.
template <typename F>
int64_t sigma_low_index(F log_sigma, const std::vector<float>& log_sigmas) {
  int64_t count = 0;
  int64_t best = 0, best_count = 0;
  for (size_t j = 0; j < log_sigmas.size(); ++j) {
    if (F(log_sigma - F(log_sigmas[j])) >= 0) ++count;
    if (count > best_count) {
      best_count = count;
      best = int64_t(j);
    }
  }
  return std::min<int64_t>(best, int64_t(log_sigmas.size()) - 2);
}
}  // namespace

double sigma_to_t(double sigma, const std::vector<float>& log_sigmas) {
  const double log_sigma = std::log(std::max(sigma, 1e-10));
  const int64_t lo = sigma_low_index<double>(log_sigma, log_sigmas);
  const float low = log_sigmas[size_t(lo)], high = log_sigmas[size_t(lo + 1)];
  double w = (double(low) - log_sigma) / double(low - high);
  w = std::clamp(w, 0.0, 1.0);
  return (1 - w) * double(lo) + w * double(lo + 1);
}

float sigma_to_t_f32(float sigma, const std::vector<float>& log_sigmas) {
  const float log_sigma = std::log(std::max(sigma, 1e-10f));
  const int64_t lo = sigma_low_index<float>(log_sigma, log_sigmas);
  const float low = log_sigmas[size_t(lo)], high = log_sigmas[size_t(lo + 1)];
  float w = (low - log_sigma) / (low - high);
  w = std::clamp(w, 0.0f, 1.0f);
  return (1.0f - w) * float(lo) + w * float(lo + 1);
}

}  // namespace samplers

// ---------------------------------------------------------------- Sampler

std::unique_ptr<Sampler> Sampler::create(const SamplerOptions& opts, const ScheduleConfig& config) {
  const SamplerChoice choice = parse_sampler(opts.sampler, opts.schedule);
  if (opts.steps < 1 || opts.steps > config.num_train_timesteps)
    throw InvalidArgument("steps must be in [1, " + std::to_string(config.num_train_timesteps) + "], got " +
                          std::to_string(opts.steps));
  if (!(opts.eta >= 0.0f) || !std::isfinite(opts.eta))
    throw InvalidArgument("eta must be a finite value >= 0, got " + std::to_string(opts.eta));
  const samplers::Train tr = samplers::make_train(choice.sampler, choice.schedule, config);
  std::unique_ptr<Sampler> s;
  switch (choice.sampler) {
    case SamplerKind::Euler:
    case SamplerKind::EulerA:
    case SamplerKind::Heun:
    case SamplerKind::DPM2:
    case SamplerKind::DPM2A:
    case SamplerKind::LMS:
    case SamplerKind::DPMPPSDE:
      s = samplers::make_sigma_sampler(choice.sampler, choice.schedule, tr, opts.steps);
      break;
    default:
      s = samplers::make_alpha_sampler(choice.sampler, choice.schedule, tr, opts.steps, opts.eta);
      break;
  }
  s->kind_ = choice.sampler;
  s->schedule_ = choice.schedule;
  s->steps_ = opts.steps;
  if (s->input_divisor_.empty()) s->input_divisor_.assign(s->timesteps_.size(), 1.0f);
  if (s->input_divisor_.size() != s->timesteps_.size()) throw InternalError("sampler: divisor/timestep mismatch");
  return s;
}

Tensor Sampler::scale_model_input(const Tensor& sample, size_t i) const {
  if (i >= timesteps_.size())
    throw InvalidArgument("scale_model_input: call index " + std::to_string(i) + " out of range (" +
                          std::to_string(timesteps_.size()) + " model calls)");
  const float d = input_divisor_[i];
  if (d == 1.0f) return sample;
  std::vector<float> v = sample.to_vector();
  for (float& x : v) x = x / d;
  return Tensor::from_vector(v, sample.shape());
}

int Sampler::order() const {
  switch (kind_) {
    case SamplerKind::Heun:
    case SamplerKind::DPM2:
    case SamplerKind::DPM2A:
    case SamplerKind::DPMPPSDE:
      return 2;
    default:
      return 1;
  }
}

void Sampler::set_begin_index(size_t index) {
  if (next_call_ != begin_index_) throw InvalidArgument("sampler: the begin index must be set before the first step");
  if (index >= timesteps_.size())
    throw InvalidArgument("sampler: begin index " + std::to_string(index) + " past the last of " +
                          std::to_string(timesteps_.size()) + " model calls");
  begin_index_ = next_call_ = index;
}

Tensor Sampler::add_noise(const Tensor& original, const Tensor& noise, size_t index) const {
  if (index >= timesteps_.size())
    throw InvalidArgument("add_noise: call index " + std::to_string(index) + " out of range (" +
                          std::to_string(timesteps_.size()) + " model calls)");
  if (original.shape() != noise.shape())
    throw InvalidArgument("add_noise: original " + shape_str(original.shape()) + " vs noise " +
                          shape_str(noise.shape()));
  const auto [a, b] = noise_coefficients(index);
  std::vector<float> x = original.to_vector();
  const std::vector<float> n = noise.to_vector();
  for (size_t k = 0; k < x.size(); ++k) x[k] = a * x[k] + b * n[k];
  return Tensor::from_vector(x, original.shape());
}

Tensor Sampler::step(const Tensor& model_output, size_t i, const Tensor& sample, NoiseGenerator& rng) {
  if (i != next_call_)
    throw InvalidArgument("sampler step " + std::to_string(i) + " called out of order (expected " +
                          std::to_string(next_call_) + ")");
  if (i >= timesteps_.size())
    throw InvalidArgument("sampler step " + std::to_string(i) + " past the last of " +
                          std::to_string(timesteps_.size()) + " model calls");
  if (model_output.shape() != sample.shape())
    throw InvalidArgument("sampler step: model output " + shape_str(model_output.shape()) + " vs sample " +
                          shape_str(sample.shape()));
  const std::vector<float> m = model_output.to_vector();
  const std::vector<float> x = sample.to_vector();
  std::vector<float> out(x.size());
  step_impl(m, i, x, sample.shape(), rng, out);
  ++next_call_;
  return Tensor::from_vector(out, sample.shape());
}

}  // namespace sdserve
