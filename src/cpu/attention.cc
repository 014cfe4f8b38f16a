// Batched scaled-dot-product attention on the CPU, f32, flash-attention style.
//
// Work is split into (batch, head, block of up to 64 query rows) tasks spread over the OpenMP
// threads. A task walks the keys in blocks of 256 with a running max and sum per row (online
// softmax), rescaling its output rows when the max grows, so the full Tq x Tk score matrix
// never exists and per-thread memory is fixed whatever the sequence length. Per (batch,
// head), K is packed once into 8-key panels ([d][8] each) and V into rows padded to a
// multiple of 8 columns, both zero-filled past the end. On x86 CPUs with AVX2+FMA (checked at
// run time, so a portable build still gets them) the two products and the exponentials run
// in register-tiled kernels with a vector exp; elsewhere plain loops run the same algorithm.
//
// Softmax is taken over the raw scores: p = exp(scale * (s - max s)), which is the same
// function as softmax(scale * s) for scale > 0.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu/kernels.h"
#include "cpu/simd.h"

namespace sdserve::cpu {

namespace {

constexpr int64_t kPanel = 8;  // keys per K panel / columns per V vector

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

struct Packed {
  int64_t tkp, dvp;      // keys rounded up to panels; value columns rounded up to vectors
  std::vector<float> k;  // [BH][tkp/8][d][8]
  std::vector<float> v;  // [BH][tkp][dvp]
};

void pack(const AttentionArgs& a, Packed& p) {
  const int64_t BH = a.B * a.H, d = a.d;
  p.tkp = round_up(a.tk, kPanel);
  p.dvp = round_up(a.dv, kPanel);
  p.k.assign(size_t(BH * p.tkp * d), 0.f);
  p.v.assign(size_t(BH * p.tkp * p.dvp), 0.f);
#pragma omp parallel for schedule(static) if (BH * p.tkp * (d + p.dvp) > (int64_t(1) << 16))
  for (int64_t bh = 0; bh < BH; ++bh) {
    const int64_t b = bh / a.H, h = bh % a.H;
    const float* k = a.k + b * a.k_sb + h * a.k_sh;
    const float* v = a.v + b * a.v_sb + h * a.v_sh;
    float* kp = p.k.data() + bh * p.tkp * d;
    float* vp = p.v.data() + bh * p.tkp * p.dvp;
    for (int64_t j = 0; j < a.tk; ++j) {
      float* panel = kp + (j / kPanel) * d * kPanel + (j % kPanel);
      const float* kr = k + j * a.k_st;
      for (int64_t e = 0; e < d; ++e) panel[e * kPanel] = kr[e];
      std::memcpy(vp + j * p.dvp, v + j * a.v_st, size_t(a.dv) * sizeof(float));
    }
  }
}

// ------------------------------------------------------------------ portable kernels

// s[i][j] = q_i . k_j for the keys of `npanel` panels starting at kp; rows of s are s_st apart.
void qk_block_ref(const float* q, int64_t q_st, int64_t rows, const float* kp, int64_t npanel, int64_t d, float* s,
                  int64_t s_st) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < npanel * kPanel; ++j) {
      const float* panel = kp + (j / kPanel) * d * kPanel + (j % kPanel);
      float acc = 0.f;
      for (int64_t e = 0; e < d; ++e) acc += q[i * q_st + e] * panel[e * kPanel];
      s[i * s_st + j] = acc;
    }
}

float row_max_ref(const float* s, int64_t len) {
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < len; ++j) mx = std::max(mx, s[j]);
  return mx;
}

// s[j] = exp(scale * (s[j] - mx)) over [0, len), zero over [len, width); returns the sum.
float exp_row_ref(float* s, int64_t len, int64_t width, float mx, float scale) {
  float sum = 0.f;
  for (int64_t j = 0; j < len; ++j) sum += (s[j] = std::exp((s[j] - mx) * scale));
  for (int64_t j = len; j < width; ++j) s[j] = 0.f;
  return sum;
}

