// What the bench binaries (sd_bench.cc, lora_bench.cc) share: clocks and statistics, peak RSS,
// loading a diffusers component folder, device synchronisation, the per-op profile table and
// reading flag values.
#pragma once
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/device.h"
#include "core/error.h"
#include "core/profile.h"
#include "io/safetensors.h"
#include "io/weights.h"

#ifdef SDSERVE_WITH_CUDA
#include "cuda/runtime.h"
#endif

namespace sdserve::bench {

inline double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// VmHWM (peak resident set) from /proc/self/status, in MiB; -1 if unavailable.
inline double peak_rss_mb() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;  // kB
  return -1;
}

inline double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

inline double min_of(const std::vector<double>& v) { return v.empty() ? 0 : *std::min_element(v.begin(), v.end()); }

inline nlohmann::json read_json(const std::filesystem::path& p) {
  std::ifstream f(p);
  if (!f) throw NotFoundError(p.string() + ": cannot open");
  try {
    return nlohmann::json::parse(f);
  } catch (const nlohmann::json::exception& e) {
    throw ModelFormatError(p.string() + ": " + e.what());
  }
}

// All *.safetensors files of one diffusers component folder.
inline WeightSource component_source(const std::filesystem::path& dir) {
  namespace fs = std::filesystem;
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

// Waits until all work queued on `dev` is done; call before every host clock read.
inline void sync(Device dev) {
#ifdef SDSERVE_WITH_CUDA
  if (dev.type == DeviceType::CUDA) cuda::synchronize(dev.index);
#else
  (void)dev;
#endif
}

// SDSERVE_PROFILE=1: per-op self time accumulated since the last reset, per run, as JSON
// {op: {"s": seconds per run, "calls": calls per run}} plus "(outside ops)" and "(run)" (the
// whole run: `total_s` over `runs`), and as a table on stderr. Resets.
inline nlohmann::json profile_json(const std::string& what, int runs, double total_s) {
  const double total = total_s / runs;
  nlohmann::json j = nlohmann::json::object();
  std::fprintf(stderr, "profile: %s, %.4f s per run (self time per op, mean of %d runs)\n", what.c_str(), total, runs);
  double covered = 0;
  for (const auto& e : profile::snapshot()) {
    const double s = e.seconds / runs;
    covered += s;
    j[e.name] = {{"s", s}, {"calls", e.calls / runs}};
    std::fprintf(stderr, "  %-18s %8.3f s %5.1f%% %6lld calls\n", e.name.c_str(), s, 100 * s / total,
                 static_cast<long long>(e.calls / runs));
  }
  std::fprintf(stderr, "  %-18s %8.3f s %5.1f%%\n", "(outside ops)", total - covered, 100 * (total - covered) / total);
  j["(outside ops)"] = {{"s", total - covered}, {"calls", 0}};
  j["(run)"] = {{"s", total}, {"calls", 1}};
  profile::reset();
  return j;
}

// Reads the values of command-line flags; a bad or missing one ends the program through `usage`
// (which prints the message with the usage line and exits 2).
class FlagReader {
 public:
  FlagReader(int argc, char** argv, std::function<void(const std::string&)> usage)
      : argc_(argc), argv_(argv), usage_(std::move(usage)) {}
  // The next flag, or false at the end.
  bool next(std::string& flag) {
    if (++i_ >= argc_) return false;
    flag_ = flag = argv_[i_];
    return true;
  }
  std::string value() {
    if (i_ + 1 >= argc_) fail(flag_ + " needs a value");
    return argv_[++i_];
  }
  int integer(int lo) {
    const std::string v = value();
    try {
      size_t pos = 0;
      const int n = std::stoi(v, &pos);
      if (pos == v.size() && n >= lo) return n;
    } catch (const std::exception&) {
    }
    fail(flag_ + " must be an integer >= " + std::to_string(lo) + ", got \"" + v + "\"");
  }
  // A number x with ok(x); `what` says which ("a positive number").
  float number(const std::function<bool(float)>& ok, const std::string& what) {
    const std::string v = value();
    try {
      size_t pos = 0;
      const float x = std::stof(v, &pos);
      if (pos == v.size() && ok(x)) return x;
    } catch (const std::exception&) {
    }
    fail(flag_ + " must be " + what + ", got \"" + v + "\"");
  }
  [[noreturn]] void fail(const std::string& msg) {
    usage_(msg);
    std::exit(2);
  }

 private:
  int argc_;
  char** argv_;
  std::function<void(const std::string&)> usage_;
  int i_ = 0;
  std::string flag_;
};

}  // namespace sdserve::bench
