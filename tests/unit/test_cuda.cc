// The CUDA backend against the CPU engine (itself checked against PyTorch/diffusers elsewhere)
// and against double-precision references. Built only with SDSERVE_WITH_CUDA; on a machine
// without a GPU every test here skips and says why.
//
// Tolerances (max |gpu - reference|):
//  - ops, f32 storage: 1e-5 * sqrt(reduction length) for GEMM-like ops (strict f32, no TF32);
//  - ops, f16 / bf16 storage: 2e-2 / 1e-1 (inputs and outputs rounded to 11 / 8 mantissa bits);
//  - tiny UNet/VAE vs diffusers goldens: 1e-4 in f32 (as on the CPU), 5e-2 in f16;
//  - txt2img on the tiny models: f32 within 2/255 of diffusers (as on the CPU); f16 within
//    max(4, r + r/4 + 4) levels of our CPU f32 image where r <= 4, and 2r + 4 where r > 4; r is
//    how far diffusers' own fp16 pipeline lands from its f32 image on that case
//    (fp16_deviation.json, made by tools/make_fp16_deviation.py). The r > 4 cases are those
//    where tiny random models amplify half-precision rounding (r up to 95 for 5-step DDIM); every
//    case prints "f16-deviation MODEL KEY ours D diffusers R" for the record.
#include "core/device.h"
#include "core/error.h"
#include "pipeline/stable_diffusion.h"
#include "test_util.h"

#ifdef SDSERVE_WITH_CUDA
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <span>

#include "cuda/ops.h"
#include "cuda/runtime.h"
#include "io/model_files.h"
#include "io/safetensors.h"
#include "models/clip_text.h"
#include "models/loader.h"
#include "models/unet.h"
#include "models/vae.h"
#include "ops/activation.h"
#include "ops/add.h"
#include "ops/attention.h"
#include "ops/concat.h"
#include "ops/conv2d.h"
#include "ops/graph.h"
#include "ops/group_norm.h"
#include "ops/layer_norm.h"
#include "ops/linear.h"
#include "ops/softmax.h"
#include "ops/upsample.h"
#endif

