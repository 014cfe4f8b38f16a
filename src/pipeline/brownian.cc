#include "pipeline/brownian.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "core/error.h"

// torch's elementwise float32 ops round after every operation; keep `a * b + c` two roundings.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace sdserve {

namespace {
void check_internal(bool ok, const char* msg) {
  if (!ok) throw InternalError(msg);
}
}  // namespace

// ------------------------------------------------------------------ SeedSequence
// numpy/random/bit_generator.pyx (numpy >= 1.19), after Melissa O'Neill's seed_seq_fe.

namespace {

constexpr uint32_t kInitA = 0x43b0d7e5u;
constexpr uint32_t kMultA = 0x931e8875u;
constexpr uint32_t kInitB = 0x8b51f9ddu;
constexpr uint32_t kMultB = 0x58f38dedu;
constexpr uint32_t kMixMultL = 0xca01f9ddu;
constexpr uint32_t kMixMultR = 0x4973f715u;
constexpr int kXShift = 16;

uint32_t hashmix(uint32_t value, uint32_t& hash_const) {
  value ^= hash_const;
  hash_const *= kMultA;
  value *= hash_const;
  value ^= value >> kXShift;
  return value;
}

uint32_t mix(uint32_t x, uint32_t y) {
  uint32_t result = kMixMultL * x - kMixMultR * y;
  result ^= result >> kXShift;
  return result;
}

}  // namespace

std::vector<uint32_t> int_to_uint32_words(uint64_t n) {
  if (n == 0) return {0u};
  std::vector<uint32_t> w;
  while (n > 0) {
    w.push_back(uint32_t(n & 0xFFFFFFFFu));
    n >>= 32;
  }
  return w;
}

SeedSequence::SeedSequence(uint64_t entropy, const std::vector<uint64_t>& spawn_key, size_t pool_size)
    : pool_(pool_size, 0u) {
  std::vector<uint32_t> spawn;
  for (uint64_t k : spawn_key) {
    const std::vector<uint32_t> w = int_to_uint32_words(k);
    spawn.insert(spawn.end(), w.begin(), w.end());
  }
  init(int_to_uint32_words(entropy), spawn);
}

SeedSequence::SeedSequence(const std::vector<uint32_t>& entropy_words, const std::vector<uint32_t>& spawn_words,
                           size_t pool_size)
    : pool_(pool_size, 0u) {
  init(entropy_words, spawn_words);
}

void SeedSequence::init(const std::vector<uint32_t>& entropy_words, const std::vector<uint32_t>& spawn_words) {
  SD_CHECK_ARG(!pool_.empty(), "SeedSequence: pool_size must be positive");
  // get_assembled_entropy: with a spawn key, pad the run entropy with zeros to the pool size.
  std::vector<uint32_t> entropy = entropy_words;
  if (!spawn_words.empty() && entropy.size() < pool_.size()) entropy.resize(pool_.size(), 0u);
  entropy.insert(entropy.end(), spawn_words.begin(), spawn_words.end());

  // mix_entropy
  uint32_t hash_const = kInitA;
  const size_t n = pool_.size();
  for (size_t i = 0; i < n; ++i) pool_[i] = hashmix(i < entropy.size() ? entropy[i] : 0u, hash_const);
  for (size_t src = 0; src < n; ++src)
    for (size_t dst = 0; dst < n; ++dst)
      if (src != dst) pool_[dst] = mix(pool_[dst], hashmix(pool_[src], hash_const));
  for (size_t src = n; src < entropy.size(); ++src)
    for (size_t dst = 0; dst < n; ++dst) pool_[dst] = mix(pool_[dst], hashmix(entropy[src], hash_const));
}

std::vector<uint32_t> SeedSequence::generate_state(size_t n_words) const {
  std::vector<uint32_t> out(n_words);
  uint32_t hash_const = kInitB;
  for (size_t i = 0; i < n_words; ++i) {
    uint32_t v = pool_[i % pool_.size()];
    v ^= hash_const;
    hash_const *= kMultB;
    v *= hash_const;
    v ^= v >> kXShift;
    out[i] = v;
  }
  return out;
}

// ------------------------------------------------------------------ round

double py_round(double x, int ndigits) {
  if (!std::isfinite(x)) return x;
  // glibc's printf rounds the exact binary value correctly (ties to even in the default rounding
  // mode), like CPython's _Py_dg_dtoa mode 3; strtod then gives the nearest double, as
  // _Py_dg_strtod does.
  char buf[512];
  const int len = std::snprintf(buf, sizeof buf, "%.*f", ndigits, x);
  check_internal(len > 0 && size_t(len) < sizeof buf, "py_round: value out of range");
  const double r = std::strtod(buf, nullptr);
  return r == 0.0 ? std::copysign(0.0, x) : r;
}

