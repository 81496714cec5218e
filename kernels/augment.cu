// The augmenting minibatch gather (fcgpu/augment_spec.py has the spec; its reference
// and the Numba pass give the same bits):
//
//   fcgpu_augment_gather<TI, TO>  Xb (B, D) of TO from rows perm[b*B + r] of X (N, D)
//                                 of TI, each row a C x H x W image: per-sample random
//                                 horizontal flip and crop with padding, minus the
//                                 mean image; yb[r] = y[perm[b*B + r]].
//
// Sample position q = b*B + r draws philox_block(q, seed, 2^63 + epoch):
//   flip = r0 >> 31, dx = (r1 * (2*pad + 1)) >> 32, dy = (r2 * (2*pad + 1)) >> 32.
// Output pixel (c, i, j) reads source (c, i + dy - pad, jj + dx - pad), jj = W-1-j when
// flipped; outside the image it is 0 (the padding is the mean image).
//
//   fcgpu_mix_pairs<T>            MixUp or CutMix of that batch in place, row r with its
//                                 partner row B-1-r (fcgpu/mix_spec.py has the spec).
//
// b and epoch come by value, or from device memory when their pointer is not null
// (a step captured in a CUDA graph reads them when it runs; no host work per step).
// TI: unsigned char, float, double; TO, T: float, double.
#include "ops.cuh"

using fcgpu::u32;
using fcgpu::u64;
typedef long long i64;

namespace fcgpu {

// Modes (fcgpu/augment_spec.py: MODE_CODES).
enum AugmentMode { AUG_NONE = 0, AUG_FLIP = 1, AUG_CROP = 2 };

static constexpr u64 AUGMENT_STREAM_BASE = 0x8000000000000000ull;

// A source pixel as TO, with subnormals kept under CuPy's -ftz=true (ops.cuh's
// narrow / widen; uint8 converts exactly); the mean is subtracted with sub_rn.
template <typename TO>
FCGPU_HD TO pixel(unsigned char v) {
  return (TO)v;
}
template <typename TO>
FCGPU_HD TO pixel(double v) {
  return narrow<TO>(v);
}
template <typename TO>
FCGPU_HD TO pixel(float v);
template <>
FCGPU_HD float pixel<float>(float v) {
  return v;
}
template <>
FCGPU_HD double pixel<double>(float v) {
  return widen(v);
}

// Mixing modes (fcgpu/mix_spec.py: MIX_CODES) and draws.
enum MixMode { MIX_NONE = 0, MIX_MIXUP = 1, MIX_CUTMIX = 2 };

static constexpr u64 MIX_BLOCK_BASE = 0x8000000000000000ull;
static constexpr u32 MIX_FRAC_BITS = 20;  // 32 - fcgpu/beta_table.py TABLE_BITS

struct MixDraw {
  double lam;      // the target weight of the row's own image
  i64 x1, x2;      // CutMix: the box [x1, x2) x [y1, y2) taken from the partner
  i64 y1, y2;
};

// Sample position pos's draw: lam from the Beta quantile table (4097 doubles),
// interpolated with one rounding per operation (no FMA); for CutMix the box, and lam
// adjusted to its exact area.
FCGPU_HD MixDraw mix_draw(u64 pos, u64 seed, u64 stream, const double* table, u64 mode,
                          i64 h, i64 w) {
  const philox4 q = philox_block(MIX_BLOCK_BASE | pos, seed, stream);
  const u32 k = q.v[0] >> MIX_FRAC_BITS;
  const double f = mul_rn((double)(q.v[0] & ((1u << MIX_FRAC_BITS) - 1u)),
                          1.0 / (double)(1u << MIX_FRAC_BITS));
  const double lo = table[k];
  MixDraw m{add_rn(lo, mul_rn(f, sub_rn(table[k + 1], lo))), 0, 0, 0, 0};
  if (mode != MIX_CUTMIX) return m;
  const double cut = sqrt_rn(sub_rn(1.0, m.lam));
  const i64 hw = (i64)mul_rn((double)w, cut) / 2;  // (truncation: the product is >= 0)
  const i64 hh = (i64)mul_rn((double)h, cut) / 2;
  const i64 cx = (i64)(((u64)q.v[2] * (u64)w) >> 32);
  const i64 cy = (i64)(((u64)q.v[3] * (u64)h) >> 32);
  m.x1 = cx - hw > 0 ? cx - hw : 0;
  m.x2 = cx + hw < w ? cx + hw : w;
  m.y1 = cy - hh > 0 ? cy - hh : 0;
  m.y2 = cy + hh < h ? cy + hh : h;
  m.lam = div_rn((double)(h * w - (m.x2 - m.x1) * (m.y2 - m.y1)), (double)(h * w));
  return m;
}

FCGPU_HD bool in_box(const MixDraw& m, i64 i, i64 j) {
  return m.y1 <= i && i < m.y2 && m.x1 <= j && j < m.x2;
}

}  // namespace fcgpu

