// conv2d against a double-precision reference, through each CPU path: oneDNN direct (or
// im2col + GEMM without oneDNN) and Winograd F(4x4, 3x3) forced on every 3x3 stride-1 layer.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <tuple>
#include <vector>

#include "cpu/conv.h"
#include "ops/conv2d.h"
#include "test_util.h"

namespace sdserve::test {
namespace {

struct Case {
  int n, c, h, w, o, k, stride, pt, pl, pb, pr;
};

std::string case_name(const Case& s) {
  char buf[128];
  std::snprintf(buf, sizeof buf, "n%dc%dh%dw%do%dk%ds%dp%d%d%d%d", s.n, s.c, s.h, s.w, s.o, s.k, s.stride, s.pt, s.pl,
                s.pb, s.pr);
  return buf;
}

std::vector<double> reference(const Case& s, const std::vector<float>& x, const std::vector<float>& w,
                              const std::vector<float>& b) {
  const int oh = (s.h + s.pt + s.pb - s.k) / s.stride + 1, ow = (s.w + s.pl + s.pr - s.k) / s.stride + 1;
  std::vector<double> y(size_t(s.n) * s.o * oh * ow);
  for (int n = 0; n < s.n; ++n)
    for (int o = 0; o < s.o; ++o)
      for (int oy = 0; oy < oh; ++oy)
        for (int ox = 0; ox < ow; ++ox) {
          double acc = b[size_t(o)];
          for (int c = 0; c < s.c; ++c)
            for (int ky = 0; ky < s.k; ++ky)
              for (int kx = 0; kx < s.k; ++kx) {
                const int iy = oy * s.stride - s.pt + ky, ix = ox * s.stride - s.pl + kx;
                if (iy < 0 || iy >= s.h || ix < 0 || ix >= s.w) continue;
                acc += double(x[size_t(((n * s.c + c) * s.h + iy) * s.w + ix)]) *
                       w[size_t(((o * s.c + c) * s.k + ky) * s.k + kx)];
              }
          y[size_t(((n * s.o + o) * oh + oy) * ow + ox)] = acc;
        }
  return y;
}

class ConvPath : public testing::TestWithParam<cpu::WinogradMode> {
 protected:
  void SetUp() override {
    saved_ = cpu::winograd_mode();
    cpu::set_winograd_mode(GetParam());
  }
  void TearDown() override { cpu::set_winograd_mode(saved_); }
  cpu::WinogradMode saved_ = cpu::WinogradMode::Auto;
};

TEST_P(ConvPath, MatchesDoubleReference) {
  // Odd sizes (partial 4x4 tiles), channel counts that are not multiples of 8, asymmetric and
  // zero padding, stride 2 and 1x1 layers (which never take the Winograd path).
  const std::vector<Case> cases = {{1, 1, 1, 1, 1, 3, 1, 1, 1, 1, 1},    {2, 3, 5, 7, 4, 3, 1, 1, 1, 1, 1},
                                   {1, 16, 9, 13, 24, 3, 1, 1, 1, 1, 1}, {2, 17, 8, 8, 19, 3, 1, 0, 0, 0, 0},
                                   {1, 20, 11, 6, 9, 3, 1, 2, 0, 1, 2},  {1, 33, 17, 18, 40, 3, 1, 1, 1, 1, 1},
                                   {2, 12, 10, 9, 8, 3, 2, 1, 1, 1, 1},  {1, 12, 10, 9, 8, 3, 2, 0, 0, 1, 1},
                                   {2, 24, 7, 9, 16, 1, 1, 0, 0, 0, 0},  {1, 64, 32, 30, 64, 3, 1, 1, 1, 1, 1}};
  uint32_t seed = 100;
  for (const Case& s : cases) {
    const auto xv = random_values(size_t(s.n) * s.c * s.h * s.w, seed++);
    const auto wv = random_values(size_t(s.o) * s.c * s.k * s.k, seed++, -0.5f, 0.5f);
    const auto bv = random_values(size_t(s.o), seed++);
    const Tensor x = Tensor::from_vector(xv, {s.n, s.c, s.h, s.w}, DType::F32);
    const Tensor w = Tensor::from_vector(wv, {s.o, s.c, s.k, s.k}, DType::F32);
    const Tensor b = Tensor::from_vector(bv, {s.o}, DType::F32);
    ops::Conv2dOptions opt;
    opt.stride = s.stride;
    opt.pad_t = s.pt, opt.pad_l = s.pl, opt.pad_b = s.pb, opt.pad_r = s.pr;
    const std::vector<float> got = ops::conv2d(x, w, &b, opt).to_vector();
    const std::vector<double> want = reference(s, xv, wv, bv);
    ASSERT_EQ(got.size(), want.size()) << case_name(s);
    // Error grows with the number of terms summed (c * k * k); Winograd F(4x4, 3x3) loses a few
    // more bits than direct summation, so it gets a looser constant.
    const double terms = double(s.c) * s.k * s.k;
    const double tol = (GetParam() == cpu::WinogradMode::Always ? 2e-6 : 5e-7) * std::sqrt(terms) * 8;
    double worst = 0;
    for (size_t i = 0; i < got.size(); ++i) worst = std::max(worst, std::abs(double(got[i]) - want[i]));
    EXPECT_LE(worst, tol) << case_name(s);
  }
}

// Layers whose transformed weights exceed the workspace budget are done in output-channel
// chunks (in SD only 2560 -> 1280); a tiny budget forces that path here, tails included.
TEST(ConvWinograd, OutputChannelChunksMatchOneChunk) {
  const cpu::WinogradMode saved = cpu::winograd_mode();
  const int64_t saved_budget = cpu::winograd_weight_budget();
  cpu::set_winograd_mode(cpu::WinogradMode::Always);
  const int n = 2, c = 20, h = 13, w = 11, o = 37;
  const Tensor x = Tensor::from_vector(random_values(size_t(n * c * h * w), 7), {n, c, h, w}, DType::F32);
  const Tensor wt = Tensor::from_vector(random_values(size_t(o * c * 9), 8, -0.5f, 0.5f), {o, c, 3, 3}, DType::F32);
  const Tensor b = Tensor::from_vector(random_values(size_t(o), 9), {o}, DType::F32);
  const ops::Conv2dOptions opt = ops::Conv2dOptions::same(3);
  const std::vector<float> one = ops::conv2d(x, wt, &b, opt).to_vector();
  cpu::set_winograd_weight_budget(36 * 4 * c * 16);  // 16 output channels per chunk: 16 + 16 + 5
  const std::vector<float> chunked = ops::conv2d(x, wt, &b, opt).to_vector();
  cpu::set_winograd_weight_budget(saved_budget);
  cpu::set_winograd_mode(saved);
  ASSERT_EQ(one.size(), chunked.size());
  for (size_t i = 0; i < one.size(); ++i) ASSERT_NEAR(one[i], chunked[i], 1e-5) << i;
}

INSTANTIATE_TEST_SUITE_P(CpuPaths, ConvPath, testing::Values(cpu::WinogradMode::Off, cpu::WinogradMode::Always),
                         [](const testing::TestParamInfo<cpu::WinogradMode>& i) {
                           return std::string(i.param == cpu::WinogradMode::Off ? "direct" : "winograd");
                         });

// The Auto rule sends the big stride-1 3x3 layers of an SD UNet/VAE to Winograd and keeps the
// rest direct.
TEST(ConvWinograd, AutoRule) {
  cpu::Conv2dParams big{2, 320, 64, 64, 320, 3, 3, 1, 1, 1, 1, 1, 1};
  cpu::Conv2dParams strided = big, pointwise = big, tiny = big, small_c = big;
  strided.sh = strided.sw = 2;
  pointwise.kh = pointwise.kw = 1;
  pointwise.pt = pointwise.pl = pointwise.pb = pointwise.pr = 0;
  tiny.h = tiny.w = 8;
  tiny.n = 1;
  small_c.c = 4;
  const cpu::WinogradMode saved = cpu::winograd_mode();
  cpu::set_winograd_mode(cpu::WinogradMode::Auto);
  EXPECT_TRUE(cpu::winograd_applicable(big));
  cpu::Conv2dParams wide{2, 1280, 32, 32, 1280, 3, 3, 1, 1, 1, 1, 1, 1};  // output-channel chunks if needed
  EXPECT_TRUE(cpu::winograd_applicable(wide));
  EXPECT_FALSE(cpu::winograd_applicable(strided));
  EXPECT_FALSE(cpu::winograd_applicable(pointwise));
  EXPECT_FALSE(cpu::winograd_applicable(tiny));
  EXPECT_FALSE(cpu::winograd_applicable(small_c));
  cpu::set_winograd_mode(cpu::WinogradMode::Off);
  EXPECT_FALSE(cpu::winograd_applicable(big));
  cpu::set_winograd_mode(saved);
}

}  // namespace
}  // namespace sdserve::test
