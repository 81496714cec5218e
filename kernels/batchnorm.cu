// Batchnorm over the rows of a C-contiguous (N, D) array, and the fused
// batchnorm-apply -> ReLU -> dropout pass with its backward.
//
// Per-column reductions run in two stages without atomics:
//   1. fcgpu_bn_stats / fcgpu_bn_bwd_sums: blocks of 32 columns x 8 row lanes; grid
//      (ceil(D / 32), G), block y = g reduces rows [g*R, min(N, (g+1)*R)). Each warp
//      reads 32 consecutive columns of a row (coalesced); each thread keeps 8 rows in
//      flight, reduces them exactly in registers (two-pass mean/M2 or pairwise sums)
//      and merges them into its running (count, mean, M2) with Chan's update; the 8
//      row lanes are then merged in shared memory. Accumulators are T (fp32 for fp32
//      data, fp64 for fp64). One partial per (chunk, column) goes to a workspace.
//   2. *_finalize: one thread per column merges the G partials (in double), and
//      writes mean / inv_std / the apply coefficients (and updates the running
//      statistics in place, or the backward coefficients).
// Then one elementwise pass over (N, D) applies per-column coefficients:
//   fcgpu_col_vec  (D % 4 == 0 and every array 16-byte aligned): 2-D grid, each thread
//                  owns 4 columns (one Philox block) and walks rows; coefficients stay
//                  in registers;
//   fcgpu_col_flat (anything else): grid-stride over Philox blocks of the flat index.
#include "ops.cuh"
#include "vec.cuh"

using fcgpu::u32;
using fcgpu::u64;

#define FCGPU_RED_X 32  // columns per reduction block
#define FCGPU_RED_Y 8   // row lanes per reduction block

// ----------------------------------------------------------------- forward statistics

template <typename T>
__global__ void __launch_bounds__(FCGPU_RED_X * FCGPU_RED_Y)
fcgpu_bn_stats(const T* __restrict__ x, u64 N, u64 D, u64 R, T* __restrict__ ws_mean,
               T* __restrict__ ws_m2) {
  __shared__ T s_n[FCGPU_RED_Y][FCGPU_RED_X];
  __shared__ T s_mean[FCGPU_RED_Y][FCGPU_RED_X];
  __shared__ T s_m2[FCGPU_RED_Y][FCGPU_RED_X];
  const u32 tx = threadIdx.x, ty = threadIdx.y;
  const u64 d = (u64)blockIdx.x * FCGPU_RED_X + tx;
  const u64 g = blockIdx.y;
  const u64 r0 = g * R;
  const u64 r1 = r0 + R < N ? r0 + R : N;
  fcgpu::Moments<T> m = fcgpu::moments_zero<T>();
  if (d < D) m = fcgpu::column_moments<T>(x + d, D, r0 + ty, r1, FCGPU_RED_Y);
  s_n[ty][tx] = m.n;
  s_mean[ty][tx] = m.mean;
  s_m2[ty][tx] = m.m2;
  __syncthreads();
  if (ty == 0 && d < D) {
#pragma unroll
    for (int k = 1; k < FCGPU_RED_Y; ++k) fcgpu::moments_merge(m, s_n[k][tx], s_mean[k][tx], s_m2[k][tx]);
    ws_mean[g * D + d] = m.mean;
    ws_m2[g * D + d] = m.m2;
  }
}

// Merge the G partials of each column; mean, inv_std and scale = gamma * inv_std out;
// running statistics updated in place when the pointers are not null.
template <typename T>
__global__ void __launch_bounds__(256)
fcgpu_bn_stats_finalize(const T* __restrict__ ws_mean, const T* __restrict__ ws_m2, u64 N,
                        u64 D, u64 R, u64 G, double eps, double momentum,
                        const T* __restrict__ gamma, T* __restrict__ mean_out,
                        T* __restrict__ inv_std_out, T* __restrict__ scale_out,
                        T* __restrict__ running_mean, T* __restrict__ running_var) {
  const u64 d = fcgpu::global_thread_id();
  if (d >= D) return;
  fcgpu::Moments<double> m = fcgpu::moments_zero<double>();
  for (u64 g = 0; g < G; ++g)
    fcgpu::moments_merge(m, (double)fcgpu::chunk_rows(g, N, R), (double)ws_mean[g * D + d],
                         (double)ws_m2[g * D + d]);
  const fcgpu::BnStats st = fcgpu::bn_stats_from_moments((double)N, m.mean, m.m2, eps);
  mean_out[d] = (T)st.mean;
  inv_std_out[d] = (T)st.inv_std;
  scale_out[d] = (T)((double)gamma[d] * st.inv_std);
  if (running_mean != nullptr) {
    running_mean[d] = (T)fcgpu::running_update((double)running_mean[d], st.mean, momentum);
    running_var[d] = (T)fcgpu::running_update((double)running_var[d], st.var, momentum);
  }
}

