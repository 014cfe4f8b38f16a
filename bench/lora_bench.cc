// sdserve_lora_bench: how long switching LoRA sets takes on a full-size SD1.5 UNet, next to one
// UNet CFG step; the sdserve side of bench/run_lora_bench.py (the other side is
// bench/ref_lora_diffusers.py, on the same LoRA files and the same UNet folder).
//
//   sdserve_lora_bench --model DIR [--workdir DIR | --lora-a A.safetensors --lora-b B.safetensors]
//                      [--rank R] [--alpha X] [--locon] [--seed N] [--repeat N] [--step-repeat N]
//                      [--device cpu|cuda:N] [--dtype f32|f16|bf16] [--threads N]
//                      [--merged-out OUT.safetensors]
//
// DIR is a diffusers folder with unet/ (config.json + *.safetensors), e.g. the hash-init SD1.5
// model bench/run_bench.py builds. Without --lora-a/--lora-b, two seeded random kohya-format
// LoRAs are written to --workdir (lora_a.safetensors, lora_b.safetensors; float16 factors, rank
// R, alpha X = R / 2 by default) covering what a typical kohya SD1.5 LoRA covers: every
// transformer-block linear (attn1/attn2 to_q, to_k, to_v, to_out.0, ff.net.0.proj, ff.net.2)
// and every proj_in / proj_out; --locon adds every resnet conv1 / conv2 (3x3 kernels).
//
// Timed (each --repeat times; median and min reported; between device synchronizations):
//   open_s          LoraNetwork::open of file A: read + parse, no LoraLibrary cache (the file
//                   itself is in the page cache after the first read)
//   first_apply_s   the first apply({A}) after load: includes taking the backups of the touched
//                   weights (and, for weights still mmapped from the file, the copy-on-write
//                   faults of their pages) and, off the CPU's f32 path, preparing A's factors on
//                   the device (WeightPatcher's factor cache); once per process, not repeated
//   apply_s         apply({A}) from the base weights
//   switch_ab_s     {A} -> {B} (the first one also prepares B's factors off the CPU's f32 path)
//   switch_mix_s    {A} -> {A@0.5, B@0.7}
//   noop_s          apply of the set already applied (must cost nothing)
//   restore_s       {A@0.5, B@0.7} -> {} (the base weights)
//   step_s          one UNet CFG step (--step-repeat times) with {A} applied: batch 2, 64x64
//                   latents, 77-token context, seeded random inputs (torch.randn's, generator
//                   seed 1234: the reference draws the same)
// plus digest_s (WeightPatcher::digest, once), backup_bytes, factor_cache_bytes (the networks'
// factors kept prepared on the device), the target and patched counts, and
// restore_exact: the digest of every patchable weight right after load equals the digest after
// all the switches and a final restore (exit status 1 when it does not).
// --merged-out writes the merged weights (f32, host) of a few modules after apply({A}) as
// "a/<module>" and after apply({A@0.5, B@0.7}) as "mix/<module>", for the comparison with
// diffusers' fused weights.
//
// SDSERVE_PROFILE=1: --repeat more A <-> B switches afterwards, with the per-op split (stderr, and
// "profile" in the JSON).
//
// Prints "restore_exact: true|false", then one JSON line on stdout; any error: one line on
// stderr, exit status 1 (2: bad usage).
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <set>
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
#include "pipeline/lora.h"
#include "pipeline/rng.h"

#ifdef SDSERVE_WITH_CUDA
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
using bench::read_json;
using bench::sync;

bool ends_with(const std::string& s, const std::string& e) {
  return s.size() >= e.size() && s.compare(s.size() - e.size(), e.size(), e) == 0;
}
bool contains(const std::string& s, const char* p) { return s.find(p) != std::string::npos; }

// ---------------------------------------------------------------- arguments

