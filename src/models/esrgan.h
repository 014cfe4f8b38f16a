// ESRGAN-family super-resolution networks, read from the weights alone as spandrel does
// (docs/UPSCALERS.md):
//
//  - RRDBNet (ESRGAN, BSRGAN, Real-ESRGAN x4plus/x2plus/x1, anime 6B, ...) in any of its three
//    key layouts: BasicSR/Real-ESRGAN ("conv_first", "body.N.rdbR.convC", "conv_body",
//    "conv_upK", "conv_hr", "conv_last"), original ESRGAN ("model.0", "model.1.sub.N.RDBR.convC.0",
//    "model.1.sub.NB", "model.3", "model.6", ..., "model.8"/"model.10") and BSRGAN/RealSR
//    ("RRDB_trunk.N.RDBR.convC", "trunk_conv", "upconvK", "HRconv", "conv_last"). Blocks, feature
//    width, growth width, channels and scale come from the names and shapes; an input with 4 or 16
//    times the output channels means a pixel-unshuffle by 2 or 4 first (Real-ESRGAN x2plus / x1).
//    LeakyReLU(0.2), residual scale 0.2 in every dense block and RRDB, nearest 2x upsampling.
//  - SRVGGNetCompact (Real-ESRGAN compact / realesr-general / animevideo): "body.2i.weight" 3x3
//    convs with PReLU slopes "body.2i+1.weight" [C], a pixel shuffle, plus the nearest-upsampled
//    input.
//
// Anything else is an UnsupportedError that names what the file holds. Forward runs on the CPU
// (ops/conv2d and ops/upscale_ops); tensors stay device-agnostic for a later CUDA path.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "io/weights.h"
#include "models/layers.h"

namespace sdserve {

enum class UpscalerArch { RRDBNet, Compact };

struct UpscalerConfig {
  UpscalerArch arch = UpscalerArch::RRDBNet;
  std::string layout;        // "BasicSR", "ESRGAN" (original), "BSRGAN" or "Compact"
  int64_t in_channels = 3;   // image channels the network takes (before any pixel-unshuffle)
  int64_t out_channels = 3;  // image channels it returns
  int64_t features = 64;     // nf (RRDBNet) / num_feat (Compact)
  int64_t blocks = 23;       // RRDB blocks (RRDBNet) / body convs between the first and last (Compact)
  int64_t growth = 32;       // gc: channels each dense-block conv adds (RRDBNet)
  int64_t upsamples = 2;     // RRDBNet: nearest-2x + conv stages
  int64_t unshuffle = 1;     // RRDBNet: pixel-unshuffle factor of the input (1, 2 or 4)
  int64_t scale = 4;         // output size / input size

  // e.g. "RRDBNet (BasicSR keys), 23 blocks, nf 64, gc 32, x4"
  std::string describe() const;
};

// The names of the supported architectures, for messages.
const char* supported_upscalers();

// The state dict inside `src` as spandrel canonicalizes it: a flattened checkpoint whose keys sit
// under "params_ema." (preferred), "params-ema.", "params.", "state_dict." or "model_state_dict."
// is narrowed to that prefix, then a prefix every key shares of "module." or "netG." is dropped.
WeightSource canonical_upscaler_source(const WeightSource& src);

// Reads the architecture from the key names and shapes. Throws UnsupportedError (not an
// ESRGAN-family network, or a variant such as ESRGAN+ that is not handled) or ModelFormatError
// (the right family, but inconsistent or incomplete).
UpscalerConfig detect_upscaler(const WeightSource& src);

class UpscalerNet {
 public:
  // Detects and loads. Weights are converted to `dtype` (f32 for the CPU path).
  static std::shared_ptr<const UpscalerNet> load(const WeightSource& src, DType dtype = DType::F32);

  const UpscalerConfig& config() const { return config_; }
  int64_t scale() const { return config_.scale; }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }

  // x [N, in_channels, H, W], values in [0, 1] (any float dtype: converted to the weights' dtype and
  // device) -> [N, out_channels, H * scale, W * scale], not clamped.
  Tensor forward(const Tensor& x) const;

 private:
  struct DenseBlock {  // ResidualDenseBlock_5C
    layers::Conv2d conv[5];
  };
  struct RRDB {
    DenseBlock rdb[3];
  };

  Tensor forward_rrdb(const Tensor& x) const;
  Tensor forward_compact(const Tensor& x) const;
  Tensor dense_block(const DenseBlock& b, const Tensor& x) const;

  UpscalerConfig config_;
  DType dtype_ = DType::F32;
  Device device_;
  // RRDBNet
  layers::Conv2d first_, trunk_, hr_, last_;
  std::vector<RRDB> body_;
  std::vector<layers::Conv2d> ups_;
  // Compact
  std::vector<layers::Conv2d> convs_;
  std::vector<Tensor> slopes_;  // PReLU weights, one per conv but the last
};

}  // namespace sdserve
