// CUDA device memory, streams and library handles. Compiled only with SDSERVE_WITH_CUDA.
//
// Every op on a device runs on that device's one stream (stream()), so work issued by any
// thread is ordered, and a buffer freed to the caching allocator can be handed out again at
// once: the next user's kernels queue behind the last user's on the same stream.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

struct CUstream_st;
using cudaStream_t = CUstream_st*;

namespace sdserve::cuda {

int device_count();  // 0 when no driver/device is present (not an error)
// Throws UnsupportedError when `device` does not exist on this machine.
void require_device(int device);

// Caching allocator: freed blocks go back to a per-device pool (size-bucketed, so a step
// that allocates the same shapes as the last one allocates nothing from the driver). When
// cudaMalloc fails, the pool is emptied and the allocation retried once; a second failure
// throws ResourceError.
std::shared_ptr<void> allocate(size_t bytes, int device);

struct MemoryStats {
  size_t allocated = 0;       // bytes in live tensors (bucket sizes)
  size_t peak_allocated = 0;  // since the last reset_peak()
  size_t reserved = 0;        // bytes held from the driver (live + cached)
  size_t peak_reserved = 0;
  size_t workspace = 0;        // cuBLASLt/cuDNN workspaces and other fixed buffers
  uint64_t driver_allocs = 0;  // number of cudaMalloc calls so far
};
MemoryStats memory_stats(int device);
void reset_peak(int device);
// Counts a fixed buffer (a library workspace) in memory_stats().workspace.
void add_workspace_bytes(int device, size_t bytes);
// Frees every cached (unused) block back to the driver.
void empty_cache(int device);
// Caps the bytes this process holds from the driver on `device` (0 = no cap; the default, or
// SDSERVE_CUDA_MEMORY_LIMIT_MB). An allocation past it empties the cache and, if still past
// it, throws ResourceError as a real out-of-memory would: for sharing a GPU with other
// processes, and for testing the out-of-memory paths (the tiled VAE fallback).
void set_memory_limit(int device, size_t bytes);

// The device's stream; all our kernels and library calls are issued on it.
cudaStream_t stream(int device);
void synchronize(int device);
// Checks cudaGetLastError() after a kernel launch; throws InternalError naming `what`.
void check_launch(const char* what);

// Host <-> device copies on the device's stream; both wait until the copy is done.
void copy_to_device(void* dst, const void* src, size_t bytes, int device);
void copy_to_host(void* dst, const void* src, size_t bytes, int device);
void copy_device_to_device(void* dst, const void* src, size_t bytes, int device);
void memset_async(void* dst, int value, size_t bytes, int device);

// Sets the current device for the calling thread (cudaSetDevice, cached).
void set_device(int device);

// Waits for every stream this process has created (the profiler's device-sync hook).
void synchronize_all();

// A pool of device blocks kept apart from the device's shared pool. While a
// PrivatePoolScope is alive on a thread, that thread's allocations on the pool's device come
// from it, and those blocks return to it when freed, whoever frees them and when. A CUDA graph
// captured meanwhile bakes in addresses that no other tensor can be handed later, for as long
// as the pool lives (every block's owner holds a reference). Dropping the last reference gives
// the blocks back to the driver.
class PrivatePool;
std::shared_ptr<PrivatePool> make_private_pool(int device);
class PrivatePoolScope {
 public:
  explicit PrivatePoolScope(std::shared_ptr<PrivatePool> pool);
  ~PrivatePoolScope();
  PrivatePoolScope(const PrivatePoolScope&) = delete;
  PrivatePoolScope& operator=(const PrivatePoolScope&) = delete;

 private:
  std::shared_ptr<PrivatePool> previous_;
};

// Lending a private pool's idle blocks. Between two replays of a CUDA graph, the blocks its pool
// holds for the step's intermediates are idle. While a LendScope is alive on a thread, that
// thread's allocations outside any PrivatePoolScope may use them: when the device's shared pool
// has no cached block that fits, an idle block of the given pools that fits (the shared pool's
// rule: the bucket, up to twice its size) is taken before the driver is asked for a new one.
// Freed, it goes back to its pool. The graph must not replay while one is out: the scope's owner
// holds replays off while it lives and runs work that frees what it allocates; outstanding()
// says whether it did (ops::DeviceGraph::lend_idle_memory).
struct LendState;
class LendScope {
 public:
  explicit LendScope(std::vector<std::shared_ptr<PrivatePool>> pools);
  ~LendScope();
  LendScope(const LendScope&) = delete;
  LendScope& operator=(const LendScope&) = delete;
  size_t outstanding() const;  // blocks lent under this scope and not given back yet
  size_t lent() const;         // blocks lent under this scope in all

 private:
  std::shared_ptr<LendState> state_, previous_;
};

}  // namespace sdserve::cuda
