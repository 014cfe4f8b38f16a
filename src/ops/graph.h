// Device graphs: the work of a fixed-shape function (a UNet step) recorded once and replayed
// with one launch, so a step costs no per-kernel launch overhead on the host. CUDA graphs
// underneath; other devices have none (available() is false). docs/CUDA.md, "CUDA graphs".
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

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
  // Runs fn with the memory of the graphs' intermediates lent to it: between replays those blocks
  // are idle, and fn's allocations on their device use them before asking the driver for more
  // (a VAE decode after the UNet steps, so the step's activations and the decode's do not add
  // up). The caller must hold the graphs' replays off while fn runs, and fn must free what it
  // allocates (copy its result to the host, say). Sets *returned_all to whether it did; if not,
  // the graphs must not replay again (drop them). Without CUDA, or with
  // SDSERVE_CUDA_LEND_GRAPH_MEMORY=0, just runs fn. Returns how many blocks were lent.
  static size_t lend_idle_memory(const std::vector<const DeviceGraph*>& graphs, const std::function<void()>& fn,
                                 bool* returned_all);
  ~DeviceGraph();

 private:
  DeviceGraph() = default;
  std::shared_ptr<void> impl_;
};

// Copies src (any device, same shape and dtype) into dst, a device tensor whose address a graph
// has baked in.
void upload_into(Tensor& dst, const Tensor& src);

}  // namespace sdserve::ops
