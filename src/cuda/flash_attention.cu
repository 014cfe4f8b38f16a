// flash_attention: fused scaled dot-product attention, flash-attention-2 style. A block owns a
// tile of queries of one (batch, head) and streams the keys/values through shared memory in
// tiles, keeping a running row max m and row sum l (online softmax) and rescaling its output
// accumulator whenever m grows; nothing of size tq x tk is ever stored.
//
// Two kernels:
//  - flash_fwd_tc (F16, and BF16 on sm_80+): tensor cores through mma.sync. Each warp owns 16
//    or 32 query rows. S = Q K^T is accumulated in f32 mma fragments, the softmax runs on those
//    registers, P is rounded to the storage type and fed straight back as the A operand of
//    O += P V (the accumulator layout of m16n8k16 equals its A layout, two n-tiles at a time).
//    K/V tiles arrive by cp.async (sm_80+) while the previous phase computes.
//  - flash_fwd_simt (F32, and any dtype the tensor-core kernel does not take): f32 FMAs on f32
//    tiles in shared memory, exact expf; accurate to f32 rounding.
//
// Head dimensions are bucketed (max(d, dv) rounded up to 16, 32, 48, 64, 80, 96, 128, 160 or
// 256) so register arrays have compile-time sizes; shared memory tiles are zero-padded beyond
// d / dv and beyond tq / tk, which changes no dot product. Keys past tk (and, causal, past the
// query index) are set to -inf before the row max.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <mutex>

#include "cuda/attention.h"
#include "cuda/check.h"
#include "cuda/runtime.h"

namespace sdserve::cuda {
namespace {

constexpr float kLog2e = 1.4426950408889634f;
constexpr unsigned kFullMask = 0xffffffffu;

// Everything a kernel needs, by value. Strides are in elements.
struct Args {
  const void* q;
  const void* k;
  const void* v;
  void* o;
  int64_t q_sb, q_sh, q_st;
  int64_t k_sb, k_sh, k_st;
  int64_t v_sb, v_sh, v_st;
  int64_t o_sb, o_sh, o_st;
  int H, tq, tk, d, dv;
  float scale;       // softmax scale (SIMT kernel: exp(scale * s - m))
  float scale_log2;  // scale * log2(e) (tensor-core kernel: exp2)
  bool causal;
  // 16-bit storage only: rows of q / k / v can be copied in aligned 16-byte chunks (base pointer
  // 16-byte aligned, every stride and the row length multiples of 8 elements).
  bool vec_q, vec_k, vec_v;
  // 16-bit storage only: o can be written two elements (4 bytes) at a time.
  bool pair_o;
};

// ---------------------------------------------------------------------------------------------
// Small PTX wrappers. Each is only reached on architectures that have the instruction (the host
// checks the PTX version the kernels were built for); elsewhere they trap.
// ---------------------------------------------------------------------------------------------

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Four 8x8 b16 matrices; lane i gives the address of row (i % 8) of matrix i / 8 and receives,
// of each matrix, the two elements at row lane / 4, columns 2 * (lane % 4) + {0, 1}.
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 750
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
#else
  (void)r, (void)addr;
  __trap();
#endif
}

// As ldsm_x4, but each matrix transposed: a lane receives rows 2 * (lane % 4) + {0, 1}, column
// lane / 4.
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], uint32_t addr) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 750
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
#else
  (void)r, (void)addr;
  __trap();
#endif
}

// c (16x8 f32) += a (16x16, row major) * b (16x8, column major). With g = lane / 4 and
// t = lane % 4: a = {(g, 2t..2t+1), (g+8, 2t..), (g, 2t+8..), (g+8, 2t+8..)}, b = {(k 2t..2t+1,
// n g), (k 2t+8.., n g)}, c = {(g, 2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1)}.
// sm_80+: one m16n8k16; sm_75 (f16 only): two m16n8k8 over the two k halves.
template <bool kBF16>
__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (kBF16) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 750
  if constexpr (kBF16) {
    (void)c, (void)a, (void)b0, (void)b1;
    __trap();
  } else {
    asm("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5}, {%6}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(b0));
    asm("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5}, {%6}, {%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[2]), "r"(a[3]), "r"(b1));
  }
#else
  (void)c, (void)a, (void)b0, (void)b1;
  __trap();
#endif
}

// 16-byte global -> shared copy: asynchronous (cp.async, L2 only) on sm_80+, a plain vector copy
// through registers before.
__device__ __forceinline__ void copy16_async(void* smem, const void* gmem) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(smem)), "l"(gmem) : "memory");
#else
  *static_cast<uint4*>(smem) = *static_cast<const uint4*>(gmem);