// Inference coefficients: scale = gamma / sqrt(running_var + eps).
template <typename T>
__global__ void __launch_bounds__(256)
fcgpu_bn_infer_coef(const T* __restrict__ gamma, const T* __restrict__ running_var, u64 D,
                    double eps, T* __restrict__ scale_out) {
  const u64 d = fcgpu::global_thread_id();
  if (d >= D) return;
  scale_out[d] = (T)((double)gamma[d] * fcgpu::inv_sqrt((double)running_var[d] + eps));
}

// ----------------------------------------------------------------- backward sums

template <typename T, bool FUSED>
__global__ void __launch_bounds__(FCGPU_RED_X * FCGPU_RED_Y)
fcgpu_bn_bwd_sums(const T* __restrict__ dout, const T* __restrict__ out,
                  const T* __restrict__ x, const T* __restrict__ mean, u64 N, u64 D, u64 R,
                  T s, T* __restrict__ ws_sdy, T* __restrict__ ws_sdyx) {
  __shared__ T s_a[FCGPU_RED_Y][FCGPU_RED_X];
  __shared__ T s_b[FCGPU_RED_Y][FCGPU_RED_X];
  const u32 tx = threadIdx.x, ty = threadIdx.y;
  const u64 d = (u64)blockIdx.x * FCGPU_RED_X + tx;
  const u64 g = blockIdx.y;
  const u64 r0 = g * R;
  const u64 r1 = r0 + R < N ? r0 + R : N;
  fcgpu::BwdSums<T> acc;
  acc.sdy = T(0);
  acc.sdyx = T(0);
  if (d < D)
    acc = fcgpu::column_bwd_sums<T, FUSED>(dout, out, x, mean[d], s, d, D, r0 + ty, r1,
                                           FCGPU_RED_Y);
  s_a[ty][tx] = acc.sdy;
  s_b[ty][tx] = acc.sdyx;
  __syncthreads();
  if (ty == 0 && d < D) {
    ws_sdy[g * D + d] = fcgpu::sum8(s_a[0][tx], s_a[1][tx], s_a[2][tx], s_a[3][tx],
                                    s_a[4][tx], s_a[5][tx], s_a[6][tx], s_a[7][tx]);
    ws_sdyx[g * D + d] = fcgpu::sum8(s_b[0][tx], s_b[1][tx], s_b[2][tx], s_b[3][tx],
                                     s_b[4][tx], s_b[5][tx], s_b[6][tx], s_b[7][tx]);
  }
}

// dgamma, dbeta and the dx coefficients k1, k2, k3 per column.
template <typename T>
__global__ void __launch_bounds__(256)
fcgpu_bn_bwd_finalize(const T* __restrict__ ws_sdy, const T* __restrict__ ws_sdyx, u64 N,
                      u64 D, u64 G, const T* __restrict__ gamma,
                      const T* __restrict__ inv_std, T* __restrict__ dgamma,
                      T* __restrict__ dbeta, T* __restrict__ k1, T* __restrict__ k2,
                      T* __restrict__ k3) {
  const u64 d = fcgpu::global_thread_id();
  if (d >= D) return;
  const fcgpu::BnBwdCoefs c = fcgpu::bn_bwd_finalize_column<T>(
      ws_sdy, ws_sdyx, G, D, d, (double)gamma[d], (double)inv_std[d], (double)N);
  dgamma[d] = (T)c.dgamma;
  dbeta[d] = (T)c.dbeta;
  k1[d] = (T)c.k1;
  k2[d] = (T)c.k2;
  k3[d] = (T)c.k3;
}

// ----------------------------------------------------------------- elementwise passes

