// Winograd F(4x4, 3x3) convolution for stride-1 3x3 layers (Lavin & Gray, "Fast Algorithms for
// Convolutional Neural Networks", 2015).
//
// Each 4x4 block of outputs is computed from a 6x6 input tile with 36 multiplies per input/output
// channel pair instead of 144: Y = A^T [ (G g G^T) . (B^T d B) ] A. Summed over input channels,
// the elementwise product becomes 36 independent GEMMs [tiles x C] x [C x O], which is where the
// time goes. Layers with few tiles or channels keep the direct convolution (the transforms would
// not pay for themselves).
//
// A layer is done in chunks of whole tile rows of one image, sized so the transformed input
// and output (36 x tiles x channels each) stay in the last-level cache, in three phases spread
// over the OpenMP threads: (1) tile rows copied to a zero-padded channels-last buffer and
// transformed, (2) the 36 GEMMs, one per task, each serial (oneDNN's sgemm goes serial inside
// an OpenMP region), (3) the output transform plus bias. The transformed weights are made on
// every call from the OIHW weights, at most ~128 MiB of output channels at a time. Workspaces
// are thread-local and reused across calls.
//
// fp32 error: F(4x4, 3x3) with the points 0, +-1, +-2 is known to lose about 2-3 bits against
// direct convolution; the unit tests bound it against a double-precision reference.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/error.h"
#include "cpu/conv.h"
#include "cpu/gemm.h"

#ifdef SDSERVE_WITH_ONEDNN
#include <dnnl.h>
#endif

