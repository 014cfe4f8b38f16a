// sdserve_bench: times one UNet CFG step (batch 2) and one VAE decode on fixed inputs, for the
// side-by-side comparison with diffusers/PyTorch driven by bench/run_bench.py.
//
//   sdserve_bench --model DIR --inputs IN.safetensors --output OUT.safetensors [--repeat N] [--threads N]
//
// DIR is a diffusers folder with unet/ and vae/ (config.json + *.safetensors). IN holds
// x [2,4,h,w], t [1], ctx [2,77,768] and z [1,4,h,w] (f32); OUT receives "unet" and "vae".
// Prints one JSON line: {"unet_s": [...], "vae_s": [...], "load_s": x, "peak_rss_mb": x, ...}.
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
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/profile.h"
#include "core/tensor.h"
#include "io/safetensors.h"
#include "io/weights.h"
#include "models/configs.h"
#include "models/unet.h"
#include "models/vae.h"

namespace fs = std::filesystem;
using namespace sdserve;

namespace {

double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// VmHWM (peak resident set) from /proc/self/status, in MiB; -1 if unavailable.
double peak_rss_mb() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;  // kB
  }
  return -1;
}

nlohmann::json read_json(const fs::path& p) {
  std::ifstream f(p);
  if (!f) throw NotFoundError(p.string() + ": cannot open");
  try {
    return nlohmann::json::parse(f);
  } catch (const nlohmann::json::exception& e) {
    throw ModelFormatError(p.string() + ": " + e.what());
  }
}

// All *.safetensors files of one diffusers component folder.
WeightSource component_source(const fs::path& dir) {
  if (!fs::is_directory(dir)) throw NotFoundError(dir.string() + ": no such directory");
  std::vector<std::string> paths;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_regular_file() && e.path().extension() == ".safetensors") paths.push_back(e.path().string());
  if (paths.empty()) throw NotFoundError(dir.string() + ": no .safetensors file");
  std::sort(paths.begin(), paths.end());
  std::vector<std::shared_ptr<const SafeTensorsFile>> files;
  for (const auto& p : paths) files.push_back(std::make_shared<const SafeTensorsFile>(SafeTensorsFile::open(p)));
  return WeightSource(std::move(files));
}

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

// SDSERVE_PROFILE=1: per-op wall time accumulated since the last call, per run, as JSON
// {op: {"s": seconds per run, "calls": calls per run}}, and as a table on stderr. Resets.
nlohmann::json profile_json(const char* what, int runs, const std::vector<double>& times) {
  double total = 0;
  for (double t : times) total += t;
  total /= runs;
  nlohmann::json j = nlohmann::json::object();
  std::fprintf(stderr, "profile: %s, %.2f s per run (inclusive wall time per op, mean of %d runs)\n", what, total,
               runs);
  double covered = 0;
  for (const auto& e : profile::snapshot()) {
    const double s = e.seconds / runs;
    covered += s;
    j[e.name] = {{"s", s}, {"calls", e.calls / runs}};
    std::fprintf(stderr, "  %-18s %8.3f s %5.1f%% %6lld calls\n", e.name.c_str(), s, 100 * s / total,
                 static_cast<long long>(e.calls / runs));
  }
  std::fprintf(stderr, "  %-18s %8.3f s %5.1f%%\n", "(outside ops)", total - covered, 100 * (total - covered) / total);
  profile::reset();
  return j;
}

struct Args {
  std::string model, inputs, output;
  int repeat = 2;
  int threads = 0;
};

[[noreturn]] void usage(const std::string& msg) {
  std::cerr << "sdserve_bench: " << msg
            << " (usage: sdserve_bench --model DIR --inputs IN.safetensors --output OUT.safetensors"
               " [--repeat N] [--threads N])\n";
  std::exit(2);
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) usage(k + " needs a value");
      return argv[++i];
    };
    auto int_val = [&](int lo) {
      std::string v = val();
      try {
        size_t pos = 0;
        int n = std::stoi(v, &pos);
        if (pos != v.size() || n < lo) throw std::invalid_argument(v);
        return n;
      } catch (const std::exception&) {
        usage(k + " must be an integer >= " + std::to_string(lo) + ", got \"" + v + "\"");
      }
    };
    if (k == "--model")
      a.model = val();
    else if (k == "--inputs")
      a.inputs = val();
    else if (k == "--output")
      a.output = val();
    else if (k == "--repeat")
      a.repeat = int_val(1);
    else if (k == "--threads")
      a.threads = int_val(1);
    else if (k == "-h" || k == "--help")
      usage("help");
    else
      usage("unknown argument \"" + k + "\"");
  }
  if (a.model.empty() || a.inputs.empty() || a.output.empty()) usage("--model, --inputs and --output are required");
  return a;
}

nlohmann::json run(const Args& a) {
  if (a.threads > 0) omp_set_num_threads(a.threads);

  const SafeTensorsFile in = SafeTensorsFile::open(a.inputs);
  const Tensor x = input(in, "x", {0, 0, 0, 0});
  const Tensor t = input(in, "t", {0});
  const Tensor ctx = input(in, "ctx", {x.size(0), 0, 0});
  const Tensor z = input(in, "z", {0, 0, 0, 0});
  const std::vector<float> timesteps = t.to_vector();

  const double t0 = now_s();
  const fs::path dir(a.model);
  const UNetConfig ucfg = UNetConfig::from_json(read_json(dir / "unet" / "config.json"));
  const VAEConfig vcfg = VAEConfig::from_json(read_json(dir / "vae" / "config.json"));
  const UNet unet = UNet::load(ucfg, component_source(dir / "unet"));
  const VAE vae = VAE::load(vcfg, component_source(dir / "vae"));
  const double load_s = now_s() - t0;

  std::vector<double> unet_s, vae_s;
  Tensor eps, img;
  nlohmann::json prof;
  profile::reset();
  for (int r = 0; r < a.repeat; ++r) {
    const double s = now_s();
    eps = unet.forward(x, timesteps, ctx);
    unet_s.push_back(now_s() - s);
  }
  if (profile::enabled()) prof["unet"] = profile_json("UNet CFG step", a.repeat, unet_s);
  for (int r = 0; r < a.repeat; ++r) {
    const double s = now_s();
    img = vae.decode(z);
    vae_s.push_back(now_s() - s);
  }
  if (profile::enabled()) prof["vae"] = profile_json("VAE decode", a.repeat, vae_s);
  write_safetensors(a.output, {{"unet", eps.contiguous()}, {"vae", img.contiguous()}});

  nlohmann::json j;
  j["unet_s"] = unet_s;
  j["vae_s"] = vae_s;
  j["unet_min_s"] = *std::min_element(unet_s.begin(), unet_s.end());
  j["vae_min_s"] = *std::min_element(vae_s.begin(), vae_s.end());
  j["load_s"] = load_s;
  j["peak_rss_mb"] = peak_rss_mb();
  j["threads"] = omp_get_max_threads();
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
