// Dropout (forward; backward regenerates the mask from (seed, stream)), ReLU +
// dropout forward/backward, and the keep-mask alone, on flat C-order arrays.
//
// One thread handles one Philox block j: elements 4j .. 4j+3 and the 4 lanes of one
// philox4x32_10 call. VEC (all pointers 16-byte aligned) loads/stores them as one
// 16-byte vector per array; otherwise, and for the last partial block, element by
// element. Indices are 64-bit; grid-stride loops take any n.
#include "ops.cuh"
#include "vec.cuh"

using fcgpu::u32;
using fcgpu::u64;

// y[i] = flat_elem<T, OP>(a[i], b[i]) for i < n (b only read by FLAT_RELU_DROPOUT_BWD).
// The Philox stream is `stream`, or *stream_ptr + stream when stream_ptr is not null
// (a pass captured in a CUDA graph: fcgpu::dropout_stream).
template <typename T, int OP, bool VEC>
__global__ void __launch_bounds__(256)
fcgpu_flat(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ y, u64 n,
           u64 seed, u64 stream, u64 threshold, T s, const u64* __restrict__ stream_ptr) {
  typedef fcgpu::FlatOpTraits<OP> traits;
  const u64 nblk = (n + 3) >> 2;
  const u64 stride = fcgpu::grid_stride();
  if (traits::rng) stream = fcgpu::dropout_stream(stream_ptr, stream);
  for (u64 j = fcgpu::global_thread_id(); j < nblk; j += stride) {
    u32 r[4] = {0u, 0u, 0u, 0u};
    if (traits::rng) {
      const fcgpu::philox4 q = fcgpu::philox_block(j, seed, stream);
      r[0] = q.v[0];
      r[1] = q.v[1];
      r[2] = q.v[2];
      r[3] = q.v[3];
    }
    const u64 i = j << 2;
    if (VEC && i + 4 <= n) {
      T va[4], vb[4] = {T(0), T(0), T(0), T(0)}, vy[4];
      fcgpu::load4(a + i, va);
      if (traits::second_input) fcgpu::load4(b + i, vb);
#pragma unroll
      for (int k = 0; k < 4; ++k) vy[k] = fcgpu::flat_elem<T, OP>(va[k], vb[k], r[k], threshold, s);
      fcgpu::store4(y + i, vy);
    } else {
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        if (i + k < n) {
          const T bk = traits::second_input ? b[i + k] : T(0);
          y[i + k] = fcgpu::flat_elem<T, OP>(a[i + k], bk, r[k], threshold, s);
        }
      }
    }
  }
}

// mask[i] = keep(i) as a 0/1 byte (a cupy bool array), i < n.
__global__ void __launch_bounds__(256)
fcgpu_dropout_mask(unsigned char* __restrict__ mask, u64 n, u64 seed, u64 stream,
                   u64 threshold) {
  const u64 nblk = (n + 3) >> 2;
  const u64 stride = fcgpu::grid_stride();
  const bool aligned = (reinterpret_cast<u64>(mask) & 3ull) == 0;
  for (u64 j = fcgpu::global_thread_id(); j < nblk; j += stride) {
    const fcgpu::philox4 q = fcgpu::philox_block(j, seed, stream);
    const u64 i = j << 2;
    if (aligned && i + 4 <= n) {
      const u32 w = (u32)fcgpu::philox_keep(q.v[0], threshold) |
                    ((u32)fcgpu::philox_keep(q.v[1], threshold) << 8) |
                    ((u32)fcgpu::philox_keep(q.v[2], threshold) << 16) |
                    ((u32)fcgpu::philox_keep(q.v[3], threshold) << 24);
      *reinterpret_cast<u32*>(mask + i) = w;  // little-endian: byte k is lane k
    } else {
#pragma unroll
      for (int k = 0; k < 4; ++k)
        if (i + k < n) mask[i + k] = (unsigned char)fcgpu::philox_keep(q.v[k], threshold);
    }
  }
}

// Explicit instantiations: the set fcgpu/cuda/ops.py asks NVRTC for by name, so that
// `nvcc -Xptxas -v` (tests/test_kernels_nvcc.py) reports every one of them.
#define FCGPU_FLAT_INST(T, OP, VEC)                                                      \
  template __global__ void fcgpu_flat<T, OP, VEC>(const T* __restrict__,               \
                                                  const T* __restrict__, T* __restrict__, \
                                                  u64, u64, u64, u64, T,                  \
                                                  const u64* __restrict__);
#define FCGPU_FLAT_INST_T(T)      \
  FCGPU_FLAT_INST(T, 0, true)     \
  FCGPU_FLAT_INST(T, 0, false)    \
  FCGPU_FLAT_INST(T, 1, true)     \
  FCGPU_FLAT_INST(T, 1, false)    \
  FCGPU_FLAT_INST(T, 2, true)     \
  FCGPU_FLAT_INST(T, 2, false)    \
  FCGPU_FLAT_INST(T, 3, true)     \
  FCGPU_FLAT_INST(T, 3, false)
FCGPU_FLAT_INST_T(float)
FCGPU_FLAT_INST_T(double)