namespace sdserve::test {
namespace {

TEST(CudaDevice, MissingDeviceIsAClearError) {
  // Runs in every build: without CUDA compiled in, or with no such GPU, loading says so.
  LoadOptions o;
  o.device = Device::cuda(7);
  try {
    StableDiffusion::load("/nonexistent-model", o);
    FAIL() << "expected an error";
  } catch (const UnsupportedError& e) {
    EXPECT_NE(std::string(e.what()).find("cuda:7"), std::string::npos) << e.what();
  }
  EXPECT_THROW(parse_device("cuda:x"), InvalidArgument);
  EXPECT_THROW(parse_device("gpu"), InvalidArgument);
}

#ifdef SDSERVE_WITH_CUDA

namespace fs = std::filesystem;
const fs::path kFixtures = fs::path(SDSERVE_SOURCE_DIR) / "tests" / "fixtures";

struct DT {
  DType dtype;
  double atol;
};

std::string dt_name(const testing::TestParamInfo<DT>& i) { return dtype_name(i.param.dtype); }

const Device kGpu = Device::cuda(0);

// Random values rounded to `dt`, on the CPU.
Tensor host_rand(const Shape& s, uint32_t seed, DType dt, float lo = -1.f, float hi = 1.f) {
  return Tensor::from_vector(random_values(size_t(shape_numel(s)), seed, lo, hi), s, dt);
}

// Runs `fn` on the CPU in f32 (inputs: the dt-rounded values) and on the GPU in dt, and
// compares the two results.
class CudaVsCpu : public testing::TestWithParam<DT> {
 protected:
  void SetUp() override { SKIP_UNLESS_AVAILABLE(kGpu); }
  DType dt() const { return GetParam().dtype; }
  void compare(const Tensor& gpu, const Tensor& cpu_f32, const std::string& what, double scale = 1.0) {
    ASSERT_EQ(gpu.device(), kGpu) << what;
    ASSERT_EQ(gpu.dtype(), dt()) << what;
    ASSERT_EQ(gpu.shape(), cpu_f32.shape()) << what;
    // The CPU result rounded to dt is what a perfect dt kernel returns; allow atol around it.
    const auto want = stored(cpu_f32.to(dt()));
    expect_close(gpu.to_vector(), want, GetParam().atol * scale, GetParam().atol == 1e-5 ? 1e-5 : 1e-2, what);
  }
  // Same values as f32 on the CPU, and as dt on the GPU.
  std::pair<Tensor, Tensor> pair(const Shape& s, uint32_t seed, float lo = -1.f, float hi = 1.f) {
    const Tensor h = host_rand(s, seed, dt(), lo, hi);
    return {h.to(DType::F32), h.to(kGpu)};
  }
};

TEST_P(CudaVsCpu, Conv2dShapesStridesAndPadding) {
  struct C {
    Shape x;
    int64_t o, k, stride, pt, pl, pb, pr;
  };
  for (const C& c : {C{{2, 4, 9, 7}, 6, 3, 1, 1, 1, 1, 1}, C{{1, 8, 16, 16}, 8, 3, 2, 0, 0, 1, 1},
                     C{{2, 5, 6, 6}, 3, 1, 1, 0, 0, 0, 0}, C{{1, 32, 20, 24}, 64, 3, 1, 1, 1, 1, 1},
                     C{{1, 3, 5, 5}, 2, 3, 1, 0, 0, 0, 0}}) {
    const auto [xc, xg] = pair(c.x, 1);
    const auto [wc, wg] = pair({c.o, c.x[1], c.k, c.k}, 2, -0.5f, 0.5f);
    const auto [bc, bg] = pair({c.o}, 3);
    const ops::Conv2dOptions opt{c.stride, c.pt, c.pl, c.pb, c.pr};
    compare(ops::conv2d(xg, wg, &bg, opt), ops::conv2d(xc, wc, &bc, opt), "conv2d " + shape_str(c.x),
            std::sqrt(double(c.x[1] * c.k * c.k)));
  }
}

TEST_P(CudaVsCpu, LinearAndBatchedRows) {
  for (auto [rows, in, out] : {std::tuple{1, 1, 1}, {77, 64, 48}, {2, 130, 33}, {4096, 40, 40}, {3, 320, 1280}}) {
    const auto [xc, xg] = pair({rows, in}, 4);
    const auto [wc, wg] = pair({out, in}, 5);
    const auto [bc, bg] = pair({out}, 6);
    compare(ops::linear(xg, wg, &bg), ops::linear(xc, wc, &bc), "linear", std::sqrt(double(in)));
    compare(ops::linear(xg, wg), ops::linear(xc, wc), "linear no bias", std::sqrt(double(in)));
  }
}

TEST_P(CudaVsCpu, NormsActivationsAndElementwise) {
  {
    for (const Shape& s : {Shape{2, 32, 8, 8}, Shape{1, 12, 130, 67}, Shape{2, 64, 4, 4}, Shape{1, 128, 256, 256}}) {
      const auto [xc, xg] = pair(s, 7, -3.f, 5.f);
      const auto [gc, gg] = pair({s[1]}, 8);
      const auto [bc, bg] = pair({s[1]}, 9);
      for (bool silu : {false, true}) {
        const int64_t groups = s[1] == 12 ? 3 : 32;
        compare(ops::group_norm(xg, groups, gg, bg, 1e-5f, silu), ops::group_norm(xc, groups, gc, bc, 1e-5f, silu),
                "group_norm " + shape_str(s), 4);
      }
    }
  }
  for (int64_t dim : {1, 15, 320, 768, 1280, 4099}) {
    const auto [xc, xg] = pair({3, 7, dim}, 10, -2.f, 3.f);
    const auto [gc, gg] = pair({dim}, 11);
    const auto [bc, bg] = pair({dim}, 12);
    compare(ops::layer_norm(xg, gg, bg, 1e-5f), ops::layer_norm(xc, gc, bc, 1e-5f), "layer_norm", 4);
  }
  for (int64_t cols : {1, 77, 1000, 4096 + 3}) {
    const auto [xc, xg] = pair({5, cols}, 13, -8.f, 8.f);
    compare(ops::softmax(xg), ops::softmax(xc), "softmax cols " + std::to_string(cols));
  }
  for (auto act :
       {ops::Activation::GELU, ops::Activation::GELUTanh, ops::Activation::QuickGELU, ops::Activation::SiLU}) {
    const auto [xc, xg] = pair({3, 1001}, 14, -6.f, 6.f);
    compare(ops::activation(xg, act), ops::activation(xc, act), ops::activation_name(act));
  }
  {
    const auto [xc, xg] = pair({2, 9, 2 * 1280}, 15, -4.f, 4.f);
    compare(ops::geglu(xg), ops::geglu(xc), "geglu");
  }
  {
    const auto [ac, ag] = pair({2, 3, 5, 7}, 16);
    const auto [bc, bg] = pair({5, 7}, 17);
    compare(ops::add(ag, bg), ops::add(ac, bc), "add broadcast");
    const auto [pc, pg] = pair({2, 3}, 18);
    compare(ops::add_channelwise(ag, pg), ops::add_channelwise(ac, pc), "add_channelwise");
  }
  {
    const auto [xc, xg] = pair({2, 3, 5, 7}, 19);
    compare(ops::upsample_nearest(xg, 10, 14), ops::upsample_nearest(xc, 10, 14), "upsample x2");
    compare(ops::upsample_nearest(xg, 9, 13), ops::upsample_nearest(xc, 9, 13), "upsample odd");
    const auto [yc, yg] = pair({2, 4, 5, 7}, 20);
    compare(ops::concat({xg, yg}, 1), ops::concat({xc, yc}, 1), "concat dim 1");
    compare(ops::concat({xg, xg, xg}, 0), ops::concat({xc, xc, xc}, 0), "concat dim 0");
  }
}

// Channels-last inputs (what half-precision convolutions hand on): each op that keeps the layout
// must return it, with the values of the CPU's contiguous computation; group norm over both of
// its paths (a group in one block, and chunked) and channel counts that do and do not allow
// packed accesses.
TEST_P(CudaVsCpu, ChannelsLastOpsKeepTheLayoutAndMatch) {
  const auto cl = [](const Tensor& t) {
    Tensor o = Tensor::empty_channels_last(t.shape(), t.dtype(), t.device());
    o.copy_(t);
    return o;
  };
  const auto expect_cl = [](const Tensor& t, const std::string& what) {
    EXPECT_TRUE(t.is_channels_last() && !t.is_contiguous()) << what << " did not keep channels last";
  };
  for (const Shape& s : {Shape{2, 32, 8, 8}, Shape{2, 320, 16, 16}, Shape{1, 12, 130, 67}, Shape{1, 128, 64, 64},
                         Shape{2, 64, 4, 4}, Shape{1, 40, 33, 17}}) {
    const auto [xc, xg0] = pair(s, 31, -3.f, 5.f);
    const Tensor xg = cl(xg0);
    ASSERT_TRUE(xg.is_channels_last());
    const auto [gc, gg] = pair({s[1]}, 32);
    const auto [bc, bg] = pair({s[1]}, 33);
    const int64_t groups = s[1] == 12 ? 3 : s[1] == 40 ? 8 : 32;
    for (bool silu : {false, true}) {
      const Tensor out = ops::group_norm(xg, groups, gg, bg, 1e-5f, silu);
      expect_cl(out, "group_norm");
      compare(out, ops::group_norm(xc, groups, gc, bc, 1e-5f, silu), "channels-last group_norm " + shape_str(s), 4);
    }
    const Tensor act = ops::activation(xg, ops::Activation::SiLU);
    expect_cl(act, "activation");
    compare(act, ops::activation(xc, ops::Activation::SiLU), "channels-last silu " + shape_str(s));
    const auto [yc, yg] = pair(s, 34);
    for (const auto& [a, b, what] : {std::tuple{xg, cl(yg), "cl + cl"}, std::tuple{xg, yg, "cl + contiguous"},
                                     std::tuple{yg, xg, "contiguous + cl"}}) {
      const Tensor sum = ops::add(a, b);
      expect_cl(sum, what);
      compare(sum, ops::add(xc, yc), std::string("add ") + what + " " + shape_str(s));
    }
    const auto [pc, pg] = pair({s[0], s[1]}, 35);
    const Tensor biased = ops::add_channelwise(xg, pg);
    expect_cl(biased, "add_channelwise");
    compare(biased, ops::add_channelwise(xc, pc), "channels-last add_channelwise " + shape_str(s));
    for (auto [oh, ow] : {std::pair{s[2] * 2, s[3] * 2}, std::pair{s[2] + 3, s[3] + 1}}) {
      const Tensor up = ops::upsample_nearest(xg, oh, ow);
      expect_cl(up, "upsample_nearest");
      compare(up, ops::upsample_nearest(xc, oh, ow), "channels-last upsample " + shape_str(s));
    }
    const auto [zc, zg] = pair({s[0], 24, s[2], s[3]}, 36);
    for (const auto& [parts, what] : {std::pair{std::vector<Tensor>{xg, cl(zg)}, "cl, cl"},
                                      std::pair{std::vector<Tensor>{zg, xg}, "contiguous, cl"}}) {
      const Tensor cat = ops::concat(parts, 1);
      expect_cl(cat, "concat");
      const Tensor want = parts[0].is_contiguous() ? ops::concat({zc, xc}, 1) : ops::concat({xc, zc}, 1);
      compare(cat, want, std::string("channels-last concat ") + what + " " + shape_str(s));
    }
    // A convolution reads a channels-last input as it is (half precision) or makes it
    // contiguous (f32): the same plan on the same values, so the same bits as from an NCHW
    // input (the CPU comparisons of convolutions are Conv2dShapesStridesAndPadding's). The
    // VAE encoder's asymmetric padding too.
    const auto [wc, wg] = pair({16, s[1], 3, 3}, 37, -0.5f, 0.5f);
    const auto [cbc, cbg] = pair({16}, 38);
    const Tensor w = ops::conv2d_weight_layout(wg);
    for (const ops::Conv2dOptions& opt : {ops::Conv2dOptions::same(3), ops::Conv2dOptions{2, 0, 0, 1, 1}}) {
      const Tensor y = ops::conv2d(xg, w, &cbg, opt);
      if (dt() != DType::F32 && ops::conv2d_keeps_channels_last(xg)) expect_cl(y, "conv2d");
      EXPECT_EQ(max_abs_diff(y, ops::conv2d(xg0, w, &cbg, opt)), 0.0)
          << "conv2d of a channels-last input " << shape_str(s) << " stride " << opt.stride;
    }
  }
}

TEST_P(CudaVsCpu, ConversionsViewsAndCopies) {
  const Tensor h = host_rand({3, 4, 5}, 21, dt(), -100.f, 100.f);
  const Tensor g = h.to(kGpu);
  // Round trips and casts are exact (same rounding rule as the CPU).
  for (DType to : {DType::F32, DType::F16, DType::BF16}) {
    const auto got = g.to(to).to(Device::cpu()).to_vector(), want = h.to(to).to_vector();
    EXPECT_EQ(got, want) << dtype_name(dt()) << " -> " << dtype_name(to);
  }
  EXPECT_EQ(g.permute({2, 0, 1}).contiguous().to_vector(), h.permute({2, 0, 1}).contiguous().to_vector());
  EXPECT_EQ(g.narrow(1, 1, 2).to_vector(), h.narrow(1, 1, 2).to_vector());
  Tensor z = Tensor::zeros({3, 4, 5}, dt(), kGpu);
  for (float v : z.to_vector()) ASSERT_EQ(v, 0.f);
  Tensor win = z.narrow(2, 1, 3);
  win.copy_(g.narrow(2, 0, 3));
  const auto zv = z.to_vector(), hv = h.to_vector();
  for (int64_t i = 0; i < 12; ++i) {
    EXPECT_EQ(zv[size_t(i * 5)], 0.f);
    EXPECT_EQ(zv[size_t(i * 5 + 4)], 0.f);
    for (int64_t j = 0; j < 3; ++j) EXPECT_EQ(zv[size_t(i * 5 + 1 + j)], hv[size_t(i * 5 + j)]);
  }
}

INSTANTIATE_TEST_SUITE_P(Gpu, CudaVsCpu,
                         testing::Values(DT{DType::F32, 1e-5}, DT{DType::F16, 2e-2}, DT{DType::BF16, 1e-1}), dt_name);

// Both attention implementations against the double-precision reference, on the shapes Stable
// Diffusion uses (and odd ones), from permuted [B, T, H, d] projections as the models pass them.
struct AttnCase {
  DType dtype;
  cuda::AttentionImpl impl;
};

class CudaAttention : public testing::TestWithParam<AttnCase> {
 protected:
  void SetUp() override {
    SKIP_UNLESS_AVAILABLE(kGpu);
    saved_ = cuda::attention_impl();
    cuda::set_attention_impl(GetParam().impl);
  }
  void TearDown() override { cuda::set_attention_impl(saved_); }
  cuda::AttentionImpl saved_ = cuda::AttentionImpl::Auto;
};

TEST_P(CudaAttention, MatchesDoubleReference) {
  const DType dt = GetParam().dtype;
  const double atol = dt == DType::F32 ? 2e-5 : dt == DType::F16 ? 2e-2 : 1e-1;
  struct S {
    int B, H, Tq, Tk, d, dv;
    bool causal;
  };
  for (const S& s :
       {S{1, 1, 1, 1, 8, 8, false}, S{2, 3, 77, 77, 64, 64, true}, S{1, 2, 7, 77, 40, 40, false},
        S{2, 2, 300, 300, 40, 40, false}, S{1, 1, 4096 + 3, 4096 + 3, 40, 40, false}, S{1, 2, 256, 77, 160, 160, false},
        S{1, 1, 200, 200, 80, 80, false}, S{1, 3, 130, 130, 24, 24, true}, S{2, 1, 65, 33, 8, 8, false}}) {
    // Projections [B, T, H, d] viewed as [B, H, T, d]: token stride H*d, as in the UNet.
    const Tensor qh = host_rand({s.B, s.Tq, s.H, s.d}, 30, dt), kh = host_rand({s.B, s.Tk, s.H, s.d}, 31, dt);
    const Tensor vh = host_rand({s.B, s.Tk, s.H, s.dv}, 32, dt);
    auto heads = [](const Tensor& t) { return t.permute({0, 2, 1, 3}); };
    const auto want = attention_reference(stored(heads(qh).contiguous()), stored(heads(kh).contiguous()),
                                          stored(heads(vh).contiguous()), s.B * s.H, s.Tq, s.Tk, s.d, s.dv, s.causal);
    const Tensor got = ops::attention(heads(qh.to(kGpu)), heads(kh.to(kGpu)), heads(vh.to(kGpu)), s.causal);
    ASSERT_EQ(got.shape(), (Shape{s.B, s.H, s.Tq, s.dv}));
    expect_close(got.contiguous().to_vector(), want, atol, dt == DType::F32 ? 1e-5 : 1e-2,
                 "attention " + std::to_string(s.Tq) + "x" + std::to_string(s.Tk) + " d=" + std::to_string(s.d));
  }
}

TEST_P(CudaAttention, WideHeadsFallBackOrRefuse) {
  // The VAE's single 512-wide head: the fused kernel declines it; Auto falls back to the GEMM path.
  const DType dt = GetParam().dtype;
  const Tensor q = host_rand({1, 1, 64, 512}, 33, dt).to(kGpu);
  if (GetParam().impl == cuda::AttentionImpl::Flash) {
    try {
      ops::attention(q, q, q, false);
    } catch (const UnsupportedError&) {
      return;  // declining is allowed; silently wrong is not
    }
  }
  const auto want = attention_reference(stored(q.to(Device::cpu())), stored(q.to(Device::cpu())),
                                        stored(q.to(Device::cpu())), 1, 64, 64, 512, 512, false);
  expect_close(ops::attention(q, q, q, false).to_vector(), want, dt == DType::F32 ? 2e-5 : 1e-1, 1e-2, "d=512");
}

std::string attn_name(const testing::TestParamInfo<AttnCase>& i) {
  const char* impl = i.param.impl == cuda::AttentionImpl::Flash  ? "flash"
                     : i.param.impl == cuda::AttentionImpl::Math ? "math"
                                                                 : "auto";
  return std::string(impl) + "_" + dtype_name(i.param.dtype);
}

INSTANTIATE_TEST_SUITE_P(Gpu, CudaAttention,
                         testing::Values(AttnCase{DType::F32, cuda::AttentionImpl::Math},
                                         AttnCase{DType::F16, cuda::AttentionImpl::Math},
                                         AttnCase{DType::BF16, cuda::AttentionImpl::Math},
                                         AttnCase{DType::F32, cuda::AttentionImpl::Flash},
                                         AttnCase{DType::F16, cuda::AttentionImpl::Flash},
                                         AttnCase{DType::BF16, cuda::AttentionImpl::Flash}),
                         attn_name);

// The caching allocator (cuda/runtime.h): a miss may take a cached block of up to twice the
// bucket, counted at its real size; a private pool keeps its blocks apart from the shared pool and
// gives them back to the driver when its last reference goes.
TEST(CudaAllocator, ReusesACachedBlockUpToTwiceTheSizeAndCountsItsRealSize) {
  SKIP_UNLESS_AVAILABLE(kGpu);
  cuda::synchronize(0);
  cuda::empty_cache(0);
  const cuda::MemoryStats s0 = cuda::memory_stats(0);
  { auto block = cuda::allocate(size_t(3) << 20, 0); }  // 3 MiB, now cached
  const uint64_t allocs = cuda::memory_stats(0).driver_allocs;
  EXPECT_EQ(cuda::memory_stats(0).allocated, s0.allocated);
  {
    auto two = cuda::allocate(size_t(2) << 20, 0);  // served by the cached 3 MiB block
    EXPECT_EQ(cuda::memory_stats(0).driver_allocs, allocs);
    EXPECT_EQ(cuda::memory_stats(0).allocated, s0.allocated + (size_t(3) << 20));
  }
  EXPECT_EQ(cuda::memory_stats(0).allocated, s0.allocated);
  {
    auto one = cuda::allocate(size_t(1) << 20, 0);  // 3 MiB is more than twice 1 MiB: a new block
    EXPECT_EQ(cuda::memory_stats(0).driver_allocs, allocs + 1);
  }
  cuda::empty_cache(0);
  EXPECT_EQ(cuda::memory_stats(0).reserved, s0.reserved);
}

// A fresh private pool (after emptying the shared one) holding one idle block of `bytes`:
// allocated under the pool's scope and freed, so it went back to the pool. *block gets its address.
std::shared_ptr<cuda::PrivatePool> pool_with_idle_block(size_t bytes, void** block) {
  cuda::synchronize(0);
  cuda::empty_cache(0);
  auto pool = cuda::make_private_pool(0);
  cuda::PrivatePoolScope scope(pool);
  *block = cuda::allocate(bytes, 0).get();
  return pool;
}

TEST(CudaAllocator, PrivatePoolKeepsItsBlocksUntilItsLastReferenceGoes) {
  SKIP_UNLESS_AVAILABLE(kGpu);
  void* first = nullptr;
  auto pool = pool_with_idle_block(size_t(1) << 20, &first);  // back to the private pool, not the shared one
  auto shared = cuda::allocate(size_t(1) << 20, 0);
  EXPECT_NE(shared.get(), first);
  {
    cuda::PrivatePoolScope scope(pool);
    auto again = cuda::allocate(size_t(1) << 20, 0);
    EXPECT_EQ(again.get(), first);
  }
  const size_t reserved = cuda::memory_stats(0).reserved;
  pool.reset();  // the last reference: its cached block goes back to the driver
  EXPECT_EQ(cuda::memory_stats(0).reserved, reserved - (size_t(1) << 20));
}

// Lending a private pool's idle blocks (cuda::LendScope): a request the shared pool cannot serve
// takes an idle block that fits (up to twice the size) before the driver is asked, and the block
// goes back to its pool when freed.
TEST(CudaAllocator, LendScopeUsesAPrivatePoolsIdleBlocksAndGivesThemBack) {
  SKIP_UNLESS_AVAILABLE(kGpu);
  void* idle = nullptr;
  auto pool = pool_with_idle_block(size_t(8) << 20, &idle);
  const uint64_t allocs = cuda::memory_stats(0).driver_allocs;
  {
    cuda::LendScope lend({pool});
    {
      auto borrowed = cuda::allocate(size_t(5) << 20, 0);  // the idle 8 MiB block fits
      EXPECT_EQ(borrowed.get(), idle);
      EXPECT_EQ(lend.outstanding(), 1u);
      EXPECT_EQ(cuda::memory_stats(0).driver_allocs, allocs);
      auto big = cuda::allocate(size_t(20) << 20, 0);  // nothing idle fits: the driver
      EXPECT_EQ(cuda::memory_stats(0).driver_allocs, allocs + 1);
      EXPECT_EQ(lend.outstanding(), 1u);
    }
    EXPECT_EQ(lend.outstanding(), 0u);
    EXPECT_EQ(lend.lent(), 1u);
  }
  {
    auto shared = cuda::allocate(size_t(5) << 20, 0);  // no lending now: not the private block
    EXPECT_NE(shared.get(), idle);
  }
  {
    cuda::PrivatePoolScope scope(pool);
    auto again = cuda::allocate(size_t(8) << 20, 0);
    EXPECT_EQ(again.get(), idle) << "the lent block went back to its pool";
  }
}

bool lending_off() {
  const char* v = std::getenv("SDSERVE_CUDA_LEND_GRAPH_MEMORY");
  return v && std::string(v) == "0";
}

// A graph's intermediates are idle between replays and lent to the work in lend_idle_memory; a
// block still held when that work returns is reported, so the caller can drop the graph.
TEST(CudaGraphMemory, LentBlocksAreReportedWhenKept) {
  SKIP_UNLESS_AVAILABLE(kGpu);
  if (!ops::DeviceGraph::available(kGpu) || lending_off()) GTEST_SKIP() << "CUDA graphs or lending are off";
  Tensor out;
  std::string why;
  auto graph = ops::DeviceGraph::capture(
      kGpu,
      [&] {
        const Tensor tmp = Tensor::zeros({int64_t(4) << 20}, DType::F32, kGpu);  // 16 MiB, idle after the capture
        out = ops::activation(tmp.narrow(0, 0, 16), ops::Activation::SiLU);
      },
      &why);
  ASSERT_TRUE(graph) << why;
  graph->replay();
  cuda::synchronize(0);
  cuda::empty_cache(0);
  bool returned = false;
  Tensor kept;
  size_t lent = ops::DeviceGraph::lend_idle_memory(
      {graph.get()},
      [&] {
        kept = Tensor::empty({int64_t(3) << 20}, DType::F32, kGpu);
        cuda::memset_async(kept.raw_data(), 0xff, kept.nbytes(), 0);  // NaNs where the graph's tmp was
      },
      &returned);
  EXPECT_EQ(lent, 1u);
  EXPECT_FALSE(returned);
  kept = Tensor();
  lent = ops::DeviceGraph::lend_idle_memory(
      {graph.get()}, [&] { (void)Tensor::empty({int64_t(3) << 20}, DType::F32, kGpu); }, &returned);
  EXPECT_EQ(lent, 1u);
  EXPECT_TRUE(returned);
  // An exception from the work still reports.
  EXPECT_THROW(ops::DeviceGraph::lend_idle_memory(
                   {graph.get()},
                   [&] {
                     kept = Tensor::empty({int64_t(3) << 20}, DType::F32, kGpu);
                     throw ResourceError("test");
                   },
                   &returned),
               ResourceError);
  EXPECT_FALSE(returned);
  kept = Tensor();
  graph->replay();
  for (float v : out.to_vector()) EXPECT_EQ(v, 0.f);  // silu(0), from the graph's own memory
}

// The tiny models against the diffusers goldens used by the CPU tests.
class CudaTinyModel : public testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    SKIP_UNLESS_AVAILABLE(kGpu);
    golden_ = std::make_unique<SafeTensorsFile>(
        SafeTensorsFile::open((kFixtures / "golden" / "unet_vae" / (GetParam() + ".safetensors")).string()));
    model_ = std::make_unique<ModelFiles>(ModelFiles::open((kFixtures / "models" / GetParam()).string()));
  }
  Tensor g(const std::string& name) const { return golden_->get_as(name, DType::F32); }
  std::unique_ptr<SafeTensorsFile> golden_;
  std::unique_ptr<ModelFiles> model_;
};

