// Elementwise and layout ops of the ESRGAN-family upscalers (models/esrgan.h): leaky ReLU, PReLU,
// a scaled residual add, pixel shuffle/unshuffle and reflect padding, for f32/f16/bf16 (computed
// in f32) on the CPU and on CUDA devices (src/cuda/upscale_kernels.cu).
#pragma once
#include "core/tensor.h"

namespace sdserve::ops {

// max(x, 0) + slope * min(x, 0) (PyTorch nn.LeakyReLU).
Tensor leaky_relu(const Tensor& x, float slope);
// In place on a contiguous tensor (e.g. a conv output nothing else holds).
void leaky_relu_(Tensor& x, float slope);

// x [N, C, ...] with one slope per channel, weight [C] or [1] (PyTorch nn.PReLU).
Tensor prelu(const Tensor& x, const Tensor& weight);

// a * alpha + b, same shapes (the RRDB's "out * 0.2 + x").
Tensor scaled_add(const Tensor& a, float alpha, const Tensor& b);

// [N, C*r*r, H, W] -> [N, C, H*r, W*r] (torch.pixel_shuffle) and its inverse
// [N, C, H*r, W*r] -> [N, C*r*r, H, W] (torch.pixel_unshuffle; H, W must be multiples of r).
Tensor pixel_shuffle(const Tensor& x, int64_t r);
Tensor pixel_unshuffle(const Tensor& x, int64_t r);

// Pads x [N, C, H, W] at the bottom and right by reflection (F.pad(x, (0, right, 0, bottom),
// "reflect")). Where PyTorch requires pad < size this is the same; larger pads keep reflecting
// (a size-1 dimension repeats its one value).
Tensor pad_reflect_br(const Tensor& x, int64_t bottom, int64_t right);

}  // namespace sdserve::ops
