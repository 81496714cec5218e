// Per-element math and per-column reduction steps of the fcgpu kernels.
//
// Everything here is __host__ __device__ and header-free: the kernels in
// dropout.cu / batchnorm.cu call these functions, and tests/host/ compiles the very
// same functions with the host C++ compiler to check them against the xp references.
#ifndef FCGPU_OPS_CUH
#define FCGPU_OPS_CUH

#include "philox.cuh"

namespace fcgpu {

// ----------------------------------------------------------------- arithmetic

// IEEE arithmetic for the steps that must equal NumPy bit for bit.
//
// CuPy appends -ftz=true to every NVRTC build, after the caller's options
// (cupy/cuda/compiler.py), so in device code plain float arithmetic, float
// comparisons and even the __fmul_rn intrinsic compile to .ftz instructions
// (mul.rn.ftz.f32, setp.lt.ftz.f32, add.ftz.f32, ...): float32 subnormal inputs and
// results become zero, where NumPy keeps them. The helpers below are, for float on
// the device, single PTX instructions written without .ftz in inline asm, which the
// compiler neither contracts into an FMA nor rewrites: they keep subnormals as
// IEEE 754 does (subnormal numbers are supported unless .ftz is given). double never
// flushes; its helpers are the _rn intrinsics (never contracted). Host builds of the
// tests use the plain operators with -ffp-contract=off.
//
// Every multiply is rounded once and never fused into an FMA, so `x * s` is the
// product NumPy computes.
FCGPU_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  float r;
  asm("mul.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
#else
  return a * b;
#endif
}
FCGPU_HD double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

FCGPU_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  float r;
  asm("add.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
#else
  return a + b;
#endif
}
FCGPU_HD double add_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}

FCGPU_HD float sub_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  float r;
  asm("sub.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
#else
  return a - b;
#endif
}
FCGPU_HD double sub_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}

// Correctly rounded (IEEE) division and square root.
FCGPU_HD float div_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  float r;
  asm("div.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
#else
  return a / b;
#endif
}
FCGPU_HD double div_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __ddiv_rn(a, b);
#else
  return a / b;
#endif
}

FCGPU_HD float sqrt_rn(float v) {
#if defined(__CUDA_ARCH__)
  float r;
  asm("sqrt.rn.f32 %0, %1;" : "=f"(r) : "f"(v));
  return r;
#else
  return __builtin_sqrtf(v);
#endif
}
FCGPU_HD double sqrt_rn(double v) {
#if defined(__CUDA_ARCH__)
  return __dsqrt_rn(v);
#else
  return __builtin_sqrt(v);
#endif
}

// v > 0 (false for NaN), with subnormals compared as themselves.
FCGPU_HD bool gt_zero(float v) {
#if defined(__CUDA_ARCH__)
  unsigned r;
  asm("{\n\t.reg .pred p;\n\tsetp.gt.f32 p, %1, 0f00000000;\n\tselp.u32 %0, 1, 0, p;\n\t}"
      : "=r"(r) : "f"(v));
  return r != 0u;
#else
  return v > 0.0f;
#endif
}
FCGPU_HD bool gt_zero(double v) { return v > 0.0; }

// v > 0 or v is NaN (what numpy.maximum(v, 0) passes through unchanged).
FCGPU_HD bool gt_zero_or_nan(float v) {
#if defined(__CUDA_ARCH__)
  unsigned r;
  asm("{\n\t.reg .pred p;\n\tsetp.gtu.f32 p, %1, 0f00000000;\n\tselp.u32 %0, 1, 0, p;\n\t}"
      : "=r"(r) : "f"(v));
  return r != 0u;
#else
  return !(v <= 0.0f);
#endif
}
FCGPU_HD bool gt_zero_or_nan(double v) { return !(v <= 0.0); }

// A double hyperparameter rounded once to T (a float subnormal stays one).
template <typename T>
FCGPU_HD T narrow(double v);
template <>
FCGPU_HD double narrow<double>(double v) {
  return v;
}
template <>
FCGPU_HD float narrow<float>(double v) {
#if defined(__CUDA_ARCH__)
  float r;
  asm("cvt.rn.f32.f64 %0, %1;" : "=f"(r) : "d"(v));
  return r;
#else
  return (float)v;
#endif
}

// A float widened to double exactly (cvt.ftz.f64.f32 would flush a subnormal).
FCGPU_HD double widen(float v) {
#if defined(__CUDA_ARCH__)
  double r;
  asm("cvt.f64.f32 %0, %1;" : "=d"(r) : "f"(v));
  return r;
#else
  return (double)v;
#endif
}