TEST_P(CudaTinyModel, UNetAndVaeMatchDiffusers) {
  for (auto [dt, tol] : {std::pair{DType::F32, 1e-4}, std::pair{DType::F16, 5e-2}}) {
    const UNet unet = UNet::load(UNetConfig::from_json(model_->component_config("unet")),
                                 model_->component("unet").with_device(kGpu), dt);
    for (const std::string c : {"unet_a", "unet_b"}) {
      const Tensor out = unet.forward(g(c + "_x"), g(c + "_t").to_vector(), g(c + "_ctx"));
      EXPECT_EQ(out.device(), kGpu);
      EXPECT_LE(max_abs_diff(out.to(DType::F32).to(Device::cpu()), g(c + "_out")), tol) << c << " " << dtype_name(dt);
    }
    const VAE vae = VAE::load(VAEConfig::from_json(model_->component_config("vae")),
                              model_->component("vae").with_device(kGpu), dt);
    for (const std::string c : {"dec_a", "dec_b"})
      EXPECT_LE(max_abs_diff(vae.decode(g(c + "_z")).to(DType::F32).to(Device::cpu()), g(c + "_out")), tol)
          << c << " " << dtype_name(dt);
    EXPECT_LE(max_abs_diff(vae.encode_moments(g("enc_a_x")).to(DType::F32).to(Device::cpu()), g("enc_a_out")), tol)
        << dtype_name(dt);
    const Tensor tiled = vae.decode_tiled(g("tdec_a_z"));
    EXPECT_LE(max_abs_diff(tiled.to(DType::F32).to(Device::cpu()), g("tdec_a_out")), tol) << dtype_name(dt);
  }
}