#endif
}

// Waits for every copy16_async this thread issued (a __syncthreads() must follow before other
// threads read the data).
__device__ __forceinline__ void copy16_wait_all() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

// exp2 on the special-function unit (relative error ~2^-22; exp2(-inf) = 0).
__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
}

// Two floats -> packed 16-bit pair (lo in the low half), round to nearest even.
template <bool kBF16>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  if constexpr (kBF16) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
  } else {
    const __half2 v = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t*>(&v);
  }
}

template <bool kBF16>
__device__ __forceinline__ uint16_t to_bits16(float x) {
  if constexpr (kBF16) {
    return __bfloat16_as_ushort(__float2bfloat16_rn(x));
  } else {
    return __half_as_ushort(__float2half_rn(x));
  }
}

// ---------------------------------------------------------------------------------------------
// Tensor-core kernel (16-bit storage).
// ---------------------------------------------------------------------------------------------

// Tile configuration per head-dim bucket: WARPS warps, each owning MT m-tiles of 16 query rows
// (BQ = 16 * MT * WARPS rows per block; MT = 2 reuses every K/V fragment for two mma), BK keys
// per shared-memory tile, MINB the __launch_bounds__ minimum blocks per SM. Shared memory (rows
// padded to DP + 8 elements so ldmatrix is bank-conflict free): (BQ + 2 BK) (DP + 8) * 2 bytes.
// Chosen by measurement on an H200 (f16, SD shapes); all fit sm_75's 64 KB except DP = 256 with
// BK = 32, which launch_tc only picks where the device allows it:
//   DP 16..64: 4 warps x 2 m-tiles (BQ 128), BK 64   (DP 48: 28.7 KB, DP 64: 36.9 KB)
//   DP 80, 96: 4 warps x 1 m-tile  (BQ 64),  BK 64   (DP 96: 39.9 KB)
//   DP 128:    4 warps x 2 m-tiles (BQ 128), BK 32   (52.2 KB)
//   DP 160:    4 warps x 1 m-tile  (BQ 64),  BK 32   (43.0 KB)
//   DP 256:    4 warps x 1 m-tile  (BQ 64),  BK 32 (67.6 KB) or 16 (50.7 KB)
constexpr int tc_warps(int /*dp*/) { return 4; }
constexpr int tc_mt(int dp) { return dp <= 64 || dp == 128 ? 2 : 1; }
constexpr int tc_bk(int dp) { return dp <= 96 ? 64 : 32; }
constexpr int tc_minb(int /*dp*/) { return 1; }

constexpr size_t tc_smem_bytes(int dp, int bq, int bk) { return size_t(bq + 2 * bk) * (dp + 8) * 2; }

// Copies rows [row0, row0 + ROWS) x columns [0, DP) of a 16-bit [tokens, ncols] matrix (row
// stride ts) into shared memory with row stride DP + 8. Rows >= nrows and columns >= ncols are
// written as zeros. `vec`: 16-byte chunks (asynchronous on sm_80+; wait with copy16_wait_all),
// else element by element.
template <int ROWS, int DP, int NTHREADS>
__device__ __forceinline__ void load_tile16(uint16_t* sm, const uint16_t* g, int64_t ts, int row0, int nrows, int ncols,
                                            bool vec) {
  constexpr int S = DP + 8;
  if (vec) {
    constexpr int kChunks = DP / 8;  // 16-byte chunks per row
    for (int i = threadIdx.x; i < ROWS * kChunks; i += NTHREADS) {
      const int r = i / kChunks, c = (i % kChunks) * 8;
      uint16_t* dst = sm + r * S + c;
      const int row = row0 + r;
      if (row < nrows && c < ncols) {  // ncols % 8 == 0: the chunk lies inside the row
        copy16_async(dst, g + int64_t(row) * ts + c);
      } else {
        *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
      }
    }
  } else {
    for (int i = threadIdx.x; i < ROWS * DP; i += NTHREADS) {
      const int r = i / DP, c = i % DP;
      const int row = row0 + r;
      sm[r * S + c] = (row < nrows && c < ncols) ? g[int64_t(row) * ts + c] : uint16_t(0);
    }
  }
}