struct Args {
  std::string model, workdir, lora_a, lora_b, merged_out;
  std::string device = "cpu", dtype = "f32";
  int rank = 32;
  float alpha = -1;  // < 0: rank / 2
  bool locon = false;
  int seed = 0;
  int repeat = 3;
  int step_repeat = 1;
  int threads = 0;
};

[[noreturn]] void usage(const std::string& msg) {
  std::cerr << "sdserve_lora_bench: " << msg
            << " (usage: sdserve_lora_bench --model DIR [--workdir DIR | --lora-a A --lora-b B] [--rank R]"
               " [--alpha X] [--locon] [--seed N] [--repeat N] [--step-repeat N] [--device cpu|cuda:N]"
               " [--dtype f32|f16|bf16] [--threads N] [--merged-out OUT.safetensors])\n";
  std::exit(2);
}

Args parse(int argc, char** argv) {
  Args a;
  bench::FlagReader r(argc, argv, [](const std::string& m) { usage(m); });
  for (std::string k; r.next(k);) {
    if (k == "--model")
      a.model = r.value();
    else if (k == "--workdir")
      a.workdir = r.value();
    else if (k == "--lora-a")
      a.lora_a = r.value();
    else if (k == "--lora-b")
      a.lora_b = r.value();
    else if (k == "--merged-out")
      a.merged_out = r.value();
    else if (k == "--device")
      a.device = r.value();
    else if (k == "--dtype")
      a.dtype = r.value();
    else if (k == "--rank")
      a.rank = r.integer(1);
    else if (k == "--alpha")
      a.alpha = r.number([](float x) { return x > 0.f; }, "a positive number");
    else if (k == "--locon")
      a.locon = true;
    else if (k == "--seed")
      a.seed = r.integer(0);
    else if (k == "--repeat")
      a.repeat = r.integer(1);
    else if (k == "--step-repeat")
      a.step_repeat = r.integer(0);
    else if (k == "--threads")
      a.threads = r.integer(1);
    else if (k == "-h" || k == "--help")
      usage("help");
    else
      usage("unknown argument \"" + k + "\"");
  }
  if (a.model.empty()) usage("--model is required");
  if (a.lora_a.empty() != a.lora_b.empty()) usage("--lora-a and --lora-b go together");
  if (a.lora_a.empty() && a.workdir.empty()) usage("--workdir (where the random LoRAs go) or --lora-a/--lora-b");
  if (a.alpha < 0) a.alpha = float(a.rank) / 2.f;
  return a;
}

// ---------------------------------------------------------------- random kohya LoRAs

// What a typical kohya SD1.5 LoRA trains: the transformer blocks' linears and proj_in/proj_out
// (LoRA), plus the resnets' 3x3 convs with --locon (LoCon).
bool covered(const std::string& name, bool locon) {
  static const char* kBlockLinears[] = {".attn1.to_q",    ".attn1.to_k", ".attn1.to_v", ".attn1.to_out.0",
                                        ".attn2.to_q",    ".attn2.to_k", ".attn2.to_v", ".attn2.to_out.0",
                                        ".ff.net.0.proj", ".ff.net.2"};
  if (contains(name, ".transformer_blocks."))
    for (const char* s : kBlockLinears)
      if (ends_with(name, s)) return true;
  if (contains(name, ".attentions.") && (ends_with(name, ".proj_in") || ends_with(name, ".proj_out"))) return true;
  return locon && contains(name, ".resnets.") && (ends_with(name, ".conv1") || ends_with(name, ".conv2"));
}

std::string kohya_key(const std::string& target) {  // "unet.a.b_c" -> "lora_unet_a_b_c"
  std::string s = target.substr(5);
  std::replace(s.begin(), s.end(), '.', '_');
  return "lora_unet_" + s;
}

struct LoraFileInfo {
  size_t modules = 0, conv_modules = 0, params = 0, bytes = 0;
};

