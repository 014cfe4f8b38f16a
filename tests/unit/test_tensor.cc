#include <cstring>

#include "core/dtype.h"
#include "core/tensor.h"
#include "io/hash_init.h"
#include "test_util.h"

namespace sdserve::test {
namespace {

TEST(Tensor, ViewsShareStorage) {
  Tensor t = Tensor::from_vector({0, 1, 2, 3, 4, 5}, {2, 3});
  Tensor tr = t.transpose(0, 1);
  EXPECT_EQ(tr.shape(), (Shape{3, 2}));
  EXPECT_FALSE(tr.is_contiguous());
  EXPECT_EQ(tr.contiguous().to_vector(), (std::vector<float>{0, 3, 1, 4, 2, 5}));
  EXPECT_EQ(t.narrow(1, 1, 2).contiguous().to_vector(), (std::vector<float>{1, 2, 4, 5}));
  EXPECT_EQ(t.select(0, 1).to_vector(), (std::vector<float>{3, 4, 5}));
  EXPECT_EQ(t.reshape({3, -1}).shape(), (Shape{3, 2}));
  EXPECT_EQ(tr.reshape({6}).to_vector(), (std::vector<float>{0, 3, 1, 4, 2, 5}));
  t.data<float>()[0] = 9;
  EXPECT_EQ(tr.contiguous().to_vector()[0], 9);
}

TEST(Tensor, BadShapesThrow) {
  Tensor t = Tensor::zeros({2, 3}, DType::F32);
  EXPECT_THROW(t.view({4, 2}), InvalidArgument);
  EXPECT_THROW(t.view({-1, -1}), InvalidArgument);
  EXPECT_THROW(t.transpose(0, 2), InvalidArgument);
  EXPECT_THROW(t.narrow(0, 1, 2), InvalidArgument);
  EXPECT_THROW(t.data<half_t>(), InvalidArgument);
  EXPECT_THROW(Tensor::zeros({1ll << 40, 1ll << 40}, DType::F32), InvalidArgument);
}

TEST(Tensor, AllocationIsAligned) {
  for (int n : {1, 3, 1000}) {
    Tensor t = Tensor::empty({n}, DType::F16);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.raw_data()) % 64, 0u);
  }
}

TEST(DType, HalfConversionsRoundToNearestEven) {
  // Exhaustive: every f16 bit pattern survives f16 -> f32 -> f16.
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = f16_to_f32(uint16_t(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(f32_to_f16(f), h) << "f16 bits " << h;
  }
  EXPECT_EQ(f32_to_f16(65520.f), 0x7c00);  // rounds up to inf
  EXPECT_EQ(f32_to_f16(65519.f), 0x7bff);
  EXPECT_EQ(f32_to_f16(1.f + 0x1p-11f), 0x3c00);  // tie -> even
  EXPECT_EQ(f32_to_f16(1.f + 3 * 0x1p-11f), 0x3c02);
  EXPECT_EQ(f32_to_f16(0x1p-25f), 0);  // half the smallest subnormal: tie to even (0)
  EXPECT_EQ(f32_to_f16(0x1.8p-25f), 1);
  for (uint32_t b = 0; b < 65536; ++b) {
    const float f = bf16_to_f32(uint16_t(b));
    if (std::isnan(f)) continue;
    ASSERT_EQ(f32_to_bf16(f), b);
  }
  EXPECT_EQ(f32_to_bf16(bits_to_float(0x3f808000u)), 0x3f80);  // tie -> even
  EXPECT_EQ(f32_to_bf16(bits_to_float(0x3f818000u)), 0x3f82);
}

TEST(DType, ConversionBetweenTensors) {
  Tensor t = Tensor::from_vector({1.5f, -2.25f, 1e-3f}, {3});
  EXPECT_EQ(t.to(DType::F16).to(DType::F32).to_vector()[0], 1.5f);
  EXPECT_EQ(t.to(DType::BF16).to_vector()[1], -2.25f);
  EXPECT_NEAR(t.to(DType::F16).to_vector()[2], 1e-3f, 1e-6);
  EXPECT_EQ(parse_compute_dtype("bf16"), DType::BF16);
  EXPECT_THROW(parse_compute_dtype("f8"), InvalidArgument);
}

// The same values tools/hashinit.py prints for its self-test.
TEST(HashInit, MatchesSpec) {
  EXPECT_EQ(fnv1a64(""), 0xcbf29ce484222325ull);
  EXPECT_EQ(fnv1a64("a"), 0xaf63dc4c8601ec8cull);
  const Tensor t = hash_init_tensor("a.weight", {2, 3});
  const auto v = t.to_vector();
  for (float x : v) EXPECT_LE(std::abs(x), 1.f / std::sqrt(3.f));
  const Tensor n = hash_init_tensor("x.layer_norm1.weight", {4});
  for (float x : n.to_vector()) EXPECT_NEAR(x, 1.f, 0.1f);
}

}  // namespace
}  // namespace sdserve::test

