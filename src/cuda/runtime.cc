#include "cuda/runtime.h"

#include <cuda_runtime_api.h>

#include <array>
#include <atomic>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "core/profile.h"
#include "cuda/check.h"

namespace sdserve::cuda {

namespace {

constexpr int kMaxDevices = 16;

// Bucket sizes: 512-byte granules up to 1 MiB, then four buckets per power of two (at most
// 25% slack). Reuse is exact per bucket, so a step that asks for the shapes the last step asked
// for finds every block in the pool.
size_t bucket_size(size_t bytes) {
  if (bytes <= (size_t(1) << 20)) return std::max<size_t>(512, (bytes + 511) / 512 * 512);
  size_t p = size_t(1) << 20;
  while (p * 2 < bytes) p *= 2;  // p < bytes <= 2p
  const size_t quarter = p / 4;
  return (bytes + quarter - 1) / quarter * quarter;
}

using BlockCache = std::map<size_t, std::vector<void*>>;  // bucket size -> cached blocks

struct DevicePool {
  std::mutex mu;
  BlockCache free_blocks;
  MemoryStats stats;
  cudaStream_t stream = nullptr;
  bool initialised = false;
  size_t limit = 0;  // 0: none
};

std::array<DevicePool, kMaxDevices>& pools() {
  // Never destroyed: tensors held by other statics are freed after this function's statics
  // would be, and their deleters return blocks here. The driver reclaims everything at exit.
  static auto* p = new std::array<DevicePool, kMaxDevices>;
  return *p;
}

DevicePool& pool(int device) {
  require_device(device);
  return pools()[size_t(device)];
}

// Called with the pool's mutex held.
void release_cached(DevicePool& p, int device) {
  if (p.free_blocks.empty()) return;
  set_device(device);
  // Blocks in the pool may still be read by queued kernels of their last owner.
  SD_CUDA_CHECK(cudaStreamSynchronize(p.stream));
  for (auto& [size, blocks] : p.free_blocks)
    for (void* b : blocks) {
      SD_CUDA_CHECK(cudaFree(b));
      p.stats.reserved -= size;
    }
  p.free_blocks.clear();
}

void ensure_stream(DevicePool& p, int device) {
  if (p.initialised) return;
  set_device(device);
  SD_CUDA_CHECK(cudaStreamCreateWithFlags(&p.stream, cudaStreamNonBlocking));
  p.initialised = true;
  if (profile::enabled()) profile::set_device_sync(&synchronize_all);
  if (const char* v = std::getenv("SDSERVE_CUDA_MEMORY_LIMIT_MB"); v && *v && p.limit == 0)
    p.limit = size_t(std::strtoull(v, nullptr, 10)) << 20;
}

// A cached block for a request of bucket `size`: one of exactly that bucket, else the smallest
// cached block of up to twice the size, used whole (*size becomes its size). Without the second
// rule every new shape (the VAE after the UNet, say) would add fresh blocks while blocks a little
// larger sit idle in the pool. `blocks` is the shared pool's cache, or a private pool's that
// lends its idle blocks; called with the device pool's mutex held.
void* take_cached(BlockCache& blocks, size_t bucket, size_t* size) {
  auto it = blocks.lower_bound(bucket);
  while (it != blocks.end() && it->first <= 2 * bucket && it->second.empty()) ++it;
  if (it == blocks.end() || it->first > 2 * bucket) return nullptr;
  void* ptr = it->second.back();
  it->second.pop_back();
  *size = it->first;
  if (it->second.empty()) blocks.erase(it);
  return ptr;
}

// cudaMalloc, counted in the device's stats; on failure the shared pool's cached blocks are
// given back and the allocation tried once more. Called with p.mu held.
void* driver_malloc(DevicePool& p, int device, size_t size) {
  void* ptr = nullptr;
  set_device(device);
  if (p.limit && p.stats.reserved + size > p.limit) release_cached(p, device);
  const bool over_limit = p.limit && p.stats.reserved + size > p.limit;
  cudaError_t st = over_limit ? cudaErrorMemoryAllocation : cudaMalloc(&ptr, size);
  if (st == cudaErrorMemoryAllocation && !over_limit) {
    (void)cudaGetLastError();
    release_cached(p, device);
    st = cudaMalloc(&ptr, size);
  }
  if (st != cudaSuccess) {
    (void)cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    (void)cudaMemGetInfo(&free_b, &total_b);
    if (over_limit) {
      free_b = p.limit > p.stats.reserved ? p.limit - p.stats.reserved : 0;
      total_b = p.limit;
    }
    throw ResourceError("out of GPU memory on cuda:" + std::to_string(device) + ": asked for " +
                        std::to_string(size >> 20) + " MiB with " + std::to_string(free_b >> 20) + " of " +
                        std::to_string(total_b >> 20) + " MiB free" + (over_limit ? " under the memory limit" : "") +
                        "; use a smaller size or batch, or --vae-tiling");
  }
  p.stats.reserved += size;
  p.stats.peak_reserved = std::max(p.stats.peak_reserved, p.stats.reserved);
  ++p.stats.driver_allocs;
  return ptr;
}

}  // namespace

class PrivatePool {
 public:
  explicit PrivatePool(int device) : device_(device) {}
  ~PrivatePool() {
    DevicePool& p = pools()[size_t(device_)];
    std::lock_guard<std::mutex> lock(p.mu);
    if (free_blocks_.empty()) return;
    set_device(device_);
    // A graph that used these blocks may still be running.
    (void)cudaStreamSynchronize(p.stream);
    for (auto& [size, blocks] : free_blocks_)
      for (void* b : blocks) {
        (void)cudaFree(b);
        p.stats.reserved -= size;
      }
  }
  int device() const { return device_; }
  // Both called with the device pool's mutex held (one lock orders both pools).
  void* take(size_t size) {
    auto it = free_blocks_.find(size);
    if (it == free_blocks_.end() || it->second.empty()) return nullptr;
    void* ptr = it->second.back();
    it->second.pop_back();
    return ptr;
  }
  void give(size_t size, void* ptr) { free_blocks_[size].push_back(ptr); }
  // An idle block for a request of bucket `bucket`, by the shared pool's rule (*size becomes its size).
  void* take_fit(size_t bucket, size_t* size) { return take_cached(free_blocks_, bucket, size); }