// ------------------------------------------------------------------ BrownianTree

struct BrownianTree::Node {
  double start = 0, end = 0;
  Node* parent = nullptr;
  bool is_left = false;
  bool has_mid = false;
  double mid = 0;
  uint64_t spawn_key = 0;
  uint64_t depth = 0;
  uint32_t w_seed = 0;
  std::unique_ptr<Node> left, right;
  std::vector<float> w;  // increment over [start, end] while cached (always for the root)
};

BrownianTree::BrownianTree(double t0, double t1, const Shape& shape, uint64_t entropy, RngKind kind, double tol,
                           size_t pool_size, size_t cache_size)
    : shape_(shape),
      numel_(shape_numel(shape)),
      entropy_(entropy),
      kind_(kind),
      tol_(tol),
      pool_size_(pool_size),
      cache_size_(cache_size) {
  SD_CHECK_ARG(!(t0 > t1), "BrownianTree: t0 must not exceed t1");
  SD_CHECK_ARG(tol > 0, "BrownianTree: tol must be positive");
  if (cache_size_ == 0) {
    // Only speed depends on it: about 16 MiB of increments, at least torchsde's 45.
    const size_t bytes = std::max<size_t>(1, static_cast<size_t>(numel_) * sizeof(float));
    cache_size_ = std::clamp<size_t>((size_t(16) << 20) / bytes, 45, 4096);
  }
  // Two entries are written per computed node (it and its sibling).
  cache_size_ = std::max<size_t>(cache_size_, 2);
  ndigits_ = -int(std::log10(tol));  // -int(math.log10(tol))
  root_.reset(make_node(t0, t1, nullptr, false));
  last_ = root_.get();
  const std::vector<uint32_t> seeds = SeedSequence(entropy, {}, pool_size).generate_state(3);
  // W = randn(initial_W_seed) * math.sqrt(t1 - t0), with the unrounded times.
  root_->w = randn(seeds[0]);
  const float scale = float(std::sqrt(t1 - t0));
  for (float& v : root_->w) v = v * scale;
}

// The depth is bounded (about log2((t1 - t0) / tol)), so unique_ptr's recursive teardown is fine.
BrownianTree::~BrownianTree() = default;

double BrownianTree::round(double x) const { return py_round(x, ndigits_); }

BrownianTree::Node* BrownianTree::make_node(double start, double end, Node* parent, bool is_left) {
  auto* n = new Node;
  n->start = round(start);
  n->end = round(end);
  n->parent = parent;
  n->is_left = is_left;
  ++num_nodes_;
  return n;
}

std::vector<float> BrownianTree::randn(uint32_t seed) const {
  return make_generator(kind_, seed)->randn(shape_).to_vector();
}

void BrownianTree::split_exact(Node* n, double midway) {
  n->mid = round(midway);
  n->has_mid = true;
  if (n->parent) {
    check_internal(n->parent->spawn_key < (uint64_t(1) << 62), "BrownianTree: tree too deep");
    n->spawn_key = 2 * n->parent->spawn_key + (n->is_left ? 0 : 1);
    n->depth = n->parent->depth + 1;
  } else {
    n->spawn_key = 0;
    n->depth = 0;
  }
  n->w_seed = SeedSequence(entropy_, {n->spawn_key, n->depth}, pool_size_).generate_state(4)[0];
  n->left.reset(make_node(n->start, midway, n, true));
  n->right.reset(make_node(midway, n->end, n, false));
}

void BrownianTree::split(Node* n, double midway, int guard) {
  // halfway_tree: split in the middle, then keep splitting the side that holds `midway`.
  check_internal(guard < 512, "BrownianTree: split does not terminate");
  split_exact(n, 0.5 * (n->end + n->start));
  if (midway > n->mid)
    split(n->right.get(), midway, guard + 1);
  else if (midway < n->mid)
    split(n->left.get(), midway, guard + 1);
}

void BrownianTree::loc(Node* n, double ta, double tb, std::vector<Node*>& out, int guard) {
  check_internal(guard < 512, "BrownianTree: search does not terminate");
  for (int it = 0;; ++it) {
    check_internal(it < 4096, "BrownianTree: search does not terminate");
    if (ta < n->start || tb > n->end) {
      check_internal(n->parent != nullptr, "BrownianTree: query outside the tree");
      n = n->parent;
      continue;
    }
    if (ta == n->start && tb == n->end) {
      out.push_back(n);
      return;
    }
    if (!n->has_mid) {
      if (ta == n->start) {
        split(n, tb, 0);
        n = n->left.get();
      } else {
        split(n, ta, 0);
        n = n->right.get();
      }
      continue;
    }
    if (tb <= n->mid) {
      n = n->left.get();
      continue;
    }
    if (ta >= n->mid) {
      n = n->right.get();
      continue;
    }
    loc(n->left.get(), ta, n->mid, out, guard + 1);
    ta = n->mid;
    n = n->right.get();
  }
}