template <bool kBF16, int DP, int WARPS, int MT, int BK, int MINB>
__global__ void __launch_bounds__(WARPS * 32, MINB) flash_fwd_tc(const Args a) {
  static_assert(DP % 16 == 0 && BK % 16 == 0 && MT >= 1, "tiles must be multiples of 16");
  constexpr int kThreads = WARPS * 32;
  constexpr int BQ = WARPS * MT * 16;        // query rows per block
  constexpr int S = DP + 8;                  // shared-memory row stride (elements)
  constexpr int kSN = BK / 8;                // n-tiles of S (8 keys each)
  constexpr int kON = DP / 8;                // n-tiles of O (8 columns each)
  constexpr int kKD = DP / 16;               // k-steps over the head dim
  constexpr bool kQInRegs = MT * DP <= 128;  // else Q fragments are re-read from shared memory

  extern __shared__ __align__(16) unsigned char smem_raw[];
  uint16_t* qs = reinterpret_cast<uint16_t*>(smem_raw);
  uint16_t* ks = qs + BQ * S;
  uint16_t* vs = ks + BK * S;

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t4 = lane & 3;  // fragment row group and column pair
  const int bh = blockIdx.y;
  const int b = bh / a.H, h = bh - b * a.H;
  // Causal: the last query tiles see the most keys; start them first.
  const int qtile = a.causal ? int(gridDim.x) - 1 - int(blockIdx.x) : int(blockIdx.x);
  const int q0 = qtile * BQ;
  const int wrow = q0 + warp * MT * 16;  // first query row of this warp

  const uint16_t* qg = static_cast<const uint16_t*>(a.q) + b * a.q_sb + h * a.q_sh;
  const uint16_t* kg = static_cast<const uint16_t*>(a.k) + b * a.k_sb + h * a.k_sh;
  const uint16_t* vg = static_cast<const uint16_t*>(a.v) + b * a.v_sb + h * a.v_sh;

  // Keys this block needs: all, or (causal) up to its last query row.
  const int kv_end = a.causal ? min(a.tk, q0 + BQ) : a.tk;
  const int n_tiles = (kv_end + BK - 1) / BK;

  load_tile16<BQ, DP, kThreads>(qs, qg, a.q_st, q0, a.tq, a.d, a.vec_q);
  load_tile16<BK, DP, kThreads>(ks, kg, a.k_st, 0, a.tk, a.d, a.vec_k);

  // Per-lane ldmatrix addresses (bytes).
  // Q (A operand, 16x16 per k-step): matrices (rows 0-7 | 8-15) x (cols 0-7 | 8-15) in a0..a3
  // order, so lane l points at row l % 16, column 8 * (l / 16). m-tile mt: + 16 mt rows.
  const uint32_t q_lane = smem_addr(qs) + ((warp * MT * 16 + (lane & 15)) * S + (lane >> 4) * 8) * 2;
  // K (B operand of Q K^T, [key][d] = column-major k x n): matrices (keys 0-7, d 0-7), (keys
  // 0-7, d 8-15), (keys 8-15, d 0-7), (keys 8-15, d 8-15) = b0, b1 of n-tile 0, b0, b1 of n-tile 1.
  const uint32_t k_lane = smem_addr(ks) + (((lane & 7) + ((lane >> 4) << 3)) * S + ((lane >> 3) & 1) * 8) * 2;
  // V (B operand of P V, [key][dv] = row-major k x n, loaded transposed): matrices (keys 0-7,
  // cols 0-7), (keys 8-15, cols 0-7), (keys 0-7, cols 8-15), (keys 8-15, cols 8-15).
  const uint32_t v_lane = smem_addr(vs) + ((lane & 15) * S + (lane >> 4) * 8) * 2;

  // Accumulators: o[mt][n] holds rows wrow + 16 mt + g (elements 0, 1) and + 8 (elements 2, 3),
  // columns 8 n + 2 t4 + {0, 1}. m: running max of the raw scores; l: this thread's part of the
  // running sum (the quad's four parts are added at the end).
  float o[MT][kON][4];
  float m[MT][2], l[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int n = 0; n < kON; ++n) o[mt][n][0] = o[mt][n][1] = o[mt][n][2] = o[mt][n][3] = 0.f;
    m[mt][0] = m[mt][1] = -INFINITY;
    l[mt][0] = l[mt][1] = 0.f;
  }
  const float sl2 = a.scale_log2;  // > 0 (the host sends other scales to the SIMT kernel)

  uint32_t qf[kQInRegs ? MT : 1][kQInRegs ? kKD : 1][4];
  copy16_wait_all();
  __syncthreads();  // Q and K tile 0 are in shared memory
  if constexpr (kQInRegs) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int kk = 0; kk < kKD; ++kk) ldsm_x4(qf[mt][kk], q_lane + (mt * 16 * S + kk * 16) * 2);
    }
  }

  for (int t = 0; t < n_tiles; ++t) {
    const int k0 = t * BK;
    // K tile t has landed, and every warp is done with V tile t - 1: its buffer may be refilled.
    copy16_wait_all();
    __syncthreads();
    load_tile16<BK, DP, kThreads>(vs, vg, a.v_st, k0, a.tk, a.dv, a.vec_v);

    // S = Q K^T (16 MT x BK per warp), f32, raw (unscaled) scores.
    float s[MT][kSN][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int n = 0; n < kSN; ++n) s[mt][n][0] = s[mt][n][1] = s[mt][n][2] = s[mt][n][3] = 0.f;
    }