#ifdef SDSERVE_WITH_CUDA
#include "cuda/runtime.h"
#endif

namespace sdserve::test {
namespace {

TEST(Device, ParseAndAvailability) {
  EXPECT_EQ(parse_device("cpu"), Device::cpu());
  EXPECT_EQ(parse_device("cuda:1"), Device::cuda(1));
  EXPECT_THROW(parse_device("gpu"), InvalidArgument);
  EXPECT_THROW(parse_device("cuda:x"), InvalidArgument);
#ifndef SDSERVE_WITH_CUDA
  EXPECT_THROW(Tensor::empty({4}, DType::F32, Device::cuda(0)), UnsupportedError);
#endif
}

TEST(Device, CudaRoundTrip) {
#ifdef SDSERVE_WITH_CUDA
  if (cuda::device_count() == 0) GTEST_SKIP() << "CUDA build, but no CUDA device on this machine";
  const Tensor h = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {2, 3});
  const Tensor d = h.transpose(0, 1).to(Device::cuda(0));
  EXPECT_EQ(d.to(Device::cpu()).to_vector(), h.transpose(0, 1).contiguous().to_vector());
#else
  GTEST_SKIP() << "built without CUDA (-DSDSERVE_WITH_CUDA=ON to enable)";
#endif
}

}  // namespace
}  // namespace sdserve::test

namespace sdserve {
namespace {

// A tensor with a zero-sized dimension addresses nothing, so it is contiguous whatever its strides
// (as torch says); empty() makes its strides with zero dimensions counted as 1.
TEST(Tensor, ChannelsLastLayout) {
  const Tensor t = Tensor::empty_channels_last({2, 3, 4, 5}, DType::F32);
  EXPECT_EQ(t.shape(), (Shape{2, 3, 4, 5}));
  EXPECT_EQ(t.strides(), (Shape{60, 1, 15, 3}));
  EXPECT_TRUE(t.is_channels_last());
  EXPECT_FALSE(t.is_contiguous());
  EXPECT_THROW(t.view({2, 60}), InvalidArgument);
  // The same memory read as [N, H*W, C] tokens is a free view; as NCHW a copy.
  const Tensor tokens = t.permute({0, 2, 3, 1}).reshape({2, 20, 3});
  EXPECT_EQ(tokens.raw_data(), t.raw_data());
  EXPECT_TRUE(t.contiguous().is_contiguous());
  EXPECT_FALSE(t.contiguous().is_channels_last());
  // A batch slice stays channels last; a channel or pixel window is not dense.
  EXPECT_TRUE(t.narrow(0, 1, 1).is_channels_last());
  EXPECT_FALSE(t.narrow(1, 0, 2).is_channels_last());
  EXPECT_FALSE(t.narrow(3, 1, 3).is_channels_last());
  // Not 4-D, empty, or plain NCHW.
  EXPECT_FALSE(Tensor::empty({2, 3, 4}, DType::F32).is_channels_last());
  EXPECT_FALSE(Tensor::empty({2, 3, 4, 5}, DType::F32).is_channels_last());
  EXPECT_FALSE(Tensor::empty_channels_last({2, 0, 4, 5}, DType::F32).is_channels_last());
  // One channel, or one pixel: both layouts at once.
  EXPECT_TRUE(Tensor::empty({2, 1, 4, 5}, DType::F32).is_channels_last());
  EXPECT_TRUE(Tensor::empty({2, 7, 1, 1}, DType::F32).is_channels_last());
  EXPECT_THROW(Tensor::empty_channels_last({2, 3, 4}, DType::F32), InvalidArgument);
  // Values survive the round trip through the layout.
  const Tensor src = Tensor::from_vector(std::vector<float>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, {1, 3, 2, 2});
  Tensor cl = Tensor::empty_channels_last(src.shape(), DType::F32);
  cl.copy_(src);
  EXPECT_EQ(cl.to_vector(), src.to_vector());
  EXPECT_EQ(std::vector<float>(cl.data<float>(), cl.data<float>() + 12),
            (std::vector<float>{0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11}));
}

TEST(Tensor, EmptyShapesAreContiguous) {
  EXPECT_TRUE(Tensor::empty({4, 0, 3}, DType::F32).is_contiguous());
  EXPECT_TRUE(Tensor::empty({0}, DType::F32).is_contiguous());
  EXPECT_EQ(Tensor::empty({4, 0, 3}, DType::F32).numel(), 0);
}

}  // namespace
}  // namespace sdserve
