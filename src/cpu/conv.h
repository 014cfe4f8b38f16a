#pragma once
#include <cstdint>

namespace sdserve::cpu {

struct Conv2dParams {
  int64_t n, c, h, w;                      // input
  int64_t o, kh, kw;                       // output channels, kernel
  int64_t sh = 1, sw = 1;                  // stride
  int64_t pt = 0, pl = 0, pb = 0, pr = 0;  // padding top/left/bottom/right
  int64_t oh() const { return (h + pt + pb - kh) / sh + 1; }
  int64_t ow() const { return (w + pl + pr - kw) / sw + 1; }
};

// NCHW f32 convolution (groups = 1), weights OIHW, optional bias [o].
// oneDNN when compiled in, else im2col + sgemm.
// Stride-1 3x3 layers with enough tiles and channels go through Winograd F(4x4, 3x3)
// (src/cpu/winograd.cc) when oneDNN is compiled in.
void conv2d_f32(const Conv2dParams& p, const float* x, const float* wt, const float* bias, float* y);

// Winograd F(4x4, 3x3): Auto picks it where it pays; Off never (also SDSERVE_WINOGRAD=0);
// Always for every 3x3 stride-1 layer (tests).
enum class WinogradMode { Auto, Off, Always };
void set_winograd_mode(WinogradMode m);
WinogradMode winograd_mode();
bool winograd_applicable(const Conv2dParams& p);
// Bytes of transformed weights made at once (default 128 MiB); layers needing more are done
// in output-channel chunks. Settable so tests can force the chunked path on small layers.
void set_winograd_weight_budget(int64_t bytes);
int64_t winograd_weight_budget();
void conv2d_winograd_f32(const Conv2dParams& p, const float* x, const float* wt, const float* bias, float* y);

}  // namespace sdserve::cpu
