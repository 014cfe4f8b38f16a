// Bit-level reimplementations of the noise torch draws; see rng.h and docs/RNG.md.
//
// Every float operation below mirrors one operation of the reference, in the same order and
// precision. The compiler must not fuse a*b+c into one FMA on its own (GCC does so by default
// with -march=native), or results drift by an ulp; where the reference itself fuses, we call
// std::fma explicitly.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include "pipeline/rng.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <optional>
#include <string>
#include <vector>

namespace sdserve {
namespace {

// ---------------------------------------------------------------- mt19937, as ATen has it
// (at::mt19937: the reference MT19937 with Cokus' state update; seeded with the low 32 bits).
class Mt19937 {
 public:
  explicit Mt19937(uint64_t seed) {
    state_[0] = uint32_t(seed & 0xffffffffu);
    for (int j = 1; j < kN; ++j) state_[j] = 1812433253u * (state_[j - 1] ^ (state_[j - 1] >> 30)) + uint32_t(j);
    left_ = 1;
    next_ = 0;
  }

  uint32_t operator()() {
    if (--left_ == 0) next_state();
    uint32_t y = state_[next_++];
    y ^= (y >> 11);
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= (y >> 18);
    return y;
  }

 private:
  static constexpr int kN = 624, kM = 397;
  static uint32_t twist(uint32_t u, uint32_t v) {
    const uint32_t mixed = (u & 0x80000000u) | (v & 0x7fffffffu);
    return (mixed >> 1) ^ ((v & 1u) ? 0x9908b0dfu : 0u);
  }
  void next_state() {
    left_ = kN;
    next_ = 0;
    int i = 0;
    for (; i < kN - kM; ++i) state_[i] = state_[i + kM] ^ twist(state_[i], state_[i + 1]);
    for (; i < kN - 1; ++i) state_[i] = state_[i + kM - kN] ^ twist(state_[i], state_[i + 1]);
    state_[kN - 1] = state_[kM - 1] ^ twist(state_[kN - 1], state_[0]);
  }