namespace sdserve::cpu {

namespace {

typedef float v8 __attribute__((vector_size(32)));

inline v8 load8(const float* p) {
  v8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store8(float* p, v8 v) { std::memcpy(p, &v, sizeof v); }
inline v8 splat(float f) { return v8{f, f, f, f, f, f, f, f}; }

// B^T applied to a 6-vector (rows of B^T: [4 0 -5 0 1 0], [0 -4 -4 1 1 0], [0 4 -4 -1 1 0],
// [0 -2 -1 2 1 0], [0 2 -1 -2 1 0], [0 4 0 -5 0 1]).
inline void bt6(const v8* x, v8* o) {
  const v8 four = splat(4.f), five = splat(5.f), two = splat(2.f);
  o[0] = four * x[0] - five * x[2] + x[4];
  o[1] = x[3] + x[4] - four * (x[1] + x[2]);
  o[2] = four * (x[1] - x[2]) + x[4] - x[3];
  o[3] = two * (x[3] - x[1]) + x[4] - x[2];
  o[4] = two * (x[1] - x[3]) + x[4] - x[2];
  o[5] = four * x[1] - five * x[3] + x[5];
}

// A^T applied to a 6-vector (rows of A^T: [1 1 1 1 1 0], [0 1 -1 2 -2 0], [0 1 1 4 4 0],
// [0 1 -1 8 -8 1]).
inline void at6(const v8* x, v8* o) {
  const v8 s12 = x[1] + x[2], d12 = x[1] - x[2], s34 = x[3] + x[4], d34 = x[3] - x[4];
  o[0] = x[0] + s12 + s34;
  o[1] = d12 + splat(2.f) * d34;
  o[2] = s12 + splat(4.f) * s34;
  o[3] = d12 + splat(8.f) * d34 + x[5];
}

// G applied to a 3-vector (rows of G: [1/4 0 0], [-1/6 -1/6 -1/6], [-1/6 1/6 -1/6],
// [1/24 1/12 1/6], [1/24 -1/12 1/6], [0 0 1]).
inline void g3(const v8* g, v8* o) {
  const v8 s02 = g[0] + g[2];
  const v8 q = splat(1.f / 24.f) * g[0] + splat(1.f / 6.f) * g[2];
  o[0] = splat(0.25f) * g[0];
  o[1] = splat(-1.f / 6.f) * (s02 + g[1]);
  o[2] = splat(-1.f / 6.f) * (s02 - g[1]);
  o[3] = q + splat(1.f / 12.f) * g[1];
  o[4] = q - splat(1.f / 12.f) * g[1];
  o[5] = g[2];
}

std::atomic<int>& mode_slot() {
  static std::atomic<int> slot{[] {
    const char* e = std::getenv("SDSERVE_WINOGRAD");
    if (e && std::string(e) == "0") return int(WinogradMode::Off);
    return int(WinogradMode::Auto);
  }()};
  return slot;
}

// U[36][C][oc] = G g G^T for every kernel g of input channel c and output channel ob + o,
// o < oc, 8 output channels at a time so the stores run along O.
void transform_weights(const Conv2dParams& p, const float* wt, int64_t ob, int64_t oc, float* u) {
  const int64_t C = p.c;
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < C; ++c)
    for (int64_t o0 = 0; o0 < oc; o0 += 8) {
      const int64_t nl = std::min<int64_t>(8, oc - o0);
      v8 g[3][3] = {};
      for (int64_t l = 0; l < nl; ++l) {
        const float* k = wt + ((ob + o0 + l) * C + c) * 9;
        for (int ky = 0; ky < 3; ++ky)
          for (int kx = 0; kx < 3; ++kx) g[ky][kx][l] = k[ky * 3 + kx];
      }
      v8 rows[6][3];
      for (int kx = 0; kx < 3; ++kx) {  // columns: G g[:, kx]
        const v8 col[3] = {g[0][kx], g[1][kx], g[2][kx]};
        v8 t[6];
        g3(col, t);
        for (int i = 0; i < 6; ++i) rows[i][kx] = t[i];
      }
      for (int i = 0; i < 6; ++i) {  // rows: (G g) G^T
        v8 full[6];
        g3(rows[i], full);
        for (int j = 0; j < 6; ++j) {
          float* dst = u + ((i * 6 + j) * C + c) * oc + o0;
          if (nl == 8) {
            store8(dst, full[j]);
          } else {
            for (int64_t l = 0; l < nl; ++l) dst[l] = full[j][l];
          }
        }
      }
    }
}

// Serial inside the parallel region with oneDNN. conv2d_f32 only takes this path in oneDNN
// builds; elsewhere (direct calls) the generic sgemm serves.
void gemm_serial(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                 int64_t ldc) {
#ifdef SDSERVE_WITH_ONEDNN
  const dnnl_status_t st = dnnl_sgemm('N', 'N', m, n, k, 1.f, a, lda, b, ldb, 0.f, c, ldc);
  if (st != dnnl_success) throw InternalError("oneDNN sgemm failed with status " + std::to_string(int(st)));
#else
  sgemm(false, false, m, n, k, 1.f, a, lda, b, ldb, 0.f, c, ldc);
#endif
}

std::atomic<int64_t>& weight_budget_slot() {
  static std::atomic<int64_t> slot{int64_t(128) << 20};
  return slot;
}

}  // namespace

void set_winograd_mode(WinogradMode m) { mode_slot().store(int(m)); }
WinogradMode winograd_mode() { return WinogradMode(mode_slot().load()); }
void set_winograd_weight_budget(int64_t bytes) { weight_budget_slot().store(std::max<int64_t>(bytes, 1)); }
int64_t winograd_weight_budget() { return weight_budget_slot().load(); }

bool winograd_applicable(const Conv2dParams& p) {
  if (p.kh != 3 || p.kw != 3 || p.sh != 1 || p.sw != 1) return false;
  if (p.pt > 2 || p.pl > 2 || p.pb > 2 || p.pr > 2) return false;
  const WinogradMode m = winograd_mode();
  if (m == WinogradMode::Off) return false;
  if (m == WinogradMode::Always) return true;
  // Measured on SD shapes (docs/PERFORMANCE.md): with the weights transformed on every call
  // (36 x C x O floats written), Winograd wins from about 64 tiles (32x32 at batch 2:
  // 1032 -> 460 ms for 1280 -> 1280) and loses at 32 tiles (16x16: 254 -> 320 ms).
  const int64_t tiles = p.n * ((p.oh() + 3) / 4) * ((p.ow() + 3) / 4);
  return tiles >= 64 && p.c >= 16 && p.o >= 16;
}

void conv2d_winograd_f32(const Conv2dParams& p, const float* x, const float* wt, const float* bias, float* y) {
  const int64_t C = p.c, O = p.o, H = p.h, W = p.w, OH = p.oh(), OW = p.ow();
  const int64_t Cp = (C + 7) / 8 * 8, Op = (O + 7) / 8 * 8;
  const int64_t th = (OH + 3) / 4, tw = (OW + 3) / 4;
  // Workspaces are kept per calling thread and only grow: fresh multi-megabyte buffers per
  // call cost more in page faults than the transforms themselves. The transformed weights are
  // made for at most ~128 MiB of output channels at a time (all of O for every SD layer up
  // to 1280 -> 1280; 2560 -> 1280 takes 4 chunks), the tile chunks below bound V and M.
  static thread_local std::vector<float> u, vb, mb;
  const int64_t oc_max = std::clamp<int64_t>((winograd_weight_budget() / (36 * 4 * C)) / 8 * 8, 8, Op);
  const int64_t n_ochunks = (O + oc_max - 1) / oc_max;
  if (u.size() < size_t(36 * C * oc_max)) u.resize(size_t(36 * C * oc_max));
  if (n_ochunks == 1) transform_weights(p, wt, 0, O, u.data());

  // A chunk is a run of whole tile rows of one image whose transformed input and output
  // (36 x tiles x channels each) fit in about 24 MiB, so they stay in the last-level cache
  // between the three phases.
  const int64_t budget_tiles = std::max<int64_t>(tw, (int64_t(24) << 20) / (36 * 4 * (Cp + Op)));
  const int64_t rows_per_chunk = std::clamp<int64_t>(budget_tiles / tw, 1, th);
  const int64_t max_tiles = rows_per_chunk * tw;
  const int64_t BW = tw * 4 + 2;  // one tile row of input, padded, channels last: [6][BW][Cp]
  if (vb.size() < size_t(36 * max_tiles * Cp)) vb.resize(size_t(36 * max_tiles * Cp));
  if (mb.size() < size_t(36 * max_tiles * Op)) mb.resize(size_t(36 * max_tiles * Op));
  // Plain pointers into this thread's workspaces: inside the parallel region the names u, vb
  // and mb would denote each worker's own (empty) thread_local vectors.
  float* const V = vb.data();
  float* const M = mb.data();
  float* const U = u.data();
  std::exception_ptr failure;

  for (int64_t b = 0; b < p.n; ++b) {
    const float* xb = x + b * C * H * W;
    for (int64_t r0 = 0; r0 < th; r0 += rows_per_chunk) {
      const int64_t r1 = std::min(th, r0 + rows_per_chunk), nt = (r1 - r0) * tw;
#pragma omp parallel
      {
        // Phase 1: V[xi][t][c] = (B^T d B)[xi] per tile, 8 channels at a time, a tile row per task.
        static thread_local std::vector<float> buf;
        if (buf.size() < size_t(6 * BW * Cp)) buf.resize(size_t(6 * BW * Cp));
#pragma omp for schedule(dynamic, 1)
        for (int64_t r = r0; r < r1; ++r) {
          for (int64_t yy = 0; yy < 6; ++yy) {
            float* brow = buf.data() + yy * BW * Cp;
            const int64_t iy = r * 4 - p.pt + yy;
            if (iy < 0 || iy >= H) {
              std::fill(brow, brow + BW * Cp, 0.f);
              continue;
            }
            for (int64_t xx = 0; xx < BW; ++xx) {
              const int64_t ix = xx - p.pl;
              float* dst = brow + xx * Cp;
              if (ix < 0 || ix >= W) {
                std::fill(dst, dst + Cp, 0.f);
                continue;
              }
              const float* src = xb + iy * W + ix;
              for (int64_t c = 0; c < C; ++c) dst[c] = src[c * H * W];
              for (int64_t c = C; c < Cp; ++c) dst[c] = 0.f;
            }
          }
          for (int64_t tx = 0; tx < tw; ++tx) {
            const int64_t t = (r - r0) * tw + tx;
            const float* base = buf.data() + tx * 4 * Cp;
            for (int64_t c = 0; c < Cp; c += 8) {
              v8 tcol[6][6];
              for (int j = 0; j < 6; ++j) {  // columns: tcol[j] = B^T d[:, j]
                v8 col[6];
                for (int i = 0; i < 6; ++i) col[i] = load8(base + (i * BW + j) * Cp + c);
                bt6(col, tcol[j]);
              }
              for (int i = 0; i < 6; ++i) {  // rows: V[i, :] = B^T (row i of B^T d)
                v8 row[6], out[6];
                for (int j = 0; j < 6; ++j) row[j] = tcol[j][i];
                bt6(row, out);
                for (int j = 0; j < 6; ++j) store8(V + ((i * 6 + j) * max_tiles + t) * Cp + c, out[j]);
              }
            }
          }
        }
      }
      // Phase 2: M[xi] = V[xi] x U[xi], [nt x C] x [C x oc] per output-channel chunk, one serial
      // GEMM per task.
      for (int64_t ob = 0; ob < O; ob += oc_max) {
        const int64_t oc = std::min(oc_max, O - ob);
        if (n_ochunks > 1) transform_weights(p, wt, ob, oc, U);
#pragma omp parallel for schedule(dynamic, 1)
        for (int64_t xi = 0; xi < 36; ++xi) {
          try {
            gemm_serial(nt, oc, C, V + xi * max_tiles * Cp, Cp, U + xi * C * oc, oc, M + xi * max_tiles * Op + ob, Op);
          } catch (...) {
#pragma omp critical
            failure = std::current_exception();
          }
        }
      }
      if (failure) std::rethrow_exception(failure);
#pragma omp parallel
      {
        // Phase 3: Y = A^T M A (+ bias) per tile, 8 output channels at a time; edge tiles clipped.
#pragma omp for schedule(static)
        for (int64_t t = 0; t < nt; ++t) {
          const int64_t ty = r0 + t / tw, tx = t % tw;
          const int64_t oy0 = ty * 4, ox0 = tx * 4;
          const int64_t ny = std::min<int64_t>(4, OH - oy0), nx = std::min<int64_t>(4, OW - ox0);
          for (int64_t o = 0; o < Op; o += 8) {
            v8 tcol[6][4], res[4][4];
            for (int j = 0; j < 6; ++j) {
              v8 col[6];
              for (int i = 0; i < 6; ++i) col[i] = load8(M + ((i * 6 + j) * max_tiles + t) * Op + o);
              at6(col, tcol[j]);
            }
            for (int i = 0; i < 4; ++i) {
              v8 row[6];
              for (int j = 0; j < 6; ++j) row[j] = tcol[j][i];
              at6(row, res[i]);
            }
            alignas(32) float bv[8] = {};
            const int64_t nl = std::min<int64_t>(8, O - o);
            if (bias)
              for (int64_t l = 0; l < nl; ++l) bv[l] = bias[o + l];
            const v8 bvec = load8(bv);
            for (int64_t i = 0; i < ny; ++i)
              for (int64_t j = 0; j < nx; ++j) {
                alignas(32) float vals[8];
                store8(vals, res[i][j] + bvec);
                float* dst = y + ((b * O + o) * OH + oy0 + i) * OW + ox0 + j;
                for (int64_t l = 0; l < nl; ++l) dst[l * OH * OW] = vals[l];
              }
          }
        }
      }
      if (failure) std::rethrow_exception(failure);
    }
  }
}

}  // namespace sdserve::cpu
