// Device-only helpers: 16-byte vector loads/stores of 4 consecutive elements, and
// the integer/float types the kernels take. No host header (NVRTC has none).
#ifndef FCGPU_VEC_CUH
#define FCGPU_VEC_CUH

#include "philox.cuh"

// Hook for the CPU emulation of the kernels in tests/host/ (checks the 16-byte
// alignment of every vector access there); nothing on the GPU.
#ifndef FCGPU_CHECK_ALIGNED16
#define FCGPU_CHECK_ALIGNED16(p) ((void)0)
#endif

namespace fcgpu {

// Four consecutive elements; p must be 16-byte aligned (float: one float4,
// double: two double2).
__device__ __forceinline__ void load4(const float* __restrict__ p, float (&v)[4]) {
  FCGPU_CHECK_ALIGNED16(p);
  const float4 t = *reinterpret_cast<const float4*>(p);
  v[0] = t.x;
  v[1] = t.y;
  v[2] = t.z;
  v[3] = t.w;
}

__device__ __forceinline__ void load4(const double* __restrict__ p, double (&v)[4]) {
  FCGPU_CHECK_ALIGNED16(p);
  const double2 a = reinterpret_cast<const double2*>(p)[0];
  const double2 b = reinterpret_cast<const double2*>(p)[1];
  v[0] = a.x;
  v[1] = a.y;
  v[2] = b.x;
  v[3] = b.y;
}

__device__ __forceinline__ void store4(float* __restrict__ p, const float (&v)[4]) {
  FCGPU_CHECK_ALIGNED16(p);
  *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
}

__device__ __forceinline__ void store4(double* __restrict__ p, const double (&v)[4]) {
  FCGPU_CHECK_ALIGNED16(p);
  reinterpret_cast<double2*>(p)[0] = make_double2(v[0], v[1]);
  reinterpret_cast<double2*>(p)[1] = make_double2(v[2], v[3]);
}

// Linear thread index and grid stride in 64 bits.
__device__ __forceinline__ u64 global_thread_id() {
  return (u64)blockIdx.x * (u64)blockDim.x + (u64)threadIdx.x;
}

__device__ __forceinline__ u64 grid_stride() { return (u64)gridDim.x * (u64)blockDim.x; }

}  // namespace fcgpu

#endif  // FCGPU_VEC_CUH