// grid (gx, gy): blockIdx.y strides over the B rows, x threads over the D = C*H*W
// output elements of a row (D + gridDim.x * blockDim.x <= 2^32, so that `e += estride`
// never wraps: fcgpu/cuda/augment.py's check_row_size refuses larger rows, that is
// D > 2^32 - 16384 at its widest grid of 64 x 256 threads). Every thread draws its
// row's Philox block itself (10 rounds, cheaper than a block-wide exchange). Rows past
// the permutation or with a source outside [0, N) are skipped, as in
// fcgpu_gather_rows.
template <typename TI, typename TO>
__global__ void __launch_bounds__(256)
fcgpu_augment_gather(const TI* __restrict__ X, const i64* __restrict__ y,
                     const i64* __restrict__ perm, const u64* __restrict__ b_ptr,
                     const u64* __restrict__ epoch_ptr, const TO* __restrict__ mean, u64 N,
                     u64 nperm, u64 C, u64 H, u64 W, u64 B, u64 b_val, u64 epoch_val,
                     u64 mode, u64 pad, u64 seed, TO* __restrict__ Xb, i64* __restrict__ yb) {
  const u64 b = b_ptr != nullptr ? *b_ptr : b_val;
  const u64 stream = fcgpu::AUGMENT_STREAM_BASE + (epoch_ptr != nullptr ? *epoch_ptr : epoch_val);
  const u32 h = (u32)H, w = (u32)W, p = (u32)pad;
  const u32 d = (u32)(C * H * W);
  const u64 span = 2 * pad + 1;
  const u32 e0 = blockIdx.x * blockDim.x + threadIdx.x;
  const u32 estride = gridDim.x * blockDim.x;
  for (u64 r = blockIdx.y; r < B; r += gridDim.y) {
    const u64 pos = b * B + r;
    if (pos >= nperm) continue;
    const i64 src = perm[pos];
    if (src < 0 || (u64)src >= N) continue;
    u32 flip = 0, dx = p, dy = p;
    if (mode != fcgpu::AUG_NONE) {
      const fcgpu::philox4 q = fcgpu::philox_block(pos, seed, stream);
      flip = q.v[0] >> 31;
      if (mode == fcgpu::AUG_CROP) {
        dx = (u32)(((u64)q.v[1] * span) >> 32);
        dy = (u32)(((u64)q.v[2] * span) >> 32);
      }
    }
    if (e0 == 0 && yb != nullptr) yb[r] = y[src];
    const TI* xs = X + (u64)src * d;
    TO* xd = Xb + r * d;
    for (u32 e = e0; e < d; e += estride) {
      const u32 j = e % w;
      const u32 line = e / w;  // c * H + i
      const u32 i = line % h;
      const u32 jj = flip ? w - 1 - j : j;
      // unsigned: a position above the image wraps to a huge value, so one test each
      const u32 si = i + dy - p;
      const u32 sj = jj + dx - p;
      TO v = TO(0);
      if (si < h && sj < w) {
        v = fcgpu::pixel<TO>(xs[(line - i + si) * w + sj]);
        if (mean != nullptr) v = fcgpu::sub_rn(v, mean[e]);
      }
      xd[e] = v;
    }
  }
}

