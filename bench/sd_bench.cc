// sdserve_bench: the sdserve side of the side-by-side comparison with diffusers/PyTorch driven by
// bench/run_bench.py (the other side is bench/ref_diffusers.py, same flags, same JSON fields).
//
//   sdserve_bench --model DIR --inputs IN.safetensors --output OUT.safetensors
//                 [--device cpu|cuda:N] [--dtype f32|f16|bf16] [--mode step|e2e|both]
//                 [--batch N] [--steps N] [--cfg X] [--repeat N] [--e2e-repeat N] [--warmup N]
//                 [--threads N]
//
// DIR is a diffusers folder with unet/ and vae/ (config.json + *.safetensors, f32 on disk; the
// models are converted to --dtype and placed on --device when loaded). IN holds, for a batch of
// N images (f32): x [2N,4,h,w] (the UNet input of one CFG step: the same N latents twice),
// t [1], ctx [2N,77,768] (N unconditional contexts, then N conditional ones, as the pipeline
// orders them), z [N,4,h,w] (latents already divided by the VAE scaling factor) and, for e2e,
// noise [N,4,h,w] (the initial N(0,1) latents).
//
// Modes (--warmup W untimed UNet calls + VAE decodes first; then the timed parts):
//   step: --repeat R UNet CFG steps on x (batch 2N) and R VAE decodes of z; OUT gets "unet" and
//         "vae" (the last run's outputs, f32).
//   e2e:  --e2e-repeat E timed txt2img runs: --steps Euler steps (A1111 "Euler" = diffusers'
//         EulerDiscreteScheduler with the SD1.5 schedule: scaled_linear betas 0.00085..0.012,
//         1000 train steps, linspace spacing) with CFG --cfg (7.5) from noise, then a VAE decode
//         of the result. As in the pipeline, the CFG combine and the sampler update run on the
//         host from the copied-back f32 UNet output; the image is copied back too. OUT gets "e2e"
//         (the last run's images).
//   both: step, then e2e, in one process (one load, one warm-up).
// Every timed part is one UNet call / decode / e2e run between two device synchronizations:
// inputs start on the host (f32), outputs end on the host (f32), as in the pipeline; only ctx
// is uploaded once. Medians are reported (and the minimum, which the CPU table uses).
//
// Prints one JSON line: unet_s, vae_s (lists), unet_median_s, unet_min_s, vae_median_s,
// vae_min_s, e2e_s, e2e_unet_s, e2e_vae_s (lists), e2e_s_per_image, it_s (= steps / median UNet
// loop time), sigmas, timesteps and init_noise_sigma (the Euler schedule used), device, dtype,
// batch, unet_batch, size, steps, mode, load_s, peak_rss_mb, threads, and on a GPU gpu_peak_mb
// (peak reserved + workspace, MiB, over the timed parts), gpu_peak_allocated_mb,
// gpu_workspace_mb, gpu_used_mb (cudaMemGetInfo: whole-device use after the timed parts, CUDA
// context included), driver_allocs_after_warmup and driver_allocs_after_timed (cudaMalloc calls
// so far; equal in a steady state). gpu_peak_mb is null on the CPU.
// Any error: one line on stderr, exit status 1 (2 for bad usage).
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <numeric>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench_util.h"
#include "core/device.h"
#include "core/error.h"
#include "core/profile.h"
#include "core/tensor.h"
#include "io/safetensors.h"
#include "io/weights.h"
#include "models/configs.h"
#include "models/unet.h"
#include "models/vae.h"
#include "pipeline/rng.h"
#include "pipeline/scheduler.h"

#ifdef SDSERVE_WITH_CUDA
#include <cuda_runtime_api.h>

#include "cuda/runtime.h"
#endif

namespace fs = std::filesystem;
using namespace sdserve;