#pragma unroll
    for (int kk = 0; kk < kKD; ++kk) {
      uint32_t qa[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        if constexpr (kQInRegs) {
          qa[mt][0] = qf[mt][kk][0], qa[mt][1] = qf[mt][kk][1], qa[mt][2] = qf[mt][kk][2], qa[mt][3] = qf[mt][kk][3];
        } else {
          ldsm_x4(qa[mt], q_lane + (mt * 16 * S + kk * 16) * 2);
        }
      }
#pragma unroll
      for (int np = 0; np < BK / 16; ++np) {
        uint32_t kb[4];
        ldsm_x4(kb, k_lane + (np * 16 * S + kk * 16) * 2);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma_16816<kBF16>(s[mt][2 * np], qa[mt], kb[0], kb[1]);
          mma_16816<kBF16>(s[mt][2 * np + 1], qa[mt], kb[2], kb[3]);
        }
      }
    }

    // Mask keys past tk and (causal) past the query index: only tiles at the end or on the
    // diagonal need it.
    const bool need_mask = k0 + BK > a.tk || (a.causal && k0 + BK - 1 > q0);
    if (need_mask) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int n = 0; n < kSN; ++n) {
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const int key = k0 + n * 8 + 2 * t4 + (e & 1);
            const int row = wrow + mt * 16 + g + (e >> 1) * 8;
            if (key >= a.tk || (a.causal && key > row)) s[mt][n][e] = -INFINITY;
          }
        }
      }
    }

    // Online softmax, p = exp2(s * scale log2(e) - m * scale log2(e)). A row's values are
    // spread over the 4 lanes of a quad (same g).
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int hi = 0; hi < 2; ++hi) {  // rows g (elements 0, 1) and g + 8 (elements 2, 3)
        float mx = m[mt][hi];
#pragma unroll
        for (int n = 0; n < kSN; ++n) mx = fmaxf(mx, fmaxf(s[mt][n][2 * hi], s[mt][n][2 * hi + 1]));
        mx = fmaxf(mx, __shfl_xor_sync(kFullMask, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(kFullMask, mx, 2));
        // A row with no visible key so far keeps m = -inf; subtract 0 then (exp2(-inf) = 0, no NaN).
        const float base = mx == -INFINITY ? 0.f : mx * sl2;
        const float alpha = fast_exp2(m[mt][hi] * sl2 - base);
        m[mt][hi] = mx;
        float sum = 0.f;
#pragma unroll
        for (int n = 0; n < kSN; ++n) {
          s[mt][n][2 * hi] = fast_exp2(fmaf(s[mt][n][2 * hi], sl2, -base));
          s[mt][n][2 * hi + 1] = fast_exp2(fmaf(s[mt][n][2 * hi + 1], sl2, -base));
          sum += s[mt][n][2 * hi] + s[mt][n][2 * hi + 1];
        }
        l[mt][hi] = l[mt][hi] * alpha + sum;
#pragma unroll
        for (int n = 0; n < kON; ++n) o[mt][n][2 * hi] *= alpha, o[mt][n][2 * hi + 1] *= alpha;
      }
    }

    // V tile t has landed, and every warp is done with K tile t: prefetch K tile t + 1.
    copy16_wait_all();
    __syncthreads();
    if (t + 1 < n_tiles) load_tile16<BK, DP, kThreads>(ks, kg, a.k_st, k0 + BK, a.tk, a.d, a.vec_k);

      // O += P V. The S accumulators of n-tiles 2j, 2j+1 are exactly the A fragment of keys
      // 16j..16j+15: a0 = (g, 2t), a1 = (g+8, 2t), a2 = (g, 2t+8), a3 = (g+8, 2t+8).
