#include "ops/attention.h"

#include <cmath>

#include "core/profile.h"
#include "cpu/kernels.h"
#include "ops/dispatch.h"

namespace sdserve::ops {

namespace {
// Brings a [B, H, T, d] view to f32 with a contiguous last dimension, keeping other strides.
Tensor as_f32_rows(const Tensor& t) {
  Tensor r = t.to(DType::F32);
  if (r.strides().back() != 1 && r.size(-1) > 1) r = r.contiguous();
  return r;
}
}  // namespace

Tensor attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, float scale) {
  SD_PROFILE_SCOPE(q.dim() == 4 && k.dim() == 4 && q.size(2) == k.size(2) ? "attention (self)" : "attention (cross)");
  SD_CHECK_ARG(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "attention: q, k and v must be 4-D [B, H, T, d]");
  const int64_t B = q.size(0), H = q.size(1), Tq = q.size(2), d = q.size(3);
  const int64_t Tk = k.size(2), dv = v.size(3);
  SD_CHECK_ARG(k.size(0) == B && k.size(1) == H && k.size(3) == d,
               "attention: k " + shape_str(k.shape()) + " does not match q " + shape_str(q.shape()));
  SD_CHECK_ARG(v.size(0) == B && v.size(1) == H && v.size(2) == Tk,
               "attention: v " + shape_str(v.shape()) + " does not match k " + shape_str(k.shape()));
  SD_CHECK_ARG(!causal || Tq == Tk, "attention: causal mask needs Tq == Tk");
  check_same_dtype("attention", q, k);
  check_same_dtype("attention", q, v);
  check_same_device("attention", q, k);
  check_same_device("attention", q, v);
  if (scale <= 0.f) scale = 1.f / std::sqrt(float(d));
  SD_RETURN_IF_CUDA(q, cuda::attention(q, k, v, causal, scale));
  if (q.device().type != DeviceType::CPU) no_backend("attention", q.device());
  const Tensor qf = as_f32_rows(q), kf = as_f32_rows(k), vf = as_f32_rows(v);
  // The result is stored [B, Tq, H, dv] and returned as its [B, H, Tq, dv] view, so the usual
  // next step (back to [B, Tq, H*dv] tokens) is a free view instead of a copy.
  Tensor store = Tensor::empty({B, Tq, H, dv}, DType::F32, q.device());
  cpu::AttentionArgs a;
  a.q = qf.data<float>();
  a.k = kf.data<float>();
  a.v = vf.data<float>();
  a.o = store.data<float>();
  a.B = B, a.H = H, a.tq = Tq, a.tk = Tk, a.d = d, a.dv = dv;
  a.q_sb = qf.strides()[0], a.q_sh = qf.strides()[1], a.q_st = qf.strides()[2];
  a.k_sb = kf.strides()[0], a.k_sh = kf.strides()[1], a.k_st = kf.strides()[2];
  a.v_sb = vf.strides()[0], a.v_sh = vf.strides()[1], a.v_st = vf.strides()[2];
  a.o_sb = Tq * H * dv, a.o_sh = dv, a.o_st = H * dv;
  a.scale = scale;
  a.causal = causal;
  cpu::attention_f32(a);
  const Tensor out = store.permute({0, 2, 1, 3});
  return q.dtype() == DType::F32 ? out : out.to(q.dtype());
}

}  // namespace sdserve::ops