// grid (gx, gy): blockIdx.y strides over the pairs (r, B-1-r), r < ceil(B/2), x threads
// over the D = C*H*W elements of a row (the same 32-bit walk as the gather). Each
// element of a pair is read from both rows and written to both by one thread, so the
// mix is in place; an odd batch's middle row is its own partner. The thread with
// e0 == 0 writes the pair's target weights and partner labels (y2[r] = y[B-1-r]).
template <typename T>
__global__ void __launch_bounds__(256)
fcgpu_mix_pairs(T* __restrict__ X, const i64* __restrict__ y, i64* __restrict__ y2,
                T* __restrict__ lam_out, const double* __restrict__ table,
                const u64* __restrict__ b_ptr, const u64* __restrict__ epoch_ptr, u64 B, u64 C,
                u64 H, u64 W, u64 b_val, u64 epoch_val, u64 mode, u64 seed) {
  const u64 b = b_ptr != nullptr ? *b_ptr : b_val;
  const u64 stream = fcgpu::AUGMENT_STREAM_BASE + (epoch_ptr != nullptr ? *epoch_ptr : epoch_val);
  const u32 h = (u32)H, w = (u32)W;
  const u32 d = (u32)(C * H * W);
  const u32 e0 = blockIdx.x * blockDim.x + threadIdx.x;
  const u32 estride = gridDim.x * blockDim.x;
  for (u64 r = blockIdx.y; r < (B + 1) / 2; r += gridDim.y) {
    const u64 p = B - 1 - r;
    const fcgpu::MixDraw mr = fcgpu::mix_draw(b * B + r, seed, stream, table, mode, h, w);
    const fcgpu::MixDraw mp = fcgpu::mix_draw(b * B + p, seed, stream, table, mode, h, w);
    if (e0 == 0) {
      lam_out[r] = fcgpu::narrow<T>(mr.lam);
      lam_out[p] = fcgpu::narrow<T>(mp.lam);
      if (y != nullptr) {
        const i64 yr = y[r], yp = y[p];
        y2[r] = yp;
        y2[p] = yr;
      }
    }
    T* xr = X + r * d;
    T* xp = X + p * d;
    if (mode == fcgpu::MIX_CUTMIX) {
      for (u32 e = e0; e < d; e += estride) {
        const u32 j = e % w, i = (e / w) % h;
        const T a = xr[e], v = xp[e];
        if (fcgpu::in_box(mr, i, j)) xr[e] = v;
        if (fcgpu::in_box(mp, i, j)) xp[e] = a;
      }
      continue;
    }
    const T w1r = fcgpu::narrow<T>(mr.lam), w2r = fcgpu::narrow<T>(fcgpu::sub_rn(1.0, mr.lam));
    const T w1p = fcgpu::narrow<T>(mp.lam), w2p = fcgpu::narrow<T>(fcgpu::sub_rn(1.0, mp.lam));
    for (u32 e = e0; e < d; e += estride) {
      const T a = xr[e], v = xp[e];
      xr[e] = fcgpu::add_rn(fcgpu::mul_rn(w1r, a), fcgpu::mul_rn(w2r, v));
      xp[e] = fcgpu::add_rn(fcgpu::mul_rn(w1p, v), fcgpu::mul_rn(w2p, a));
    }
  }
}

// Explicit instantiations: the set fcgpu/cuda/augment.py asks NVRTC for by name.
#define FCGPU_AUGMENT_INST(TI, TO)                                                         \
  template __global__ void fcgpu_augment_gather<TI, TO>(                                   \
      const TI* __restrict__, const i64* __restrict__, const i64* __restrict__,            \
      const u64* __restrict__, const u64* __restrict__, const TO* __restrict__, u64, u64,  \
      u64, u64, u64, u64, u64, u64, u64, u64, u64, TO* __restrict__, i64* __restrict__);
FCGPU_AUGMENT_INST(unsigned char, float)
FCGPU_AUGMENT_INST(unsigned char, double)
FCGPU_AUGMENT_INST(float, float)
FCGPU_AUGMENT_INST(float, double)
FCGPU_AUGMENT_INST(double, float)
FCGPU_AUGMENT_INST(double, double)
#define FCGPU_MIX_INST(T)                                                                  \
  template __global__ void fcgpu_mix_pairs<T>(                                             \
      T* __restrict__, const i64* __restrict__, i64* __restrict__, T* __restrict__,        \
      const double* __restrict__, const u64* __restrict__, const u64* __restrict__, u64,   \
      u64, u64, u64, u64, u64, u64, u64);
FCGPU_MIX_INST(float)
FCGPU_MIX_INST(double)