// Writes a kohya LoRA over the covered targets: down [r, in(, kh, kw)] ~ N(0, 1/in_flat),
// up [out, r(, 1, 1)] ~ N(0, 0.02^2), alpha a 0-dim tensor, all float16 (kohya's usual save
// precision), plus kohya's header metadata.
LoraFileInfo write_random_lora(const std::string& path, const std::vector<PatchTarget>& targets, int rank, float alpha,
                               bool locon, uint64_t seed) {
  std::unique_ptr<NoiseGenerator> rng = make_cpu_generator(seed);
  std::vector<std::pair<std::string, Tensor>> out;
  LoraFileInfo info;
  for (const PatchTarget& t : targets) {
    if (!covered(t.name, locon)) continue;
    const Shape& ws = t.weight->shape();
    const int64_t o = ws[0], in = ws[1], kh = ws.size() == 4 ? ws[2] : 1, kw = ws.size() == 4 ? ws[3] : 1;
    const bool conv = ws.size() == 4;
    Shape down_shape{rank, in}, up_shape{o, rank};
    if (conv) {
      down_shape = {rank, in, kh, kw};
      up_shape = {o, rank, 1, 1};
    }
    Tensor down = rng->randn(down_shape), up = rng->randn(up_shape);
    const float ds = 1.f / std::sqrt(float(in * kh * kw)), us = 0.02f;
    for (int64_t i = 0; i < down.numel(); ++i) down.data<float>()[i] *= ds;
    for (int64_t i = 0; i < up.numel(); ++i) up.data<float>()[i] *= us;
    const std::string k = kohya_key(t.name);
    info.params += size_t(down.numel() + up.numel());
    out.emplace_back(k + ".lora_down.weight", down.to(DType::F16));
    out.emplace_back(k + ".lora_up.weight", up.to(DType::F16));
    out.emplace_back(k + ".alpha", Tensor::from_vector({alpha}, {}, DType::F16));
    ++info.modules;
    if (conv && kh * kw > 1) ++info.conv_modules;
  }
  if (out.empty()) throw InvalidArgument("no UNet module matched the LoRA coverage (not an SD1.5-style UNet?)");
  char a[32];
  std::snprintf(a, sizeof a, "%g", double(alpha));
  write_safetensors(
      path, out,
      {{"ss_network_module", "networks.lora"},
       {"ss_network_dim", std::to_string(rank)},
       {"ss_network_alpha", a},
       {"ss_network_args",
        locon ? R"({"conv_dim": ")" + std::to_string(rank) + R"(", "conv_alpha": ")" + std::string(a) + "\"}" : "{}"},
       {"sdserve_bench", "random factors, seed " + std::to_string(seed)}});
  info.bytes = size_t(fs::file_size(path));
  return info;
}

// Modules whose merged weights --merged-out writes (those present in the model and the LoRA).
const char* const kCompared[] = {
    "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
    "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k",
    "unet.up_blocks.3.attentions.2.transformer_blocks.0.ff.net.0.proj",
    "unet.down_blocks.1.attentions.0.proj_in",
    "unet.down_blocks.0.resnets.0.conv1",
};

// ---------------------------------------------------------------- the run