TEST_P(CudaTinyModel, SteadyStateAllocatesNothingFromTheDriver) {
  const UNet unet = UNet::load(UNetConfig::from_json(model_->component_config("unet")),
                               model_->component("unet").with_device(kGpu), DType::F16);
  const std::vector<float> t = g("unet_a_t").to_vector();
  for (int i = 0; i < 2; ++i) unet.forward(g("unet_a_x"), t, g("unet_a_ctx"));
  cuda::synchronize(0);
  const uint64_t before = cuda::memory_stats(0).driver_allocs;
  for (int i = 0; i < 3; ++i) unet.forward(g("unet_a_x"), t, g("unet_a_ctx"));
  cuda::synchronize(0);
  EXPECT_EQ(cuda::memory_stats(0).driver_allocs, before) << "a repeated step should reuse cached blocks only";
}

// CUDA graphs (ops/graph.h): a shape's first step runs eagerly, the second is captured and
// replayed, later ones replay. The same kernels run either way, so a replay must equal an eager
// run bit for bit, with new inputs too, and a different shape gets a graph of its own.
TEST_P(CudaTinyModel, GraphReplaysEqualEagerRunsBitForBit) {
  if (!ops::DeviceGraph::available(kGpu)) GTEST_SKIP() << "CUDA graphs are off (SDSERVE_CUDA_GRAPHS=0 or profiling)";
  for (DType dt : {DType::F32, DType::F16}) {
    const UNetConfig cfg = UNetConfig::from_json(model_->component_config("unet"));
    const UNet graphed = UNet::load(cfg, model_->component("unet").with_device(kGpu), dt);
    const Tensor x = g("unet_a_x"), ctx = g("unet_a_ctx");
    const std::vector<float> t = g("unet_a_t").to_vector();
    const Tensor eager = graphed.forward(x, t, ctx).to(Device::cpu());  // first call: eager
    EXPECT_EQ(graphed.graphs_captured(), 0u);
    for (int i = 0; i < 3; ++i)
      EXPECT_EQ(max_abs_diff(graphed.forward(x, t, ctx).to(Device::cpu()), eager), 0.0) << "replay " << i;
    EXPECT_EQ(graphed.graphs_captured(), 1u) << "the second call of a shape should capture a graph";
    // New values through the same graph, against a fresh model's eager run.
    Tensor x2 = x.clone(), ctx2 = ctx.clone();
    for (float& v : std::span(x2.data<float>(), size_t(x2.numel()))) v = -0.5f * v + 0.25f;
    for (float& v : std::span(ctx2.data<float>(), size_t(ctx2.numel()))) v *= 0.75f;
    std::vector<float> t2 = t;
    for (float& v : t2) v = 0.5f * v + 3;
    const UNet fresh = UNet::load(cfg, model_->component("unet").with_device(kGpu), dt);
    const Tensor want = fresh.forward(x2, t2, ctx2).to(Device::cpu());
    EXPECT_EQ(max_abs_diff(graphed.forward(x2, t2, ctx2).to(Device::cpu()), want), 0.0) << dtype_name(dt);
    // A second shape: its own warm-up and graph; the first one's stays right.
    const Tensor xb = g("unet_b_x"), ctxb = g("unet_b_ctx");
    const std::vector<float> tb = g("unet_b_t").to_vector();
    const Tensor eager_b = graphed.forward(xb, tb, ctxb).to(Device::cpu());
    EXPECT_EQ(max_abs_diff(graphed.forward(xb, tb, ctxb).to(Device::cpu()), eager_b), 0.0);
    EXPECT_EQ(max_abs_diff(graphed.forward(x, t, ctx).to(Device::cpu()), eager), 0.0);
  }
}