// Correctly rounded 1 / sqrt(v) in double (the finalize steps run in double).
FCGPU_HD double inv_sqrt(double v) {
#if defined(__CUDA_ARCH__)
  return 1.0 / sqrt(v);
#else
  return 1.0 / __builtin_sqrt(v);
#endif
}

// ReLU as numpy.maximum(x, 0) computes it: x where x > 0 or x is NaN, else +0
// (so -0.0 and negative subnormals give +0.0, positive subnormals stay).
template <typename T>
FCGPU_HD T relu(T v) {
  return gt_zero_or_nan(v) ? v : T(0);
}

// The Philox stream of a dropout pass: the number itself (stream_ptr null), or
// *stream_ptr + stream for a pass captured in a CUDA graph, whose replays read the
// step's stream from device memory (fcgpu/cuda/graph.py keeps there
// dropout_step * (L - 1) and passes the layer as `stream`).
FCGPU_HD u64 dropout_stream(const u64* stream_ptr, u64 stream) {
  return stream_ptr != nullptr ? *stream_ptr + stream : stream;
}

// ----------------------------------------------------------------- element ops

// Inverted dropout of one element: x * s where kept, else 0.
template <typename T>
FCGPU_HD T dropout_elem(T x, u32 r, u64 threshold, T s) {
  return philox_keep(r, threshold) ? mul_rn(x, s) : T(0);
}

// Backward of ReLU followed by dropout: `out > 0` holds both the ReLU gate and the
// keep mask (kept outputs are relu(x) * s > 0), so no mask is needed.
template <typename T>
FCGPU_HD T relu_dropout_bwd_elem(T dout, T out, T s) {
  return gt_zero(out) ? mul_rn(dout, s) : T(0);
}

// Batchnorm apply with precomputed per-column scale = gamma * inv_std.
template <typename T>
FCGPU_HD T bn_apply_elem(T x, T mean, T scale, T beta) {
  return (x - mean) * scale + beta;
}

// The fused forward element: dropout(relu(batchnorm_apply(x))).
template <typename T>
FCGPU_HD T bn_relu_dropout_elem(T x, T mean, T scale, T beta, u32 r, u64 threshold, T s) {
  return dropout_elem(relu(bn_apply_elem(x, mean, scale, beta)), r, threshold, s);
}

// Batchnorm backward for one element, in the form
//   dx = gamma*inv_std/N * (N*dy - dbeta - xhat*dgamma)
//      = k1*dy + k2*(x - mean) + k3
// with k1 = gamma*inv_std, k2 = -k1*inv_std*dgamma/N, k3 = -k1*dbeta/N
// (see bn_bwd_coefs).
template <typename T>
FCGPU_HD T bn_bwd_dx_elem(T dy, T x, T mean, T k1, T k2, T k3) {
  return k1 * dy + (k2 * (x - mean) + k3);
}

// The flat (any-shape) elementwise ops of dropout.cu, selected by OP:
enum FlatOp {
  FLAT_DROPOUT = 0,           // y = dropout(a)          (forward, and backward by regeneration)
  FLAT_RELU_DROPOUT = 1,      // y = dropout(relu(a))
  FLAT_RELU = 2,              // y = relu(a)             (relu_dropout with p >= 1)
  FLAT_RELU_DROPOUT_BWD = 3,  // y = b > 0 ? a * s : 0   (a = dout, b = out)
};

template <int OP>
struct FlatOpTraits {
  static constexpr bool rng = (OP == FLAT_DROPOUT || OP == FLAT_RELU_DROPOUT);
  static constexpr bool second_input = (OP == FLAT_RELU_DROPOUT_BWD);
};

template <typename T, int OP>
FCGPU_HD T flat_elem(T a, T b, u32 r, u64 threshold, T s) {
  if (OP == FLAT_DROPOUT) return dropout_elem(a, r, threshold, s);
  if (OP == FLAT_RELU_DROPOUT) return dropout_elem(relu(a), r, threshold, s);
  if (OP == FLAT_RELU) return relu(a);
  return relu_dropout_bwd_elem(a, b, s);
}

// The per-column (N, D) elementwise ops of batchnorm.cu, selected by OP. The
// per-column parameters p0..p3 are:
//   COL_BN*:              mean, scale = gamma * inv_std, beta, (unused)
//   COL_BN_BWD*:          mean, k1, k2, k3 (see bn_bwd_dx_elem)
enum ColOp {
  COL_BN = 0,                     // y = bn(a)
  COL_BN_RELU = 1,                // y = relu(bn(a))
  COL_BN_RELU_DROPOUT = 2,        // y = dropout(relu(bn(a)))
  COL_BN_BWD = 3,                 // y = dx(dy = a, x = c)
  COL_BN_RELU_DROPOUT_BWD = 4,    // y = dx(dy = relu_dropout_bwd(a, b), x = c)
};

