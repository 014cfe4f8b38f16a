#include "core/profile.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>

namespace sdserve::profile {

namespace {
std::mutex mu;
std::map<std::string, Entry, std::less<>>& table() {
  static std::map<std::string, Entry, std::less<>> t;
  return t;
}
}  // namespace

bool enabled() {
  static const bool on = [] {
    const char* v = std::getenv("SDSERVE_PROFILE");
    return v && std::strcmp(v, "") != 0 && std::strcmp(v, "0") != 0;
  }();
  return on;
}

void add(const char* name, double seconds) {
  if (!enabled()) return;
  std::lock_guard<std::mutex> lock(mu);
  auto& t = table();
  auto it = t.find(std::string_view(name));
  if (it == t.end()) it = t.emplace(name, Entry{name, 0, 0}).first;
  it->second.seconds += seconds;
  it->second.calls += 1;
}

std::vector<Entry> snapshot() {
  std::vector<Entry> out;
  {
    std::lock_guard<std::mutex> lock(mu);
    for (const auto& [k, e] : table()) out.push_back(e);
  }
  std::sort(out.begin(), out.end(), [](const Entry& a, const Entry& b) { return a.seconds > b.seconds; });
  return out;
}

namespace {
std::atomic<void (*)()> sync_hook{nullptr};
}

void set_device_sync(void (*fn)()) { sync_hook.store(fn); }

void device_sync() {
  if (auto* fn = sync_hook.load()) fn();
}

void reset() {
  std::lock_guard<std::mutex> lock(mu);
  table().clear();
}

}  // namespace sdserve::profile
