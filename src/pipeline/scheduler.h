// Samplers under their A1111 names, each computing step for step what the matching diffusers
// scheduler computes (float32, same operation order; see docs/SAMPLERS.md for the mapping, the
// schedule types and the known deviations). Like diffusers, a sampler knows nothing about the
// model: the pipeline asks it for timesteps, scales the model input, calls the UNet and hands the
// raw output back to step().
//
//   auto s = Sampler::create(opts, ScheduleConfig::from_json(scheduler_config_json));
//   Tensor x = noise * s->init_noise_sigma();
//   for (size_t i = 0; i < s->num_model_calls(); ++i)
//     x = s->step(unet(s->scale_model_input(x, i), s->timesteps()[i]), i, x, rng);
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "core/tensor.h"
#include "pipeline/rng.h"

namespace sdserve {

// The model's noise schedule: a diffusers scheduler/scheduler_config.json. Defaults are
// runwayml/stable-diffusion-v1-5's. Fields whose absence diffusers resolves per scheduler class
// (its __init__ default) are optional: unset means "that scheduler's own default", exactly as
// Cls.from_config(config) does. SD1.5's json has no timestep_spacing, so e.g. Euler then spaces
// "linspace" while DDIM and PLMS space "leading".
struct ScheduleConfig {
  int num_train_timesteps = 1000;
  std::optional<double> beta_start = 0.00085;  // double: diffusers takes sqrt in float64 before the float32 linspace
  std::optional<double> beta_end = 0.012;
  std::optional<std::string> beta_schedule = "scaled_linear";  // linear | scaled_linear | squaredcos_cap_v2
  std::vector<float> trained_betas;                            // non-empty: used instead of the schedule
  std::string prediction_type = "epsilon";                     // epsilon | v_prediction
  int steps_offset = 1;
  std::optional<std::string> timestep_spacing;  // linspace | leading | trailing
  std::optional<bool> set_alpha_to_one = false;
  std::optional<bool> clip_sample = false;
  float clip_sample_range = 1.0f;
  // Applied to the betas by the schedulers that support it in diffusers (Euler, Euler a, DPM++ 2M
  // (SDE), DDIM, UniPC, LCM); the matching CFG rescale is the pipeline's business.
  bool rescale_betas_zero_snr = false;
  // What "Automatic" means for schedulers that support these (a model may ask for Karras).
  bool use_karras_sigmas = false;
  bool use_exponential_sigmas = false;
  int original_inference_steps = 50;  // LCM
  float timestep_scaling = 10.0f;     // LCM

  // Missing keys take diffusers' defaults (not SD1.5's): steps_offset 0, the optional fields unset.
  // Keys we do not use are ignored (as from_config does); values we cannot honour throw
  // UnsupportedError, malformed ones InvalidArgument.
  static ScheduleConfig from_json(const nlohmann::json& j);
};

enum class SamplerKind { Euler, EulerA, Heun, DPM2, DPM2A, DPMPP2M, DPMPP2MSDE, DPMPPSDE, LMS, DDIM, PLMS, UniPC, LCM };
enum class ScheduleType { Automatic, Karras, Exponential, SGMUniform };

struct SamplerOptions {
  std::string sampler = "Euler";       // A1111 name; legacy "DPM++ 2M Karras" style names also work
  std::string schedule = "Automatic";  // Automatic | Karras | Exponential | SGM Uniform
  int steps = 20;
  float eta = 0.0f;  // DDIM only (A1111's "eta_ddim", default 0); other samplers ignore it
};

struct SamplerChoice {
  SamplerKind sampler;
  ScheduleType schedule;
};

// Case-insensitive; accepts A1111's names and aliases ("k_dpmpp_2m", "euler_a", ...), legacy
// combined names ("DPM++ 2M Karras") and schedule aliases ("karras", "sgm_uniform"). A combined
// name's schedule must agree with `schedule` unless that is "Automatic" (or empty). Unknown
// names and unsupported sampler/schedule pairs throw InvalidArgument naming the valid choices.
SamplerChoice parse_sampler(const std::string& sampler, const std::string& schedule = "Automatic");
const char* sampler_name(SamplerKind k);
const char* schedule_name(ScheduleType s);
std::vector<std::string> sampler_names();   // canonical A1111 names, in A1111's menu order
std::vector<std::string> schedule_names();  // the schedule types we implement
bool schedule_supported(SamplerKind k, ScheduleType s);

class Sampler {
 public:
  virtual ~Sampler() = default;
  // Throws InvalidArgument for bad options (steps < 1, unknown names, unsupported pairs).
  static std::unique_ptr<Sampler> create(const SamplerOptions& opts, const ScheduleConfig& config);