// 2-D vector path. Requires D % 4 == 0 and a, b, c, y 16-byte aligned. Thread
// (x, y) owns columns 4q .. 4q+3 (q < D/4) and rows y, y + stride, ...
// Launch bounds: the fp32 forward passes are held to full occupancy (as many blocks of
// 256 as the SM has threads for: 8 on sm_80/90/100, 6 on sm_86/89/120, 4 on sm_75),
// the fp32 backward ones to 6 blocks (4 on sm_75) and fp64 to 3, all without spilling
// (tests/test_kernels_nvcc.py checks it for each architecture).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ == 750
#define FCGPU_SM_BLOCKS_256 4
#elif defined(__CUDA_ARCH__) && (__CUDA_ARCH__ == 860 || __CUDA_ARCH__ == 870 || \
                                 __CUDA_ARCH__ == 890 || __CUDA_ARCH__ == 1200 ||  \
                                 __CUDA_ARCH__ == 1210)
#define FCGPU_SM_BLOCKS_256 6
#else
#define FCGPU_SM_BLOCKS_256 8
#endif
#define FCGPU_COL_VEC_BLOCKS(T, OP)                                                     \
  (sizeof(T) == 4 ? ((OP) <= 2 ? FCGPU_SM_BLOCKS_256                                    \
                               : (FCGPU_SM_BLOCKS_256 < 6 ? FCGPU_SM_BLOCKS_256 : 6)) \
                  : 3)
template <typename T, int OP>
__global__ void __launch_bounds__(256, FCGPU_COL_VEC_BLOCKS(T, OP))
fcgpu_col_vec(const T* __restrict__ a, const T* __restrict__ b, const T* __restrict__ c,
              T* __restrict__ y, u64 N, u64 D, const T* __restrict__ p0,
              const T* __restrict__ p1, const T* __restrict__ p2, const T* __restrict__ p3,
              u64 seed, u64 stream, u64 threshold, T s,
              const u64* __restrict__ stream_ptr) {
  typedef fcgpu::ColOpTraits<OP> traits;
  if (traits::rng) stream = fcgpu::dropout_stream(stream_ptr, stream);
  const u64 D4 = D >> 2;
  const u64 q = (u64)blockIdx.x * blockDim.x + threadIdx.x;
  if (q >= D4) return;
  const u64 col = q << 2;
  T c0[4], c1[4], c2[4], c3[4] = {T(0), T(0), T(0), T(0)};
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    c0[k] = p0[col + k];
    c1[k] = p1[col + k];
    c2[k] = p2[col + k];
    if (traits::uses_p3) c3[k] = p3[col + k];
  }
  const u64 rstride = (u64)gridDim.y * blockDim.y;
  for (u64 r = (u64)blockIdx.y * blockDim.y + threadIdx.y; r < N; r += rstride) {
    const u64 i = r * D + col;
    u32 rr[4] = {0u, 0u, 0u, 0u};
    if (traits::rng) {
      const fcgpu::philox4 ph = fcgpu::philox_block(i >> 2, seed, stream);
      rr[0] = ph.v[0];
      rr[1] = ph.v[1];
      rr[2] = ph.v[2];
      rr[3] = ph.v[3];
    }
    T va[4], vb[4] = {T(0), T(0), T(0), T(0)}, vc[4] = {T(0), T(0), T(0), T(0)}, vy[4];
    fcgpu::load4(a + i, va);
    if (traits::uses_b) fcgpu::load4(b + i, vb);
    if (traits::uses_c) fcgpu::load4(c + i, vc);
#pragma unroll
    for (int k = 0; k < 4; ++k)
      vy[k] = fcgpu::col_elem<T, OP>(va[k], vb[k], vc[k], c0[k], c1[k], c2[k], c3[k], rr[k],
                                     threshold, s);
    fcgpu::store4(y + i, vy);
  }
}

