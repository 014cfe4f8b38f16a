#include "cuda/graph.h"

#include <cuda_runtime_api.h>

#include <exception>

#include "cuda/check.h"
#include "cuda/runtime.h"

namespace sdserve::cuda {

class CapturedGraph {
 public:
  CapturedGraph(int device, cudaGraph_t graph, cudaGraphExec_t exec, std::shared_ptr<PrivatePool> pool)
      : device_(device), graph_(graph), exec_(exec), pool_(std::move(pool)) {}
  ~CapturedGraph() {
    set_device(device_);
    (void)cudaStreamSynchronize(stream(device_));  // a replay may still be running
    if (exec_) (void)cudaGraphExecDestroy(exec_);
    if (graph_) (void)cudaGraphDestroy(graph_);
  }
  CapturedGraph(const CapturedGraph&) = delete;
  CapturedGraph& operator=(const CapturedGraph&) = delete;
  int device() const { return device_; }
  cudaGraphExec_t exec() const { return exec_; }
  const std::shared_ptr<PrivatePool>& pool() const { return pool_; }

 private:
  int device_;
  cudaGraph_t graph_;
  cudaGraphExec_t exec_;
  std::shared_ptr<PrivatePool> pool_;  // the blocks the graph's kernels read and write
};

std::shared_ptr<CapturedGraph> capture_graph(int device, const std::function<void()>& body, std::string* why) {
  set_device(device);
  const cudaStream_t s = stream(device);
  empty_cache(device);
  auto pool = make_private_pool(device);
  cudaGraph_t graph = nullptr;
  std::string failure;
  {
    PrivatePoolScope scope(pool);
    SD_CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed));
    try {
      body();
    } catch (const std::exception& e) {
      failure = e.what();
    }
    const cudaError_t end = cudaStreamEndCapture(s, &graph);
    if (end != cudaSuccess && failure.empty())
      failure = std::string("cudaStreamEndCapture: ") + cudaGetErrorString(end);
  }
  if (failure.empty() && graph == nullptr) failure = "the capture recorded no graph";
  cudaGraphExec_t exec = nullptr;
  if (failure.empty()) {
    const cudaError_t st = cudaGraphInstantiate(&exec, graph, 0);
    if (st != cudaSuccess) failure = std::string("cudaGraphInstantiate: ") + cudaGetErrorString(st);
  }
  if (!failure.empty()) {
    (void)cudaGetLastError();  // capture errors are sticky per call, not per context: clear them
    if (graph) (void)cudaGraphDestroy(graph);
    if (why) *why = failure;
    return nullptr;
  }
  return std::make_shared<CapturedGraph>(device, graph, exec, std::move(pool));
}

size_t lend_idle_memory(const std::vector<const CapturedGraph*>& graphs, const std::function<void()>& fn,
                        bool* returned_all) {
  std::vector<std::shared_ptr<PrivatePool>> pools;
  for (const CapturedGraph* g : graphs)
    if (g && g->pool()) pools.push_back(g->pool());
  size_t lent = 0, left = 0;
  std::exception_ptr failure;
  {
    LendScope scope(std::move(pools));
    try {
      fn();
    } catch (...) {
      failure = std::current_exception();
    }
    lent = scope.lent();
    left = scope.outstanding();
  }
  if (returned_all) *returned_all = left == 0;
  if (failure) std::rethrow_exception(failure);
  return lent;
}

void launch_graph(const CapturedGraph& graph) {
  set_device(graph.device());
  SD_CUDA_CHECK(cudaGraphLaunch(graph.exec(), stream(graph.device())));
}

}  // namespace sdserve::cuda
