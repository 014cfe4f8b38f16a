// Shared pieces of the sampler implementations (scheduler.cc, samplers_sigma.cc,
// samplers_alpha.cc). Not a public header.
//
// Parity notes. diffusers builds schedules with numpy in float64 from float32 training sigmas and
// casts the result to float32; steps run in float32 torch ops whose scalar factors are 0-dim
// float32 tensors, evaluated left to right. The code below keeps both: schedule math in double
// from float inputs, per-element updates as explicit float expressions in torch's order. The
// sampler sources are compiled without floating-point contraction so `a * b + c` stays two
// roundings as in torch's separate kernels.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "pipeline/scheduler.h"

namespace sdserve::samplers {

// The config with the scheduler class's own defaults applied, and the training schedule.
struct Train {
  int T = 1000;
  bool v_pred = false;
  std::string beta_schedule;
  std::string spacing;
  int steps_offset = 0;
  bool set_alpha_to_one = false;
  bool clip_sample = false;
  float clip_range = 1.0f;
  bool karras = false;
  bool exponential = false;
  int original_inference_steps = 50;
  float timestep_scaling = 10.0f;
  std::vector<float> alphas_cumprod;  // float32, as torch.cumprod (double accumulator)
  std::vector<float> sigmas;          // float32 ((1 - ac) / ac) ** 0.5, indexed by train timestep
  std::vector<float> log_sigmas;      // float32 np.log(sigmas)
};

Train make_train(SamplerKind kind, ScheduleType schedule, const ScheduleConfig& cfg);

// Timestep spacings, each as the named diffusers scheduler computes them.
std::vector<float> k_spacing(const Train& tr, int n);       // Euler/Heun/KDPM2/LMS: float32, descending
std::vector<double> k_spacing_f64(const Train& tr, int n);  // DPMSolverSDE (dtype=float there)
std::vector<int64_t> dpm_spacing(const Train& tr, int n);   // DPMSolverMultistep / UniPC
std::vector<int64_t> ddim_spacing(const Train& tr, int n);  // DDIM
std::vector<int64_t> pndm_spacing(const Train& tr, int n);  // PNDM _timesteps (ascending)
double interp_sigma(const Train& tr, double t);             // np.interp(t, arange(T), sigmas)
std::vector<double> karras_sigmas(double sigma_min, double sigma_max, int n);
std::vector<double> exponential_sigmas(double sigma_min, double sigma_max, int n);
// _sigma_to_t with a float64 sigma (numpy) and with a float32 tensor sigma (KDPM2's interpolated
// sigmas: the whole computation then runs in float32 torch ops).
double sigma_to_t(double sigma, const std::vector<float>& log_sigmas);
float sigma_to_t_f32(float sigma, const std::vector<float>& log_sigmas);

inline float sqf(float x) { return x * x; }

// Factories (samplers_sigma.cc / samplers_alpha.cc). Sampler::create sets kind/schedule/steps.
std::unique_ptr<Sampler> make_sigma_sampler(SamplerKind kind, ScheduleType schedule, const Train& tr, int steps);
std::unique_ptr<Sampler> make_alpha_sampler(SamplerKind kind, ScheduleType schedule, const Train& tr, int steps,
                                            float eta);

}  // namespace sdserve::samplers