  std::array<uint32_t, kN> state_;
  int left_ = 1;
  int next_ = 0;
};

// ------------------------------------------------- avx_mathfun (Pommier/cephes), one lane
// ATen's AVX2 normal kernel evaluates log256_ps and sincos256_ps from avx_mathfun.h. These
// are the same operations on one float. torch's binary is built by GCC with -mfma and
// contracts every multiply whose only use is an add/sub into an FMA; kFma mirrors that.
float bits_to_float(uint32_t u) { return std::bit_cast<float>(u); }
uint32_t float_to_bits(float f) { return std::bit_cast<uint32_t>(f); }

template <bool kFma>
inline float madd(float a, float b, float c) {  // a*b + c
  if constexpr (kFma) return std::fma(a, b, c);
  float p = a * b;
  return p + c;
}

template <bool kFma>
float cephes_logf(float x) {
  const bool invalid = x <= 0.0f;
  const float min_norm = bits_to_float(0x00800000u);
  x = x > min_norm ? x : min_norm;  // _mm256_max_ps(x, min_norm)
  int32_t imm0 = int32_t(float_to_bits(x) >> 23);
  x = bits_to_float((float_to_bits(x) & ~0x7f800000u) | float_to_bits(0.5f));
  imm0 -= 0x7f;
  float e = float(imm0);
  e = e + 1.0f;
  const bool mask = x < float(0.707106781186547524);
  const float tmp0 = mask ? x : 0.0f;
  x = x - 1.0f;
  e = e - (mask ? 1.0f : 0.0f);
  x = x + tmp0;
  const float z = x * x;
  float y = float(7.0376836292E-2);
  y = madd<kFma>(y, x, float(-1.1514610310E-1));
  y = madd<kFma>(y, x, float(1.1676998740E-1));
  y = madd<kFma>(y, x, float(-1.2420140846E-1));
  y = madd<kFma>(y, x, float(1.4249322787E-1));
  y = madd<kFma>(y, x, float(-1.6668057665E-1));
  y = madd<kFma>(y, x, float(2.0000714765E-1));
  y = madd<kFma>(y, x, float(-2.4999993993E-1));
  y = madd<kFma>(y, x, float(3.3333331174E-1));
  y = y * x;
  // y = y*z + e*q1: GCC fuses the first multiply it meets (y*z) and keeps e*q1 separate.
  const float eq1 = e * float(-2.12194440e-4);
  y = madd<kFma>(y, z, eq1);
  y = madd<kFma>(-z, 0.5f, y);  // y - z*0.5
  const float xy = x + y;
  x = madd<kFma>(e, 0.693359375f, xy);
  if (invalid) x = bits_to_float(float_to_bits(x) | 0xffffffffu);
  return x;
}

template <bool kFma>
void cephes_sincosf(float x, float* s, float* c) {
  uint32_t sign_bit_sin = float_to_bits(x) & 0x80000000u;
  x = bits_to_float(float_to_bits(x) & 0x7fffffffu);
  float y = x * float(1.27323954473516);
  int32_t imm2 = int32_t(y);  // cvttps: truncation
  imm2 = (imm2 + 1) & ~1;
  y = float(imm2);
  int32_t imm4 = imm2;
  const uint32_t swap_sign_bit_sin = uint32_t(imm2 & 4) << 29;
  const bool poly_mask = (imm2 & 2) == 0;
  x = madd<kFma>(y, float(-0.78515625), x);
  x = madd<kFma>(y, float(-2.4187564849853515625e-4), x);
  x = madd<kFma>(y, float(-3.77489497744594108e-8), x);
  imm4 = imm4 - 2;
  const uint32_t sign_bit_cos = uint32_t(~imm4 & 4) << 29;
  sign_bit_sin ^= swap_sign_bit_sin;

  const float z = x * x;
  float yc = float(2.443315711809948E-005);
  yc = madd<kFma>(yc, z, float(-1.388731625493765E-003));
  yc = madd<kFma>(yc, z, float(4.166664568298827E-002));
  yc = yc * z;
  // yc*z - z*0.5: the first multiply met (yc*z) is fused.
  const float half_z = z * 0.5f;
  yc = madd<kFma>(yc, z, -half_z);
  yc = yc + 1.0f;

  float ys = float(-1.9515295891E-4);
  ys = madd<kFma>(ys, z, float(8.3321608736E-3));
  ys = madd<kFma>(ys, z, float(-1.6666654611E-1));
  ys = ys * z;
  ys = madd<kFma>(ys, x, x);

  // Select with and/andnot and recombine with adds, as the vector code does (x + 0 and
  // x - x matter for the sign of zero only, kept for exactness).
  const float ysin2 = poly_mask ? ys : 0.0f;
  const float ysin1 = poly_mask ? 0.0f : yc;
  ys = ys - ysin2;
  yc = yc - ysin1;
  const float sin_v = ysin1 + ysin2;
  const float cos_v = yc + ys;
  *s = bits_to_float(float_to_bits(sin_v) ^ sign_bit_sin);
  *c = bits_to_float(float_to_bits(cos_v) ^ sign_bit_cos);
}

// ATen NormalFill16<float> for the AVX2 capability: data[0..16) holds uniforms in [0, 1).
template <bool kFma>
void normal_fill_16_avx2(float* d) {
  const float two_pi = float(2.0 * 3.14159265358979323846);
  for (int j = 0; j < 8; ++j) {
    const float u1 = 1.0f - d[j];
    const float u2 = d[j + 8];
    const float radius = std::sqrt(-2.0f * cephes_logf<kFma>(u1));
    const float theta = two_pi * u2;
    float s, c;
    cephes_sincosf<kFma>(theta, &s, &c);
    const float n1 = radius * c;
    const float n2 = radius * s;
    d[j] = std::fma(n1, 1.0f, 0.0f);  // _mm256_fmadd_ps(n, std=1, mean=0): -0 becomes +0
    d[j + 8] = std::fma(n2, 1.0f, 0.0f);
  }
}

// ATen's generic NormalFill16 (DEFAULT / AVX512 capabilities): libm in float, theta via double.
void normal_fill_16_scalar(float* d) {
  for (int j = 0; j < 8; ++j) {
    const float u1 = 1.0f - d[j];
    const float u2 = d[j + 8];
    const float radius = std::sqrt(-2.0f * std::log(u1));
    const float theta = float(2.0 * 3.14159265358979323846 * double(u2));
    d[j] = std::fma(radius * std::cos(theta), 1.0f, 0.0f);
    d[j + 8] = std::fma(radius * std::sin(theta), 1.0f, 0.0f);
  }
}

// Below these sizes a parallel region costs more than it saves.
constexpr int64_t kParallelBlocks = 256;
constexpr int64_t kParallelElements = 4096;

class CpuGenerator final : public NoiseGenerator {
 public:
  CpuGenerator(uint64_t seed, CpuNormalKernel kernel) : mt_(seed), kernel_(kernel) {}