  SamplerKind kind() const { return kind_; }
  ScheduleType schedule() const { return schedule_; }
  int steps() const { return steps_; }
  // Model timesteps in call order, repeated ones included (Heun, DPM2, DPM++ SDE, PLMS).
  const std::vector<float>& timesteps() const { return timesteps_; }
  size_t num_model_calls() const { return timesteps_.size(); }
  // The pipeline scales the initial N(0,1) latent by this.
  float init_noise_sigma() const { return init_noise_sigma_; }
  // The UNet input for model call i (sample / sqrt(sigma^2 + 1) for the sigma-space samplers).
  Tensor scale_model_input(const Tensor& sample, size_t i) const;
  // Consumes the raw UNet output (epsilon or v) for timesteps()[i] and returns the next sample.
  // Calls must come in order i = 0, 1, ..., num_model_calls() - 1 (the multistep and two-stage
  // samplers keep state between them). Draws from `rng` only where diffusers draws.
  Tensor step(const Tensor& model_output, size_t i, const Tensor& sample, NoiseGenerator& rng);

  // DPM++ SDE draws its noise from Brownian trees (torchsde's, as diffusers and k-diffusion do),
  // one per batch item, seeded with that item's seed - A1111 passes the image seeds; diffusers
  // matches with noise_sampler_seed=seed (or the list of seeds for a batch). `kind` selects the
  // generator that draws the trees' normals (torch's CPU or CUDA one). DPM++ SDE's step() throws
  // InvalidArgument unless this was called with one seed per batch item; other samplers ignore it.
  void set_noise_seeds(RngKind kind, std::vector<uint64_t> seeds) {
    noise_kind_ = kind;
    noise_seeds_ = std::move(seeds);
  }

  // The sigma schedule, where the sampler has one (empty for DDIM, PLMS, LCM); for inspection.
  const std::vector<float>& sigmas() const { return sigmas_; }

  // diffusers' scheduler.order: model calls per step (2 for Heun, DPM2, DPM2 a and DPM++ SDE).
  int order() const;
  // img2img (diffusers' get_timesteps + set_begin_index): the first model call is `index`
  // (t_start * order()); step() then expects index, index + 1, ... Call before the first step.
  void set_begin_index(size_t index);
  size_t begin_index() const { return begin_index_; }
  // `original` noised to the level of model call `index` (diffusers' add_noise at that step index):
  // a * original + b * noise, with (a, b) = (1, sigma) for the sigma-space samplers, (alpha_t,
  // sigma_t) for DPM++ 2M (SDE) and UniPC, (sqrt(ac), sqrt(1 - ac)) of the call's timestep for DDIM,
  // PLMS and LCM. f32 tensors of one shape.
  Tensor add_noise(const Tensor& original, const Tensor& noise, size_t index) const;

 protected:
  Sampler() = default;
  // Implementations see contiguous f32 data; `out` has the sample's size.
  virtual void step_impl(const std::vector<float>& model_output, size_t i, const std::vector<float>& sample,
                         const Shape& shape, NoiseGenerator& rng, std::vector<float>& out) = 0;
  // (a, b) of add_noise at model call `index` (< num_model_calls()). The default is the sigma
  // samplers' (1, sigmas_[index]).
  virtual std::pair<float, float> noise_coefficients(size_t index) const { return {1.0f, sigmas_[index]}; }

  SamplerKind kind_ = SamplerKind::Euler;
  ScheduleType schedule_ = ScheduleType::Automatic;
  int steps_ = 0;
  std::vector<float> timesteps_;
  std::vector<float> input_divisor_;  // per call: scale_model_input divides by this (1 = identity)
  std::vector<float> sigmas_;
  float init_noise_sigma_ = 1.0f;
  size_t next_call_ = 0;
  size_t begin_index_ = 0;
  RngKind noise_kind_ = RngKind::CPU;
  std::vector<uint64_t> noise_seeds_;
};

}  // namespace sdserve
