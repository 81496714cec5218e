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

#include "dropout.cu"
#include "batchnorm.cu"
#include "optim.cu"
#include "graph.cu"
#include "augment.cu"

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

#define EMU_REG(SYNC, ...) {#__VA_ARGS__, Entry{&Invoker<&__VA_ARGS__>::run, SYNC}}

#define EMU_FLAT(T)                                                                    \
  EMU_REG(false, fcgpu_flat<T, 0, true>), EMU_REG(false, fcgpu_flat<T, 0, false>),     \
      EMU_REG(false, fcgpu_flat<T, 1, true>), EMU_REG(false, fcgpu_flat<T, 1, false>), \
      EMU_REG(false, fcgpu_flat<T, 2, true>), EMU_REG(false, fcgpu_flat<T, 2, false>), \
      EMU_REG(false, fcgpu_flat<T, 3, true>), EMU_REG(false, fcgpu_flat<T, 3, false>)

#define EMU_BN(T)                                                                          \
  EMU_REG(true, fcgpu_bn_stats<T>), EMU_REG(false, fcgpu_bn_stats_finalize<T>),            \
      EMU_REG(false, fcgpu_bn_infer_coef<T>), EMU_REG(true, fcgpu_bn_bwd_sums<T, false>),  \
      EMU_REG(true, fcgpu_bn_bwd_sums<T, true>), EMU_REG(false, fcgpu_bn_bwd_finalize<T>), \
      EMU_REG(false, fcgpu_col_vec<T, 0>), EMU_REG(false, fcgpu_col_vec<T, 1>),            \
      EMU_REG(false, fcgpu_col_vec<T, 2>), EMU_REG(false, fcgpu_col_vec<T, 3>),            \
      EMU_REG(false, fcgpu_col_vec<T, 4>), EMU_REG(false, fcgpu_col_flat<T, 0>),           \
      EMU_REG(false, fcgpu_col_flat<T, 1>), EMU_REG(false, fcgpu_col_flat<T, 2>),          \
      EMU_REG(false, fcgpu_col_flat<T, 3>), EMU_REG(false, fcgpu_col_flat<T, 4>)

#define EMU_OPTIM_VEC(T, VEC)                                                           \
  EMU_REG(false, fcgpu_adam<T, VEC>), EMU_REG(false, fcgpu_adam_dev<T, VEC>),          \
      EMU_REG(false, fcgpu_rule<T, 0, VEC>), EMU_REG(false, fcgpu_rule<T, 1, VEC>),         \
      EMU_REG(false, fcgpu_rule<T, 2, VEC>), EMU_REG(false, fcgpu_rule_dev<T, 0, VEC>),     \
      EMU_REG(false, fcgpu_rule_dev<T, 1, VEC>), EMU_REG(false, fcgpu_rule_dev<T, 2, VEC>)
#define EMU_OPTIM(T) EMU_OPTIM_VEC(T, true), EMU_OPTIM_VEC(T, false)

#define EMU_GRAPH(T)                                                                   \
  EMU_REG(false, fcgpu_gather_rows<T, true>), EMU_REG(false, fcgpu_gather_rows<T, false>), \
      EMU_REG(false, fcgpu_graph_advance<T>)

#define EMU_AUGMENT(TI) \
  EMU_REG(false, fcgpu_augment_gather<TI, float>), EMU_REG(false, fcgpu_augment_gather<TI, double>)

const std::map<std::string, Entry>& registry() {
  static const std::map<std::string, Entry> reg = {
      EMU_FLAT(float), EMU_FLAT(double), EMU_REG(false, fcgpu_dropout_mask),
      EMU_BN(float), EMU_BN(double), EMU_OPTIM(float), EMU_OPTIM(double),
      EMU_GRAPH(float), EMU_GRAPH(double),
      EMU_AUGMENT(unsigned char), EMU_AUGMENT(float), EMU_AUGMENT(double),
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
