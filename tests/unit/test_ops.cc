// Each op against a straightforward double-precision loop, for every device and
// dtype this build has. Inputs are rounded to the dtype first, so the reference
// sees exactly what the op sees.
#include <cmath>

#include "cpu/gemm.h"
#include "ops/activation.h"
#include "ops/add.h"
#include "ops/attention.h"
#include "ops/embedding.h"
#include "ops/layer_norm.h"
#include "ops/linear.h"
#include "ops/softmax.h"
#include "test_util.h"

namespace sdserve::test {
namespace {

class OpTest : public testing::TestWithParam<DeviceDType> {
 protected:
  void SetUp() override { SKIP_UNLESS_AVAILABLE(GetParam().device); }
  Tensor rand(const Shape& s, uint32_t seed, float lo = -1.f, float hi = 1.f) {
    return Tensor::from_vector(random_values(size_t(shape_numel(s)), seed, lo, hi), s, GetParam().dtype)
        .to(GetParam().device);
  }
  void check(const Tensor& got, const std::vector<double>& want, const std::string& what, double scale = 1.0) {
    EXPECT_EQ(got.dtype(), GetParam().dtype);
    EXPECT_EQ(got.device(), GetParam().device);
    expect_close(got.to_vector(), want, GetParam().atol * scale, GetParam().rtol, what);
  }
};

TEST_P(OpTest, LinearMatchesReference) {
  for (auto [rows, in, out] : {std::tuple{1, 1, 1}, {3, 5, 7}, {77, 64, 48}, {2, 130, 33}}) {
    const Tensor x = rand({rows, in}, 1), w = rand({out, in}, 2), b = rand({out}, 3);
    const auto xv = stored(x), wv = stored(w), bv = stored(b);
    std::vector<double> want(size_t(rows * out));
    for (int r = 0; r < rows; ++r)
      for (int o = 0; o < out; ++o) {
        double acc = bv[size_t(o)];
        for (int i = 0; i < in; ++i) acc += xv[size_t(r * in + i)] * wv[size_t(o * in + i)];
        want[size_t(r * out + o)] = acc;
      }
    check(ops::linear(x, w, &b), want, "linear", std::sqrt(double(in)));
  }
}

TEST_P(OpTest, LinearBatchedInputAndNoBias) {
  const Tensor x = rand({2, 3, 8}, 4), w = rand({5, 8}, 5);
  const Tensor y = ops::linear(x, w);
  EXPECT_EQ(y.shape(), (Shape{2, 3, 5}));
  const auto xv = stored(x), wv = stored(w);
  std::vector<double> want(30);
  for (int r = 0; r < 6; ++r)
    for (int o = 0; o < 5; ++o) {
      double acc = 0;
      for (int i = 0; i < 8; ++i) acc += xv[size_t(r * 8 + i)] * wv[size_t(o * 8 + i)];
      want[size_t(r * 5 + o)] = acc;
    }
  check(y, want, "linear no bias", 3);
}

TEST_P(OpTest, LayerNormMatchesReference) {
  for (int dim : {1, 7, 32, 768}) {
    const int rows = 5;
    const Tensor x = rand({rows, dim}, 10, -3.f, 5.f), g = rand({dim}, 11), b = rand({dim}, 12);
    const auto xv = stored(x), gv = stored(g), bv = stored(b);
    std::vector<double> want(size_t(rows * dim));
    for (int r = 0; r < rows; ++r) {
      double mean = 0, var = 0;
      for (int i = 0; i < dim; ++i) mean += xv[size_t(r * dim + i)];
      mean /= dim;
      for (int i = 0; i < dim; ++i) var += std::pow(xv[size_t(r * dim + i)] - mean, 2);
      var /= dim;
      for (int i = 0; i < dim; ++i)
        want[size_t(r * dim + i)] =
            (xv[size_t(r * dim + i)] - mean) / std::sqrt(var + 1e-5) * gv[size_t(i)] + bv[size_t(i)];
    }
    check(ops::layer_norm(x, g, b, 1e-5f), want, "layer_norm dim " + std::to_string(dim), 10);
  }
}

TEST_P(OpTest, SoftmaxMatchesReference) {
  for (int cols : {1, 3, 77, 1000}) {
    const int rows = 4;
    const Tensor x = rand({rows, cols}, 20, -20.f, 20.f);
    const auto xv = stored(x);
    std::vector<double> want(size_t(rows * cols));
    for (int r = 0; r < rows; ++r) {
      double mx = -INFINITY, sum = 0;
      for (int i = 0; i < cols; ++i) mx = std::max(mx, xv[size_t(r * cols + i)]);
      for (int i = 0; i < cols; ++i) sum += std::exp(xv[size_t(r * cols + i)] - mx);
      for (int i = 0; i < cols; ++i) want[size_t(r * cols + i)] = std::exp(xv[size_t(r * cols + i)] - mx) / sum;
    }
    check(ops::softmax(x), want, "softmax cols " + std::to_string(cols), 0.1);
  }
}

TEST_P(OpTest, ActivationsMatchReference) {
  const Tensor x = rand({1000}, 30, -6.f, 6.f);
  const auto xv = stored(x);
  struct Case {
    ops::Activation a;
    double (*f)(double);
  };
  const Case cases[] = {
      {ops::Activation::GELU, [](double v) { return 0.5 * v * (1 + std::erf(v / std::sqrt(2.0))); }},
      {ops::Activation::GELUTanh,
       [](double v) { return 0.5 * v * (1 + std::tanh(std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v))); }},
      {ops::Activation::QuickGELU, [](double v) { return v / (1 + std::exp(-1.702 * v)); }},
      {ops::Activation::SiLU, [](double v) { return v / (1 + std::exp(-v)); }},
  };
  for (const Case& c : cases) {
    std::vector<double> want(xv.size());
    for (size_t i = 0; i < xv.size(); ++i) want[i] = c.f(xv[i]);
    check(ops::activation(x, c.a), want, ops::activation_name(c.a), 6);
  }
}

TEST_P(OpTest, AddBroadcastsTrailingShape) {
  const Tensor a = rand({2, 3, 4}, 40), b = rand({3, 4}, 41), c = rand({2, 3, 4}, 42);
  const auto av = stored(a), bv = stored(b), cv = stored(c);
  std::vector<double> want(24), want2(24);
  for (size_t i = 0; i < 24; ++i) {
    want[i] = av[i] + bv[i % 12];
    want2[i] = av[i] + cv[i];
  }
  check(ops::add(a, b), want, "add broadcast");
  check(ops::add(a, c), want2, "add same shape");
  EXPECT_THROW(ops::add(a, rand({4, 3}, 43)), InvalidArgument);
}

TEST_P(OpTest, EmbeddingGathersRows) {
  const Tensor w = rand({10, 6}, 50);
  const Tensor ids = Tensor::from_ids({3, 0, 9, 3}, {2, 2});
  const Tensor y = ops::embedding(w, ids);
  EXPECT_EQ(y.shape(), (Shape{2, 2, 6}));
  const auto wv = stored(w);
  std::vector<double> want;
  for (int id : {3, 0, 9, 3})
    for (int j = 0; j < 6; ++j) want.push_back(wv[size_t(id * 6 + j)]);
  check(y, want, "embedding", 0);
  EXPECT_THROW(ops::embedding(w, Tensor::from_ids({10}, {1})), InvalidArgument);
  EXPECT_THROW(ops::embedding(w, Tensor::from_ids({-1}, {1})), InvalidArgument);
}

TEST_P(OpTest, AttentionCausalAndFullMatchReference) {
  // Includes query lengths past several 64-row query blocks and 256-key blocks.
  for (auto [B, H, T, d, causal] :
       {std::tuple{1, 1, 1, 4, true}, {2, 3, 77, 8, true}, {1, 2, 300, 16, false}, {1, 2, 300, 8, true}}) {
    const Tensor q = rand({B, H, T, d}, 60), k = rand({B, H, T, d}, 61), v = rand({B, H, T, d}, 62);
    const auto want = attention_reference(stored(q), stored(k), stored(v), B * H, T, T, d, d, causal);
    check(ops::attention(q, k, v, causal), want, "attention T=" + std::to_string(T), 2);
  }
}

TEST_P(OpTest, AttentionCrossShapesMatchReference) {
  // Tq != Tk, dv != d, odd sizes, key counts that are not a multiple of the 8-key panel and
  // span several 256-key blocks, query counts past one 64-row query block.
  for (auto [B, H, Tq, Tk, d, dv] : {std::tuple{1, 1, 3, 1, 1, 1},
                                     {2, 3, 10, 77, 8, 8},
                                     {1, 2, 70, 13, 5, 11},
                                     {1, 1, 37, 601, 40, 40},
                                     {2, 1, 9, 1030, 3, 17},
                                     {1, 2, 130, 64, 24, 33}}) {
    const Tensor q = rand({B, H, Tq, d}, 80), k = rand({B, H, Tk, d}, 81), v = rand({B, H, Tk, dv}, 82);
    const auto want = attention_reference(stored(q), stored(k), stored(v), B * H, Tq, Tk, d, dv, false);
    const Tensor got = ops::attention(q, k, v, false);
    EXPECT_EQ(got.shape(), (Shape{B, H, Tq, dv}));
    check(got, want, "attention Tq=" + std::to_string(Tq) + " Tk=" + std::to_string(Tk), 2);
  }
}

TEST_P(OpTest, AttentionAcceptsPermutedViews) {
  // A [B, T, H, d] projection permuted to [B, H, T, d] without a copy, as the text encoder does.
  const int B = 2, T = 5, H = 3, d = 4;
  const Tensor x = rand({B, T, H * d}, 70);
  const Tensor qv = x.view({B, T, H, d}).permute({0, 2, 1, 3});
  const Tensor got = ops::attention(qv, qv, qv, true);
  const Tensor ref = ops::attention(qv.contiguous(), qv.contiguous(), qv.contiguous(), true);
  expect_close(got.to_vector(), stored(ref), 0, 0, "permuted view");
}

INSTANTIATE_TEST_SUITE_P(AllDevices, OpTest, testing::ValuesIn(all_device_dtypes()), param_name);

TEST(OpShapes, LinearRejectsMismatch) {
  const Tensor x = Tensor::zeros({2, 3}, DType::F32), w = Tensor::zeros({4, 5}, DType::F32);
  EXPECT_THROW(ops::linear(x, w), InvalidArgument);
  const Tensor w2 = Tensor::zeros({4, 3}, DType::F32), b = Tensor::zeros({5}, DType::F32);
  EXPECT_THROW(ops::linear(x, w2, &b), InvalidArgument);
  EXPECT_THROW(ops::linear(x, Tensor::zeros({4, 3}, DType::F16)), InvalidArgument);
}

TEST(OpShapes, AttentionRejectsMismatch) {
  const Tensor q = Tensor::zeros({1, 2, 3, 4}, DType::F32);
  EXPECT_THROW(ops::attention(q, Tensor::zeros({1, 2, 3, 5}, DType::F32), q, false), InvalidArgument);
  EXPECT_THROW(
      ops::attention(q, Tensor::zeros({1, 2, 6, 4}, DType::F32), Tensor::zeros({1, 2, 6, 4}, DType::F32), true),
      InvalidArgument);
}

// Every compiled GEMM backend gives the same answer as the reference loop.
TEST(Gemm, BackendsAgree) {
  const int m = 37, n = 29, k = 53;
  const auto a = random_values(size_t(m * k), 1), b = random_values(size_t(k * n), 2);
  std::vector<float> ref(size_t(m * n)), out(size_t(m * n));
  const cpu::GemmBackend saved = cpu::gemm_backend();
  cpu::set_gemm_backend(cpu::GemmBackend::Reference);
  cpu::sgemm(false, false, m, n, k, 1.f, a.data(), k, b.data(), n, 0.f, ref.data(), n);
  for (auto be : {cpu::GemmBackend::OneDNN, cpu::GemmBackend::OpenBLAS}) {
    if (!cpu::gemm_backend_available(be)) continue;
    cpu::set_gemm_backend(be);
    for (bool ta : {false, true})
      for (bool tb : {false, true}) {
        // Transposed operands are the same matrices stored transposed.
        std::vector<float> at(a.size()), bt(b.size());
        for (int i = 0; i < m; ++i)
          for (int p = 0; p < k; ++p) at[size_t(p * m + i)] = a[size_t(i * k + p)];
        for (int p = 0; p < k; ++p)
          for (int j = 0; j < n; ++j) bt[size_t(j * k + p)] = b[size_t(p * n + j)];
        cpu::sgemm(ta, tb, m, n, k, 1.f, ta ? at.data() : a.data(), ta ? m : k, tb ? bt.data() : b.data(), tb ? k : n,
                   0.f, out.data(), n);
        for (size_t i = 0; i < out.size(); ++i)
          ASSERT_NEAR(out[i], ref[i], 1e-4) << cpu::gemm_backend_name(be) << " ta=" << ta << " tb=" << tb;
      }
  }
  cpu::set_gemm_backend(saved);
}

}  // namespace
}  // namespace sdserve::test
