// Host build of kernels/philox.cuh (tests/test_kernels_host.py compiles and runs it).
//
//   philox_kat                          the three Random123 known-answer vectors, one
//                                       line each: 8 hex words (counter, key) -> 4 words
//   philox_kat threshold P...           keep_threshold(P) for each P, one per line
//   philox_kat mask N SEED STREAM T     N keep bytes (0/1) of flat elements 0..N-1 for
//                                       (SEED, STREAM) and threshold T, raw on stdout
//   philox_kat window START N SEED STREAM T
//                                       the same for flat elements START..START+N-1
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "philox.cuh"

using fcgpu::u32;
using fcgpu::u64;

static u64 parse_u64(const char* s) { return std::strtoull(s, nullptr, 0); }

int main(int argc, char** argv) {
  if (argc == 1) {
    const u32 kat[3][6] = {
        {0u, 0u, 0u, 0u, 0u, 0u},
        {0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu},
        {0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u, 0xa4093822u, 0x299f31d0u},
    };
    for (const auto& k : kat) {
      const fcgpu::philox4 r = fcgpu::philox4x32_10(k[0], k[1], k[2], k[3], k[4], k[5]);
      std::printf("%08x %08x %08x %08x %08x %08x -> %08x %08x %08x %08x\n", k[0], k[1], k[2],
                  k[3], k[4], k[5], r.v[0], r.v[1], r.v[2], r.v[3]);
    }
    return 0;
  }
  if (std::strcmp(argv[1], "threshold") == 0) {
    for (int i = 2; i < argc; ++i)
      std::printf("%llu\n", (unsigned long long)fcgpu::keep_threshold(std::strtod(argv[i], nullptr)));
    return 0;
  }
  if (std::strcmp(argv[1], "mask") == 0 && argc == 6) {
    const u64 n = parse_u64(argv[2]), seed = parse_u64(argv[3]), stream = parse_u64(argv[4]),
              t = parse_u64(argv[5]);
    std::vector<unsigned char> mask(n);
    for (u64 j = 0; 4 * j < n; ++j) {
      const fcgpu::philox4 r = fcgpu::philox_block(j, seed, stream);
      for (u64 k = 0; k < 4 && 4 * j + k < n; ++k)
        mask[4 * j + k] = fcgpu::philox_keep(r.v[k], t) ? 1 : 0;
    }
    // and the per-element helper must agree with the block mapping
    for (u64 i = 0; i < n; i += 997)
      if ((fcgpu::philox_keep(fcgpu::philox_element(i, seed, stream), t) ? 1 : 0) != mask[i]) {
        std::fprintf(stderr, "philox_element disagrees at %llu\n", (unsigned long long)i);
        return 2;
      }
    if (n && std::fwrite(mask.data(), 1, n, stdout) != n) return 3;
    return 0;
  }
  if (std::strcmp(argv[1], "window") == 0 && argc == 7) {
    const u64 start = parse_u64(argv[2]), n = parse_u64(argv[3]), seed = parse_u64(argv[4]),
              stream = parse_u64(argv[5]), t = parse_u64(argv[6]);
    std::vector<unsigned char> mask(n);
    for (u64 k = 0; k < n; ++k)
      mask[k] = fcgpu::philox_keep(fcgpu::philox_element(start + k, seed, stream), t) ? 1 : 0;
    if (n && std::fwrite(mask.data(), 1, n, stdout) != n) return 3;
    return 0;
  }
  std::fprintf(stderr, "usage: philox_kat [threshold P... | mask N SEED STREAM T | window START N SEED STREAM T]\n");
  return 1;
}
