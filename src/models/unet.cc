#include "models/unet.h"

#include <cmath>
#include <cstdio>
#include <map>
#include <mutex>

#include "ops/activation.h"
#include "ops/add.h"
#include "ops/concat.h"
#include "ops/graph.h"
#include "ops/group_norm.h"
#include "ops/layer_norm.h"
#include "ops/upsample.h"

namespace sdserve {

namespace {
constexpr float kTransformerGroupNormEps = 1e-6f;  // diffusers Transformer2DModel
constexpr float kLayerNormEps = 1e-5f;

}  // namespace

UNet::Transformer2D UNet::load_transformer(const WeightSource& src, const std::string& p, int64_t ch, int64_t heads,
                                           DType dt) const {
  Transformer2D t;
  t.norm = layers::Norm::load(src, p + ".norm", ch, dt);
  if (cfg_.use_linear_projection) {
    t.proj_in_linear = layers::Linear::load(src, p + ".proj_in", ch, ch, true, dt);
    t.proj_out_linear = layers::Linear::load(src, p + ".proj_out", ch, ch, true, dt);
  } else {
    t.proj_in_conv = layers::Conv2d::load(src, p + ".proj_in", ch, ch, 1, dt);
    t.proj_out_conv = layers::Conv2d::load(src, p + ".proj_out", ch, ch, 1, dt);
  }
  for (int64_t i = 0; i < cfg_.transformer_layers; ++i) {
    const std::string b = p + ".transformer_blocks." + std::to_string(i);
    TransformerBlock tb;
    tb.norm1 = layers::Norm::load(src, b + ".norm1", ch, dt);
    tb.attn1 = layers::Attention::load(src, b + ".attn1", ch, ch, heads, false, dt);
    tb.norm2 = layers::Norm::load(src, b + ".norm2", ch, dt);
    tb.attn2 = layers::Attention::load(src, b + ".attn2", ch, cfg_.cross_attention_dim, heads, false, dt);
    tb.norm3 = layers::Norm::load(src, b + ".norm3", ch, dt);
    tb.ff_in = layers::Linear::load(src, b + ".ff.net.0.proj", ch, ch * 8, true, dt);
    tb.ff_out = layers::Linear::load(src, b + ".ff.net.2", ch * 4, ch, true, dt);
    t.blocks.push_back(std::move(tb));
  }
  return t;
}

UNet UNet::load(const UNetConfig& cfg, const WeightSource& src, DType dt) {
  UNet u;
  u.cfg_ = cfg;
  u.graphs_ = std::make_shared<GraphCache>();
  const auto& ch = cfg.block_out_channels;
  const size_t nb = ch.size();
  SD_CHECK_ARG(nb >= 1 && cfg.down_has_attention.size() == nb && cfg.heads.size() == nb,
               "UNet config: block lists have different lengths");
  const int64_t temb = ch[0] * 4, G = cfg.norm_num_groups;
  const float eps = cfg.norm_eps;
  u.time_1 = layers::Linear::load(src, "time_embedding.linear_1", ch[0], temb, true, dt);
  u.time_2 = layers::Linear::load(src, "time_embedding.linear_2", temb, temb, true, dt);
  u.conv_in = layers::Conv2d::load(src, "conv_in", cfg.in_channels, ch[0], 3, dt);

  int64_t out_ch = ch[0];
  for (size_t i = 0; i < nb; ++i) {
    const int64_t in_ch = out_ch;
    out_ch = ch[i];
    const std::string p = "down_blocks." + std::to_string(i);
    Block b;
    for (int64_t j = 0; j < cfg.layers_per_block; ++j) {
      b.resnets.push_back(layers::ResBlock::load(src, p + ".resnets." + std::to_string(j), j == 0 ? in_ch : out_ch,
                                                 out_ch, temb, G, eps, dt));
      if (cfg.down_has_attention[i])
        b.attentions.push_back(
            u.load_transformer(src, p + ".attentions." + std::to_string(j), out_ch, cfg.heads[i], dt));
    }
    if (i + 1 < nb) b.sampler = layers::Conv2d::load(src, p + ".downsamplers.0.conv", out_ch, out_ch, 3, dt, 2);
    u.down_.push_back(std::move(b));
  }

  if (cfg.mid_block) {
    const int64_t c = ch.back();
    u.mid_.resnets.push_back(layers::ResBlock::load(src, "mid_block.resnets.0", c, c, temb, G, eps, dt));
    u.mid_.attentions.push_back(u.load_transformer(src, "mid_block.attentions.0", c, cfg.heads.back(), dt));
    u.mid_.resnets.push_back(layers::ResBlock::load(src, "mid_block.resnets.1", c, c, temb, G, eps, dt));
  }

  // Up blocks mirror the down blocks; each resnet also eats one skip connection.
  int64_t prev = ch.back();
  for (size_t i = 0; i < nb; ++i) {
    const size_t r = nb - 1 - i;  // matching down level
    const int64_t o = ch[r];
    const int64_t skip_in = ch[r == 0 ? 0 : r - 1];
    const std::string p = "up_blocks." + std::to_string(i);
    Block b;
    for (int64_t j = 0; j <= cfg.layers_per_block; ++j) {
      const int64_t res_skip = j == cfg.layers_per_block ? skip_in : o;
      const int64_t res_in = j == 0 ? prev : o;
      b.resnets.push_back(
          layers::ResBlock::load(src, p + ".resnets." + std::to_string(j), res_in + res_skip, o, temb, G, eps, dt));
      if (cfg.down_has_attention[r])
        b.attentions.push_back(u.load_transformer(src, p + ".attentions." + std::to_string(j), o, cfg.heads[r], dt));
    }
    if (i + 1 < nb) b.sampler = layers::Conv2d::load(src, p + ".upsamplers.0.conv", o, o, 3, dt);
    prev = o;
    u.up_.push_back(std::move(b));
  }
  u.norm_out = layers::Norm::load(src, "conv_norm_out", ch[0], dt);
  u.conv_out = layers::Conv2d::load(src, "conv_out", ch[0], cfg.out_channels, 3, dt);
  return u;
}

Tensor UNet::time_embedding(const std::vector<float>& timesteps, int64_t n) const {
  SD_CHECK_ARG(timesteps.size() == 1 || int64_t(timesteps.size()) == n, "UNet: give one timestep or one per sample");
  const int64_t dim = cfg_.block_out_channels[0], half = dim / 2;
  // diffusers get_timestep_embedding, in float32 like PyTorch.
  std::vector<float> freqs(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    const float exponent = float(-std::log(10000.0)) * float(i) / float(half - cfg_.freq_shift);
    freqs[size_t(i)] = std::exp(exponent);
  }
  // zeros: an odd dim leaves the last column unwritten, and diffusers zero-pads it.
  Tensor e = Tensor::zeros({n, dim}, DType::F32);
  float* p = e.data<float>();
  for (int64_t b = 0; b < n; ++b) {
    const float t = timesteps[timesteps.size() == 1 ? 0 : size_t(b)];
    for (int64_t i = 0; i < half; ++i) {
      const float a = t * freqs[size_t(i)];
      const float s = std::sin(a), c = std::cos(a);
      p[b * dim + i] = cfg_.flip_sin_to_cos ? c : s;
      p[b * dim + half + i] = cfg_.flip_sin_to_cos ? s : c;
    }
  }
  return e;
}

Tensor UNet::run_transformer(const Transformer2D& t, const Tensor& x, const Tensor& context) const {
  const int64_t h = x.size(2), w = x.size(3);
  Tensor y = ops::group_norm(x, cfg_.norm_num_groups, t.norm.w, t.norm.b, kTransformerGroupNormEps);
  if (cfg_.use_linear_projection) {
    y = t.proj_in_linear(layers::nchw_to_tokens(y));
  } else {
    y = layers::nchw_to_tokens(t.proj_in_conv(y));
  }
  for (const TransformerBlock& b : t.blocks) {
    y = ops::add(y, b.attn1(ops::layer_norm(y, b.norm1.w, b.norm1.b, kLayerNormEps), Tensor()));
    y = ops::add(y, b.attn2(ops::layer_norm(y, b.norm2.w, b.norm2.b, kLayerNormEps), context));
    y = ops::add(y, b.ff_out(ops::geglu(b.ff_in(ops::layer_norm(y, b.norm3.w, b.norm3.b, kLayerNormEps)))));
  }
  if (cfg_.use_linear_projection) {
    y = layers::tokens_to_nchw(t.proj_out_linear(y), h, w);
  } else {
    y = t.proj_out_conv(layers::tokens_to_nchw(y, h, w));
  }
  return ops::add(y, x);
}

void UNet::for_each_weight(const std::function<void(const std::string&, Tensor&)>& fn) {
  auto lin = [&](layers::Linear& l) {
    if (l.w.defined()) fn(l.name, l.w);
  };
  auto conv = [&](layers::Conv2d& c) {
    if (c.w.defined()) fn(c.name, c.w);
  };
  auto block = [&](Block& b) {
    for (layers::ResBlock& r : b.resnets) {
      conv(r.conv1);
      conv(r.conv2);
      conv(r.shortcut);
      lin(r.time_emb_proj);
    }
    for (Transformer2D& t : b.attentions) {
      lin(t.proj_in_linear);
      lin(t.proj_out_linear);
      conv(t.proj_in_conv);
      conv(t.proj_out_conv);
      for (TransformerBlock& tb : t.blocks) {
        for (layers::Attention* a : {&tb.attn1, &tb.attn2})
          for (layers::Linear* l : {&a->q, &a->k, &a->v, &a->out}) lin(*l);
        lin(tb.ff_in);
        lin(tb.ff_out);
      }
    }
    conv(b.sampler);
  };
  lin(time_1);
  lin(time_2);
  conv(conv_in);
  for (Block& b : down_) block(b);
  block(mid_);
  for (Block& b : up_) block(b);
  conv(conv_out);
}

// Graphs per input shape, least recently used first out. A shape is run eagerly once (cuDNN and
// cuBLASLt pick their algorithms and size their workspaces then, which a capture must not do),
// captured on its second call and replayed from then on. LoRA merges write the weights in
// place, so a graph stays valid across them.
struct UNet::GraphCache {
  struct Entry {
    int calls = 0;
    int failures = 0;  // captures the driver refused; after three the shape stays eager
    std::unique_ptr<ops::DeviceGraph> graph;
    Tensor x, temb, context, out;  // the addresses the graph reads and writes
    uint64_t last_use = 0;
  };
  std::mutex mu;  // one generation at a time per model, but keep the cache itself safe
  std::map<std::string, Entry> entries;
  uint64_t clock = 0;
  size_t captured = 0;
};

size_t UNet::graphs_captured() const {
  std::lock_guard<std::mutex> lock(graphs_->mu);
  return graphs_->captured;
}

size_t UNet::lend_idle_graph_memory(const std::function<void()>& fn) const {
  GraphCache& cache = *graphs_;
  std::lock_guard<std::mutex> lock(cache.mu);  // no step replays a graph while its memory is lent
  std::vector<const ops::DeviceGraph*> graphs;
  for (const auto& [key, e] : cache.entries)
    if (e.graph) graphs.push_back(e.graph.get());
  bool returned_all = true;
  const auto drop_if_kept = [&] {
    if (returned_all) return;
    // Some of the graphs' memory is still held: a replay would overwrite it. Drop the graphs (their
    // pools live on with those blocks); the next steps capture new ones.
    std::fprintf(stderr, "sdserve: warning: memory lent from the UNet's CUDA graphs was kept; recapturing them\n");
    cache.entries.clear();
  };
  size_t lent = 0;
  try {
    lent = ops::DeviceGraph::lend_idle_memory(graphs, fn, &returned_all);
  } catch (...) {
    drop_if_kept();
    throw;
  }
  drop_if_kept();
  return lent;
}

namespace {
std::string graph_key(const Tensor& x, const Tensor& temb, const Tensor& context) {
  auto one = [](const Tensor& t) { return shape_str(t.shape()) + dtype_name(t.dtype()) + t.device().str(); };
  return one(x) + "|" + one(temb) + "|" + one(context);
}
}  // namespace

Tensor UNet::forward(const Tensor& x_in, const std::vector<float>& timesteps, const Tensor& context_in) const {
  SD_CHECK_ARG(
      x_in.dim() == 4 && x_in.size(1) == cfg_.in_channels,
      "UNet: input must be [N, " + std::to_string(cfg_.in_channels) + ", h, w], got " + shape_str(x_in.shape()));
  SD_CHECK_ARG(
      context_in.dim() == 3 && context_in.size(0) == x_in.size(0) && context_in.size(2) == cfg_.cross_attention_dim,
      "UNet: context must be [N, T, " + std::to_string(cfg_.cross_attention_dim) + "], got " +
          shape_str(context_in.shape()));
  const Tensor temb_in = time_embedding(timesteps, x_in.size(0));  // host f32
  if (ops::DeviceGraph::available(conv_in.w.device())) {
    Tensor out = forward_graphed(x_in, temb_in, context_in);
    if (out.defined()) return out;
  }
  const Device dev = conv_in.w.device();
  return forward_core(x_in.to(dev), temb_in.to(dev), context_in.to(dev));
}

Tensor UNet::forward_graphed(const Tensor& x_in, const Tensor& temb_in, const Tensor& context_in) const {
  const Device dev = conv_in.w.device();
  GraphCache& cache = *graphs_;
  std::lock_guard<std::mutex> lock(cache.mu);
  const std::string key = graph_key(x_in, temb_in, context_in);
  auto it = cache.entries.find(key);
  if (it == cache.entries.end()) {
    while (int(cache.entries.size()) >= ops::DeviceGraph::max_cached()) {
      auto oldest = cache.entries.begin();
      for (auto e = cache.entries.begin(); e != cache.entries.end(); ++e)
        if (e->second.last_use < oldest->second.last_use) oldest = e;
      cache.entries.erase(oldest);
    }
    it = cache.entries.emplace(key, GraphCache::Entry{}).first;
  }
  GraphCache::Entry& e = it->second;
  e.last_use = ++cache.clock;
  if (e.failures >= 3 || ++e.calls < 2) return Tensor();  // eager: the warm-up run, or a shape that failed
  if (!e.graph) {
    e.x = Tensor::empty(x_in.shape(), x_in.dtype(), dev);
    e.temb = Tensor::empty(temb_in.shape(), temb_in.dtype(), dev);
    e.context = Tensor::empty(context_in.shape(), context_in.dtype(), dev);
    Tensor out;
    std::string why;
    e.graph = ops::DeviceGraph::capture(
        dev, [&] { out = forward_core(e.x, e.temb, e.context); }, &why);
    if (!e.graph) {
      // A capture can fail for a passing reason (another thread freeing a graph's pool meanwhile
      // invalidates it), so the shape is warmed up and tried again, up to three times.
      ++e.failures;
      e.calls = 0;
      e.x = e.temb = e.context = Tensor();
      std::fprintf(stderr, "sdserve: warning: UNet steps at %s run without a CUDA graph%s: %s\n",
                   shape_str(x_in.shape()).c_str(), e.failures >= 3 ? "" : " for now", why.c_str());
      return Tensor();
    }
    e.out = out;
    ++cache.captured;
  }
  ops::upload_into(e.x, x_in);
  ops::upload_into(e.temb, temb_in);
  ops::upload_into(e.context, context_in);
  e.graph->replay();
  return e.out.clone();  // the next replay overwrites e.out
}

Tensor UNet::forward_core(const Tensor& x_in, const Tensor& temb_in, const Tensor& context_in) const {
  const DType dt = conv_in.w.dtype();
  const Tensor x = x_in.to(dt), context = context_in.to(dt);
  Tensor temb = time_2(ops::activation(time_1(temb_in.to(dt)), ops::Activation::SiLU));
  const Tensor temb_act = ops::activation(temb, ops::Activation::SiLU);  // every resnet applies SiLU first

  Tensor h = conv_in(x);
  std::vector<Tensor> skips{h};
  for (const Block& b : down_) {
    for (size_t j = 0; j < b.resnets.size(); ++j) {
      h = b.resnets[j](h, temb_act);
      if (!b.attentions.empty()) h = run_transformer(b.attentions[j], h, context);
      skips.push_back(h);
    }
    if (b.sampler.w.defined()) {
      h = b.sampler(h);
      skips.push_back(h);
    }
  }
  if (cfg_.mid_block) {
    h = mid_.resnets[0](h, temb_act);
    h = run_transformer(mid_.attentions[0], h, context);
    h = mid_.resnets[1](h, temb_act);
  }
  for (const Block& b : up_) {
    for (size_t j = 0; j < b.resnets.size(); ++j) {
      h = ops::concat({h, skips.back()}, 1);
      skips.pop_back();
      h = b.resnets[j](h, temb_act);
      if (!b.attentions.empty()) h = run_transformer(b.attentions[j], h, context);
    }
    if (b.sampler.w.defined()) {
      // Upsample to the next skip's size: sizes not divisible by 2^levels round like diffusers.
      const Tensor& next = skips.back();
      h = b.sampler(ops::upsample_nearest(h, next.size(2), next.size(3)));
    }
  }
  h = ops::group_norm(h, cfg_.norm_num_groups, norm_out.w, norm_out.b, cfg_.norm_eps, /*silu=*/true);
  return conv_out(h);
}

}  // namespace sdserve