// The pipeline decodes on the memory the UNet's graphs leave idle between steps
// (UNet::lend_idle_graph_memory): the decode must equal one on memory of its own, and the graph
// must replay as before, bit for bit.
TEST_P(CudaTinyModel, VaeOnTheGraphsIdleMemoryChangesNothing) {
  if (!ops::DeviceGraph::available(kGpu) || lending_off()) GTEST_SKIP() << "CUDA graphs or lending are off";
  const UNet unet = UNet::load(UNetConfig::from_json(model_->component_config("unet")),
                               model_->component("unet").with_device(kGpu), DType::F16);
  const VAE vae = VAE::load(VAEConfig::from_json(model_->component_config("vae")),
                            model_->component("vae").with_device(kGpu), DType::F16);
  const Tensor x = g("unet_a_x"), ctx = g("unet_a_ctx"), z = g("dec_a_z");
  const std::vector<float> t = g("unet_a_t").to_vector();
  unet.forward(x, t, ctx);  // eager warm-up
  const Tensor first = unet.forward(x, t, ctx).to(Device::cpu());
  ASSERT_EQ(unet.graphs_captured(), 1u);
  const Tensor want = vae.decode(z).to(DType::F32).to(Device::cpu());
  cuda::synchronize(0);
  cuda::empty_cache(0);  // so the decode's requests reach the graph's idle blocks
  Tensor got;
  const size_t lent =
      unet.lend_idle_graph_memory([&] { got = vae.decode(z).to(DType::F32).to(Device::cpu()).contiguous(); });
  std::printf("[ lend     ] %s: %zu blocks of the graph's pool lent to the VAE decode\n", GetParam().c_str(), lent);
  EXPECT_EQ(max_abs_diff(got, want), 0.0);
  EXPECT_EQ(max_abs_diff(unet.forward(x, t, ctx).to(Device::cpu()), first), 0.0) << "a replay after the decode";
  EXPECT_EQ(unet.graphs_captured(), 1u) << "nothing was kept, so the graph stays";
  EXPECT_GT(lent, 0u) << "with the shared pool empty, some request should fit an idle block";
  // A lent block kept past the call: the graph is dropped, then warmed up and captured again
  // (with a pool of its own), so the steps stay right and the kept block is not overwritten.
  Tensor kept;
  unet.lend_idle_graph_memory([&] {
    // The largest idle block: with the shared pool empty, a request the driver does not serve.
    for (int64_t bytes = int64_t(64) << 20; bytes >= 4096 && !kept.defined(); bytes /= 2) {
      cuda::empty_cache(0);
      const uint64_t before = cuda::memory_stats(0).driver_allocs;
      Tensor block = Tensor::empty({bytes}, DType::U8, kGpu);
      if (cuda::memory_stats(0).driver_allocs == before) kept = block;
    }
    if (kept.defined()) cuda::memset_async(kept.raw_data(), 0x5a, kept.nbytes(), 0);
  });
  ASSERT_TRUE(kept.defined()) << "no idle block of the graph was lent";
  for (int i = 0; i < 3; ++i)
    EXPECT_EQ(max_abs_diff(unet.forward(x, t, ctx).to(Device::cpu()), first), 0.0) << "after a kept block, " << i;
  EXPECT_EQ(unet.graphs_captured(), 2u) << "the graph should have been dropped and captured again";
  const Tensor host = kept.to(Device::cpu());
  const uint8_t* bytes = host.data<uint8_t>();
  EXPECT_TRUE(std::all_of(bytes, bytes + host.numel(), [](uint8_t b) { return b == 0x5a; }))
      << "a replay wrote into the kept block";
}

