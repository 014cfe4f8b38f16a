#pragma once
#include <string>
#include <string_view>

namespace sdserve {

enum class DeviceType { CPU, CUDA };

struct Device {
  DeviceType type = DeviceType::CPU;
  int index = 0;
  static Device cpu() { return {DeviceType::CPU, 0}; }
  static Device cuda(int i = 0) { return {DeviceType::CUDA, i}; }
  bool operator==(const Device&) const = default;
  std::string str() const { return type == DeviceType::CPU ? "cpu" : "cuda:" + std::to_string(index); }
};

// Parses "cpu", "cuda", "cuda:N"; throws InvalidArgument.
Device parse_device(std::string_view s);
// True when this build has the backend for the device compiled in.
bool device_compiled(DeviceType t) noexcept;

}  // namespace sdserve
