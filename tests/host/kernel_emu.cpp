// The kernels of kernels/*.cu compiled for the host with tests/host/cuda_emu.h and
// exposed to Python (ctypes) with CUDA's launch convention:
//   emu_launch(name, gx, gy, gz, bx, by, bz, void** params) -> 0 on success
//   emu_launch_blocks(..., params, first, count): only blocks [first, first + count)
// where name is the NVRTC name expression fcgpu.cuda asks for and params[i] points
// at the value of argument i (as for cuLaunchKernel). tests/test_kernels_host.py runs
// fcgpu.cuda.ops on NumPy-backed stand-ins of CuPy arrays through this.
#include <cstring>
#include <map>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "cuda_emu.h"

thread_local emu_dim3 threadIdx;
thread_local emu_dim3 blockIdx;
emu_dim3 blockDim;
emu_dim3 gridDim;
std::barrier<>* emu_block_barrier = nullptr;

// emu_sources.inc and emu_registry.inc are written by tests/toolchain.py (build_emulator)
// from fcgpu.cuda.module.MODULES, the table the launchers declare: every kernels/*.cu
// there is included, and each of its name expressions registered.
#include "emu_sources.inc"

namespace {

typedef void (*Thunk)(void** params);

template <typename... A, std::size_t... I>
void call_with(void (*fn)(A...), void** params, std::index_sequence<I...>) {
  fn(*static_cast<A*>(params[I])...);
}

template <auto FN>
struct Invoker;

template <typename... A, void (*FN)(A...)>
struct Invoker<FN> {
  static void run(void** params) { call_with(FN, params, std::index_sequence_for<A...>{}); }
};

struct Entry {
  Thunk thunk;
  bool syncs;  // uses __syncthreads: run each block's threads concurrently
};

const std::map<std::string, Entry>& registry() {
  // {"fcgpu_flat<float, 0, true>", Entry{&Invoker<&fcgpu_flat<float, 0, true>>::run, false}}, ...
  static const std::map<std::string, Entry> reg = {
#include "emu_registry.inc"
  };
  return reg;
}

}  // namespace

extern "C" int emu_count() { return (int)registry().size(); }

extern "C" const char* emu_name(int i) {
  auto it = registry().begin();
  std::advance(it, i);
  return it->first.c_str();
}

namespace {

// Runs the blocks of linear index [first, last) (x fastest, then y, then z) of a
// launch: all of them for emu_launch, a window of a huge grid for emu_launch_blocks.
int run_blocks(const char* name, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
               unsigned by, unsigned bz, void** params, std::uint64_t first,
               std::uint64_t last) {
  auto it = registry().find(name);
  if (it == registry().end()) return 1;
  const Entry e = it->second;
  const std::uint64_t nblocks = (std::uint64_t)gx * gy * gz;
  if (first > last || last > nblocks) return 2;
  gridDim = emu_dim3{gx, gy, gz};
  blockDim = emu_dim3{bx, by, bz};
  const unsigned nthreads = bx * by * bz;
  for (std::uint64_t lin = first; lin < last; ++lin) {
    const emu_dim3 blk{(unsigned)(lin % gx), (unsigned)(lin / gx % gy),
                       (unsigned)(lin / gx / gy)};
    if (!e.syncs) {
      blockIdx = blk;
      emu_block_barrier = nullptr;
      for (unsigned tz = 0; tz < bz; ++tz)
        for (unsigned ty = 0; ty < by; ++ty)
          for (unsigned tx = 0; tx < bx; ++tx) {
            threadIdx = emu_dim3{tx, ty, tz};
            e.thunk(params);
          }
      continue;
    }
    std::barrier<> bar((std::ptrdiff_t)nthreads);
    emu_block_barrier = &bar;
    std::vector<std::thread> threads;
    threads.reserve(nthreads);
    for (unsigned tz = 0; tz < bz; ++tz)
      for (unsigned ty = 0; ty < by; ++ty)
        for (unsigned tx = 0; tx < bx; ++tx)
          threads.emplace_back([=] {
            blockIdx = blk;
            threadIdx = emu_dim3{tx, ty, tz};
            e.thunk(params);
          });
    for (auto& t : threads) t.join();
    emu_block_barrier = nullptr;
  }
  return 0;
}

}  // namespace

extern "C" int emu_launch(const char* name, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                          unsigned by, unsigned bz, void** params) {
  return run_blocks(name, gx, gy, gz, bx, by, bz, params, 0, (std::uint64_t)gx * gy * gz);
}

// Only blocks [first, first + count) of the launch: what those blocks of a grid too
// big to emulate whole do (the arrays need only hold what they touch).
extern "C" int emu_launch_blocks(const char* name, unsigned gx, unsigned gy, unsigned gz,
                                 unsigned bx, unsigned by, unsigned bz, void** params,
                                 std::uint64_t first, std::uint64_t count) {
  return run_blocks(name, gx, gy, gz, bx, by, bz, params, first, first + count);
}