  Tensor randn(const Shape& shape) override {
    Tensor out = Tensor::empty(shape, DType::F32);
    const int64_t n = out.numel();
    float* d = out.data<float>();
    if (n >= 16) {
      for (int64_t i = 0; i < n; ++i) d[i] = uniform_f32();
      // Blocks are independent: the result does not depend on the thread count.
      const int64_t blocks = n / 16;
#pragma omp parallel for schedule(static) if (blocks >= kParallelBlocks)
      for (int64_t b = 0; b < blocks; ++b) fill16(d + b * 16);
      if (n % 16 != 0) {  // torch redraws the last 16 uniforms and recomputes them
        float* tail = d + n - 16;
        for (int i = 0; i < 16; ++i) tail[i] = uniform_f32();
        fill16(tail);
      }
    } else {
      for (int64_t i = 0; i < n; ++i) d[i] = float(normal_f64());
    }
    return out;
  }

 private:
  // at::uniform_real_distribution<float>(0, 1): the low 24 bits of one draw, times 2^-24.
  float uniform_f32() { return float(mt_() & 0xffffffu) * (1.0f / 16777216.0f); }
  // at::uniform_real_distribution<double>(0, 1): random64() = (first << 32) | second; low 53 bits.
  double uniform_f64() {
    const uint64_t hi = mt_();
    const uint64_t lo = mt_();
    const uint64_t r = (hi << 32) | lo;
    return double(r & ((uint64_t(1) << 53) - 1)) * (1.0 / 9007199254740992.0);
  }
  // at::normal_distribution<double>: Box-Muller pairs with the second value cached in the
  // generator (and kept across randn calls, as CPUGeneratorImpl does).
  double normal_f64() {
    double ret;
    if (cached_) {
      ret = *cached_;
      cached_.reset();
    } else {
      const double u1 = uniform_f64();
      const double u2 = uniform_f64();
      const double r = std::sqrt(-2.0 * std::log1p(-u2));
      const double theta = 2.0 * 3.14159265358979323846 * u1;
      cached_ = r * std::sin(theta);
      ret = r * std::cos(theta);
    }
    return ret * 1.0 + 0.0;  // transformation::normal(ret, mean=0, std=1)
  }
  void fill16(float* d) const {
    switch (kernel_) {
      case CpuNormalKernel::Avx2:
        normal_fill_16_avx2<true>(d);
        break;
      case CpuNormalKernel::Scalar:
        normal_fill_16_scalar(d);
        break;
    }
  }

