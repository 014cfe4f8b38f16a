#include "cuda/ops.h"

#include <cmath>
#include <cstdlib>
#include <cstring>

#include "cuda/attention.h"
#include "cuda/blas.h"
#include "cuda/conv.h"
#include "cuda/runtime.h"

namespace sdserve::cuda {

namespace {

int dev(const Tensor& t) { return t.device().index; }

cudaStream_t stream_of(const Tensor& t) {
  set_device(dev(t));
  return stream(dev(t));
}

// Channels last and not also contiguous (a tensor with C == 1 or H == W == 1 is both; it counts
// as contiguous).
bool cl(const Tensor& t) { return t.is_channels_last() && !t.is_contiguous(); }

// A result tensor of x's shape and dtype, in x's layout when that is channels last.
Tensor like(const Tensor& x) {
  return cl(x) ? Tensor::empty_channels_last(x.shape(), x.dtype(), x.device())
               : Tensor::empty(x.shape(), x.dtype(), x.device());
}

// x as it is when it is dense in either layout (elementwise ops run over its memory in order),
// else a contiguous copy.
Tensor dense(const Tensor& x) { return cl(x) ? x : x.contiguous(); }

// x in the channels-last layout: itself, or a transposing copy.
Tensor to_channels_last(const Tensor& x) {
  if (cl(x)) return x;
  Tensor out = Tensor::empty_channels_last(x.shape(), x.dtype(), x.device());
  out.copy_(x);
  return out;
}

AttentionImpl impl_from_env() {
  const char* e = std::getenv("SDSERVE_CUDA_ATTENTION");
  if (!e || !*e || std::strcmp(e, "auto") == 0) return AttentionImpl::Auto;
  if (std::strcmp(e, "flash") == 0) return AttentionImpl::Flash;
  if (std::strcmp(e, "math") == 0) return AttentionImpl::Math;
  throw InvalidArgument(std::string("SDSERVE_CUDA_ATTENTION='") + e + "': use auto, flash or math");
}

AttentionImpl& impl_slot() {
  static AttentionImpl impl = impl_from_env();
  return impl;
}

}  // namespace

void set_attention_impl(AttentionImpl impl) { impl_slot() = impl; }
AttentionImpl attention_impl() { return impl_slot(); }

Tensor conv2d(const Tensor& x_in, const Tensor& w_in, const Tensor* bias, int64_t stride, int64_t pad_t, int64_t pad_l,
              int64_t pad_b, int64_t pad_r) {
  Tensor x = x_in;
  const Tensor b = bias ? bias->contiguous() : Tensor();
  // cuDNN pads symmetrically; the VAE encoder's (0, 1, 0, 1) downsample padding is made explicit.
  if (pad_t != pad_b || pad_l != pad_r) {
    const int64_t ph = std::min(pad_t, pad_b), pw = std::min(pad_l, pad_r);
    const int64_t n = x.size(0), c = x.size(1), h = x.size(2) + pad_t + pad_b - 2 * ph,
                  w = x.size(3) + pad_l + pad_r - 2 * pw;
    // A channels-last input is padded channels last, so the convolution below reads it as it is.
    Tensor padded = cl(x) && conv_channels_last(x.dtype())
                        ? Tensor::zeros({n, h, w, c}, x.dtype(), x.device()).permute({0, 3, 1, 2})
                        : Tensor::zeros({n, c, h, w}, x.dtype(), x.device());
    Tensor window = padded.narrow(2, pad_t - ph, x.size(2)).narrow(3, pad_l - pw, x.size(3));
    if (cl(x)) {
      Tensor window_nhwc = window.permute({0, 2, 3, 1});  // both walked along C
      window_nhwc.copy_(x.permute({0, 2, 3, 1}));
    } else {
      window.copy_(x);
    }
    x = padded;
    pad_t = pad_b = ph;
    pad_l = pad_r = pw;
  }
  ConvArgs a;
  a.n = x.size(0), a.c = x.size(1), a.h = x.size(2), a.w = x.size(3);
  a.o = w_in.size(0), a.kh = w_in.size(2), a.kw = w_in.size(3);
  a.stride = stride, a.pad_h = pad_t, a.pad_w = pad_l;
  a.dt = x.dtype();
  a.nhwc = conv_channels_last(a.dt);
  const int64_t oh = (a.h + 2 * a.pad_h - a.kh) / stride + 1, ow = (a.w + 2 * a.pad_w - a.kw) / stride + 1;
  if (a.nhwc) {
    // Channels last in and out of cuDNN. An input that is channels last already (the previous
    // convolution's output, or an op that kept its layout) goes in as it is; another is
    // transposed here. The output is handed on channels last (keep_channels_last) or transposed
    // back. Weights loaded for the GPU are stored OHWI already (ops::conv2d_weight_layout), so
    // their permute is free.
    const bool keep = keep_channels_last(a.dt);
    const auto hand_on = [keep](const Tensor& yh) {
      const Tensor y = yh.permute({0, 3, 1, 2});
      return keep ? y : y.contiguous();
    };
    const Tensor wh = w_in.permute({0, 2, 3, 1}).contiguous();
    Tensor yh;
    {
      Tensor xh = x.permute({0, 2, 3, 1}).contiguous();
      x = Tensor();  // the caller's input stays alive; a padded copy goes now
      if (a.kh == 1 && a.kw == 1 && stride == 1 && a.pad_h == 0 && a.pad_w == 0) {
        // A 1x1 convolution over channels-last pixels is a GEMM: [N*H*W, C] x [C, O] + bias.
        const Tensor w2 = wh.view({a.o, a.c});
        return hand_on(linear(xh.view({a.n * a.h * a.w, a.c}), w2, bias ? &b : nullptr).view({a.n, oh, ow, a.o}));
      }
      yh = Tensor::empty({a.n, oh, ow, a.o}, xh.dtype(), xh.device());
      if (yh.numel() == 0) return yh.permute({0, 3, 1, 2});
      a.x = xh.raw_data(), a.weight = wh.raw_data(), a.bias = nullptr, a.y = yh.raw_data();
      conv2d(a, dev(yh));
    }  // a transposed copy of the input is freed before any copy back
    if (bias) add_broadcast(yh.raw_data(), yh.numel(), b.raw_data(), a.o, yh.raw_data(), a.dt, stream_of(yh));
    return hand_on(yh);
  }
  x = x.contiguous();
  const Tensor w = w_in.contiguous();
  Tensor y = Tensor::empty({a.n, a.o, oh, ow}, x.dtype(), x.device());
  if (y.numel() == 0) return y;
  a.x = x.raw_data(), a.weight = w.raw_data(), a.bias = bias ? b.raw_data() : nullptr, a.y = y.raw_data();
  conv2d(a, dev(x));
  return y;
}

Tensor linear(const Tensor& x_in, const Tensor& w_in, const Tensor* bias) {
  const Tensor x = x_in.contiguous(), w = w_in.contiguous();
  const Tensor b = bias ? bias->contiguous() : Tensor();
  const int64_t in = w.size(1), out_f = w.size(0), rows = in == 0 ? 0 : x.numel() / in;
  Shape out_shape = x.shape();
  out_shape.back() = out_f;
  Tensor y = Tensor::empty(out_shape, x.dtype(), x.device());
  if (y.numel() == 0) return y;
  if (in == 0) {  // an empty sum: the bias alone (or zeros)
    if (bias) return add(Tensor::zeros(out_shape, x.dtype(), x.device()), b);
    return Tensor::zeros(out_shape, x.dtype(), x.device());
  }
  MatmulArgs a;
  a.transa = true;  // W [out, in] row-major is W^T column-major
  a.m = out_f, a.n = rows, a.k = in;
  a.a = w.raw_data(), a.lda = in;
  a.b = x.raw_data(), a.ldb = in;
  a.d = y.raw_data(), a.ldd = out_f;
  a.ab_dt = a.d_dt = x.dtype();
  a.bias = bias ? b.raw_data() : nullptr;
  matmul(a, dev(x));
  return y;
}

namespace {
// Last dimension contiguous, other strides kept (the permuted head views stay views).
Tensor rows_contiguous(const Tensor& t) {
  if (t.strides().back() != 1 && t.size(-1) > 1) return t.contiguous();
  return t;
}
}  // namespace

Tensor attention(const Tensor& q_in, const Tensor& k_in, const Tensor& v_in, bool causal, float scale) {
  const Tensor q = rows_contiguous(q_in), k = rows_contiguous(k_in), v = rows_contiguous(v_in);
  const int64_t B = q.size(0), H = q.size(1), Tq = q.size(2), d = q.size(3), Tk = k.size(2), dv = v.size(3);
  Tensor store = Tensor::empty({B, Tq, H, dv}, q.dtype(), q.device());
  const Tensor out = store.permute({0, 2, 1, 3});
  if (store.numel() == 0) return out;
  if (Tk == 0) {  // softmax over nothing: PyTorch gives NaN; we give zeros rather than garbage
    return Tensor::zeros({B, Tq, H, dv}, q.dtype(), q.device()).permute({0, 2, 1, 3});
  }
  AttentionParams p;
  p.q = q.raw_data(), p.k = k.raw_data(), p.v = v.raw_data(), p.o = store.raw_data();
  p.dt = q.dtype();
  p.B = B, p.H = H, p.tq = Tq, p.tk = Tk, p.d = d, p.dv = dv;
  p.q_sb = q.strides()[0], p.q_sh = q.strides()[1], p.q_st = q.strides()[2];
  p.k_sb = k.strides()[0], p.k_sh = k.strides()[1], p.k_st = k.strides()[2];
  p.v_sb = v.strides()[0], p.v_sh = v.strides()[1], p.v_st = v.strides()[2];
  p.o_sb = Tq * H * dv, p.o_sh = dv, p.o_st = H * dv;
  p.scale = scale;
  p.causal = causal;
  const AttentionImpl impl = attention_impl();
  if (impl != AttentionImpl::Math) {
    if (flash_attention(p, stream_of(q))) return out;
    if (impl == AttentionImpl::Flash)
      throw UnsupportedError("fused attention does not support d=" + std::to_string(d) + ", dv=" + std::to_string(dv) +
                             " (" + dtype_name(q.dtype()) + ")");
  }
  math_attention(p, dev(q));
  return out;
}

Tensor activation(const Tensor& x_in, Act act) {
  const Tensor x = dense(x_in);
  Tensor out = like(x);
  activation(x.raw_data(), x.numel(), act, out.raw_data(), x.dtype(), stream_of(x));
  return out;
}

Tensor geglu(const Tensor& x_in) {
  const Tensor x = x_in.contiguous();
  Shape shape = x.shape();
  const int64_t inner = shape.back() / 2;
  shape.back() = inner;
  Tensor out = Tensor::empty(shape, x.dtype(), x.device());
  const int64_t rows = inner == 0 ? 0 : x.numel() / (2 * inner);
  geglu(x.raw_data(), rows, inner, out.raw_data(), x.dtype(), stream_of(x));
  return out;
}

Tensor add(const Tensor& a_in, const Tensor& b_in) {
  if (a_in.shape() == b_in.shape() && (cl(a_in) || cl(b_in))) {
    // Same shapes, one of them channels last (a residual around convolutions): add in that
    // layout, bringing the other side to it if it is not there already.
    const Tensor a = to_channels_last(a_in), b = to_channels_last(b_in);
    Tensor out = like(a);
    add_broadcast(a.raw_data(), a.numel(), b.raw_data(), b.numel(), out.raw_data(), a.dtype(), stream_of(a));
    return out;
  }
  const Tensor a = a_in.contiguous(), b = b_in.contiguous();
  Tensor out = like(a);
  if (a.numel() == 0) return out;
  add_broadcast(a.raw_data(), a.numel(), b.raw_data(), b.numel(), out.raw_data(), a.dtype(), stream_of(a));
  return out;
}

Tensor add_channelwise(const Tensor& x_in, const Tensor& b_in) {
  if (cl(x_in) && b_in.numel() == x_in.size(0) * x_in.size(1)) {
    const Tensor b = b_in.contiguous();
    Tensor out = like(x_in);
    add_per_channel_last(x_in.raw_data(), b.raw_data(), x_in.size(0), x_in.size(2) * x_in.size(3), x_in.size(1),
                         out.raw_data(), x_in.dtype(), stream_of(x_in));
    return out;
  }
  const Tensor x = x_in.contiguous(), b = b_in.contiguous();
  Tensor out = like(x);
  const int64_t planes = x.size(0) * x.size(1), hw = planes == 0 ? 0 : x.numel() / planes;
  if (x.numel() == 0) return out;
  add_per_plane(x.raw_data(), b.raw_data(), planes, b.numel(), hw, out.raw_data(), x.dtype(), stream_of(x));
  return out;
}

Tensor concat(const std::vector<Tensor>& parts, int64_t dim) {
  Shape shape = parts[0].shape();
  shape[size_t(dim)] = 0;
  for (const Tensor& t : parts) shape[size_t(dim)] += t.size(dim);
  // Channels along dim 1 of channels-last images (the UNet's skip connections) stay channels
  // last; both sides of each copy are then walked as [N, H, W, C], so the copy runs along C.
  bool channels_last = dim == 1 && shape.size() == 4;
  if (channels_last) {
    channels_last = false;
    for (const Tensor& t : parts) channels_last |= cl(t);
  }
  Tensor out = channels_last ? Tensor::empty_channels_last(shape, parts[0].dtype(), parts[0].device())
                             : Tensor::empty(shape, parts[0].dtype(), parts[0].device());
  int64_t offset = 0;
  for (const Tensor& t : parts) {
    if (t.size(dim) > 0) {
      Tensor window = out.narrow(dim, offset, t.size(dim));
      if (channels_last) {
        Tensor w_nhwc = window.permute({0, 2, 3, 1});
        w_nhwc.copy_(t.permute({0, 2, 3, 1}));
      } else {
        window.copy_(t);
      }
    }
    offset += t.size(dim);
  }
  return out;
}

Tensor embedding(const Tensor& weight_in, const Tensor& ids_host) {
  const Tensor w = weight_in.contiguous();
  const Tensor ids = ids_host.contiguous().to(w.device());
  Shape shape = ids_host.shape();
  shape.push_back(w.size(1));
  Tensor out = Tensor::empty(shape, w.dtype(), w.device());
  if (out.numel() == 0) return out;
  embedding(w.raw_data(), w.size(1), ids.data<int32_t>(), ids.numel(), out.raw_data(), w.dtype(), stream_of(w));
  return out;
}

namespace {
// Undefined affine parameters act as weight 1, bias 0.
Tensor param_or(const Tensor& p, int64_t n, float value, const Tensor& like_x) {
  if (p.defined()) return p.contiguous();
  Tensor t = Tensor::empty({n}, like_x.dtype(), like_x.device());
  fill(t.raw_data(), n, value, t.dtype(), stream_of(t));
  return t;
}
}  // namespace

Tensor group_norm(const Tensor& x_in, int64_t groups, const Tensor& gamma, const Tensor& beta, float eps, bool silu) {
  const Tensor x = dense(x_in);  // channels last is normalised as it is, into a channels-last result
  const int64_t n = x.size(0), c = x.size(1), hw = (n * c) == 0 ? 0 : x.numel() / (n * c);
  Tensor out = like(x);
  if (x.numel() == 0) return out;
  const Tensor g = param_or(gamma, c, 1.f, x), b = param_or(beta, c, 0.f, x);
  group_norm(x.raw_data(), g.raw_data(), b.raw_data(), n, c, hw, groups, eps, silu, out.raw_data(), x.dtype(),
             stream_of(x), cl(x));
  return out;
}

Tensor layer_norm(const Tensor& x_in, const Tensor& gamma, const Tensor& beta, float eps) {
  const Tensor x = x_in.contiguous();
  const int64_t dim = x.size(-1), rows = dim == 0 ? 0 : x.numel() / dim;
  Tensor out = like(x);
  if (x.numel() == 0) return out;
  const Tensor g = param_or(gamma, dim, 1.f, x), b = param_or(beta, dim, 0.f, x);
  layer_norm(x.raw_data(), g.raw_data(), b.raw_data(), rows, dim, eps, out.raw_data(), x.dtype(), stream_of(x));
  return out;
}

Tensor softmax(const Tensor& x_in) {
  const Tensor x = x_in.contiguous();
  const int64_t cols = x.size(-1), rows = cols == 0 ? 0 : x.numel() / cols;
  Tensor out = like(x);
  if (x.numel() == 0) return out;
  softmax_rows(x.raw_data(), x.dtype(), rows, cols, 1.f, false, rows, out.raw_data(), x.dtype(), stream_of(x));
  return out;
}

Tensor upsample_nearest(const Tensor& x_in, int64_t oh, int64_t ow) {
  if (cl(x_in)) {
    const Tensor& x = x_in;
    Tensor out = Tensor::empty_channels_last({x.size(0), x.size(1), oh, ow}, x.dtype(), x.device());
    upsample_nearest_channels_last(x.raw_data(), x.size(0), x.size(1), x.size(2), x.size(3), oh, ow, out.raw_data(),
                                   x.dtype(), stream_of(x));
    return out;
  }
  const Tensor x = x_in.contiguous();
  Tensor out = Tensor::empty({x.size(0), x.size(1), oh, ow}, x.dtype(), x.device());
  if (out.numel() == 0) return out;
  upsample_nearest(x.raw_data(), x.size(0) * x.size(1), x.size(2), x.size(3), oh, ow, out.raw_data(), x.dtype(),
                   stream_of(x));
  return out;
}

}  // namespace sdserve::cuda
