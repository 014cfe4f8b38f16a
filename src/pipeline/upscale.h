// Image upscaling with an ESRGAN-family network (models/esrgan.h), as A1111's ESRGAN/RealESRGAN
// upscalers do through spandrel: 8-bit RGB in, the network on [0, 1] floats, clamp(0, 1) * 255
// rounded to 8 bits out. Large images run in overlapping tiles (A1111's tile layout) blended
// linearly, so memory stays that of one tile and seams do not show. docs/UPSCALERS.md.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "io/weights.h"
#include "models/esrgan.h"

namespace sdserve {

struct UpscaleOptions {
  // Tile edge in input pixels (A1111's "Tile size for ESRGAN upscalers"); 0 = one pass over the whole
  // image. An image that fits in one tile runs untiled either way.
  int tile = 192;
  // Input pixels neighbouring tiles share at least (A1111's "Tile overlap"); must be < tile. The
  // shared band is blended with linear weights.
  int tile_overlap = 16;
  // Called after every tile with (tiles done, tiles in all); return false to cancel (the call then
  // throws UpscaleCancelled).
  std::function<bool(int done, int total)> progress;
};

struct UpscaleCancelled : Error {
  UpscaleCancelled() : Error(ErrorKind::InvalidArgument, "upscale canceled") {}
};

struct Rgb8Image {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;  // width * height * 3, rows top to bottom
};

// Where tiles start and end along one axis of `size` pixels: A1111's images.split_grid (tiles spread
// evenly, the last one flush with the edge), computed in units of `align` pixels so that every tile
// of a pixel-unshuffle network starts on the unshuffle grid; the last tile ends at `size`.
struct TileSpan {
  int64_t begin, end;
};
std::vector<TileSpan> tile_spans(int64_t size, int64_t tile, int64_t overlap, int64_t align = 1);

class Upscaler {
 public:
  // A .safetensors file, or a PyTorch .pth/.pt/.ckpt/.bin read without executing it
  // (io/torch_checkpoint.h). Wrapped state dicts ("params_ema.", "params.", "state_dict.", ...)
  // are unwrapped as spandrel does. Throws NotFoundError, ModelFormatError, UnsupportedError.
  // The network runs on `device` with weights in `dtype` (f16 is what A1111 uses on a GPU).
  static Upscaler open(const std::string& path, Device device = Device::cpu(), DType dtype = DType::F32);
  // From weights already open (tests, in-memory files); `src` is canonicalized the same way.
  static Upscaler from_source(const WeightSource& src, const std::string& name, Device device = Device::cpu(),
                              DType dtype = DType::F32);

  const UpscalerConfig& config() const { return net_->config(); }
  int scale() const { return int(net_->scale()); }
  const std::string& name() const { return name_; }
  const UpscalerNet& net() const { return *net_; }

  // One pass of the network: width * scale x height * scale.
  Rgb8Image upscale(const uint8_t* rgb, int width, int height, const UpscaleOptions& opt = {}) const;
  Rgb8Image upscale(const Rgb8Image& img, const UpscaleOptions& opt = {}) const {
    return upscale(img.rgb.data(), img.width, img.height, opt);
  }

  // To exactly out_width x out_height, as A1111's Upscaler.upscale: the network runs (at least once,
  // at most 3 times) until the image is at least that large or stops growing, then Pillow's Lanczos
  // resize (io/resize.h) takes it to the exact size. (A1111 asks for int(w * factor) // 8 * 8; that
  // rounding is the caller's.)
  Rgb8Image upscale_to(const uint8_t* rgb, int width, int height, int out_width, int out_height,
                       const UpscaleOptions& opt = {}) const;
  // upscale_to(int(width * factor), int(height * factor)).
  Rgb8Image upscale_by(const uint8_t* rgb, int width, int height, double factor, const UpscaleOptions& opt = {}) const;

 private:
  std::shared_ptr<const UpscalerNet> net_;
  std::string name_;
};

}  // namespace sdserve
