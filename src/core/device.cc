#include "core/device.h"

#include "core/error.h"

namespace sdserve {

Device parse_device(std::string_view s) {
  if (s == "cpu") return Device::cpu();
  if (s == "cuda") return Device::cuda(0);
  if (s.substr(0, 5) == "cuda:" && s.size() > 5 && s.size() < 8) {
    int idx = 0;
    for (char c : s.substr(5)) {
      if (c < '0' || c > '9') throw InvalidArgument("bad device '" + std::string(s) + "': use cpu or cuda:N");
      idx = idx * 10 + (c - '0');
    }
    return Device::cuda(idx);
  }
  throw InvalidArgument("bad device '" + std::string(s) + "': use cpu or cuda:N");
}

bool device_compiled(DeviceType t) noexcept {
#ifdef SDSERVE_WITH_CUDA
  return true;
#else
  return t == DeviceType::CPU;
#endif
}

}  // namespace sdserve