 private:
  int device_;
  BlockCache free_blocks_;
};

struct LendState {
  std::vector<std::shared_ptr<PrivatePool>> pools;
  // Held by each lent block's deleter too: a block kept past its scope keeps the counter alive,
  // not the other pools.
  std::shared_ptr<std::atomic<size_t>> outstanding = std::make_shared<std::atomic<size_t>>(0);
  std::atomic<size_t> lent{0};
};

namespace {
thread_local std::shared_ptr<PrivatePool> current_private_pool;
thread_local std::shared_ptr<LendState> current_lend;
}  // namespace

LendScope::LendScope(std::vector<std::shared_ptr<PrivatePool>> pools)
    : state_(std::make_shared<LendState>()), previous_(std::move(current_lend)) {
  state_->pools = std::move(pools);
  current_lend = state_;
}

LendScope::~LendScope() { current_lend = std::move(previous_); }

size_t LendScope::outstanding() const { return *state_->outstanding; }
size_t LendScope::lent() const { return state_->lent; }

std::shared_ptr<PrivatePool> make_private_pool(int device) {
  require_device(device);
  return std::make_shared<PrivatePool>(device);
}

PrivatePoolScope::PrivatePoolScope(std::shared_ptr<PrivatePool> pool) : previous_(std::move(current_private_pool)) {
  current_private_pool = std::move(pool);
}

PrivatePoolScope::~PrivatePoolScope() { current_private_pool = std::move(previous_); }

void synchronize_all() {
  for (int d = 0; d < device_count(); ++d) {
    DevicePool& p = pools()[size_t(d)];
    cudaStream_t s = nullptr;
    {
      std::lock_guard<std::mutex> lock(p.mu);
      if (!p.initialised) continue;
      s = p.stream;
    }
    set_device(d);
    SD_CUDA_CHECK(cudaStreamSynchronize(s));
  }
}

int device_count() {
  static const int n = [] {
    int count = 0;
    // No driver or no device: report zero so CPU-only machines run CUDA builds.
    if (cudaGetDeviceCount(&count) != cudaSuccess) {
      (void)cudaGetLastError();
      return 0;
    }
    return std::min(count, kMaxDevices);
  }();
  return n;
}

void require_device(int device) {
  const int n = device_count();
  if (device < 0 || device >= n)
    throw UnsupportedError("device cuda:" + std::to_string(device) + " is not available: this machine has " +
                           (n == 0 ? std::string("no CUDA device") : std::to_string(n) + " CUDA device(s)"));
}

void set_device(int device) {
  thread_local int current = -1;
  if (current == device) return;
  SD_CUDA_CHECK(cudaSetDevice(device));
  current = device;
}

std::shared_ptr<void> allocate(size_t bytes, int device) {
  DevicePool& p = pool(device);
  size_t size = bucket_size(bytes == 0 ? 1 : bytes);
  // `home`: the private pool the block returns to (the scope's pool, or a lender), else none.
  std::shared_ptr<PrivatePool> home =
      current_private_pool && current_private_pool->device() == device ? current_private_pool : nullptr;
  std::shared_ptr<std::atomic<size_t>> lent_out;  // the lending scope's counter, when the block is lent
  void* ptr = nullptr;
  {
    std::lock_guard<std::mutex> lock(p.mu);
    ensure_stream(p, device);
    if (home) {
      ptr = home->take(size);
    } else {
      ptr = take_cached(p.free_blocks, size, &size);
      if (!ptr && current_lend) {
        for (const std::shared_ptr<PrivatePool>& pool : current_lend->pools) {
          if (pool->device() != device) continue;
          ptr = pool->take_fit(size, &size);
          if (ptr) {
            home = pool;
            lent_out = current_lend->outstanding;
            ++*lent_out;
            ++current_lend->lent;
            break;
          }
        }
      }
    }
    if (!ptr) ptr = driver_malloc(p, device, size);
    p.stats.allocated += size;
    p.stats.peak_allocated = std::max(p.stats.peak_allocated, p.stats.allocated);
  }
  return std::shared_ptr<void>(ptr, [device, size, home = std::move(home), lent_out = std::move(lent_out)](void* q) {
    DevicePool& pl = pools()[size_t(device)];
    std::lock_guard<std::mutex> lock(pl.mu);
    if (home)
      home->give(size, q);
    else
      pl.free_blocks[size].push_back(q);
    if (lent_out) --*lent_out;
    pl.stats.allocated -= size;
  });
}

MemoryStats memory_stats(int device) {
  DevicePool& p = pool(device);
  std::lock_guard<std::mutex> lock(p.mu);
  return p.stats;
}

void add_workspace_bytes(int device, size_t bytes) {
  DevicePool& p = pool(device);
  std::lock_guard<std::mutex> lock(p.mu);
  p.stats.workspace += bytes;
}

void reset_peak(int device) {
  DevicePool& p = pool(device);
  std::lock_guard<std::mutex> lock(p.mu);
  p.stats.peak_allocated = p.stats.allocated;
  p.stats.peak_reserved = p.stats.reserved;
}

void set_memory_limit(int device, size_t bytes) {
  DevicePool& p = pool(device);
  std::lock_guard<std::mutex> lock(p.mu);
  ensure_stream(p, device);  // reads the environment's limit first, so this call wins
  p.limit = bytes;
}

void empty_cache(int device) {
  DevicePool& p = pool(device);
  std::lock_guard<std::mutex> lock(p.mu);
  if (p.initialised) release_cached(p, device);
}

cudaStream_t stream(int device) {
  DevicePool& p = pool(device);
  std::lock_guard<std::mutex> lock(p.mu);
  ensure_stream(p, device);
  return p.stream;
}

void synchronize(int device) {
  const cudaStream_t s = stream(device);
  set_device(device);
  SD_CUDA_CHECK(cudaStreamSynchronize(s));
}

void check_launch(const char* what) {
  const cudaError_t st = cudaGetLastError();
  if (st != cudaSuccess) throw InternalError(std::string("CUDA kernel ") + what + " failed: " + cudaGetErrorString(st));
}

namespace {
// A copy on the device's stream; `wait` when a host buffer is involved (it may be freed or read
// as soon as we return).
void stream_copy(void* dst, const void* src, size_t bytes, int device, cudaMemcpyKind kind, bool wait) {
  if (bytes == 0) return;
  const cudaStream_t s = stream(device);
  set_device(device);
  SD_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, kind, s));
  if (wait) SD_CUDA_CHECK(cudaStreamSynchronize(s));
}
}  // namespace

void copy_to_device(void* dst, const void* src, size_t bytes, int device) {
  stream_copy(dst, src, bytes, device, cudaMemcpyHostToDevice, true);
}

void copy_to_host(void* dst, const void* src, size_t bytes, int device) {
  stream_copy(dst, src, bytes, device, cudaMemcpyDeviceToHost, true);
}

void copy_device_to_device(void* dst, const void* src, size_t bytes, int device) {
  stream_copy(dst, src, bytes, device, cudaMemcpyDeviceToDevice, false);
}

void memset_async(void* dst, int value, size_t bytes, int device) {
  if (bytes == 0) return;
  const cudaStream_t s = stream(device);
  set_device(device);
  SD_CUDA_CHECK(cudaMemsetAsync(dst, value, bytes, s));
}

}  // namespace sdserve::cuda
