#include "models/esrgan.h"

#include <algorithm>
#include <charconv>
#include <functional>
#include <set>
#include <string_view>

#include "ops/add.h"
#include "ops/upsample.h"
#include "ops/upscale_ops.h"

namespace sdserve {
namespace {

constexpr float kSlope = 0.2f;     // LeakyReLU negative slope (RRDBNet)
constexpr float kResidual = 0.2f;  // dense block and RRDB residual scale

// The integer N of `key` == head + N + tail, or -1.
int64_t index_in(std::string_view key, std::string_view head, std::string_view tail) {
  if (key.size() <= head.size() + tail.size() || key.substr(0, head.size()) != head ||
      key.substr(key.size() - tail.size()) != tail)
    return -1;
  const std::string_view num = key.substr(head.size(), key.size() - head.size() - tail.size());
  int64_t v = -1;
  const auto [p, ec] = std::from_chars(num.data(), num.data() + num.size(), v);
  if (ec != std::errc() || p != num.data() + num.size() || v < 0) return -1;
  return v;
}

// Largest N over keys head + N + tail, or -1.
int64_t max_index(const std::vector<std::string>& keys, std::string_view head, std::string_view tail) {
  int64_t m = -1;
  for (const std::string& k : keys) m = std::max(m, index_in(k, head, tail));
  return m;
}

// The RRDBNet modules' names in one key layout (module prefixes, without ".weight").
struct RrdbNames {
  std::string layout;
  std::string block_head, block_tail;  // block b's first conv weight: block_head + b + block_tail
  std::function<std::string()> first;
  std::function<std::string(int64_t nb)> trunk;
  std::function<std::string(int64_t b, int r, int c)> rdb;  // r, c 1-based
  std::function<std::string(int64_t i)> up;                 // i 1-based
  std::function<std::string(int64_t n)> hr, last;           // n = number of upsampling stages
};

RrdbNames basicsr_names() {
  return {"BasicSR",
          "body.",
          ".rdb1.conv1.weight",
          [] { return std::string("conv_first"); },
          [](int64_t) { return std::string("conv_body"); },
          [](int64_t b, int r, int c) {
            return "body." + std::to_string(b) + ".rdb" + std::to_string(r) + ".conv" + std::to_string(c);
          },
          [](int64_t i) { return "conv_up" + std::to_string(i); },
          [](int64_t) { return std::string("conv_hr"); },
          [](int64_t) { return std::string("conv_last"); }};
}

RrdbNames bsrgan_names() {
  return {"BSRGAN",
          "RRDB_trunk.",
          ".RDB1.conv1.weight",
          [] { return std::string("conv_first"); },
          [](int64_t) { return std::string("trunk_conv"); },
          [](int64_t b, int r, int c) {
            return "RRDB_trunk." + std::to_string(b) + ".RDB" + std::to_string(r) + ".conv" + std::to_string(c);
          },
          [](int64_t i) { return "upconv" + std::to_string(i); },
          [](int64_t) { return std::string("HRconv"); },
          [](int64_t) { return std::string("conv_last"); }};
}

RrdbNames esrgan_names() {
  return {"ESRGAN",
          "model.1.sub.",
          ".RDB1.conv1.0.weight",
          [] { return std::string("model.0"); },
          [](int64_t nb) { return "model.1.sub." + std::to_string(nb); },
          [](int64_t b, int r, int c) {
            return "model.1.sub." + std::to_string(b) + ".RDB" + std::to_string(r) + ".conv" + std::to_string(c) + ".0";
          },
          [](int64_t i) { return "model." + std::to_string(3 * i); },
          [](int64_t n) { return "model." + std::to_string(3 * n + 2); },
          [](int64_t n) { return "model." + std::to_string(3 * n + 4); }};
}

// The names of `layout` as this file spells them: BasicSR- and BSRGAN-style files name their upsampling
// and HR convs either way ("conv_up1"/"upconv1", "conv_hr"/"HRconv"), which spandrel accepts too.
RrdbNames names_for(const WeightSource& src, const std::string& layout) {
  if (layout == "ESRGAN") return esrgan_names();
  RrdbNames nm = layout == "BSRGAN" ? bsrgan_names() : basicsr_names();
  if (src.has("conv_up1.weight"))
    nm.up = [](int64_t i) { return "conv_up" + std::to_string(i); };
  else if (src.has("upconv1.weight"))
    nm.up = [](int64_t i) { return "upconv" + std::to_string(i); };
  if (src.has("conv_hr.weight"))
    nm.hr = [](int64_t) { return std::string("conv_hr"); };
  else if (src.has("HRconv.weight"))
    nm.hr = [](int64_t) { return std::string("HRconv"); };
  return nm;
}

std::string quoted_list(const std::vector<std::string>& keys, size_t n) {
  std::vector<std::string> k = keys;
  std::sort(k.begin(), k.end());
  std::string s;
  for (size_t i = 0; i < std::min(n, k.size()); ++i) s += (i ? ", '" : "'") + k[i] + "'";
  if (k.size() > n) s += ", ...";
  return s;
}

bool any_key(const std::vector<std::string>& keys, const std::function<bool(const std::string&)>& pred) {
  return std::any_of(keys.begin(), keys.end(), pred);
}

bool starts_with(const std::string& s, std::string_view p) { return s.compare(0, p.size(), p) == 0; }

// A hint on what a file that is not an ESRGAN-family network holds.
std::string guess_kind(const std::vector<std::string>& keys) {
  if (any_key(keys, [](const std::string& k) {
        return starts_with(k, "model.diffusion_model.") || starts_with(k, "first_stage_model.");
      }))
    return "; it looks like a Stable Diffusion checkpoint";
  if (any_key(keys, [](const std::string& k) {
        return k.find(".lora_down.") != std::string::npos || k.find(".lora_A.") != std::string::npos;
      }))
    return "; it looks like a LoRA";
  if (any_key(keys, [](const std::string& k) { return starts_with(k, "layers.0.residual_group."); }))
    return "; it looks like a SwinIR/HAT-style transformer upscaler, which sdserve does not run yet";
  return "";
}

const TensorInfo& need(const WeightSource& src, const std::string& name, const std::string& what) {
  const TensorInfo* i = src.info(name);
  if (!i)
    throw ModelFormatError(src.describe() + ": " + what + " without '" + src.full_name(name) +
                           "': the file is incomplete or not a complete model");
  return *i;
}

UpscalerConfig detect_rrdb(const WeightSource& src, const std::vector<std::string>& keys, const RrdbNames& nm) {
  UpscalerConfig c;
  c.arch = UpscalerArch::RRDBNet;
  c.layout = nm.layout;
  const std::string what = "an RRDBNet (" + nm.layout + " keys)";
  // Blocks: the highest index with a first dense-block conv.
  c.blocks = max_index(keys, nm.block_head, nm.block_tail) + 1;
  if (c.blocks < 1) throw ModelFormatError(src.describe() + ": " + what + " without RRDB blocks");
  // Upsampling stages.
  if (nm.layout == "ESRGAN") {
    int64_t last = -1;
    for (const std::string& k : keys) last = std::max(last, index_in(k, "model.", ".weight"));
    if (last < 4 || (last - 4) % 3 != 0)
      throw ModelFormatError(src.describe() + ": " + what + " whose last layer is 'model." + std::to_string(last) +
                             "', expected model.4, model.7, model.10, ... (4 + 3 x upsampling stages)");
    c.upsamples = (last - 4) / 3;
  } else {
    c.upsamples = 0;
    while (src.has(nm.up(c.upsamples + 1) + ".weight")) ++c.upsamples;
  }
  const TensorInfo& first = need(src, nm.first() + ".weight", what);
  const TensorInfo& grow = need(src, nm.rdb(0, 1, 1) + ".weight", what);
  const TensorInfo& last = need(src, nm.last(c.upsamples) + ".weight", what);
  for (const TensorInfo* t : {&first, &grow, &last})
    if (t->shape.size() != 4)
      throw ModelFormatError(src.describe() + ": '" + t->name + "' has shape " + shape_str(t->shape) +
                             ", expected a convolution [out, in, 3, 3]");
  const int64_t in_nc = first.shape[1];
  c.features = first.shape[0];
  c.growth = grow.shape[0];
  c.out_channels = last.shape[0];
  // Real-ESRGAN x2plus / x1: the input is pixel-unshuffled by 2 / 4, so it has 4 / 16 times the channels.
  c.unshuffle = in_nc == c.out_channels * 4 ? 2 : in_nc == c.out_channels * 16 ? 4 : 1;
  c.in_channels = in_nc / (c.unshuffle * c.unshuffle);
  const int64_t net_scale = int64_t(1) << std::min<int64_t>(c.upsamples, 30);
  if (c.upsamples > 4 || net_scale % c.unshuffle != 0)
    throw UnsupportedError(src.describe() + ": " + what + " with " + std::to_string(c.upsamples) +
                           " upsampling stages and a pixel-unshuffle by " + std::to_string(c.unshuffle) +
                           " is not a scale sdserve handles (1x, 2x, 4x, 8x, 16x)");
  c.scale = net_scale / c.unshuffle;
  return c;
}

UpscalerConfig detect_compact(const WeightSource& src, const std::vector<std::string>& keys) {
  UpscalerConfig c;
  c.arch = UpscalerArch::Compact;
  c.layout = "Compact";
  c.growth = 0;
  c.upsamples = 0;
  int64_t highest = -1;
  for (const std::string& k : keys)
    if (starts_with(k, "body.")) {
      const std::string_view rest = std::string_view(k).substr(5);
      const size_t dot = rest.find('.');
      highest = std::max(highest, index_in(std::string(rest.substr(0, dot)), "", ""));
    }
  if (highest < 2 || highest % 2 != 0)
    throw ModelFormatError(src.describe() + ": an SRVGGNetCompact whose last layer is 'body." +
                           std::to_string(highest) + "', expected an even index >= 2 (convs at even indices)");
  c.blocks = (highest - 2) / 2;
  const std::string what = "an SRVGGNetCompact";
  const TensorInfo& first = need(src, "body.0.weight", what);
  const TensorInfo& last = need(src, "body." + std::to_string(highest) + ".bias", what);
  c.in_channels = first.shape[1];
  c.features = first.shape[0];
  const int64_t x = last.shape.empty() ? 0 : last.shape[0];
  // spandrel's get_scale_and_output_channels: x = scale^2 * out, out most likely in, 3, 4 or 1.
  c.out_channels = 0;
  for (const int64_t cand : {c.in_channels, int64_t(3), int64_t(4), int64_t(1)}) {
    if (cand < 1 || x % cand != 0) continue;
    const int64_t sq = x / cand;
    int64_t r = 1;
    while (r * r < sq) ++r;
    if (r * r == sq) {
      c.out_channels = cand;
      c.scale = r;
      break;
    }
  }
  if (c.out_channels == 0)
    throw ModelFormatError(src.describe() + ": the last SRVGGNetCompact conv has " + std::to_string(x) +
                           " outputs, which is not scale^2 x 1, 3 or 4 channels");
  if (c.out_channels != c.in_channels)
    throw UnsupportedError(src.describe() + ": an SRVGGNetCompact with " + std::to_string(c.in_channels) +
                           " input and " + std::to_string(c.out_channels) + " output channels is not supported");
  return c;
}

}  // namespace

std::string UpscalerConfig::describe() const {
  std::string s;
  if (arch == UpscalerArch::Compact) {
    s = "SRVGGNetCompact, " + std::to_string(blocks) + " convs, " + std::to_string(features) + " features";
  } else {
    s = "RRDBNet (" + layout + " keys), " + std::to_string(blocks) + " blocks, nf " + std::to_string(features) +
        ", gc " + std::to_string(growth);
    if (unshuffle > 1) s += ", pixel-unshuffle " + std::to_string(unshuffle);
  }
  if (in_channels != 3 || out_channels != 3)
    s += ", " + std::to_string(in_channels) + " -> " + std::to_string(out_channels) + " channels";
  return s + ", x" + std::to_string(scale);
}

const char* supported_upscalers() {
  return "RRDBNet (ESRGAN, BSRGAN, Real-ESRGAN x4plus/x2plus/x1/anime; BasicSR, original-ESRGAN or BSRGAN key "
         "names) and SRVGGNetCompact (Real-ESRGAN compact)";
}

WeightSource canonical_upscaler_source(const WeightSource& src) {
  WeightSource s = src;
  std::vector<std::string> keys = s.keys();
  // Wrapped state dicts, flattened: the first of spandrel's unwrap keys that is present wins ("model"
  // and "net" are left out: "model.0.weight" is the original ESRGAN's own first layer).
  for (const char* p : {"params_ema.", "params-ema.", "params.", "state_dict.", "model_state_dict."})
    if (any_key(keys, [&](const std::string& k) { return starts_with(k, p); })) {
      s = s.with_prefix(p);
      keys = s.keys();
      break;
    }
  for (const char* p : {"module.", "netG."})
    if (!keys.empty() &&
        std::all_of(keys.begin(), keys.end(), [&](const std::string& k) { return starts_with(k, p); })) {
      s = s.with_prefix(p);
      keys = s.keys();
    }
  return s;
}

UpscalerConfig detect_upscaler(const WeightSource& src) {
  const std::vector<std::string> keys = src.keys();
  auto has = [&](const char* k) { return src.has(k); };
  if (any_key(keys, [](const std::string& k) {
        return k.find(".conv1x1.") != std::string::npos &&
               (starts_with(k, "model.1.sub.") || starts_with(k, "body.") || starts_with(k, "RRDB_trunk."));
      }))
    throw UnsupportedError(src.describe() +
                           ": ESRGAN+ (RRDB blocks with extra conv1x1 paths) is not supported; "
                           "supported: " +
                           supported_upscalers());
  if (has("model.1.sub.0.RDB1.conv1.0.weight")) return detect_rrdb(src, keys, names_for(src, "ESRGAN"));
  if (has("body.0.rdb1.conv1.weight")) return detect_rrdb(src, keys, names_for(src, "BasicSR"));
  if (has("RRDB_trunk.0.RDB1.conv1.weight")) return detect_rrdb(src, keys, names_for(src, "BSRGAN"));
  if (has("body.0.weight") && has("body.1.weight") && src.info("body.0.weight")->shape.size() == 4 &&
      src.info("body.1.weight")->shape.size() == 1)
    return detect_compact(src, keys);
  const std::string where = src.prefix().empty() ? "" : " under '" + src.prefix() + "'";
  throw UnsupportedError(src.describe() + ": not an ESRGAN-family upscaler (" + std::to_string(keys.size()) +
                         " tensors" + where + (keys.empty() ? "" : ", e.g. " + quoted_list(keys, 3)) + ")" +
                         guess_kind(keys) + "; supported: " + supported_upscalers());
}

std::shared_ptr<const UpscalerNet> UpscalerNet::load(const WeightSource& src, DType dtype) {
  SD_CHECK_ARG(is_float(dtype), std::string("UpscalerNet: dtype must be a float type, got ") + dtype_name(dtype));
  auto net = std::shared_ptr<UpscalerNet>(new UpscalerNet());
  net->config_ = detect_upscaler(src);
  net->dtype_ = dtype;
  net->device_ = src.device();
  const UpscalerConfig& c = net->config_;
  try {
    if (c.arch == UpscalerArch::RRDBNet) {
      const RrdbNames nm = names_for(src, c.layout);
      const int64_t nf = c.features, gc = c.growth;
      const int64_t in_nc = c.in_channels * c.unshuffle * c.unshuffle;
      net->first_ = layers::Conv2d::load(src, nm.first(), in_nc, nf, 3, dtype);
      net->body_.resize(size_t(c.blocks));
      for (int64_t b = 0; b < c.blocks; ++b)
        for (int r = 0; r < 3; ++r)
          for (int k = 0; k < 5; ++k)
            net->body_[size_t(b)].rdb[r].conv[k] =
                layers::Conv2d::load(src, nm.rdb(b, r + 1, k + 1), nf + k * gc, k == 4 ? nf : gc, 3, dtype);
      net->trunk_ = layers::Conv2d::load(src, nm.trunk(c.blocks), nf, nf, 3, dtype);
      for (int64_t i = 1; i <= c.upsamples; ++i)
        net->ups_.push_back(layers::Conv2d::load(src, nm.up(i), nf, nf, 3, dtype));
      net->hr_ = layers::Conv2d::load(src, nm.hr(c.upsamples), nf, nf, 3, dtype);
      net->last_ = layers::Conv2d::load(src, nm.last(c.upsamples), nf, c.out_channels, 3, dtype);
    } else {
      const int64_t n = c.blocks + 2;  // convs: first, body, last
      for (int64_t i = 0; i < n; ++i) {
        const int64_t in = i == 0 ? c.in_channels : c.features;
        const int64_t out = i == n - 1 ? c.out_channels * c.scale * c.scale : c.features;
        net->convs_.push_back(layers::Conv2d::load(src, "body." + std::to_string(2 * i), in, out, 3, dtype));
        if (i == n - 1) break;
        const std::string slope = "body." + std::to_string(2 * i + 1) + ".weight";
        const Shape s = layers::stored_shape(src, slope);
        if (s.size() != 1 || (s[0] != c.features && s[0] != 1))
          throw ModelFormatError(src.describe() + ": PReLU '" + src.full_name(slope) + "' has shape " + shape_str(s) +
                                 ", expected [" + std::to_string(c.features) + "]");
        net->slopes_.push_back(src.get(slope, dtype));
      }
    }
  } catch (const NotFoundError& e) {
    throw ModelFormatError(std::string(e.what()) + " (an incomplete " + c.describe() + ")");
  }
  return net;
}

Tensor UpscalerNet::forward(const Tensor& x) const {
  SD_CHECK_ARG(
      x.dim() == 4 && x.size(1) == config_.in_channels,
      "upscaler: input must be [N, " + std::to_string(config_.in_channels) + ", H, W], got " + shape_str(x.shape()));
  SD_CHECK_ARG(x.size(2) >= 1 && x.size(3) >= 1, "upscaler: empty image");
  const Tensor in = x.to(dtype_).to(device_);
  return config_.arch == UpscalerArch::RRDBNet ? forward_rrdb(in) : forward_compact(in);
}

// ResidualDenseBlock_5C: conv k sees the block input and the outputs of convs 1..k-1, concatenated
// along channels. They share one buffer, so each conv reads a channel prefix of it without a copy.
Tensor UpscalerNet::dense_block(const DenseBlock& b, const Tensor& x) const {
  const int64_t nf = x.size(1), gc = config_.growth;
  Tensor buf = Tensor::empty({x.size(0), nf + 4 * gc, x.size(2), x.size(3)}, x.dtype(), x.device());
  buf.narrow(1, 0, nf).copy_(x);
  for (int k = 0; k < 4; ++k) {
    Tensor y = b.conv[k](buf.narrow(1, 0, nf + k * gc));
    ops::leaky_relu_(y, kSlope);
    buf.narrow(1, nf + k * gc, gc).copy_(y);
  }
  return ops::scaled_add(b.conv[4](buf), kResidual, x);
}

Tensor UpscalerNet::forward_rrdb(const Tensor& x) const {
  const int64_t h = x.size(2), w = x.size(3), f = config_.unshuffle;
  Tensor in = x;
  if (f > 1)  // spandrel: reflect-pad to a multiple of f, unshuffle, and crop the output back
    in = ops::pixel_unshuffle(ops::pad_reflect_br(x, (f - h % f) % f, (f - w % f) % f), f);
  const Tensor fea = first_(in);
  Tensor t = fea;
  for (const RRDB& r : body_) {
    Tensor o = dense_block(r.rdb[0], t);
    o = dense_block(r.rdb[1], o);
    o = dense_block(r.rdb[2], o);
    t = ops::scaled_add(o, kResidual, t);
  }
  Tensor y = ops::add(fea, trunk_(t));
  for (const layers::Conv2d& up : ups_) {
    y = up(ops::upsample_nearest(y, y.size(2) * 2, y.size(3) * 2));
    ops::leaky_relu_(y, kSlope);
  }
  y = hr_(y);
  ops::leaky_relu_(y, kSlope);
  y = last_(y);
  if (f > 1 && (y.size(2) != h * config_.scale || y.size(3) != w * config_.scale))
    y = y.narrow(2, 0, h * config_.scale).narrow(3, 0, w * config_.scale).contiguous();
  return y;
}

Tensor UpscalerNet::forward_compact(const Tensor& x) const {
  Tensor y = x;
  for (size_t i = 0; i < convs_.size(); ++i) {
    y = convs_[i](y);
    if (i < slopes_.size()) y = ops::prelu(y, slopes_[i]);
  }
  const int64_t s = config_.scale;
  y = ops::pixel_shuffle(y, s);
  return ops::add(y, ops::upsample_nearest(x, x.size(2) * s, x.size(3) * s));
}

}  // namespace sdserve
