#include "cpu/conv.h"

#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "cpu/gemm.h"

#ifdef SDSERVE_WITH_ONEDNN
#include <dnnl.hpp>
#endif

namespace sdserve::cpu {

namespace {

[[maybe_unused]] void conv2d_im2col(const Conv2dParams& p, const float* x, const float* wt, const float* bias,
                                    float* y) {
  const int64_t oh = p.oh(), ow = p.ow(), K = p.c * p.kh * p.kw, M = oh * ow;
  std::vector<float> cols(static_cast<size_t>(K * M));
  for (int64_t b = 0; b < p.n; ++b) {
    const float* xb = x + b * p.c * p.h * p.w;
#pragma omp parallel for schedule(static)
    for (int64_t ck = 0; ck < K; ++ck) {
      const int64_t c = ck / (p.kh * p.kw), ky = (ck / p.kw) % p.kh, kx = ck % p.kw;
      float* row = cols.data() + ck * M;
      for (int64_t oy = 0; oy < oh; ++oy) {
        const int64_t iy = oy * p.sh - p.pt + ky;
        for (int64_t ox = 0; ox < ow; ++ox) {
          const int64_t ix = ox * p.sw - p.pl + kx;
          row[oy * ow + ox] = (iy >= 0 && iy < p.h && ix >= 0 && ix < p.w) ? xb[(c * p.h + iy) * p.w + ix] : 0.f;
        }
      }
    }
    float* yb = y + b * p.o * M;
    if (bias) {
      for (int64_t o = 0; o < p.o; ++o)
        for (int64_t i = 0; i < M; ++i) yb[o * M + i] = bias[o];
    }
    sgemm(false, false, p.o, M, K, 1.f, wt, K, cols.data(), M, bias ? 1.f : 0.f, yb, M);
  }
}

#ifdef SDSERVE_WITH_ONEDNN
dnnl::engine& engine() {
  static dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  return eng;
}

void conv2d_onednn(const Conv2dParams& p, const float* x, const float* wt, const float* bias, float* y) {
  using dnnl::memory;
  using tag = memory::format_tag;
  const auto f32 = memory::data_type::f32;
  const memory::desc src_md({p.n, p.c, p.h, p.w}, f32, tag::nchw);
  const memory::desc w_md({p.o, p.c, p.kh, p.kw}, f32, tag::oihw);
  const memory::desc b_md({p.o}, f32, tag::x);
  const memory::desc dst_md({p.n, p.o, p.oh(), p.ow()}, f32, tag::nchw);
  const memory::dims strides{p.sh, p.sw}, pad_l{p.pt, p.pl}, pad_r{p.pb, p.pr};
  // oneDNN caches primitives by descriptor, so re-creating them per call is cheap.
  auto desc =
      bias ? dnnl::convolution_forward::desc(dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct,
                                             src_md, w_md, b_md, dst_md, strides, pad_l, pad_r)
           : dnnl::convolution_forward::desc(dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct,
                                             src_md, w_md, dst_md, strides, pad_l, pad_r);
  const dnnl::convolution_forward::primitive_desc pd(desc, engine());
  dnnl::stream strm(engine());
  memory src(src_md, engine(), const_cast<float*>(x));
  memory wm(w_md, engine(), const_cast<float*>(wt));
  memory dst(dst_md, engine(), y);
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, src}, {DNNL_ARG_WEIGHTS, wm}, {DNNL_ARG_DST, dst}};
  if (bias) args.emplace(DNNL_ARG_BIAS, memory(b_md, engine(), const_cast<float*>(bias)));
  dnnl::convolution_forward(pd).execute(strm, args);
  strm.wait();
}
#endif

}  // namespace

void conv2d_f32(const Conv2dParams& p, const float* x, const float* wt, const float* bias, float* y) {
#ifdef SDSERVE_WITH_ONEDNN
  try {
    if (winograd_applicable(p))
      conv2d_winograd_f32(p, x, wt, bias, y);
    else
      conv2d_onednn(p, x, wt, bias, y);
  } catch (const dnnl::error& e) {
    throw InternalError(std::string("oneDNN convolution failed: ") + e.what() + " (status " +
                        std::to_string(int(e.status)) + ")");
  }
#else
  conv2d_im2col(p, x, wt, bias, y);
#endif
}

}  // namespace sdserve::cpu