INSTANTIATE_TEST_SUITE_P(Models, CudaTinyModel, testing::Values("sd1-tiny", "sd2-tiny", "odd-tiny"),
                         [](const testing::TestParamInfo<std::string>& i) {
                           std::string s = i.param;
                           for (char& ch : s)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return s;
                         });

// txt2img on the GPU: every golden case of the tiny models (diffusers layout).
struct ImgCase {
  std::string model, key, sampler, schedule;
  int steps = 0;
};

const SafeTensorsFile& txt2img_golden(const std::string& model) {
  static std::mutex mu;
  static std::map<std::string, std::unique_ptr<SafeTensorsFile>> files;
  std::lock_guard<std::mutex> lock(mu);
  auto& f = files[model];
  if (!f)
    f = std::make_unique<SafeTensorsFile>(
        SafeTensorsFile::open((kFixtures / "golden" / "txt2img" / (model + ".safetensors")).string()));
  return *f;
}

std::vector<ImgCase> img_cases() {
  std::vector<ImgCase> out;
  for (const std::string model : {"sd1-tiny", "sd2-tiny", "odd-tiny"}) {
    const auto cases = nlohmann::json::parse(txt2img_golden(model).metadata().at("cases"));
    for (const auto& c : cases)
      out.push_back({model, c.at("key").get<std::string>(), c.at("sampler").get<std::string>(),
                     c.at("schedule").get<std::string>(), c.at("steps").get<int>()});
  }
  return out;
}

