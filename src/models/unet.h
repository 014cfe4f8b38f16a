// UNet2DConditionModel for SD1.x / SD2.x (epsilon or v prediction is the
// scheduler's business). Weights are named as in diffusers; single-file
// checkpoints reach it through a renaming WeightSource (io/ldm_names.h).
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "models/configs.h"
#include "models/layers.h"

namespace sdserve {

class UNet {
 public:
  static UNet load(const UNetConfig& cfg, const WeightSource& src, DType dtype = DType::F32);

  // x [N, in, h, w], timesteps: one per sample (or one for all), context [N, T, cross_attention_dim].
  Tensor forward(const Tensor& x, const std::vector<float>& timesteps, const Tensor& context) const;
  const UNetConfig& config() const { return cfg_; }
  // Device graphs captured so far (ops/graph.h; 0 on the CPU), for tests and logs.
  size_t graphs_captured() const;
  // Runs fn (a VAE pass after the steps) with the idle memory of this UNet's device graphs lent
  // to it (ops::DeviceGraph::lend_idle_memory), holding the UNet's steps off meanwhile. fn must
  // leave nothing it allocated on the device (bring its result to the host); if it does, the
  // graphs are dropped and captured again on later steps. fn must not use this UNet: its steps
  // wait for fn (a forward() inside would deadlock). Returns how many blocks were lent.
  size_t lend_idle_graph_memory(const std::function<void()>& fn) const;
  // Every Linear and Conv2d weight with its diffusers module name ("down_blocks.0.resnets.0.conv1"),
  // for merging LoRA-family networks in place (pipeline/lora.h).
  void for_each_weight(const std::function<void(const std::string& module, Tensor& weight)>& fn);

 private:
  struct TransformerBlock {
    layers::Norm norm1, norm2, norm3;
    layers::Attention attn1, attn2;
    layers::Linear ff_in, ff_out;  // GEGLU projection (to 2 x inner) and back
  };
  struct Transformer2D {
    layers::Norm norm;
    layers::Linear proj_in_linear, proj_out_linear;  // use_linear_projection
    layers::Conv2d proj_in_conv, proj_out_conv;      // otherwise (1x1 convs)
    std::vector<TransformerBlock> blocks;
  };
  struct Block {
    std::vector<layers::ResBlock> resnets;
    std::vector<Transformer2D> attentions;  // empty for blocks without cross-attention
    layers::Conv2d sampler;                 // downsampler / upsampler conv; undefined if none
  };

  Transformer2D load_transformer(const WeightSource& src, const std::string& p, int64_t ch, int64_t heads,
                                 DType dt) const;
  Tensor run_transformer(const Transformer2D& t, const Tensor& x, const Tensor& context) const;
  Tensor time_embedding(const std::vector<float>& timesteps, int64_t n) const;
  // The network proper, from the sinusoidal time embedding [N, C] on; inputs in any dtype on the
  // weights' device.
  Tensor forward_core(const Tensor& x, const Tensor& temb_in, const Tensor& context) const;
  // forward() through a captured device graph per input shape (ops/graph.h); an empty tensor
  // when the shape is not (or cannot be) graphed yet and the caller should run eagerly.
  Tensor forward_graphed(const Tensor& x, const Tensor& temb_in, const Tensor& context) const;

  UNetConfig cfg_;
  layers::Linear time_1, time_2;
  layers::Conv2d conv_in, conv_out;
  layers::Norm norm_out;
  std::vector<Block> down_, up_;
  Block mid_;
  struct GraphCache;
  std::shared_ptr<GraphCache> graphs_;  // per input shape; shared by moved-from copies
};

}  // namespace sdserve