nlohmann::json run(const Args& a) {
  if (a.threads > 0) omp_set_num_threads(a.threads);
  const Device dev = parse_device(a.device);
  if (!device_compiled(dev.type))
    throw UnsupportedError("--device " + a.device +
                           ": this build has no CUDA backend (configure with -DSDSERVE_WITH_CUDA=ON)");
  const DType dtype = parse_compute_dtype(a.dtype);

  double t0 = now_s();
  const fs::path dir(a.model);
  const UNetConfig ucfg = UNetConfig::from_json(read_json(dir / "unet" / "config.json"));
  UNet unet = UNet::load(ucfg, component_source(dir / "unet").with_device(dev), dtype);
  sync(dev);
  const double load_s = now_s() - t0;

  std::vector<PatchTarget> targets = patch_targets(nullptr, &unet);
  std::map<std::string, Tensor*> by_name;
  for (const PatchTarget& t : targets) by_name[t.name] = t.weight;

  nlohmann::json j;
  std::string path_a = a.lora_a, path_b = a.lora_b;
  if (path_a.empty()) {
    fs::create_directories(a.workdir);
    path_a = (fs::path(a.workdir) / "lora_a.safetensors").string();
    path_b = (fs::path(a.workdir) / "lora_b.safetensors").string();
    const LoraFileInfo ia = write_random_lora(path_a, targets, a.rank, a.alpha, a.locon, uint64_t(a.seed) * 2 + 1);
    write_random_lora(path_b, targets, a.rank, a.alpha, a.locon, uint64_t(a.seed) * 2 + 2);
    j["lora_modules"] = ia.modules;
    j["lora_conv3x3_modules"] = ia.conv_modules;
    j["lora_params"] = ia.params;
    j["rank"] = a.rank;
    j["alpha"] = a.alpha;
    j["locon"] = a.locon;
  }
  j["lora_a"] = path_a;
  j["lora_b"] = path_b;
  j["lora_file_bytes"] = fs::file_size(path_a);

  // Opening (parse) a file; kept: the last one of each.
  std::vector<double> open_s;
  std::shared_ptr<const LoraNetwork> net_a, net_b;
  for (int r = 0; r < a.repeat; ++r) {
    const double s = now_s();
    net_a = LoraNetwork::open(path_a);
    open_s.push_back(now_s() - s);
  }
  net_b = LoraNetwork::open(path_b);
  j["lora_modules_parsed"] = net_a->modules().size();
  j["lora_factor_bytes_f32"] = net_a->bytes();

  WeightPatcher patcher(std::move(targets));
  t0 = now_s();
  const std::string digest0 = patcher.digest();
  const double digest_s = now_s() - t0;

  const std::vector<AppliedNetwork> set_a{{net_a, 1.f, 1.f}}, set_b{{net_b, 1.f, 1.f}},
      set_mix{{net_a, 1.f, 0.5f}, {net_b, 1.f, 0.7f}}, base{};
  auto timed = [&](const std::vector<AppliedNetwork>& set) {
    sync(dev);
    const double s = now_s();
    patcher.apply(set);
    sync(dev);
    return now_s() - s;
  };

  const double first_apply_s = timed(set_a);
  const double first_restore_s = timed(base);
  std::vector<double> apply_s, switch_ab_s, switch_mix_s, noop_s, restore_s;
  size_t patched = 0;
  for (int r = 0; r < a.repeat; ++r) {
    apply_s.push_back(timed(set_a));
    patched = patcher.patched_count();
    switch_ab_s.push_back(timed(set_b));
    patcher.apply(set_a);
    switch_mix_s.push_back(timed(set_mix));
    noop_s.push_back(timed(set_mix));
    restore_s.push_back(timed(base));
  }

  // SDSERVE_PROFILE=1: --repeat more A <-> B switches with the per-op split (on stderr and as
  // "profile" in the JSON), after the timed ones so that they are not slowed by the profiling.
  nlohmann::json prof;
  if (profile::enabled()) {
    patcher.apply(set_a);
    profile::reset();
    double total = 0;
    for (int r = 0; r < a.repeat; ++r) total += timed(r % 2 ? set_a : set_b);
    prof = bench::profile_json("LoRA switch A <-> B", a.repeat, total);
    prof["switch_s"] = total / a.repeat;
    patcher.apply(base);
  }

  if (!a.merged_out.empty()) {
    std::vector<std::pair<std::string, Tensor>> out;
    std::set<std::string> in_a;  // module keys of A
    for (const LoraModule& m : net_a->modules()) in_a.insert(m.key);
    auto dump = [&](const char* tag) {
      for (const char* m : kCompared) {
        auto it = by_name.find(m);
        if (it == by_name.end() || !in_a.count(kohya_key(m))) continue;
        out.emplace_back(std::string(tag) + "/" + (m + 5), it->second->to(Device::cpu()).to(DType::F32).clone());
      }
    };
    patcher.apply(set_a);
    dump("a");
    patcher.apply(set_mix);
    dump("mix");
    patcher.apply(base);
    write_safetensors(a.merged_out, out);
  }

  const std::string digest1 = patcher.digest();
  const bool exact = digest0 == digest1;

  // One UNet CFG step with {A} applied (merged weights: the same cost as the base model's), seeded
  // inputs.
  std::vector<double> step_s;
  if (a.step_repeat > 0) {
    patcher.apply(set_a);
    std::unique_ptr<NoiseGenerator> rng = make_cpu_generator(1234);
    Tensor lat = rng->randn({1, 4, 64, 64});
    std::vector<float> xv = lat.to_vector();
    xv.insert(xv.end(), xv.begin(), xv.end());  // CFG: the same latents twice
    const Tensor x = Tensor::from_vector(xv, {2, 4, 64, 64});
    const Tensor ctx = rng->randn({2, 77, 768}).to(dev);
    // On a GPU the first call of a shape chooses cuDNN/cuBLASLt algorithms (and the next captures
    // a CUDA graph): two untimed calls first, as the GPU bench does, so the row is a step's cost.
    if (dev.type != DeviceType::CPU)
      for (int w = 0; w < 2; ++w) (void)unet.forward(x, {500.f}, ctx).to(Device::cpu());
    for (int r = 0; r < a.step_repeat; ++r) {
      sync(dev);
      const double s = now_s();
      const Tensor eps = unet.forward(x, {500.f}, ctx).to(DType::F32).to(Device::cpu()).contiguous();
      sync(dev);
      step_s.push_back(now_s() - s);
    }
    patcher.apply(base);
  }

  auto stats = [&](const char* name, const std::vector<double>& v) {
    j[std::string(name) + "_s"] = v;
    j[std::string(name) + "_median_s"] = median(v);
    j[std::string(name) + "_min_s"] = min_of(v);
  };
  stats("open", open_s);
  j["first_apply_s"] = first_apply_s;
  j["first_restore_s"] = first_restore_s;
  stats("apply", apply_s);
  stats("switch_ab", switch_ab_s);
  stats("switch_mix", switch_mix_s);
  stats("noop", noop_s);
  stats("restore", restore_s);
  if (!step_s.empty()) {
    stats("step", step_s);
    j["switch_over_step"] = median(switch_ab_s) / median(step_s);
    j["switch_mix_over_step"] = median(switch_mix_s) / median(step_s);
  } else {
    j["step_median_s"] = nullptr;
  }
  j["patched_count"] = patched;
  j["target_count"] = patcher.target_count();
  j["backup_bytes"] = patcher.backup_bytes();
  j["factor_cache_bytes"] = patcher.factor_cache_bytes();
  j["digest_s"] = digest_s;
  j["digest_base"] = digest0;
  j["digest_after"] = digest1;
  j["restore_exact"] = exact;
  j["device"] = dev.str();
  j["dtype"] = dtype_name(dtype);
  j["repeat"] = a.repeat;
  j["step_repeat"] = a.step_repeat;
  j["load_s"] = load_s;
  j["peak_rss_mb"] = peak_rss_mb();
  j["threads"] = omp_get_max_threads();
  if (!a.merged_out.empty()) j["merged_out"] = a.merged_out;
  if (!prof.is_null()) j["profile"] = prof;
  return j;
}

}  // namespace

int main(int argc, char** argv) {
  const Args a = parse(argc, argv);
  try {
    const nlohmann::json j = run(a);
    const bool exact = j["restore_exact"].get<bool>();
    std::cout << "restore_exact: " << (exact ? "true" : "false") << "\n" << j.dump() << std::endl;
    return exact ? 0 : 1;
  } catch (const std::exception& e) {
    std::string msg = e.what();
    for (char& c : msg)
      if (c == '\n') c = ' ';
    std::cerr << "sdserve_lora_bench: " << msg << "\n";
    return 1;
  }
}