const StableDiffusion& pipeline_for(const std::string& model, Device device, DType dt) {
  static std::mutex mu;
  static std::map<std::string, std::unique_ptr<StableDiffusion>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto& m = cache[model + "|" + device.str() + "|" + dtype_name(dt)];
  if (!m) {
    LoadOptions o;
    o.device = device;
    o.dtype = dt;
    m = StableDiffusion::load((kFixtures / "models" / model).string(), o);
  }
  return *m;
}

// diffusers' own fp16-vs-f32 distance per model and case (tools/make_fp16_deviation.py).
int reference_fp16_deviation(const std::string& model, const std::string& key) {
  static const nlohmann::json doc = [] {
    std::ifstream in(kFixtures / "golden" / "txt2img" / "fp16_deviation.json");
    if (!in) throw NotFoundError("fp16_deviation.json missing: run tools/make_fp16_deviation.py");
    return nlohmann::json::parse(in);
  }();
  return doc.at(model).at(key).get<int>();
}

int max_pixel_diff(const std::vector<uint8_t>& a, const uint8_t* b, size_t n) {
  int worst = 0;
  for (size_t i = 0; i < n; ++i) worst = std::max(worst, std::abs(int(a[i]) - int(b[i])));
  return worst;
}

class CudaTxt2Img : public testing::TestWithParam<ImgCase> {
 protected:
  void SetUp() override { SKIP_UNLESS_AVAILABLE(kGpu); }
};