#pragma unroll
    for (int kk = 0; kk < BK / 16; ++kk) {
      uint32_t pa[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        pa[mt][0] = pack2<kBF16>(s[mt][2 * kk][0], s[mt][2 * kk][1]);
        pa[mt][1] = pack2<kBF16>(s[mt][2 * kk][2], s[mt][2 * kk][3]);
        pa[mt][2] = pack2<kBF16>(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
        pa[mt][3] = pack2<kBF16>(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
      }
#pragma unroll
      for (int np = 0; np < kKD; ++np) {
        uint32_t vb[4];
        ldsm_x4_trans(vb, v_lane + (kk * 16 * S + np * 16) * 2);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma_16816<kBF16>(o[mt][2 * np], pa[mt], vb[0], vb[1]);
          mma_16816<kBF16>(o[mt][2 * np + 1], pa[mt], vb[2], vb[3]);
        }
      }
    }
  }

  // Finish the row sums across the quad, normalise, store (rows < tq, columns < dv).
  uint16_t* og = static_cast<uint16_t*>(a.o) + b * a.o_sb + h * a.o_sh;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int hi = 0; hi < 2; ++hi) {
      float sum = l[mt][hi];
      sum += __shfl_xor_sync(kFullMask, sum, 1);
      sum += __shfl_xor_sync(kFullMask, sum, 2);
      const int row = wrow + mt * 16 + g + hi * 8;
      if (row >= a.tq) continue;
      const float inv = sum > 0.f ? 1.f / sum : 0.f;
      uint16_t* orow = og + int64_t(row) * a.o_st;
#pragma unroll
      for (int n = 0; n < kON; ++n) {
        const int col = n * 8 + 2 * t4;
        const float x0 = o[mt][n][2 * hi] * inv, x1 = o[mt][n][2 * hi + 1] * inv;
        if (a.pair_o) {
          if (col < a.dv) *reinterpret_cast<uint32_t*>(orow + col) = pack2<kBF16>(x0, x1);  // dv even
        } else {
          if (col < a.dv) orow[col] = to_bits16<kBF16>(x0);
          if (col + 1 < a.dv) orow[col + 1] = to_bits16<kBF16>(x1);
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// SIMT kernel (f32 arithmetic on f32 shared-memory tiles; any storage type).
// ---------------------------------------------------------------------------------------------

// BQ query rows, TPR threads per row (a row's threads are adjacent lanes of one warp), BK keys
// per tile. Shared memory: Q [BQ][DP+1], K [BK][DP+1] (odd strides: conflict-free column
// walks), V [BK][DP], all f32: at most 49.4 KB.
template <int DP>
struct SimtTile {
  static constexpr int BQ = DP <= 128 ? 32 : 16;
  static constexpr int BK = DP <= 128 ? 32 : 16;
  static constexpr int TPR = DP <= 128 ? 4 : 8;
};

constexpr size_t simt_smem_bytes(int dp, int bq, int bk) {
  return (size_t(bq) * (dp + 1) + size_t(bk) * (dp + 1) + size_t(bk) * dp) * 4;
}

__device__ __forceinline__ float load_f32(const float* p) { return *p; }
__device__ __forceinline__ float load_f32(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ float load_f32(const __nv_bfloat16* p) { return __bfloat162float(*p); }

__device__ __forceinline__ void store_f32(float* p, float x) { *p = x; }
__device__ __forceinline__ void store_f32(__half* p, float x) { *p = __float2half_rn(x); }
__device__ __forceinline__ void store_f32(__nv_bfloat16* p, float x) { *p = __float2bfloat16_rn(x); }

// Rows [row0, row0 + ROWS) x columns [0, DP) of a [tokens, ncols] matrix (row stride ts),
// converted to f32, into shared memory with row stride SS; zeros outside nrows x ncols.
template <int ROWS, int DP, int SS, int NTHREADS, typename T>
__device__ __forceinline__ void load_tile_f32(float* sm, const T* g, int64_t ts, int row0, int nrows, int ncols) {
  for (int i = threadIdx.x; i < ROWS * DP; i += NTHREADS) {
    const int r = i / DP, c = i % DP;
    const int row = row0 + r;
    sm[r * SS + c] = (row < nrows && c < ncols) ? load_f32(g + int64_t(row) * ts + c) : 0.f;
  }
}

template <typename T, int DP, int BQ, int BK, int TPR>
__global__ void __launch_bounds__(BQ* TPR) flash_fwd_simt(const Args a) {
  static_assert(BK % TPR == 0 && DP % TPR == 0 && 32 % TPR == 0, "bad SIMT tile");
  constexpr int kThreads = BQ * TPR;
  constexpr int SQK = DP + 1;     // Q/K shared row stride
  constexpr int kKPT = BK / TPR;  // keys per thread: j, j + TPR, ...
  constexpr int kCPT = DP / TPR;  // output columns per thread: j, j + TPR, ...

  extern __shared__ __align__(16) unsigned char smem_raw[];
  float* qs = reinterpret_cast<float*>(smem_raw);
  float* ks = qs + BQ * SQK;
  float* vs = ks + BK * SQK;

  const int r = threadIdx.x / TPR, j = threadIdx.x % TPR;
  const int bh = blockIdx.y;
  const int b = bh / a.H, h = bh - b * a.H;
  const int qtile = a.causal ? int(gridDim.x) - 1 - int(blockIdx.x) : int(blockIdx.x);
  const int q0 = qtile * BQ;
  const int row = q0 + r;

  const T* qg = static_cast<const T*>(a.q) + b * a.q_sb + h * a.q_sh;
  const T* kg = static_cast<const T*>(a.k) + b * a.k_sb + h * a.k_sh;
  const T* vg = static_cast<const T*>(a.v) + b * a.v_sb + h * a.v_sh;

  const int kv_end = a.causal ? min(a.tk, q0 + BQ) : a.tk;
  const int n_tiles = (kv_end + BK - 1) / BK;

  load_tile_f32<BQ, DP, SQK, kThreads>(qs, qg, a.q_st, q0, a.tq, a.d);
  load_tile_f32<BK, DP, SQK, kThreads>(ks, kg, a.k_st, 0, a.tk, a.d);

  float o[kCPT];
#pragma unroll
  for (int c = 0; c < kCPT; ++c) o[c] = 0.f;
  float m = -INFINITY, l = 0.f;  // running max / this thread's part of the running sum
  const float* qrow = qs + r * SQK;

  for (int t = 0; t < n_tiles; ++t) {
    const int k0 = t * BK;
    __syncthreads();  // K tile t (and Q) visible; every thread done with V tile t - 1
    load_tile_f32<BK, DP, DP, kThreads>(vs, vg, a.v_st, k0, a.tk, a.dv);

    float s[kKPT];
#pragma unroll
    for (int i = 0; i < kKPT; ++i) s[i] = 0.f;
#pragma unroll 4
    for (int x = 0; x < a.d; ++x) {
      const float qv = qrow[x];
#pragma unroll
      for (int i = 0; i < kKPT; ++i) s[i] = fmaf(qv, ks[(j + TPR * i) * SQK + x], s[i]);
    }

    float mx = m;
#pragma unroll
    for (int i = 0; i < kKPT; ++i) {
      const int key = k0 + j + TPR * i;
      const bool visible = key < a.tk && !(a.causal && key > row);
      s[i] = visible ? s[i] * a.scale : -INFINITY;
      mx = fmaxf(mx, s[i]);
    }
#pragma unroll
    for (int off = TPR / 2; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(kFullMask, mx, off, TPR));
    const float base = mx == -INFINITY ? 0.f : mx;
    const float alpha = expf(m - base);
    m = mx;
    l *= alpha;
#pragma unroll
    for (int i = 0; i < kKPT; ++i) {
      s[i] = expf(s[i] - base);
      l += s[i];
    }
#pragma unroll
    for (int c = 0; c < kCPT; ++c) o[c] *= alpha;

    __syncthreads();  // V tile t visible; every thread done with K tile t
    if (t + 1 < n_tiles) load_tile_f32<BK, DP, SQK, kThreads>(ks, kg, a.k_st, k0 + BK, a.tk, a.d);

      // O += P V; p of key c lives in lane (c % TPR) of this row's group, slot c / TPR.
#pragma unroll
    for (int c = 0; c < BK; ++c) {
      const float p = __shfl_sync(kFullMask, s[c / TPR], c % TPR, TPR);
      const float* vrow = vs + c * DP + j;
#pragma unroll
      for (int cc = 0; cc < kCPT; ++cc) o[cc] = fmaf(p, vrow[TPR * cc], o[cc]);
    }
  }

#pragma unroll
  for (int off = TPR / 2; off > 0; off >>= 1) l += __shfl_xor_sync(kFullMask, l, off, TPR);
  if (row < a.tq) {
    const float inv = l > 0.f ? 1.f / l : 0.f;
    T* orow = static_cast<T*>(a.o) + b * a.o_sb + h * a.o_sh + int64_t(row) * a.o_st;
#pragma unroll
    for (int cc = 0; cc < kCPT; ++cc) {
      const int col = j + TPR * cc;
      if (col < a.dv) store_f32(orow + col, o[cc] * inv);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Host side.
// ---------------------------------------------------------------------------------------------

__global__ void probe_kernel() {}

struct DeviceInfo {
  bool ok = false;
  int ptx = 0;         // PTX (virtual) architecture our kernels run as on this device, e.g. 90
  int smem_optin = 0;  // max dynamic shared memory per block (bytes)
};

// Queried once per device. The PTX version (not the device's compute capability) decides which
// instructions the kernels were compiled with: a build whose newest target is compute_75 runs
// on an sm_90 device without mma.sync bf16.
DeviceInfo device_info(int device) {
  constexpr int kMaxDevices = 64;
  static std::mutex mu;
  static DeviceInfo cache[kMaxDevices];
  static bool known[kMaxDevices] = {};
  if (device < 0 || device >= kMaxDevices) return {};
  std::lock_guard<std::mutex> lock(mu);
  if (!known[device]) {
    DeviceInfo info;
    cudaFuncAttributes fa{};
    int optin = 0;
    if (cudaFuncGetAttributes(&fa, probe_kernel) == cudaSuccess &&
        cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device) == cudaSuccess) {
      info.ok = true;
      info.ptx = fa.ptxVersion;
      info.smem_optin = optin;
    } else {
      (void)cudaGetLastError();  // e.g. no kernel image for this device: not sticky, clear it
    }
    cache[device] = info;
    known[device] = true;
  }
  return cache[device];
}

template <typename Kernel>
bool launch(Kernel kernel, dim3 grid, int threads, size_t smem, const DeviceInfo& info, const Args& a,
            cudaStream_t stream, const char* what) {
  if (smem > size_t(info.smem_optin)) return false;
  if (smem > 48 * 1024)
    SD_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  kernel<<<grid, threads, smem, stream>>>(a);
  check_launch(what);
  return true;
}

template <bool kBF16, int DP, int WARPS, int MT, int BK, int MINB>
bool launch_tc_tiles(const Args& a, int bh, const DeviceInfo& info, cudaStream_t stream) {
  constexpr int kBQ = WARPS * MT * 16;
  const dim3 grid(unsigned((a.tq + kBQ - 1) / kBQ), unsigned(bh));
  return launch(flash_fwd_tc<kBF16, DP, WARPS, MT, BK, MINB>, grid, WARPS * 32, tc_smem_bytes(DP, kBQ, BK), info, a,
                stream, "flash_attention (tensor cores)");
}

template <bool kBF16, int DP>
bool launch_tc(const Args& a, int bh, const DeviceInfo& info, cudaStream_t stream) {
  constexpr int kWarps = tc_warps(DP), kMT = tc_mt(DP), kBK = tc_bk(DP), kMinB = tc_minb(DP);
  if constexpr (DP > 160) {
    // 67.6 KB: more than sm_75 allows; halve the key tile there.
    if (tc_smem_bytes(DP, kWarps * kMT * 16, kBK) > size_t(info.smem_optin))
      return launch_tc_tiles<kBF16, DP, kWarps, kMT, kBK / 2, kMinB>(a, bh, info, stream);
  }
  return launch_tc_tiles<kBF16, DP, kWarps, kMT, kBK, kMinB>(a, bh, info, stream);
}

template <typename T, int DP>
bool launch_simt(const Args& a, int bh, const DeviceInfo& info, cudaStream_t stream) {
  using Tile = SimtTile<DP>;
  const dim3 grid(unsigned((a.tq + Tile::BQ - 1) / Tile::BQ), unsigned(bh));
  return launch(flash_fwd_simt<T, DP, Tile::BQ, Tile::BK, Tile::TPR>, grid, Tile::BQ * Tile::TPR,
                simt_smem_bytes(DP, Tile::BQ, Tile::BK), info, a, stream, "flash_attention (simt)");
}

template <int DP>
bool launch_bucket(const Args& a, DType dt, int bh, const DeviceInfo& info, cudaStream_t stream) {
  // mma.sync f16 needs sm_75, bf16 sm_80 (and cp.async sm_80; sm_75 copies synchronously). The
  // tensor-core kernel folds the scale into exp2 after taking the max of the raw scores, which
  // needs scale > 0.
  const bool scale_ok = a.scale_log2 > 0.f && std::isfinite(a.scale_log2);
  if (scale_ok && dt == DType::F16 && info.ptx >= 75) return launch_tc<false, DP>(a, bh, info, stream);
  if (scale_ok && dt == DType::BF16 && info.ptx >= 80) return launch_tc<true, DP>(a, bh, info, stream);
  switch (dt) {
    case DType::F32:
      return launch_simt<float, DP>(a, bh, info, stream);
    case DType::F16:
      return launch_simt<__half, DP>(a, bh, info, stream);
    case DType::BF16:
      return launch_simt<__nv_bfloat16, DP>(a, bh, info, stream);
    default:
      return false;
  }
}

// Head-dim bucket: max(d, dv) rounded up; 0 when above 256.
int head_bucket(int64_t n) {
  constexpr int kBuckets[] = {16, 32, 48, 64, 80, 96, 128, 160, 256};
  for (int bkt : kBuckets)
    if (n <= bkt) return bkt;
  return 0;
}

bool aligned16_rows(const void* p, int64_t sb, int64_t sh, int64_t st, int64_t cols) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0 && sb % 8 == 0 && sh % 8 == 0 && st % 8 == 0 && cols % 8 == 0;
}

Args make_args(const AttentionParams& p) {
  Args a{};
  a.q = p.q, a.k = p.k, a.v = p.v, a.o = p.o;
  a.q_sb = p.q_sb, a.q_sh = p.q_sh, a.q_st = p.q_st;
  a.k_sb = p.k_sb, a.k_sh = p.k_sh, a.k_st = p.k_st;
  a.v_sb = p.v_sb, a.v_sh = p.v_sh, a.v_st = p.v_st;
  a.o_sb = p.o_sb, a.o_sh = p.o_sh, a.o_st = p.o_st;
  a.H = int(p.H), a.tq = int(p.tq), a.tk = int(p.tk), a.d = int(p.d), a.dv = int(p.dv);
  a.scale = p.scale;
  a.scale_log2 = p.scale * kLog2e;
  a.causal = p.causal;
  if (p.dt == DType::F16 || p.dt == DType::BF16) {
    a.vec_q = aligned16_rows(p.q, p.q_sb, p.q_sh, p.q_st, p.d);
    a.vec_k = aligned16_rows(p.k, p.k_sb, p.k_sh, p.k_st, p.d);
    a.vec_v = aligned16_rows(p.v, p.v_sb, p.v_sh, p.v_st, p.dv);
    a.pair_o = reinterpret_cast<uintptr_t>(p.o) % 4 == 0 && p.o_sb % 2 == 0 && p.o_sh % 2 == 0 && p.o_st % 2 == 0 &&
               p.dv % 2 == 0;
  }
  return a;
}

}  // namespace

bool flash_attention(const AttentionParams& p, cudaStream_t stream) {
  if (p.dt != DType::F32 && p.dt != DType::F16 && p.dt != DType::BF16) return false;
  if (p.B < 0 || p.H < 0 || p.tq < 0 || p.tk < 0 || p.d <= 0 || p.dv <= 0) return false;
  if (p.B == 0 || p.H == 0 || p.tq == 0) return true;  // empty output: nothing to do
  if (p.tk == 0) return false;                         // softmax over no keys: leave it to the fallback
  if (!p.q || !p.k || !p.v || !p.o) return false;
  // Indices inside a (batch, head) are int; the grid's y dimension holds B * H.
  constexpr int64_t kMaxTokens = INT_MAX - 1024;
  if (p.tq > kMaxTokens || p.tk > kMaxTokens || p.B > 65535 || p.H > 65535 || p.B * p.H > 65535) return false;
  const int dp = head_bucket(std::max(p.d, p.dv));
  if (dp == 0) return false;

  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  const DeviceInfo info = device_info(device);
  if (!info.ok) return false;

  const Args a = make_args(p);
  const int bh = int(p.B * p.H);
  switch (dp) {
    case 16:
      return launch_bucket<16>(a, p.dt, bh, info, stream);
    case 32:
      return launch_bucket<32>(a, p.dt, bh, info, stream);
    case 48:
      return launch_bucket<48>(a, p.dt, bh, info, stream);
    case 64:
      return launch_bucket<64>(a, p.dt, bh, info, stream);
    case 80:
      return launch_bucket<80>(a, p.dt, bh, info, stream);
    case 96:
      return launch_bucket<96>(a, p.dt, bh, info, stream);
    case 128:
      return launch_bucket<128>(a, p.dt, bh, info, stream);
    case 160:
      return launch_bucket<160>(a, p.dt, bh, info, stream);
    case 256:
      return launch_bucket<256>(a, p.dt, bh, info, stream);
    default:
      return false;
  }
}

}  // namespace sdserve::cuda