// o[i] += p[i][0:nk] . v[0:nk] for each row; rows of p are p_st apart.
void pv_block_ref(const float* p, int64_t p_st, int64_t rows, const float* vp, int64_t dvp, int64_t nk, float* o) {
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t kk = 0; kk < nk; ++kk) {
      const float pv = p[i * p_st + kk];
      const float* vr = vp + kk * dvp;
      for (int64_t c = 0; c < dvp; ++c) o[i * dvp + c] += pv * vr[c];
    }
}

// ------------------------------------------------------------------ AVX2 + FMA kernels

#ifdef SD_X86
using simd::hmax;
using simd::hsum;

// The register tile both products use: c[MR][NV*8] (+)= sum over k of a[i][k] * B_k, where
// row i of a is a + i*a_st (k contiguous) and vector j of B_k is at b + k*b_kst + j*b_jst.
// MR x NV accumulators stay in registers; kAccumulate loads c first instead of zeroing.
template <int MR, int NV, bool kAccumulate>
SD_AVX2 void rank1_tile(const float* a, int64_t a_st, const float* b, int64_t b_kst, int64_t b_jst, int64_t k, float* c,
                        int64_t c_st) {
  __m256 acc[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 16
    for (int j = 0; j < NV; ++j) acc[i][j] = kAccumulate ? _mm256_loadu_ps(c + i * c_st + j * 8) : _mm256_setzero_ps();
  for (int64_t e = 0; e < k; ++e) {
    __m256 bv[NV];
#pragma GCC unroll 16
    for (int j = 0; j < NV; ++j) bv[j] = _mm256_loadu_ps(b + e * b_kst + j * b_jst);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const __m256 ab = _mm256_broadcast_ss(a + i * a_st + e);
#pragma GCC unroll 16
      for (int j = 0; j < NV; ++j) acc[i][j] = _mm256_fmadd_ps(ab, bv[j], acc[i][j]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 16
    for (int j = 0; j < NV; ++j) _mm256_storeu_ps(c + i * c_st + j * 8, acc[i][j]);
}

// s[MR][NP*8] = q[MR][d] . panels[NP][d][8]
template <int MR, int NP>
SD_AVX2 void qk_tile(const float* q, int64_t q_st, const float* kp, int64_t d, float* s, int64_t s_st) {
  rank1_tile<MR, NP, false>(q, q_st, kp, kPanel, d * kPanel, d, s, s_st);
}

template <int MR>
SD_AVX2 void qk_rows(const float* q, int64_t q_st, const float* kp, int64_t npanel, int64_t d, float* s, int64_t s_st) {
  int64_t j = 0;
  for (; j + 3 <= npanel; j += 3) qk_tile<MR, 3>(q, q_st, kp + j * d * kPanel, d, s + j * kPanel, s_st);
  if (npanel - j == 2) qk_tile<MR, 2>(q, q_st, kp + j * d * kPanel, d, s + j * kPanel, s_st);
  if (npanel - j == 1) qk_tile<MR, 1>(q, q_st, kp + j * d * kPanel, d, s + j * kPanel, s_st);
}

SD_AVX2 void qk_block_avx2(const float* q, int64_t q_st, int64_t rows, const float* kp, int64_t npanel, int64_t d,
                           float* s, int64_t s_st) {
  // One tile of 3 panels (3 x d x 8 floats) at a time across all rows of the block, so it stays in L1.
  for (int64_t j0 = 0; j0 < npanel; j0 += 3) {
    const int64_t nj = std::min<int64_t>(3, npanel - j0);
    const float* kpj = kp + j0 * d * kPanel;
    float* sj = s + j0 * kPanel;
    int64_t i = 0;
    for (; i + 4 <= rows; i += 4) qk_rows<4>(q + i * q_st, q_st, kpj, nj, d, sj + i * s_st, s_st);
    switch (rows - i) {
      case 3:
        qk_rows<3>(q + i * q_st, q_st, kpj, nj, d, sj + i * s_st, s_st);
        break;
      case 2:
        qk_rows<2>(q + i * q_st, q_st, kpj, nj, d, sj + i * s_st, s_st);
        break;
      case 1:
        qk_rows<1>(q + i * q_st, q_st, kpj, nj, d, sj + i * s_st, s_st);
        break;
      default:
        break;
    }
  }
}

SD_AVX2 float row_max_avx2(const float* s, int64_t len) {
  const int64_t nv = len / 8 * 8;
  __m256 vmx = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t j = 0; j < nv; j += 8) vmx = _mm256_max_ps(vmx, _mm256_loadu_ps(s + j));
  float mx = hmax(vmx);
  for (int64_t j = nv; j < len; ++j) mx = std::max(mx, s[j]);
  return mx;
}

SD_AVX2 float exp_row_avx2(float* s, int64_t len, int64_t width, float mx, float scale) {
  const int64_t nv = len / 8 * 8;
  const __m256 m = _mm256_set1_ps(mx), sc = _mm256_set1_ps(scale);
  __m256 vsum = _mm256_setzero_ps();
  for (int64_t j = 0; j < nv; j += 8) {
    const __m256 e = simd::exp(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(s + j), m), sc));
    _mm256_storeu_ps(s + j, e);
    vsum = _mm256_add_ps(vsum, e);
  }
  float sum = hsum(vsum);
  if (nv < len) {
    alignas(32) float tail[8];
    for (int64_t j = 0; j < 8; ++j) tail[j] = nv + j < len ? (s[nv + j] - mx) * scale : -100.f;
    _mm256_store_ps(tail, simd::exp(_mm256_load_ps(tail)));
    for (int64_t j = nv; j < len; ++j) sum += (s[j] = tail[j - nv]);
  }
  for (int64_t j = len; j < width; ++j) s[j] = 0.f;
  return sum;
}

