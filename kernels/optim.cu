// Optimizer updates in one pass per parameter (element math: optim.cuh).
//
//   fcgpu_adam<T, VEC>      Adam with its scalars by value (bias corrections computed
//                           on the host in float64): m, v in place, next w to `out`.
//   fcgpu_adam_dev<T, VEC>  the same, reading the learning rate (double) and the bias
//                           corrections from device memory: for a training step captured
//                           in a CUDA graph, whose replays must see a new t each time.
//                           The host writes a table of (1 - beta1**t, 1 - beta2**t)
//                           pairs, one per step of the epoch, computed in Python exactly
//                           as for fcgpu_adam; the kernel takes pair *index (the graph's
//                           batch counter).
//   fcgpu_rule<T, RULE, VEC>
//                           SGD / SGD with momentum / RMSProp with the learning rate by
//                           value, next w to `out` (the plain step: fcgpu.optim's rules
//                           on CuPy arrays keep float32 subnormals, as NumPy does).
//   fcgpu_rule_dev<T, RULE, VEC>
//                           the same reading the learning rate from device memory; w
//                           updated in place (a step captured in a CUDA graph).
//
// `out` may be `w` itself (in-place update: each element is read and then written by
// the same thread), so neither carries __restrict__. One thread handles 4 consecutive
// elements; VEC (every array 16-byte aligned) moves them as 16-byte vectors, else
// and for the last partial group element by element. 64-bit indices, grid-stride
// loops: any n.
#include "optim.cuh"
#include "vec.cuh"

using fcgpu::u32;
using fcgpu::u64;

template <typename T, bool VEC>
__device__ __forceinline__ void adam_body(T* out, const T* w, const T* __restrict__ dw,
                                          T* __restrict__ m, T* __restrict__ v, u64 n,
                                          const fcgpu::AdamCoefs<T>& k) {
  const u64 ngrp = (n + 3) >> 2;
  const u64 stride = fcgpu::grid_stride();
  for (u64 j = fcgpu::global_thread_id(); j < ngrp; j += stride) {
    const u64 i = j << 2;
    if (VEC && i + 4 <= n) {
      T vw[4], vg[4], vm[4], vv[4], vo[4];
      fcgpu::load4(w + i, vw);
      fcgpu::load4(dw + i, vg);
      fcgpu::load4(m + i, vm);
      fcgpu::load4(v + i, vv);
#pragma unroll
      for (int q = 0; q < 4; ++q) vo[q] = fcgpu::adam_elem(vw[q], vg[q], vm[q], vv[q], k);
      fcgpu::store4(m + i, vm);
      fcgpu::store4(v + i, vv);
      fcgpu::store4(out + i, vo);
    } else {
#pragma unroll 1  // (unrolled, the double division slow paths spill)
      for (int q = 0; q < 4; ++q) {
        if (i + q < n) {
          T mq = m[i + q], vq = v[i + q];
          const T o = fcgpu::adam_elem(w[i + q], dw[i + q], mq, vq, k);
          m[i + q] = mq;
          v[i + q] = vq;
          out[i + q] = o;
        }
      }
    }
  }
}

template <typename T, bool VEC>
__global__ void __launch_bounds__(256)
fcgpu_adam(T* out, const T* w, const T* __restrict__ dw, T* __restrict__ m,
           T* __restrict__ v, u64 n, double lr, double beta1, double beta2, double eps,
           double c1, double c2) {
  const fcgpu::AdamCoefs<T> k = fcgpu::adam_coefs<T>(lr, beta1, beta2, eps, c1, c2);
  adam_body<T, VEC>(out, w, dw, m, v, n, k);
}

template <typename T, bool VEC>
__global__ void __launch_bounds__(256)
fcgpu_adam_dev(T* out, const T* w, const T* __restrict__ dw, T* __restrict__ m,
               T* __restrict__ v, u64 n, const double* __restrict__ lr_ptr,
               const double* __restrict__ corr, const u64* __restrict__ index, u64 ncorr,
               double beta1, double beta2, double eps) {
  const u64 q = *index;
  if (q >= ncorr) return;  // (the host keeps the index in range)
  const fcgpu::AdamCoefs<T> k =
      fcgpu::adam_coefs<T>(*lr_ptr, beta1, beta2, eps, corr[2 * q], corr[2 * q + 1]);
  adam_body<T, VEC>(out, w, dw, m, v, n, k);
}

