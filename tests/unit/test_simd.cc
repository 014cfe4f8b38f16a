// The CPU kernels with hand-written AVX2 paths (attention, GELU/SiLU, GEGLU, group norm) against
// double-precision loops, once with the AVX2 code allowed and once forced onto the portable
// loops, so both stay correct whatever CPU runs the tests. On a CPU without AVX2 both
// instances exercise the portable loops.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <tuple>
#include <vector>

#include "cpu/simd.h"
#include "ops/activation.h"
#include "ops/attention.h"
#include "ops/group_norm.h"
#include "test_util.h"

namespace sdserve::test {
namespace {

class SimdPath : public testing::TestWithParam<bool> {
 protected:
  void SetUp() override { cpu::simd_allowed().store(GetParam()); }
  void TearDown() override { cpu::simd_allowed().store(true); }
  static Tensor make(const std::vector<float>& v, const Shape& s) { return Tensor::from_vector(v, s, DType::F32); }
  static void near(const std::vector<float>& got, const std::vector<double>& want, double atol, double rtol,
                   const std::string& what) {
    ASSERT_EQ(got.size(), want.size()) << what;
    for (size_t i = 0; i < got.size(); ++i)
      ASSERT_NEAR(got[i], want[i], atol + rtol * std::abs(want[i])) << what << " at " << i;
  }
};

double gelu(double v) { return 0.5 * v * (1 + std::erf(v / std::sqrt(2.0))); }

TEST_P(SimdPath, GeluAndSiluMatchReference) {
  // Lengths with and without an 8-wide tail; values out to where exp saturates.
  for (int n : {1, 7, 8, 1003}) {
    auto xv = random_values(size_t(n), 11 + uint32_t(n), -12.f, 12.f);
    if (n == 1003) xv[0] = -100.f, xv[1] = 100.f, xv[2] = 0.f;
    const Tensor x = make(xv, {n});
    std::vector<double> g(xv.size()), s(xv.size());
    for (size_t i = 0; i < xv.size(); ++i) g[i] = gelu(xv[i]), s[i] = xv[i] / (1 + std::exp(-double(xv[i])));
    near(ops::activation(x, ops::Activation::GELU).to_vector(), g, 2e-6, 1e-6, "gelu n=" + std::to_string(n));
    near(ops::activation(x, ops::Activation::SiLU).to_vector(), s, 1e-6, 1e-6, "silu n=" + std::to_string(n));
  }
}

TEST_P(SimdPath, GegluMatchesReference) {
  for (auto [rows, inner] : {std::tuple{1, 1}, {3, 5}, {4, 8}, {5, 37}}) {
    const auto xv = random_values(size_t(rows * 2 * inner), 21, -5.f, 5.f);
    std::vector<double> want(size_t(rows * inner));
    for (int r = 0; r < rows; ++r)
      for (int i = 0; i < inner; ++i)
        want[size_t(r * inner + i)] =
            double(xv[size_t(r * 2 * inner + i)]) * gelu(xv[size_t(r * 2 * inner + inner + i)]);
    const Tensor y = ops::geglu(make(xv, {rows, 2 * inner}));
    EXPECT_EQ(y.shape(), (Shape{rows, inner}));
    near(y.to_vector(), want, 1e-5, 1e-6, "geglu " + std::to_string(rows) + "x" + std::to_string(inner));
  }
  EXPECT_THROW(ops::geglu(Tensor::zeros({2, 3}, DType::F32)), InvalidArgument);
}

TEST_P(SimdPath, GroupNormMatchesReference) {
  // hw below, at and past 8 lanes and past the 2048-value summation block; an offset mean so
  // the two-pass variance matters; with and without affine parameters and SiLU.
  struct Case {
    int n, c, hw, groups;
    bool affine, silu;
  };
  for (const Case& k : {Case{1, 4, 3, 2, true, false}, Case{2, 8, 13, 4, true, true}, Case{1, 6, 64, 3, false, true},
                        Case{2, 32, 1031, 8, true, true}}) {
    auto xv = random_values(size_t(k.n * k.c * k.hw), 31, -1.f, 1.f);
    for (float& v : xv) v += 3.f;
    const auto gv = random_values(size_t(k.c), 32, 0.5f, 1.5f), bv = random_values(size_t(k.c), 33);
    std::vector<double> want(xv.size());
    const int cg = k.c / k.groups;
    for (int b = 0; b < k.n; ++b)
      for (int g = 0; g < k.groups; ++g) {
        const size_t base = size_t((b * k.c + g * cg) * k.hw), len = size_t(cg * k.hw);
        double mean = 0, var = 0;
        for (size_t i = 0; i < len; ++i) mean += xv[base + i];
        mean /= double(len);
        for (size_t i = 0; i < len; ++i) var += (xv[base + i] - mean) * (xv[base + i] - mean);
        var /= double(len);
        for (size_t i = 0; i < len; ++i) {
          const int ch = g * cg + int(i) / k.hw;
          double v = (xv[base + i] - mean) / std::sqrt(var + 1e-5);
          if (k.affine) v = v * gv[size_t(ch)] + bv[size_t(ch)];
          if (k.silu) v = v / (1 + std::exp(-v));
          want[base + i] = v;
        }
      }
    const Tensor x = make(xv, {k.n, k.c, k.hw});
    const Tensor gamma = k.affine ? make(gv, {k.c}) : Tensor(), beta = k.affine ? make(bv, {k.c}) : Tensor();
    near(ops::group_norm(x, k.groups, gamma, beta, 1e-5f, k.silu).to_vector(), want, 2e-5, 1e-5,
         "group_norm c=" + std::to_string(k.c) + " hw=" + std::to_string(k.hw));
  }
}

TEST_P(SimdPath, AttentionMatchesReference) {
  for (auto [Tq, Tk, d, dv, causal] :
       {std::tuple{5, 5, 3, 3, true}, {33, 77, 40, 40, false}, {70, 70, 8, 12, true}, {9, 530, 16, 9, false}}) {
    const int B = 1, H = 2;
    const auto qv = random_values(size_t(B * H * Tq * d), 41), kv = random_values(size_t(B * H * Tk * d), 42),
               vv = random_values(size_t(B * H * Tk * dv), 43);
    const auto want = attention_reference(qv, kv, vv, B * H, Tq, Tk, d, dv, causal);
    const Tensor o = ops::attention(make(qv, {B, H, Tq, d}), make(kv, {B, H, Tk, d}), make(vv, {B, H, Tk, dv}), causal);
    near(o.to_vector(), want, 2e-6, 1e-5, "attention Tq=" + std::to_string(Tq) + " Tk=" + std::to_string(Tk));
  }
}

INSTANTIATE_TEST_SUITE_P(Cpu, SimdPath, testing::Values(true, false), [](const testing::TestParamInfo<bool>& i) {
  return std::string(i.param ? "avx2" : "portable");
});

}  // namespace
}  // namespace sdserve::test
