// CUDA graphs: record the work a function issues on a device's stream once, then replay it with
// one launch. Compiled only with SDSERVE_WITH_CUDA; ops/graph.h is the device-neutral face.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace sdserve::cuda {

class CapturedGraph;

// Runs `body` with the device's stream in capture mode (relaxed: the allocator may cudaMalloc
// fresh blocks) and every allocation of this thread on `device` drawn from a new private pool
// that the graph keeps. Nothing runs on the GPU during capture. Returns null and sets *why when
// the capture fails (an op that synchronises, say); the stream is left usable and the error
// cleared. The device's shared pool is emptied first, so the graph's blocks are not held twice.
std::shared_ptr<CapturedGraph> capture_graph(int device, const std::function<void()>& body, std::string* why);
// Launches the graph on the device's stream (asynchronous, like any op).
void launch_graph(const CapturedGraph& graph);
// Runs fn with the idle blocks of the graphs' pools lent to this thread's allocations
// (LendScope, cuda/runtime.h). The caller holds the graphs' replays off meanwhile. Sets
// *returned_all to whether every lent block was back when fn returned (or threw); where not, the
// graphs must never replay again. Returns how many blocks were lent.
size_t lend_idle_memory(const std::vector<const CapturedGraph*>& graphs, const std::function<void()>& fn,
                        bool* returned_all);

}  // namespace sdserve::cuda