// o[MR][NV*8] += p[MR][0:nk] . v[0:nk][NV*8]
template <int MR, int NV>
SD_AVX2 void pv_tile(const float* p, int64_t p_st, const float* v, int64_t v_st, int64_t nk, float* o, int64_t o_st) {
  rank1_tile<MR, NV, true>(p, p_st, v, v_st, 8, nk, o, o_st);
}

template <int MR>
SD_AVX2 void pv_rows(const float* p, int64_t p_st, const float* v, int64_t dvp, int64_t nk, float* o) {
  const int64_t nvec = dvp / 8;
  int64_t c = 0;
  for (; c + 3 <= nvec; c += 3) pv_tile<MR, 3>(p, p_st, v + c * 8, dvp, nk, o + c * 8, dvp);
  if (nvec - c == 2) pv_tile<MR, 2>(p, p_st, v + c * 8, dvp, nk, o + c * 8, dvp);
  if (nvec - c == 1) pv_tile<MR, 1>(p, p_st, v + c * 8, dvp, nk, o + c * 8, dvp);
}

SD_AVX2 void pv_block_avx2(const float* p, int64_t p_st, int64_t rows, const float* vp, int64_t dvp, int64_t nk,
                           float* o) {
  int64_t i = 0;
  for (; i + 4 <= rows; i += 4) pv_rows<4>(p + i * p_st, p_st, vp, dvp, nk, o + i * dvp);
  switch (rows - i) {
    case 3:
      pv_rows<3>(p + i * p_st, p_st, vp, dvp, nk, o + i * dvp);
      break;
    case 2:
      pv_rows<2>(p + i * p_st, p_st, vp, dvp, nk, o + i * dvp);
      break;
    case 1:
      pv_rows<1>(p + i * p_st, p_st, vp, dvp, nk, o + i * dvp);
      break;
    default:
      break;
  }
}

#endif

}  // namespace