template <int OP>
struct ColOpTraits {
  static constexpr bool rng = (OP == COL_BN_RELU_DROPOUT);
  static constexpr bool backward = (OP == COL_BN_BWD || OP == COL_BN_RELU_DROPOUT_BWD);
  static constexpr bool uses_b = (OP == COL_BN_RELU_DROPOUT_BWD);
  static constexpr bool uses_c = backward;
  static constexpr bool uses_p3 = backward;
};

template <typename T, int OP>
FCGPU_HD T col_elem(T a, T b, T c, T p0, T p1, T p2, T p3, u32 r, u64 threshold, T s) {
  if (OP == COL_BN) return bn_apply_elem(a, p0, p1, p2);
  if (OP == COL_BN_RELU) return relu(bn_apply_elem(a, p0, p1, p2));
  if (OP == COL_BN_RELU_DROPOUT) return bn_relu_dropout_elem(a, p0, p1, p2, r, threshold, s);
  if (OP == COL_BN_BWD) return bn_bwd_dx_elem(a, c, p0, p1, p2, p3);
  return bn_bwd_dx_elem(relu_dropout_bwd_elem(a, b, s), c, p0, p1, p2, p3);
}

// ----------------------------------------------------------------- statistics

// Running (count, mean, M2) of one column; Chan et al.'s merge keeps it stable.
template <typename A>
struct Moments {
  A n;
  A mean;
  A m2;
};

template <typename A>
FCGPU_HD Moments<A> moments_zero() {
  Moments<A> m;
  m.n = A(0);
  m.mean = A(0);
  m.m2 = A(0);
  return m;
}

// Merge b into a (Chan, Golub & LeVeque's parallel variance update).
template <typename A>
FCGPU_HD void moments_merge(Moments<A>& a, A nb, A mean_b, A m2_b) {
  if (nb == A(0)) return;
  const A n = a.n + nb;
  const A delta = mean_b - a.mean;
  const A frac = nb / n;
  a.mean += delta * frac;
  a.m2 += m2_b + delta * delta * a.n * frac;
  a.n = n;
}

// Welford's single-value update (used for the rows left over after the batches).
template <typename A>
FCGPU_HD void moments_push(Moments<A>& a, A v) {
  a.n += A(1);
  const A delta = v - a.mean;
  a.mean += delta / a.n;
  a.m2 += delta * (v - a.mean);
}

// A batch of 8 values: exact two-pass mean/M2 in registers, then one merge.
template <typename A>
FCGPU_HD void moments_push8(Moments<A>& a, const A (&v)[8]) {
  A s = (v[0] + v[1]) + (v[2] + v[3]) + ((v[4] + v[5]) + (v[6] + v[7]));
  const A mean = s * A(0.125);
  A m2 = A(0);
  FCGPU_UNROLL
  for (int k = 0; k < 8; ++k) {
    const A d = v[k] - mean;
    m2 += d * d;
  }
  moments_merge(a, A(8), mean, m2);
}

// Rows of one column handled by one thread of the reduction kernels: rows
// r_begin, r_begin + r_step, ... below r_end, of the C-contiguous (N, D) array
// whose column pointer is `col` (col[r * D] is row r). Batches of 8 rows are loaded
// together (memory-level parallelism), the rest one by one.
template <typename T>
FCGPU_HD Moments<T> column_moments(const T* col, u64 D, u64 r_begin, u64 r_end, u64 r_step) {
  Moments<T> acc = moments_zero<T>();
  u64 r = r_begin;
  const u64 batch_span = 7 * r_step;
  for (; r < r_end && r_end - r > batch_span; r += 8 * r_step) {
    T v[8];
    const T* p = col + r * D;
    const u64 step = r_step * D;
    FCGPU_UNROLL
    for (int k = 0; k < 8; ++k) v[k] = p[k * step];
    moments_push8(acc, v);
  }
  for (; r < r_end; r += r_step) moments_push(acc, col[r * D]);
  return acc;
}

// Sums of dy and dy * (x - mean) over the rows of one column, for the batchnorm
// backward. FUSED: dy = relu_dropout_bwd_elem(dout, out, s), else dy = dout.
template <typename T>
struct BwdSums {
  T sdy;
  T sdyx;
};

template <typename T, bool FUSED>
FCGPU_HD T bwd_dy(const T* dout, const T* out, u64 idx, T s) {
  if (FUSED) return relu_dropout_bwd_elem(dout[idx], out[idx], s);
  return dout[idx];
}

