// A small CPU stand-in for the CUDA built-ins that kernels/*.cu use, so that the
// kernels themselves (not a re-implementation) run on the host in the tests:
// blocks run one after another; the threads of a block run one after another too,
// except for kernels that synchronize (__syncthreads), whose block runs as real
// threads meeting at a std::barrier. __shared__ becomes a function-local static,
// which is right because only one block runs at a time.
#ifndef FCGPU_CUDA_EMU_H
#define FCGPU_CUDA_EMU_H

#include <barrier>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct emu_dim3 {
  unsigned x, y, z;
};

extern thread_local emu_dim3 threadIdx;
extern thread_local emu_dim3 blockIdx;
extern emu_dim3 blockDim;
extern emu_dim3 gridDim;
extern std::barrier<>* emu_block_barrier;

inline void __syncthreads() {
  if (emu_block_barrier == nullptr) {
    std::fprintf(stderr, "emu: __syncthreads in a kernel launched without threads\n");
    std::abort();
  }
  emu_block_barrier->arrive_and_wait();
}

struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(16) double2 {
  double x, y;
};
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
inline double2 make_double2(double x, double y) { return double2{x, y}; }

#define FCGPU_CHECK_ALIGNED16(p)                                                        \
  do {                                                                                  \
    if ((reinterpret_cast<std::uintptr_t>(p) & 15u) != 0) {                             \
      std::fprintf(stderr, "emu: misaligned 16-byte access at %p (%s:%d)\n", (const void*)(p), \
                   __FILE__, __LINE__);                                                 \
      std::abort();                                                                     \
    }                                                                                   \
  } while (0)

#endif  // FCGPU_CUDA_EMU_H