void attention_f32(const AttentionArgs& a) {
  if (a.B == 0 || a.H == 0 || a.tq == 0 || a.dv == 0) return;
  if (a.tk == 0) {
    // No keys: every output row is the (empty) weighted sum, i.e. zero.
    for (int64_t b = 0; b < a.B; ++b)
      for (int64_t h = 0; h < a.H; ++h)
        for (int64_t i = 0; i < a.tq; ++i)
          std::memset(a.o + b * a.o_sb + h * a.o_sh + i * a.o_st, 0, size_t(a.dv) * sizeof(float));
    return;
  }
  Packed pk;
  pack(a, pk);
  const int64_t tkp = pk.tkp, dvp = pk.dvp, d = a.d, BH = a.B * a.H;
  // Flash-attention style: a task is a block of up to 64 query rows; keys go by in blocks of 256
  // with a running max and sum per row (online softmax), so the score tile (64 x 256), the K
  // and V blocks and the output rows all stay in L2 and K/V stream from memory once per 64
  // queries.
  constexpr int64_t kRows = 64, kKeys = 256;
  const int64_t bq = std::min<int64_t>(kRows, a.tq), nblocks = (a.tq + bq - 1) / bq;
  const bool avx2 = have_avx2_fma();
  // Tiny problems (the test models, short text) are not worth waking the thread pool for.
  const bool parallel = BH * a.tq * a.tk * (d + a.dv) > (int64_t(1) << 20);
#pragma omp parallel if (parallel)
  {
    std::vector<float> s(size_t(bq * kKeys)), o(size_t(bq * dvp));
    std::vector<float> m(static_cast<size_t>(bq)), l(static_cast<size_t>(bq));
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < BH * nblocks; ++task) {
      const int64_t bh = task / nblocks, q0 = (task % nblocks) * bq, rows = std::min(bq, a.tq - q0);
      const int64_t b = bh / a.H, h = bh % a.H;
      const float* q = a.q + b * a.q_sb + h * a.q_sh + q0 * a.q_st;
      const float* kp = pk.k.data() + bh * tkp * d;
      const float* vp = pk.v.data() + bh * tkp * dvp;
      std::fill(m.begin(), m.end(), -std::numeric_limits<float>::infinity());
      std::fill(l.begin(), l.end(), 0.f);
      std::fill(o.begin(), o.end(), 0.f);
      const int64_t kmax = a.causal ? std::min(a.tk, q0 + rows) : a.tk;  // keys any row of the block sees
      for (int64_t k0 = 0; k0 < kmax; k0 += kKeys) {
        const int64_t nk = std::min(kKeys, kmax - k0), npanel = (nk + kPanel - 1) / kPanel, width = npanel * kPanel;
        const float* kb = kp + (k0 / kPanel) * d * kPanel;
#ifdef SD_X86
        if (avx2)
          qk_block_avx2(q, a.q_st, rows, kb, npanel, d, s.data(), kKeys);
        else
#endif
          qk_block_ref(q, a.q_st, rows, kb, npanel, d, s.data(), kKeys);
        for (int64_t i = 0; i < rows; ++i) {
          float* si = s.data() + i * kKeys;
          const int64_t len = a.causal ? std::clamp<int64_t>(q0 + i + 1 - k0, 0, nk) : nk;
          if (len == 0) {
            std::fill(si, si + width, 0.f);
            continue;
          }
#ifdef SD_X86
          const float mx = avx2 ? row_max_avx2(si, len) : row_max_ref(si, len);
#else
          const float mx = row_max_ref(si, len);
#endif
          const float m_new = std::max(m[size_t(i)], mx);
          const float alpha = std::exp((m[size_t(i)] - m_new) * a.scale);  // 0 on the first block
#ifdef SD_X86
          const float sum =
              avx2 ? exp_row_avx2(si, len, width, m_new, a.scale) : exp_row_ref(si, len, width, m_new, a.scale);
#else
          const float sum = exp_row_ref(si, len, width, m_new, a.scale);
#endif
          l[size_t(i)] = l[size_t(i)] * alpha + sum;
          m[size_t(i)] = m_new;
          if (alpha != 1.f)
            for (int64_t c = 0; c < dvp; ++c) o[size_t(i * dvp + c)] *= alpha;
        }
#ifdef SD_X86
        if (avx2)
          pv_block_avx2(s.data(), kKeys, rows, vp + k0 * dvp, dvp, nk, o.data());
        else
#endif
          pv_block_ref(s.data(), kKeys, rows, vp + k0 * dvp, dvp, nk, o.data());
      }
      float* out = a.o + b * a.o_sb + h * a.o_sh + q0 * a.o_st;
      for (int64_t i = 0; i < rows; ++i) {
        const float w = 1.f / l[size_t(i)];
        for (int64_t c = 0; c < a.dv; ++c) out[i * a.o_st + c] = o[size_t(i * dvp + c)] * w;
      }
    }
  }
}

}  // namespace sdserve::cpu