template <typename T, bool FUSED>
FCGPU_HD BwdSums<T> column_bwd_sums(const T* dout, const T* out, const T* x, T mean, T s,
                                    u64 d, u64 D, u64 r_begin, u64 r_end, u64 r_step) {
  BwdSums<T> acc;
  acc.sdy = T(0);
  acc.sdyx = T(0);
  u64 r = r_begin;
  const u64 batch_span = 7 * r_step;
  for (; r < r_end && r_end - r > batch_span; r += 8 * r_step) {
    T dy[8], xc[8];
    FCGPU_UNROLL
    for (int k = 0; k < 8; ++k) {
      const u64 idx = (r + k * r_step) * D + d;
      dy[k] = bwd_dy<T, FUSED>(dout, out, idx, s);
      xc[k] = x[idx] - mean;
    }
    // pairwise inside the batch, then into the running total
    T b0 = (dy[0] + dy[1]) + (dy[2] + dy[3]);
    T b1 = (dy[4] + dy[5]) + (dy[6] + dy[7]);
    T c0 = (dy[0] * xc[0] + dy[1] * xc[1]) + (dy[2] * xc[2] + dy[3] * xc[3]);
    T c1 = (dy[4] * xc[4] + dy[5] * xc[5]) + (dy[6] * xc[6] + dy[7] * xc[7]);
    acc.sdy += b0 + b1;
    acc.sdyx += c0 + c1;
  }
  for (; r < r_end; r += r_step) {
    const u64 idx = r * D + d;
    const T dy = bwd_dy<T, FUSED>(dout, out, idx, s);
    acc.sdy += dy;
    acc.sdyx += dy * (x[idx] - mean);
  }
  return acc;
}

// ----------------------------------------------------------------- finalize steps

// Row count of chunk g when N rows are cut into chunks of R rows.
FCGPU_HD u64 chunk_rows(u64 g, u64 N, u64 R) {
  const u64 r0 = g * R;
  if (r0 >= N) return 0;
  const u64 r1 = r0 + R < N ? r0 + R : N;
  return r1 - r0;
}

// Per-column results of the training-forward statistics.
struct BnStats {
  double mean;
  double var;      // biased (divided by N)
  double inv_std;  // 1 / sqrt(var + eps)
};

FCGPU_HD BnStats bn_stats_from_moments(double n, double mean, double m2, double eps) {
  BnStats st;
  st.mean = mean;
  st.var = n > 0.0 ? m2 / n : 0.0;
  if (st.var < 0.0) st.var = 0.0;
  st.inv_std = inv_sqrt(st.var + eps);
  return st;
}

// running = momentum * running + (1 - momentum) * batch_stat
FCGPU_HD double running_update(double running, double stat, double momentum) {
  return momentum * running + (1.0 - momentum) * stat;
}

// Coefficients of bn_bwd_dx_elem from the column sums (see there).
struct BnBwdCoefs {
  double dgamma;
  double dbeta;
  double k1;
  double k2;
  double k3;
};

FCGPU_HD BnBwdCoefs bn_bwd_coefs(double sdy, double sdyx, double gamma, double inv_std,
                                 double n) {
  BnBwdCoefs c;
  c.dbeta = sdy;
  c.dgamma = sdyx * inv_std;
  c.k1 = gamma * inv_std;
  c.k2 = -c.k1 * inv_std * c.dgamma / n;
  c.k3 = -c.k1 * c.dbeta / n;
  return c;
}

// The pairwise sum of the 8 row lanes of a reduction block, in a fixed order.
template <typename T>
FCGPU_HD T sum8(T a0, T a1, T a2, T a3, T a4, T a5, T a6, T a7) {
  return (a0 + a1) + (a2 + a3) + ((a4 + a5) + (a6 + a7));
}

// Column d's backward coefficients from the G chunk partials of its sums (workspace
// rows of length D), added in double.
template <typename T>
FCGPU_HD BnBwdCoefs bn_bwd_finalize_column(const T* ws_sdy, const T* ws_sdyx, u64 G, u64 D,
                                           u64 d, double gamma, double inv_std, double n) {
  double sdy = 0.0, sdyx = 0.0;
  for (u64 g = 0; g < G; ++g) {
    sdy += (double)ws_sdy[g * D + d];
    sdyx += (double)ws_sdyx[g * D + d];
  }
  return bn_bwd_coefs(sdy, sdyx, gamma, inv_std, n);
}

}  // namespace fcgpu

#endif  // FCGPU_OPS_CUH