// out = rule(w, dw, s); s (velocity / cache) in place, unused by SGD. h: momentum
// (RULE_SGD_MOMENTUM) or decay_rate (RULE_RMSPROP); eps: RMSProp's. `out` may be `w`.
template <typename T, int RULE, bool VEC>
__device__ __forceinline__ void rule_body(T* out, const T* w, const T* __restrict__ dw,
                                          T* __restrict__ s, u64 n, double lr_d, double h,
                                          double eps) {
  typedef fcgpu::RuleTraits<RULE> traits;
  const T lr = fcgpu::narrow<T>(lr_d), th = fcgpu::narrow<T>(h);
  const T tomh = fcgpu::narrow<T>(1.0 - h), teps = fcgpu::narrow<T>(eps);
  const u64 ngrp = (n + 3) >> 2;
  const u64 stride = fcgpu::grid_stride();
  for (u64 j = fcgpu::global_thread_id(); j < ngrp; j += stride) {
    const u64 i = j << 2;
    if (VEC && i + 4 <= n) {
      T vw[4], vg[4], vs[4] = {T(0), T(0), T(0), T(0)};
      fcgpu::load4(w + i, vw);
      fcgpu::load4(dw + i, vg);
      if (traits::state) fcgpu::load4(s + i, vs);
#pragma unroll
      for (int q = 0; q < 4; ++q)
        vw[q] = fcgpu::rule_elem<T, RULE>(vw[q], vg[q], vs[q], lr, th, tomh, teps);
      if (traits::state) fcgpu::store4(s + i, vs);
      fcgpu::store4(out + i, vw);
    } else {
#pragma unroll 1  // (unrolled, the double division slow paths spill)
      for (int q = 0; q < 4; ++q) {
        if (i + q < n) {
          T sq = traits::state ? s[i + q] : T(0);
          out[i + q] = fcgpu::rule_elem<T, RULE>(w[i + q], dw[i + q], sq, lr, th, tomh, teps);
          if (traits::state) s[i + q] = sq;
        }
      }
    }
  }
}

// SGD / SGD with momentum / RMSProp with the learning rate by value: the plain step
// (fcgpu.optim's rules on CuPy arrays), next w to `out`.
template <typename T, int RULE, bool VEC>
__global__ void __launch_bounds__(256)
fcgpu_rule(T* out, const T* w, const T* __restrict__ dw, T* __restrict__ s, u64 n, double lr,
           double h, double eps) {
  rule_body<T, RULE, VEC>(out, w, dw, s, n, lr, h, eps);
}

// The same with the learning rate read from device memory, w updated in place: the
// step captured in a CUDA graph.
template <typename T, int RULE, bool VEC>
__global__ void __launch_bounds__(256)
fcgpu_rule_dev(T* w, const T* __restrict__ dw, T* __restrict__ s, u64 n,
               const double* __restrict__ lr_ptr, double h, double eps) {
  rule_body<T, RULE, VEC>(w, w, dw, s, n, *lr_ptr, h, eps);
}

// Explicit instantiations: the set fcgpu.cuda asks NVRTC for by name, so that
// `nvcc -Xptxas -v` (tests/test_kernels_nvcc.py) reports every one of them.
#define FCGPU_ADAM_INST(T, VEC)                                                               \
  template __global__ void fcgpu_adam<T, VEC>(T*, const T*, const T* __restrict__,            \
                                              T* __restrict__, T* __restrict__, u64, double,  \
                                              double, double, double, double, double);        \
  template __global__ void fcgpu_adam_dev<T, VEC>(                                            \
      T*, const T*, const T* __restrict__, T* __restrict__, T* __restrict__, u64,             \
      const double* __restrict__, const double* __restrict__, const u64* __restrict__, u64,   \
      double, double, double);
#define FCGPU_RULE_INST(T, RULE, VEC)                                                         \
  template __global__ void fcgpu_rule<T, RULE, VEC>(T*, const T*, const T* __restrict__,      \
                                                    T* __restrict__, u64, double, double,     \
                                                    double);                                  \
  template __global__ void fcgpu_rule_dev<T, RULE, VEC>(T*, const T* __restrict__,            \
                                                        T* __restrict__, u64,                 \
                                                        const double* __restrict__, double,   \
                                                        double);
#define FCGPU_OPTIM_INST_T(T)                                                       \
  FCGPU_ADAM_INST(T, true)                                                          \
  FCGPU_ADAM_INST(T, false)                                                         \
  FCGPU_RULE_INST(T, 0, true)                                                       \
  FCGPU_RULE_INST(T, 0, false)                                                      \
  FCGPU_RULE_INST(T, 1, true)                                                       \
  FCGPU_RULE_INST(T, 1, false)                                                      \
  FCGPU_RULE_INST(T, 2, true)                                                       \
  FCGPU_RULE_INST(T, 2, false)                                                      \
  FCGPU_RULE_INST(T, 3, true)                                                       \
  FCGPU_RULE_INST(T, 3, false)
FCGPU_OPTIM_INST_T(float)
FCGPU_OPTIM_INST_T(double)
