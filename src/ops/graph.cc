#include "ops/graph.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "core/error.h"
#include "core/profile.h"
#ifdef SDSERVE_WITH_CUDA
#include "cuda/graph.h"
#include "cuda/runtime.h"
#endif

namespace sdserve::ops {

int DeviceGraph::max_cached() {
  static const int n = [] {
    const char* v = std::getenv("SDSERVE_CUDA_GRAPHS");
    if (!v || !*v) return 2;
    char* end = nullptr;
    const long k = std::strtol(v, &end, 10);
    return (end && *end == 0 && k >= 0) ? int(std::min<long>(k, 64)) : 2;
  }();
  return n;
}

bool DeviceGraph::available(const Device& d) {
#ifdef SDSERVE_WITH_CUDA
  return d.type == DeviceType::CUDA && max_cached() > 0 && !profile::enabled();
#else
  (void)d;
  return false;
#endif
}

std::unique_ptr<DeviceGraph> DeviceGraph::capture(const Device& d, const std::function<void()>& body,
                                                  std::string* why) {
#ifdef SDSERVE_WITH_CUDA
  if (d.type == DeviceType::CUDA) {
    std::shared_ptr<cuda::CapturedGraph> g = cuda::capture_graph(d.index, body, why);
    if (!g) return nullptr;
    std::unique_ptr<DeviceGraph> out(new DeviceGraph());
    out->impl_ = std::move(g);
    return out;
  }
#endif
  (void)body;
  if (why) *why = "device " + d.str() + " has no graphs";
  return nullptr;
}

void DeviceGraph::replay() const {
#ifdef SDSERVE_WITH_CUDA
  cuda::launch_graph(*static_cast<const cuda::CapturedGraph*>(impl_.get()));
#endif
}

size_t DeviceGraph::lend_idle_memory(const std::vector<const DeviceGraph*>& graphs, const std::function<void()>& fn,
                                     bool* returned_all) {
  if (returned_all) *returned_all = true;
#ifdef SDSERVE_WITH_CUDA
  static const bool off = [] {
    const char* v = std::getenv("SDSERVE_CUDA_LEND_GRAPH_MEMORY");
    return v && std::strcmp(v, "0") == 0;
  }();
  std::vector<const cuda::CapturedGraph*> captured;
  for (const DeviceGraph* g : graphs)
    if (g && g->impl_) captured.push_back(static_cast<const cuda::CapturedGraph*>(g->impl_.get()));
  if (!off && !captured.empty()) return cuda::lend_idle_memory(captured, fn, returned_all);
#else
  (void)graphs;
#endif
  fn();
  return 0;
}

DeviceGraph::~DeviceGraph() = default;

void upload_into(Tensor& dst, const Tensor& src) {
  SD_CHECK_ARG(dst.shape() == src.shape() && dst.dtype() == src.dtype(), "upload_into: shape or dtype differs");
#ifdef SDSERVE_WITH_CUDA
  if (dst.device().type == DeviceType::CUDA && src.device().type == DeviceType::CPU && dst.is_contiguous()) {
    const Tensor s = src.contiguous();
    cuda::copy_to_device(dst.raw_data(), s.raw_data(), s.nbytes(), dst.device().index);
    return;
  }
#endif
  dst.copy_(src.device() == dst.device() ? src : src.to(dst.device()));
}

}  // namespace sdserve::ops
