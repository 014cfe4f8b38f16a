// Brownian-tree noise, bit-compatible with what diffusers' DPMSolverSDEScheduler and k-diffusion's
// sample_dpmpp_sde (A1111's "DPM++ SDE") get from torchsde.BrownianTree:
//  * SeedSequence: numpy.random.SeedSequence (numpy >= 1.19) and its generate_state(n) in the
//    default uint32 words, which torchsde uses to derive one seed per tree node.
//  * BrownianTree: torchsde.BrownianInterval(t0, t1, size, entropy, tol=1e-6, pool_size=24,
//    halfway_tree=True) with levy_area_approximation "none" (= torchsde.BrownianTree), the
//    increment W(tb) - W(ta) in float32 with torch's operation order. torchsde draws each node's
//    normals with torch.Generator(device).manual_seed(seed); torch.randn(size); we draw them with
//    make_generator(kind, seed) (kind CPU is torch's CPU generator bit for bit; A1111 patches
//    torchsde to draw from its own RNG source, which RngKind also selects).
//  * BrownianTreeNoiseSampler: diffusers' / k-diffusion's wrapper: noise(sigma, sigma_next) =
//    sign * W(min, max) / sqrt(|sigma_next - sigma|) over the sorted pair.
// See docs/SAMPLERS.md, "DPM++ SDE and its Brownian noise".
#pragma once
#include <cstdint>
#include <deque>
#include <memory>
#include <vector>

#include "core/tensor.h"
#include "pipeline/rng.h"

namespace sdserve {

// numpy's _coerce_to_uint32_array for a non-negative Python int: little-endian 32-bit words,
// [0] for 0.
std::vector<uint32_t> int_to_uint32_words(uint64_t n);

class SeedSequence {
 public:
  // SeedSequence(entropy, spawn_key=spawn_key, pool_size=pool_size) with int entropy and a tuple
  // of ints as spawn key.
  SeedSequence(uint64_t entropy, const std::vector<uint64_t>& spawn_key = {}, size_t pool_size = 4);
  // The general form: entropy and spawn key already as uint32 words.
  SeedSequence(const std::vector<uint32_t>& entropy_words, const std::vector<uint32_t>& spawn_words, size_t pool_size);

  // generate_state(n, dtype=np.uint32).
  std::vector<uint32_t> generate_state(size_t n_words) const;
  const std::vector<uint32_t>& pool() const { return pool_; }

 private:
  void init(const std::vector<uint32_t>& entropy_words, const std::vector<uint32_t>& spawn_words);
  std::vector<uint32_t> pool_;
};

// Python's round(x, ndigits) for a float (correctly rounded decimal, half to even on the exact
// binary value, then the nearest double).
double py_round(double x, int ndigits);

class BrownianTree {
 public:
  // torchsde.BrownianTree(t0, w0=zeros(shape), t1, entropy, tol, pool_size); t0 <= t1.
  // cache_size: how many node increments to keep (speed only; 0 = about 16 MiB worth).
  BrownianTree(double t0, double t1, const Shape& shape, uint64_t entropy, RngKind kind, double tol = 1e-6,
               size_t pool_size = 24, size_t cache_size = 0);
  ~BrownianTree();
  BrownianTree(const BrownianTree&) = delete;
  BrownianTree& operator=(const BrownianTree&) = delete;

  // tree(ta, tb): the increment over [ta, tb] (ta <= tb; clamped to [t0, t1] as torchsde does).
  std::vector<float> increment(double ta, double tb);

  int64_t numel() const { return numel_; }
  // Nodes created so far (for tests).
  size_t num_nodes() const { return num_nodes_; }

 private:
  struct Node;
  Node* make_node(double start, double end, Node* parent, bool is_left);
  void split(Node* n, double midway, int guard);
  void split_exact(Node* n, double midway);
  void loc(Node* n, double ta, double tb, std::vector<Node*>& out, int guard);
  const std::vector<float>& increment_of(Node* n);
  void remember(Node* n, std::vector<float> w);
  std::vector<float> randn(uint32_t seed) const;
  double round(double x) const;

  Shape shape_;
  int64_t numel_ = 0;
  uint64_t entropy_;
  RngKind kind_;
  double tol_;
  int ndigits_;
  size_t pool_size_, cache_size_;
  std::unique_ptr<Node> root_;
  Node* last_ = nullptr;
  std::deque<Node*> cache_;  // nodes whose increment is held, oldest first (as torchsde's _LRUDict)
  size_t num_nodes_ = 0;
};

// diffusers' BrownianTreeNoiseSampler(x, sigma_min, sigma_max, seed) for one batch item (an int
// seed, or one entry of a seed list: each item then has its own tree over x.shape[1:]).
class BrownianTreeNoiseSampler {
 public:
  BrownianTreeNoiseSampler(float sigma_min, float sigma_max, const Shape& shape, uint64_t seed, RngKind kind);
  // noise_sampler(sigma, sigma_next), both float32 as the scheduler passes them.
  std::vector<float> operator()(float sigma, float sigma_next);

 private:
  BrownianTree tree_;
  float sign_;  // the constructor's sort of (sigma_min, sigma_max)
};

}  // namespace sdserve
