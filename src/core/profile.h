// Per-op wall-time profile, off unless the environment has SDSERVE_PROFILE=1.
// An op opens SD_PROFILE_SCOPE("conv2d") at its top; each call adds its wall time and a call
// count under that name. Times are self times: a scope opened inside another (a cast inside an
// op) counts under its own name and not again under the outer one, so the entries add up. Disabled, a scope costs one
// branch on a cached flag. Thread-safe; meant to be read by tools such as sdserve_bench.
//
// GPU work is asynchronous, so a backend registers a device-sync hook (set_device_sync): while
// profiling, every scope synchronises the devices when it opens and when it closes, and its time
// is the op's real device time, launch cost included. That serialises the host and the GPU, so
// a profiled run is slower in total than an unprofiled one (and CUDA graphs are off while
// profiling); the split between ops is what it is for.
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
// Called by a GPU backend once it has work in flight; `fn` waits for every device stream.
void set_device_sync(void (*fn)());
void device_sync();  // runs the hook, if any

class Scope {
 public:
  explicit Scope(const char* name) : name_(enabled() ? name : nullptr) {
    if (name_) {
      device_sync();
      outer_children_ = children_;
      children_ = 0;
      start_ = std::chrono::steady_clock::now();
    }
  }
  ~Scope() {
    if (name_) {
      device_sync();
      const double total = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
      add(name_, total - children_);  // self time: scopes opened inside count under their own name
      children_ = outer_children_ + total;
    }
  }
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  static inline thread_local double children_ = 0;  // time of finished scopes inside the open one
  const char* name_;
  double outer_children_ = 0;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace sdserve::profile

#define SD_PROFILE_CAT2(a, b) a##b
#define SD_PROFILE_CAT(a, b) SD_PROFILE_CAT2(a, b)
#define SD_PROFILE_SCOPE(name) ::sdserve::profile::Scope SD_PROFILE_CAT(sd_profile_scope_, __LINE__)(name)
