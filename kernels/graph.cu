// Device-side bookkeeping of a training step captured as a CUDA graph
// (fcgpu/cuda/graph.py): what differs from one replay to the next lives in device
// memory, and these kernels read and advance it.
//
//   fcgpu_gather_rows<T, VEC>  the minibatch: rows perm[b*B .. b*B + B) of X (N, D)
//                              and of the labels y, into static buffers Xb (B, D),
//                              yb (B); b = *batch_index (device memory). VEC: D % 4
//                              == 0 and X, Xb 16-byte aligned (rows move as vectors).
//   fcgpu_graph_advance<T>     the step's end: loss_buf[b] = *loss, then the counters
//                              advance (one thread; see GraphCounter).
#include "vec.cuh"

using fcgpu::u32;
using fcgpu::u64;
typedef long long i64;

namespace fcgpu {

// Slots of the u64 counter array (fcgpu/cuda/graph.py: COUNTER_SLOTS).
enum GraphCounter {
  CTR_BATCH = 0,   // minibatch index in the epoch (wraps at batches per epoch)
  CTR_STREAM = 1,  // dropout stream base = dropout_step * (L - 1)
  CTR_T = 2,       // the optimizer step the next replay uses (Adam's t, 1-based)
  CTR_STEPS = 3,   // steps run through the graph's counters in all (never wraps)
  CTR_COUNT = 4,
};

}  // namespace fcgpu

// grid (gx, gy): blockIdx.y strides over the B rows, x threads over the D columns
// (groups of 4 with VEC). Positions past the permutation or rows out of [0, N) are
// skipped (they cannot occur when the host keeps b * B + B <= len(perm)).
template <typename T, bool VEC>
__global__ void __launch_bounds__(256)
fcgpu_gather_rows(const T* __restrict__ X, const i64* __restrict__ y,
                  const i64* __restrict__ perm, const u64* __restrict__ batch_index,
                  u64 N, u64 nperm, u64 D, u64 B, T* __restrict__ Xb, i64* __restrict__ yb) {
  const u64 b = *batch_index;
  const u64 ncol = VEC ? (D >> 2) : D;
  const u64 cstride = (u64)gridDim.x * blockDim.x;
  const u64 c0 = (u64)blockIdx.x * blockDim.x + threadIdx.x;
  for (u64 r = blockIdx.y; r < B; r += gridDim.y) {
    const u64 pos = b * B + r;
    if (pos >= nperm) continue;
    const i64 src = perm[pos];
    if (src < 0 || (u64)src >= N) continue;
    const T* xs = X + (u64)src * D;
    T* xd = Xb + r * D;
    if (c0 == 0) yb[r] = y[src];
    for (u64 c = c0; c < ncol; c += cstride) {
      if (VEC) {
        T v[4];
        fcgpu::load4(xs + (c << 2), v);
        fcgpu::store4(xd + (c << 2), v);
      } else {
        xd[c] = xs[c];
      }
    }
  }
}

// One thread: record the step's loss at the current batch slot, then advance the
// batch index (wrapping at batches_per_epoch), the dropout stream base (by
// stream_stride = L - 1, or 0 without fresh dropout masks), t and the step count.
template <typename T>
__global__ void __launch_bounds__(32)
fcgpu_graph_advance(u64* __restrict__ ctr, const T* __restrict__ loss, T* __restrict__ loss_buf,
                    u64 batches_per_epoch, u64 stream_stride) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  const u64 b = ctr[fcgpu::CTR_BATCH];
  if (b < batches_per_epoch) loss_buf[b] = *loss;
  ctr[fcgpu::CTR_BATCH] = (b + 1 >= batches_per_epoch) ? 0 : b + 1;
  ctr[fcgpu::CTR_STREAM] += stream_stride;
  ctr[fcgpu::CTR_T] += 1;
  ctr[fcgpu::CTR_STEPS] += 1;
}

// Explicit instantiations: the set fcgpu/cuda/graph.py asks NVRTC for by name.
#define FCGPU_GRAPH_INST(T)                                                                  \
  template __global__ void fcgpu_gather_rows<T, true>(                                       \
      const T* __restrict__, const i64* __restrict__, const i64* __restrict__,               \
      const u64* __restrict__, u64, u64, u64, u64, T* __restrict__, i64* __restrict__);      \
  template __global__ void fcgpu_gather_rows<T, false>(                                      \
      const T* __restrict__, const i64* __restrict__, const i64* __restrict__,               \
      const u64* __restrict__, u64, u64, u64, u64, T* __restrict__, i64* __restrict__);      \
  template __global__ void fcgpu_graph_advance<T>(u64* __restrict__, const T* __restrict__, \
                                                  T* __restrict__, u64, u64);
FCGPU_GRAPH_INST(float)
FCGPU_GRAPH_INST(double)