// Generic path: any D, any alignment. Grid-stride over Philox blocks of the flat
// index. The column of a thread's first element takes one division; after that it
// advances by the (precomputed) grid stride modulo D, so the loop divides nothing
// (a 64-bit division per block cost a call, and on sm_80 a register spill).
template <typename T, int OP>
__global__ void __launch_bounds__(256)
fcgpu_col_flat(const T* __restrict__ a, const T* __restrict__ b, const T* __restrict__ c,
               T* __restrict__ y, u64 N, u64 D, const T* __restrict__ p0,
               const T* __restrict__ p1, const T* __restrict__ p2, const T* __restrict__ p3,
               u64 seed, u64 stream, u64 threshold, T s,
               const u64* __restrict__ stream_ptr) {
  typedef fcgpu::ColOpTraits<OP> traits;
  if (traits::rng) stream = fcgpu::dropout_stream(stream_ptr, stream);
  const u64 n = N * D;
  const u64 nblk = (n + 3) >> 2;
  const u64 stride = fcgpu::grid_stride();
  const u64 j0 = fcgpu::global_thread_id();
  if (j0 >= nblk) return;
  u64 col0 = (j0 << 2) % D;            // column of element 4j
  const u64 col_step = (stride << 2) % D;
  for (u64 j = j0; j < nblk; j += stride) {
    u32 rr[4] = {0u, 0u, 0u, 0u};
    if (traits::rng) {
      const fcgpu::philox4 ph = fcgpu::philox_block(j, seed, stream);
      rr[0] = ph.v[0];
      rr[1] = ph.v[1];
      rr[2] = ph.v[2];
      rr[3] = ph.v[3];
    }
    const u64 i = j << 2;
    u64 col = col0;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      if (i + k < n) {
        const u64 e = i + k;
        const T vb = traits::uses_b ? b[e] : T(0);
        const T vc = traits::uses_c ? c[e] : T(0);
        const T v3 = traits::uses_p3 ? p3[col] : T(0);
        y[e] = fcgpu::col_elem<T, OP>(a[e], vb, vc, p0[col], p1[col], p2[col], v3, rr[k],
                                      threshold, s);
      }
      col = (col + 1 == D) ? 0 : col + 1;
    }
    col0 += col_step;
    if (col0 >= D) col0 -= D;
  }
}

// ----------------------------------------------------------------- instantiations
// The set fcgpu/cuda/ops.py asks NVRTC for by name, so that `nvcc -Xptxas -v`
// (tests/test_kernels_nvcc.py) reports every one of them.
#define FCGPU_COL_ARGS(T)                                                                   \
  const T* __restrict__, const T* __restrict__, const T* __restrict__, T* __restrict__, u64, \
      u64, const T* __restrict__, const T* __restrict__, const T* __restrict__,             \
      const T* __restrict__, u64, u64, u64, T, const u64* __restrict__
#define FCGPU_BN_INST(T)                                                                    \
  template __global__ void fcgpu_bn_stats<T>(const T* __restrict__, u64, u64, u64,         \
                                             T* __restrict__, T* __restrict__);             \
  template __global__ void fcgpu_bn_stats_finalize<T>(                                      \
      const T* __restrict__, const T* __restrict__, u64, u64, u64, u64, double, double,     \
      const T* __restrict__, T* __restrict__, T* __restrict__, T* __restrict__,             \
      T* __restrict__, T* __restrict__);                                                    \
  template __global__ void fcgpu_bn_infer_coef<T>(const T* __restrict__,                   \
                                                  const T* __restrict__, u64, double,       \
                                                  T* __restrict__);                         \
  template __global__ void fcgpu_bn_bwd_sums<T, false>(                                     \
      const T* __restrict__, const T* __restrict__, const T* __restrict__,                  \
      const T* __restrict__, u64, u64, u64, T, T* __restrict__, T* __restrict__);           \
  template __global__ void fcgpu_bn_bwd_sums<T, true>(                                      \
      const T* __restrict__, const T* __restrict__, const T* __restrict__,                  \
      const T* __restrict__, u64, u64, u64, T, T* __restrict__, T* __restrict__);           \
  template __global__ void fcgpu_bn_bwd_finalize<T>(                                        \
      const T* __restrict__, const T* __restrict__, u64, u64, u64, const T* __restrict__,   \
      const T* __restrict__, T* __restrict__, T* __restrict__, T* __restrict__,             \
      T* __restrict__, T* __restrict__);                                                    \
  template __global__ void fcgpu_col_vec<T, 0>(FCGPU_COL_ARGS(T));                          \
  template __global__ void fcgpu_col_vec<T, 1>(FCGPU_COL_ARGS(T));                          \
  template __global__ void fcgpu_col_vec<T, 2>(FCGPU_COL_ARGS(T));                          \
  template __global__ void fcgpu_col_vec<T, 3>(FCGPU_COL_ARGS(T));                          \
  template __global__ void fcgpu_col_vec<T, 4>(FCGPU_COL_ARGS(T));                          \
  template __global__ void fcgpu_col_flat<T, 0>(FCGPU_COL_ARGS(T));                         \
  template __global__ void fcgpu_col_flat<T, 1>(FCGPU_COL_ARGS(T));                         \
  template __global__ void fcgpu_col_flat<T, 2>(FCGPU_COL_ARGS(T));                         \
  template __global__ void fcgpu_col_flat<T, 3>(FCGPU_COL_ARGS(T));                         \
  template __global__ void fcgpu_col_flat<T, 4>(FCGPU_COL_ARGS(T));
FCGPU_BN_INST(float)
FCGPU_BN_INST(double)