TEST_P(CudaTxt2Img, F32MatchesDiffusersAndF16MatchesCpu) {
  const ImgCase& c = GetParam();
  const SafeTensorsFile& g = txt2img_golden(c.model);
  const GenerateRequest r = golden_request(g, c.sampler, c.schedule, c.steps);
  const Tensor want = g.get(c.key);
  const auto f32 = pipeline_for(c.model, kGpu, DType::F32).txt2img(r);
  ASSERT_EQ(int64_t(f32[0].rgb.size()), want.numel());
  EXPECT_LE(max_pixel_diff(f32[0].rgb, want.data<uint8_t>(), f32[0].rgb.size()), 2) << "cuda f32 vs diffusers";
  const auto cpu = pipeline_for(c.model, Device::cpu(), DType::F32).txt2img(r);
  const auto f16 = pipeline_for(c.model, kGpu, DType::F16).txt2img(r);
  const int d16 = max_pixel_diff(f16[0].rgb, cpu[0].rgb.data(), cpu[0].rgb.size());
  const int ref16 = reference_fp16_deviation(c.model, c.key);
  RecordProperty("f16_max_abs_diff", d16);
  RecordProperty("diffusers_fp16_max_abs_diff", ref16);
  std::printf("f16-deviation %s %s ours %d diffusers %d\n", c.model.c_str(), c.key.c_str(), d16, ref16);
  // r = how far diffusers' own fp16 pipeline lands from its f32 image on this case. Where r <= 4:
  // within max(4, r + r/4 + 4). Where r > 4 (chaotic cases: the sampler amplifies half-precision
  // rounding): within 2r + 4, since two independent half-precision runs can each land r away
  // from f32 in different directions.
  EXPECT_LE(d16, ref16 <= 4 ? std::max(4, ref16 + ref16 / 4 + 4) : 2 * ref16 + 4)
      << "cuda f16 vs cpu f32 (diffusers fp16 vs f32: " << ref16 << ")";
}

INSTANTIATE_TEST_SUITE_P(Goldens, CudaTxt2Img, testing::ValuesIn(img_cases()),
                         [](const testing::TestParamInfo<ImgCase>& i) {
                           std::string s = i.param.model.substr(0, 3) + "_" + i.param.key;
                           for (char& ch : s)
                             if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
                           return s;
                         });

// Out of GPU memory in an untiled VAE decode, the pipeline retries in tiles: under a memory cap
// that a tiled decode fits and an untiled one does not, the image is the tiled image.
TEST(CudaVaeFallback, DecodeThatRunsOutOfMemoryRetriesTiled) {
  SKIP_UNLESS_AVAILABLE(kGpu);
  const StableDiffusion& sd = pipeline_for("sd1-tiny", kGpu, DType::F16);
  GenerateRequest r;
  r.prompt = "a lighthouse";
  r.width = r.height = 512;
  r.steps = 2;
  r.seed = 7;
  // Memory a run needs beyond what is live before it (weights, the UNet's graph pool): the peak of
  // live blocks, so the pool's cached slack does not count.
  auto run = [&](bool tiled, size_t* need) {
    GenerateRequest q = r;
    q.vae_tiling = tiled;
    cuda::synchronize(0);
    cuda::empty_cache(0);
    cuda::reset_peak(0);
    const size_t before = cuda::memory_stats(0).allocated;
    auto out = sd.generate(q);
    cuda::synchronize(0);
    if (need) *need = cuda::memory_stats(0).peak_allocated - before;
    return out.at(0).rgb;
  };
  run(false, nullptr);  // warm-up: algorithms, workspaces and the UNet's graph
  size_t need_whole = 0, need_tiles = 0;
  const auto whole = run(false, &need_whole);
  const auto tiles = run(true, &need_tiles);
  if (whole == tiles || need_tiles + (size_t(4) << 20) >= need_whole)
    GTEST_SKIP() << "tiled and untiled decodes are not distinguishable here (needs " << (need_tiles >> 20) << " / "
                 << (need_whole >> 20) << " MiB)";
  cuda::empty_cache(0);
  const size_t base = cuda::memory_stats(0).reserved;  // live blocks and the graph's pool
  cuda::set_memory_limit(0, base + need_tiles + (need_whole - need_tiles) / 2);
  std::vector<uint8_t> capped;
  try {
    capped = run(false, nullptr);
  } catch (...) {
    cuda::set_memory_limit(0, 0);
    throw;
  }
  cuda::set_memory_limit(0, 0);
  EXPECT_NE(capped, whole) << "the capped request should not have decoded untiled (needs " << (need_tiles >> 20)
                           << " / " << (need_whole >> 20) << " MiB)";
  EXPECT_EQ(capped, tiles) << "the capped untiled request should have fallen back to the tiled decode";
}

#endif  // SDSERVE_WITH_CUDA

}  // namespace
}  // namespace sdserve::test
