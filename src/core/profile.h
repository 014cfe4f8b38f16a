// Per-op wall-time profile, off unless the environment has SDSERVE_PROFILE=1.
// An op opens SD_PROFILE_SCOPE("conv2d") at its top; each call adds its wall time (inclusive
// of anything it calls) and a call count under that name. Disabled, a scope costs one
// branch on a cached flag. Thread-safe; meant to be read by tools such as sdserve_bench.
#pragma once
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

namespace sdserve::profile {

struct Entry {
  std::string name;
  double seconds = 0;
  int64_t calls = 0;
};

bool enabled();                              // SDSERVE_PROFILE=1, read once
void add(const char* name, double seconds);  // no-op when disabled
std::vector<Entry> snapshot();               // by descending time
void reset();

class Scope {
 public:
  explicit Scope(const char* name) : name_(enabled() ? name : nullptr) {
    if (name_) start_ = std::chrono::steady_clock::now();
  }
  ~Scope() {
    if (name_) add(name_, std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count());
  }
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  const char* name_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace sdserve::profile

#define SD_PROFILE_CAT2(a, b) a##b
#define SD_PROFILE_CAT(a, b) SD_PROFILE_CAT2(a, b)
#define SD_PROFILE_SCOPE(name) ::sdserve::profile::Scope SD_PROFILE_CAT(sd_profile_scope_, __LINE__)(name)