namespace {

using bench::component_source;
using bench::median;
using bench::min_of;
using bench::now_s;
using bench::peak_rss_mb;
using bench::profile_json;
using bench::read_json;
using bench::sync;

Tensor input(const SafeTensorsFile& f, const char* name, const Shape& rank_check) {
  if (!f.contains(name)) throw NotFoundError(f.path() + ": no tensor \"" + name + "\"");
  Tensor t = f.get_as(name, DType::F32).contiguous();
  if (t.dim() != int64_t(rank_check.size()))
    throw InvalidArgument(f.path() + ": \"" + name + "\" has shape " + shape_str(t.shape()));
  for (size_t i = 0; i < rank_check.size(); ++i)
    if (rank_check[i] > 0 && t.size(int64_t(i)) != rank_check[i])
      throw InvalidArgument(f.path() + ": \"" + name + "\" has shape " + shape_str(t.shape()) + ", expected " +
                            shape_str(rank_check) + " (0 = any)");
  return t;
}

// ---------------------------------------------------------------- device helpers

constexpr double kMiB = 1024.0 * 1024.0;

struct GpuMem {
  double peak_mb = 0, peak_allocated_mb = 0, workspace_mb = 0, used_mb = 0;
  uint64_t driver_allocs = 0;
};

std::optional<GpuMem> gpu_mem(Device dev) {
#ifdef SDSERVE_WITH_CUDA
  if (dev.type != DeviceType::CUDA) return std::nullopt;
  const cuda::MemoryStats s = cuda::memory_stats(dev.index);
  GpuMem m;
  m.peak_mb = double(s.peak_reserved + s.workspace) / kMiB;
  m.peak_allocated_mb = double(s.peak_allocated) / kMiB;
  m.workspace_mb = double(s.workspace) / kMiB;
  m.driver_allocs = s.driver_allocs;
  size_t free_b = 0, total_b = 0;
  cuda::set_device(dev.index);
  if (cudaMemGetInfo(&free_b, &total_b) == cudaSuccess) m.used_mb = double(total_b - free_b) / kMiB;
  return m;
#else
  (void)dev;
  return std::nullopt;
#endif
}

void reset_gpu_peak(Device dev) {
#ifdef SDSERVE_WITH_CUDA
  if (dev.type == DeviceType::CUDA) cuda::reset_peak(dev.index);
#else
  (void)dev;
#endif
}

// ---------------------------------------------------------------- arguments

struct Args {
  std::string model, inputs, output;
  std::string device = "cpu", dtype = "f32", mode = "step";
  int repeat = 2;
  int e2e_repeat = 3;
  int warmup = 1;
  int threads = 0;
  int batch = 0;  // 0: from the inputs
  int steps = 25;
  float cfg = 7.5f;
};

[[noreturn]] void usage(const std::string& msg) {
  std::cerr << "sdserve_bench: " << msg
            << " (usage: sdserve_bench --model DIR --inputs IN.safetensors --output OUT.safetensors"
               " [--device cpu|cuda:N] [--dtype f32|f16|bf16] [--mode step|e2e|both] [--batch N] [--steps N]"
               " [--cfg X] [--repeat N] [--e2e-repeat N] [--warmup N] [--threads N])\n";
  std::exit(2);
}

Args parse(int argc, char** argv) {
  Args a;
  bench::FlagReader r(argc, argv, [](const std::string& m) { usage(m); });
  for (std::string k; r.next(k);) {
    if (k == "--model")
      a.model = r.value();
    else if (k == "--inputs")
      a.inputs = r.value();
    else if (k == "--output")
      a.output = r.value();
    else if (k == "--device")
      a.device = r.value();
    else if (k == "--dtype")
      a.dtype = r.value();
    else if (k == "--mode")
      a.mode = r.value();
    else if (k == "--repeat")
      a.repeat = r.integer(1);
    else if (k == "--e2e-repeat")
      a.e2e_repeat = r.integer(1);
    else if (k == "--warmup")
      a.warmup = r.integer(0);
    else if (k == "--threads")
      a.threads = r.integer(1);
    else if (k == "--batch")
      a.batch = r.integer(1);
    else if (k == "--steps")
      a.steps = r.integer(1);
    else if (k == "--cfg")
      a.cfg = r.number([](float x) { return x >= 0.f && x <= 100.f; }, "a number in [0, 100]");
    else if (k == "-h" || k == "--help")
      usage("help");
    else
      usage("unknown argument \"" + k + "\"");
  }
  if (a.model.empty() || a.inputs.empty() || a.output.empty()) usage("--model, --inputs and --output are required");
  if (a.mode != "step" && a.mode != "e2e" && a.mode != "both") usage("--mode must be step, e2e or both");
  return a;
}

// ---------------------------------------------------------------- the run

// One UNet call as the pipeline makes it: host f32 input in, host f32 output out.
Tensor unet_call(const UNet& unet, const Tensor& x_host, float t, const Tensor& ctx_dev) {
  return unet.forward(x_host, {t}, ctx_dev).to(DType::F32).to(Device::cpu()).contiguous();
}

// One VAE decode as the pipeline makes it: in the memory the UNet's graphs leave idle between
// steps (UNet::lend_idle_graph_memory), host f32 latents in, host f32 images out.
Tensor vae_call(const UNet& unet, const VAE& vae, const Tensor& z_host) {
  Tensor out;
  unet.lend_idle_graph_memory([&] { out = vae.decode(z_host).to(DType::F32).to(Device::cpu()).contiguous(); });
  return out;
}

// [a; a] along dim 0, on the host (the CFG batch: the same latents for both halves).
Tensor twice(const Tensor& a) {
  std::vector<float> v = a.to_vector();
  const size_t n = v.size();
  v.resize(2 * n);
  std::copy_n(v.begin(), n, v.begin() + std::ptrdiff_t(n));
  Shape s = a.shape();
  s[0] *= 2;
  return Tensor::from_vector(v, s);
}

nlohmann::json run(const Args& a) {
  if (a.threads > 0) omp_set_num_threads(a.threads);
  const Device dev = parse_device(a.device);
  if (!device_compiled(dev.type))
    throw UnsupportedError("--device " + a.device +
                           ": this build has no CUDA backend (configure with -DSDSERVE_WITH_CUDA=ON)");
  const DType dtype = parse_compute_dtype(a.dtype);
  const bool do_step = a.mode != "e2e", do_e2e = a.mode != "step";

  const SafeTensorsFile in = SafeTensorsFile::open(a.inputs);
  const Tensor x = input(in, "x", {0, 0, 0, 0});
  if (x.size(0) % 2)
    throw InvalidArgument(a.inputs + ": \"x\" must hold 2N samples (CFG), has " + shape_str(x.shape()));
  const int64_t n = x.size(0) / 2;
  if (a.batch > 0 && a.batch != n)
    throw InvalidArgument("--batch " + std::to_string(a.batch) + " but " + a.inputs + " holds inputs for batch " +
                          std::to_string(n) + " (x " + shape_str(x.shape()) + ")");
  const Tensor t = input(in, "t", {1});
  const Tensor ctx = input(in, "ctx", {2 * n, 0, 0});
  const Tensor z = input(in, "z", {n, x.size(1), x.size(2), x.size(3)});
  Tensor noise;
  if (do_e2e) noise = input(in, "noise", {n, x.size(1), x.size(2), x.size(3)});
  const float t_step = t.to_vector()[0];

  const double t0 = now_s();
  const fs::path dir(a.model);
  const UNetConfig ucfg = UNetConfig::from_json(read_json(dir / "unet" / "config.json"));
  const VAEConfig vcfg = VAEConfig::from_json(read_json(dir / "vae" / "config.json"));
  const UNet unet = UNet::load(ucfg, component_source(dir / "unet").with_device(dev), dtype);
  const VAE vae = VAE::load(vcfg, component_source(dir / "vae").with_device(dev), dtype);
  const Tensor ctx_dev = ctx.to(dev);  // uploaded once, like the pipeline's prompt embeddings
  sync(dev);
  const double load_s = now_s() - t0;

  Tensor eps, img;
  for (int w = 0; w < a.warmup; ++w) {
    eps = unet_call(unet, x, t_step, ctx_dev);
    img = vae_call(unet, vae, z);
  }
  sync(dev);
  const std::optional<GpuMem> mem_warm = gpu_mem(dev);
  reset_gpu_peak(dev);

  nlohmann::json j;
  nlohmann::json prof;
  profile::reset();
  std::vector<std::pair<std::string, Tensor>> out;
  if (do_step) {
    std::vector<double> unet_s, vae_s;
    for (int r = 0; r < a.repeat; ++r) {
      sync(dev);
      const double s = now_s();
      eps = unet_call(unet, x, t_step, ctx_dev);
      sync(dev);
      unet_s.push_back(now_s() - s);
    }
    if (profile::enabled())
      prof["unet"] = profile_json("UNet CFG step", a.repeat, std::accumulate(unet_s.begin(), unet_s.end(), 0.0));
    for (int r = 0; r < a.repeat; ++r) {
      sync(dev);
      const double s = now_s();
      img = vae_call(unet, vae, z);
      sync(dev);
      vae_s.push_back(now_s() - s);
    }
    if (profile::enabled())
      prof["vae"] = profile_json("VAE decode", a.repeat, std::accumulate(vae_s.begin(), vae_s.end(), 0.0));
    out.emplace_back("unet", eps);
    out.emplace_back("vae", img);
    j["unet_s"] = unet_s;
    j["vae_s"] = vae_s;
    j["unet_min_s"] = min_of(unet_s);
    j["vae_min_s"] = min_of(vae_s);
    j["unet_median_s"] = median(unet_s);
    j["vae_median_s"] = median(vae_s);
  }

  if (do_e2e) {
    SamplerOptions so;
    so.sampler = "Euler";
    so.schedule = "Automatic";
    so.steps = a.steps;
    const ScheduleConfig sched;  // SD1.5's scheduler_config.json (Euler spaces "linspace")
    std::unique_ptr<NoiseGenerator> rng = make_cpu_generator(0);  // Euler draws nothing
    const int64_t per = noise.numel();
    std::vector<double> e2e_s, loop_s, dec_s;
    Tensor images;
    std::vector<float> sigmas, timesteps;
    float init_sigma = 0;
    for (int r = 0; r < a.e2e_repeat; ++r) {
      auto sampler = Sampler::create(so, sched);
      sigmas = sampler->sigmas();
      timesteps = sampler->timesteps();
      init_sigma = sampler->init_noise_sigma();
      sync(dev);
      const double s0 = now_s();
      std::vector<float> lat = noise.to_vector();
      const float init = sampler->init_noise_sigma();
      for (float& v : lat) v *= init;
      Tensor latents = Tensor::from_vector(lat, noise.shape());
      for (size_t i = 0; i < sampler->num_model_calls(); ++i) {
        const Tensor in_x = twice(sampler->scale_model_input(latents, i));
        const Tensor pred = unet_call(unet, in_x, sampler->timesteps()[i], ctx_dev);
        Tensor guided = Tensor::empty(latents.shape(), DType::F32);
        const float* u = pred.data<float>();
        const float* c = u + per;
        float* g = guided.data<float>();
        for (int64_t k = 0; k < per; ++k) g[k] = u[k] + a.cfg * (c[k] - u[k]);
        latents = sampler->step(guided, i, latents, *rng);
      }
      sync(dev);
      const double s1 = now_s();
      std::vector<float> zv = latents.to_vector();
      for (float& v : zv) v = v / vcfg.scaling_factor + vcfg.shift_factor;
      images = vae_call(unet, vae, Tensor::from_vector(zv, latents.shape()));
      sync(dev);
      const double s2 = now_s();
      e2e_s.push_back(s2 - s0);
      loop_s.push_back(s1 - s0);
      dec_s.push_back(s2 - s1);
    }
    out.emplace_back("e2e", images);
    j["e2e_s"] = e2e_s;
    j["e2e_unet_s"] = loop_s;
    j["e2e_vae_s"] = dec_s;
    j["e2e_s_per_image"] = median(e2e_s) / double(n);
    j["it_s"] = double(a.steps) / median(loop_s);
    j["sigmas"] = sigmas;
    j["timesteps"] = timesteps;
    j["init_noise_sigma"] = init_sigma;
    j["cfg"] = a.cfg;
  } else {
    j["e2e_s_per_image"] = nullptr;
    j["it_s"] = nullptr;
  }
  sync(dev);
  const std::optional<GpuMem> mem_end = gpu_mem(dev);
  write_safetensors(a.output, out);

  j["device"] = dev.str();
  j["dtype"] = dtype_name(dtype);
  j["batch"] = n;
  j["unet_batch"] = 2 * n;
  j["size"] = x.size(2) * 8;
  j["steps"] = a.steps;
  j["mode"] = a.mode;
  j["warmup"] = a.warmup;
  j["repeat"] = a.repeat;
  j["e2e_repeat"] = do_e2e ? a.e2e_repeat : 0;
  j["load_s"] = load_s;
  j["peak_rss_mb"] = peak_rss_mb();
  j["threads"] = omp_get_max_threads();
  if (mem_end) {
    j["gpu_peak_mb"] = mem_end->peak_mb;
    j["gpu_peak_allocated_mb"] = mem_end->peak_allocated_mb;
    j["gpu_workspace_mb"] = mem_end->workspace_mb;
    j["gpu_used_mb"] = mem_end->used_mb;
    j["driver_allocs_after_warmup"] = mem_warm->driver_allocs;
    j["driver_allocs_after_timed"] = mem_end->driver_allocs;
  } else {
    j["gpu_peak_mb"] = nullptr;
  }
  if (!prof.is_null()) j["profile"] = prof;
  return j;
}

}  // namespace

int main(int argc, char** argv) {
  const Args a = parse(argc, argv);
  try {
    std::cout << run(a).dump() << std::endl;
    return 0;
  } catch (const std::exception& e) {
    std::string msg = e.what();
    for (char& c : msg)
      if (c == '\n') c = ' ';
    std::cerr << "sdserve_bench: " << msg << "\n";
    return 1;
  }
}