const std::vector<float>& BrownianTree::increment_of(Node* n) {
  if (!n->w.empty()) return n->w;  // the root, or cached
  Node* p = n->parent;
  const std::vector<float>& wp = increment_of(p);
  const double h_reciprocal = 1 / (p->end - p->start);
  const double left_diff = p->mid - p->start;
  const double right_diff = p->end - p->mid;
  // mean = left_diff * W * h_reciprocal; var = left_diff * right_diff * h_reciprocal
  // left_W = mean + math.sqrt(var) * noise; right: W - left_W. Python floats enter torch's
  // float32 kernels as float32 scalars. Both children come from the same draw, so we fill in
  // both (torchsde computes each on demand; the values are the same).
  const float f_left = float(left_diff), f_hrec = float(h_reciprocal);
  const float f_std = float(std::sqrt(left_diff * right_diff * h_reciprocal));
  const std::vector<float> noise = randn(p->w_seed);
  std::vector<float> left(static_cast<size_t>(numel_)), right(static_cast<size_t>(numel_));
  for (size_t k = 0; k < left.size(); ++k) {
    const float mean = f_left * wp[k] * f_hrec;
    left[k] = mean + f_std * noise[k];
    right[k] = wp[k] - left[k];
  }
  Node* other = n->is_left ? p->right.get() : p->left.get();
  if (other->w.empty()) remember(other, n->is_left ? std::move(right) : std::move(left));
  remember(n, n->is_left ? std::move(left) : std::move(right));
  return n->w;
}

void BrownianTree::remember(Node* n, std::vector<float> w) {
  while (cache_.size() >= cache_size_) {
    cache_.front()->w = std::vector<float>();
    cache_.pop_front();
  }
  n->w = std::move(w);
  cache_.push_back(n);
}

std::vector<float> BrownianTree::increment(double ta, double tb) {
  const double start = root_->start, end = root_->end;
  if (ta < start) ta = start;
  if (tb < start) tb = start;
  if (ta > end) ta = end;
  if (tb > end) tb = end;
  SD_CHECK_ARG(!(ta > tb), "BrownianTree: query times must satisfy ta <= tb");
  if (ta == tb) return std::vector<float>(static_cast<size_t>(numel_), 0.0f);
  std::vector<Node*> intervals;
  loc(last_, round(ta), round(tb), intervals, 0);
  last_ = intervals.back();
  std::vector<float> w = increment_of(intervals[0]);
  for (size_t i = 1; i < intervals.size(); ++i) {
    const std::vector<float>& wi = increment_of(intervals[i]);
    for (size_t k = 0; k < w.size(); ++k) w[k] = w[k] + wi[k];
  }
  return w;
}

// ------------------------------------------------------------------ noise sampler

namespace {
struct Sorted {
  float t0, t1, sign;
};
// BatchedBrownianTree.sort
Sorted sort_pair(float a, float b) { return a < b ? Sorted{a, b, 1.0f} : Sorted{b, a, -1.0f}; }
}  // namespace

BrownianTreeNoiseSampler::BrownianTreeNoiseSampler(float sigma_min, float sigma_max, const Shape& shape, uint64_t seed,
                                                   RngKind kind)
    : tree_(double(sort_pair(sigma_min, sigma_max).t0), double(sort_pair(sigma_min, sigma_max).t1), shape, seed, kind),
      sign_(sort_pair(sigma_min, sigma_max).sign) {}

std::vector<float> BrownianTreeNoiseSampler::operator()(float sigma, float sigma_next) {
  const Sorted s = sort_pair(sigma, sigma_next);
  std::vector<float> w = tree_.increment(double(s.t0), double(s.t1));
  const float sign = sign_ * s.sign;
  // (t1 - t0).abs().sqrt() on the unsorted float32 pair. torch's CPU float sqrt (MKL VML) is not
  // always correctly rounded; std::sqrt is, so the two may differ by an ulp here.
  const float denom = std::sqrt(std::abs(sigma_next - sigma));
  for (float& v : w) v = (v * sign) / denom;
  return w;
}

}  // namespace sdserve
