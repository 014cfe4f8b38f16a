// Device graphs: the work of a fixed-shape function (a UNet step) recorded once and replayed
// with one launch, so a step costs no per-kernel launch overhead on the host. CUDA graphs
// underneath; other devices have none (available() is false). docs/CUDA.md, "CUDA graphs".
#pragma once
#include <functional>
#include <memory>
#include <string>

#include "core/tensor.h"

namespace sdserve::ops {

class DeviceGraph {
 public:
  // True for a CUDA device unless SDSERVE_CUDA_GRAPHS=0 or the per-op profiler is on (it
  // synchronises inside every op, which a capture cannot contain).
  static bool available(const Device& d);
  // How many graphs (shapes) one model keeps: SDSERVE_CUDA_GRAPHS=N, default 2. Each holds the
  // activations of one step in its own pool, so the least recently used one is dropped first.
  static int max_cached();
  // Records body()'s device work without running it. Tensors that body() creates live in a pool
  // of the graph's own: keep the ones replay() should refresh (the outputs) and read them after
  // each replay. Returns null and sets *why when the device refused the capture.
  static std::unique_ptr<DeviceGraph> capture(const Device& d, const std::function<void()>& body, std::string* why);
  void replay() const;  // asynchronous on the device's stream, like an op
  ~DeviceGraph();

 private:
  DeviceGraph() = default;
  std::shared_ptr<void> impl_;
};

// Copies src (any device, same shape and dtype) into dst, a device tensor whose address a graph
// has baked in.
void upload_into(Tensor& dst, const Tensor& src);

}  // namespace sdserve::ops
