// The CUDA side of the ops in src/ops: each op validates shapes and devices there, then calls
// the function of the same name here when its tensors live on a CUDA device. Inputs may be
// strided views; outputs are new tensors on the same device, in the input's dtype, contiguous
// except where a comment says channels last (Tensor::is_channels_last): half-precision
// convolutions hand their output on in that layout (keep_channels_last in cuda/conv.h), and the
// ops between convolutions (group norm, the adds, activations, upsampling, channel concat) keep
// it, so activations are not transposed between convolutions.
#pragma once
#include <vector>

#include "core/tensor.h"
#include "cuda/kernels.h"

namespace sdserve::cuda {

// Half precision: channels last out (unless keep_channels_last says no); f32: contiguous.
Tensor conv2d(const Tensor& x, const Tensor& w, const Tensor* bias, int64_t stride, int64_t pad_t, int64_t pad_l,
              int64_t pad_b, int64_t pad_r);
Tensor linear(const Tensor& x, const Tensor& w, const Tensor* bias);
// q, k, v: [B, H, T, d] views. Result: [B, H, Tq, dv] view of a [B, Tq, H, dv] buffer.
Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, float scale);
Tensor activation(const Tensor& x, Act act);  // keeps channels last
Tensor geglu(const Tensor& x);
// b broadcast over a's leading dims. Same shapes with either side channels last: channels last.
Tensor add(const Tensor& a, const Tensor& b);
Tensor add_channelwise(const Tensor& x, const Tensor& b);      // x [N, C, ...], b [N, C] or [C]; keeps channels last
Tensor concat(const std::vector<Tensor>& parts, int64_t dim);  // dim 1 with a channels-last part: channels last
Tensor embedding(const Tensor& weight, const Tensor& ids_host);
Tensor group_norm(const Tensor& x, int64_t groups, const Tensor& gamma, const Tensor& beta, float eps,
                  bool silu);  // keeps channels last
Tensor layer_norm(const Tensor& x, const Tensor& gamma, const Tensor& beta, float eps);
Tensor softmax(const Tensor& x);
Tensor upsample_nearest(const Tensor& x, int64_t oh, int64_t ow);  // keeps channels last

// Which attention implementation ops::attention uses on the GPU: Auto (the fused kernel where
// it applies, else the GEMM path), Flash (fused only; throws where it does not apply) or Math.
// SDSERVE_CUDA_ATTENTION=flash|math|auto sets the default; tests switch it.
enum class AttentionImpl { Auto, Flash, Math };
void set_attention_impl(AttentionImpl impl);
AttentionImpl attention_impl();

}  // namespace sdserve::cuda
