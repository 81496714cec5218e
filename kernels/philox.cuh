// Philox4x32-10 (Random123) and the dropout keep-mask mapping of fcgpu.
//
// The one stream shared by every backend (design.md, "Random numbers"):
//   element i of a flattened (C-order) tensor uses block j = i / 4, lane i % 4;
//   counter = (j mod 2^32, j div 2^32, stream mod 2^32, stream div 2^32);
//   key     = (seed mod 2^32, seed div 2^32);
//   r = philox4x32_10(counter, key)[lane];   kept iff r < t, t = floor(p * 2^32).
// A threshold of 2^32 (p >= 1) keeps everything, so t is carried as 64 bits.
//
// Everything here is __host__ __device__ and needs no header at all, so the same
// code compiles with NVRTC (CuPy), nvcc and a plain host C++ compiler (tests).
#ifndef FCGPU_PHILOX_CUH
#define FCGPU_PHILOX_CUH

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define FCGPU_HD __host__ __device__ __forceinline__
#define FCGPU_UNROLL _Pragma("unroll")
#else
#define FCGPU_HD inline
#define FCGPU_UNROLL
#endif

namespace fcgpu {

typedef unsigned int u32;
typedef unsigned long long u64;

struct philox4 {
  u32 v[4];
};

static constexpr u32 PHILOX_M0 = 0xD2511F53u;
static constexpr u32 PHILOX_M1 = 0xCD9E8D57u;
static constexpr u32 PHILOX_W0 = 0x9E3779B9u;
static constexpr u32 PHILOX_W1 = 0xBB67AE85u;
static constexpr u64 KEEP_ALL = 0x100000000ull;  // threshold meaning "p >= 1"

FCGPU_HD void mulhilo32(u32 a, u32 b, u32& hi, u32& lo) {
#if defined(__CUDA_ARCH__)
  lo = a * b;
  hi = __umulhi(a, b);
#else
  const u64 prod = (u64)a * (u64)b;
  lo = (u32)prod;
  hi = (u32)(prod >> 32);
#endif
}

// One Philox4x32 round on (c0, c1, c2, c3) with key (k0, k1).
FCGPU_HD void philox_round(u32& c0, u32& c1, u32& c2, u32& c3, u32 k0, u32 k1) {
  u32 hi0, lo0, hi1, lo1;
  mulhilo32(PHILOX_M0, c0, hi0, lo0);
  mulhilo32(PHILOX_M1, c2, hi1, lo1);
  const u32 n0 = hi1 ^ c1 ^ k0;
  const u32 n2 = hi0 ^ c3 ^ k1;
  c1 = lo1;
  c3 = lo0;
  c0 = n0;
  c2 = n2;
}

// Philox4x32 with 10 rounds (Random123's philox4x32_R(10, ...)).
FCGPU_HD philox4 philox4x32_10(u32 c0, u32 c1, u32 c2, u32 c3, u32 k0, u32 k1) {
  FCGPU_UNROLL
  for (int r = 0; r < 10; ++r) {
    philox_round(c0, c1, c2, c3, k0, k1);
    k0 += PHILOX_W0;  // the bump after the last round is dead and optimised away
    k1 += PHILOX_W1;
  }
  philox4 out;
  out.v[0] = c0;
  out.v[1] = c1;
  out.v[2] = c2;
  out.v[3] = c3;
  return out;
}

// The four outputs of block j (elements 4j .. 4j+3) for (seed, stream).
FCGPU_HD philox4 philox_block(u64 j, u64 seed, u64 stream) {
  return philox4x32_10((u32)j, (u32)(j >> 32), (u32)stream, (u32)(stream >> 32),
                       (u32)seed, (u32)(seed >> 32));
}

// The 32-bit draw of flat element i.
FCGPU_HD u32 philox_element(u64 i, u64 seed, u64 stream) {
  return philox_block(i >> 2, seed, stream).v[i & 3];
}

// Keep test: threshold = floor(p * 2^32) for p < 1, KEEP_ALL (2^32) for p >= 1.
FCGPU_HD bool philox_keep(u32 r, u64 threshold) { return (u64)r < threshold; }

// floor(p * 2^32) clamped to [0, 2^32 - 1] for 0 < p < 1; KEEP_ALL for p >= 1.
// (The Python side computes the same number; this is for host tests and tools.)
FCGPU_HD u64 keep_threshold(double p) {
  if (!(p < 1.0)) return KEEP_ALL;
  if (!(p > 0.0)) return 0;
  u64 t = (u64)(p * 4294967296.0);  // truncation == floor for positive values
  return t > 0xFFFFFFFFull ? 0xFFFFFFFFull : t;
}

}  // namespace fcgpu

#endif  // FCGPU_PHILOX_CUH