  Mt19937 mt_;
  CpuNormalKernel kernel_;
  std::optional<double> cached_;
};

// ---------------------------------------------------------------- Philox4x32-10 (curand)
struct U32x4 {
  uint32_t v[4];
};

inline U32x4 philox4x32_10(U32x4 ctr, uint32_t k0, uint32_t k1) {
  for (int round = 0; round < 10; ++round) {
    if (round > 0) {
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    const uint64_t p0 = uint64_t(0xD2511F53u) * ctr.v[0];
    const uint64_t p1 = uint64_t(0xCD9E8D57u) * ctr.v[2];
    ctr = {{uint32_t(p1 >> 32) ^ ctr.v[1] ^ k0, uint32_t(p1), uint32_t(p0 >> 32) ^ ctr.v[3] ^ k1, uint32_t(p0)}};
  }
  return ctr;
}

// curand's _curand_box_muller as A1111 evaluates it: the float32 constants of curand_globals.h,
// everything else in double (numpy promotes uint32 * float32 to float64), rounded at the end.
// component 0 is the sine value (result.x), 1 the cosine value (result.y).
inline float box_muller(uint32_t x, uint32_t y, int component) {
  static const float kInv = 2.3283064e-10f;
  static const float kInv2Pi = float(2.3283064e-10 * 6.2831855);
  const double u = double(x) * double(kInv) + double(kInv / 2);
  const double v = double(y) * double(kInv2Pi) + double(kInv2Pi / 2);
  const double s = std::sqrt(-2.0 * std::log(u));
  return float(s * (component == 0 ? std::sin(v) : std::cos(v)));
}

class CudaGenerator final : public NoiseGenerator {
 public:
  CudaGenerator(uint64_t seed, int64_t max_threads) : seed_(seed), max_threads_(max_threads) {}

  Tensor randn(const Shape& shape) override {
    Tensor out = Tensor::empty(shape, DType::F32);
    const int64_t n = out.numel();
    float* d = out.data<float>();
    if (n == 0) return out;  // torch launches nothing and leaves the offset alone
    const uint32_t k0 = uint32_t(seed_), k1 = uint32_t(seed_ >> 32);

    // calc_execution_policy: blocks of 256, grid capped at the device's resident blocks.
    constexpr int64_t kBlock = 256, kUnroll = 4;
    int64_t threads = (n + kBlock - 1) / kBlock * kBlock;
    if (max_threads_ > 0) threads = std::min(threads, std::max<int64_t>(kBlock, max_threads_ / kBlock * kBlock));
    const int64_t rounds = (n - 1) / (threads * kUnroll) + 1;  // curand4 calls per thread
    SD_CHECK_ARG(threads <= (int64_t(1) << 32), "cuda rng: tensor too large");

    // Thread t starts at counter (offset, t) (curand_init: subsequence t, skipahead 4*offset)
    // and its r-th curand4 call gives elements r*4T + t + {0, T, 2T, 3T}.
#pragma omp parallel for schedule(static) if (n >= kParallelElements)
    for (int64_t t = 0; t < threads; ++t) {
      for (int64_t r = 0; r < rounds; ++r) {
        const uint64_t c = offset_ + uint64_t(r);
        const U32x4 ctr{{uint32_t(c), uint32_t(c >> 32), uint32_t(t), uint32_t(uint64_t(t) >> 32)}};
        const int64_t base = r * kUnroll * threads + t;
        if (base >= n) break;
        const U32x4 o = philox4x32_10(ctr, k0, k1);
        for (int ii = 0; ii < kUnroll; ++ii) {
          const int64_t li = base + ii * threads;
          if (li >= n) break;
          d[li] = box_muller(o.v[(ii / 2) * 2], o.v[(ii / 2) * 2 + 1], ii % 2);
        }
      }
    }
    offset_ += uint64_t(rounds);  // philox_offset_per_thread grows by 4 * rounds
    return out;
  }

 private:
  uint64_t seed_;
  int64_t max_threads_;
  uint64_t offset_ = 0;  // in curand4 calls (torch's philox offset / 4)
};

}  // namespace

std::unique_ptr<NoiseGenerator> make_cpu_generator(uint64_t seed, CpuNormalKernel kernel) {
  return std::make_unique<CpuGenerator>(seed, kernel);
}

std::unique_ptr<NoiseGenerator> make_cuda_generator(uint64_t seed, int64_t max_resident_threads) {
  SD_CHECK_ARG(max_resident_threads >= 0, "max_resident_threads must be >= 0");
  return std::make_unique<CudaGenerator>(seed, max_resident_threads);
}

RngKind parse_rng(std::string_view s) {
  if (s == "cpu") return RngKind::CPU;
  if (s == "cuda") return RngKind::CUDA;
  throw InvalidArgument("rng must be \"cpu\" or \"cuda\", got \"" + std::string(s) + "\"");
}

const char* rng_name(RngKind k) { return k == RngKind::CPU ? "cpu" : "cuda"; }

std::unique_ptr<NoiseGenerator> make_generator(RngKind kind, uint64_t seed) {
  return kind == RngKind::CPU ? make_cpu_generator(seed) : make_cuda_generator(seed);
}

}  // namespace sdserve
