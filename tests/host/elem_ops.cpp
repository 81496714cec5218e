// Host build of the per-element math and per-column reduction steps of the CUDA
// kernels (kernels/ops.cuh), driven the way the kernels drive them: Philox blocks of
// 4 elements for the elementwise passes; chunks of R rows x 8 row lanes, merged lane
// by lane and then chunk by chunk, for the reductions. tests/test_kernels_host.py
// compares the results with the float64 xp references of fcgpu.fused.
//
//   elem_ops OP DTYPE DIR key=value...
// reads DIR/<name>.bin (raw DTYPE arrays), writes DIR/<name>.out.bin.
//   flat      op n seed stream t s             a [b]            -> y
//   bn_train  mode N D R G eps momentum seed stream t s
//                                              x gamma beta rm rv -> out mean inv_std rm rv
//   bn_infer  N D eps                          x gamma beta rm rv -> out
//   bn_bwd    fused N D R G s                  dout [out] x gamma mean inv_std
//                                                                -> dx dgamma dbeta
// Numbers may be given in C hex-float notation (exact).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "ops.cuh"

using fcgpu::u32;
using fcgpu::u64;

static std::map<std::string, std::string> g_args;
static std::string g_dir;

static double arg_d(const char* k) {
  auto it = g_args.find(k);
  if (it == g_args.end()) {
    std::fprintf(stderr, "missing argument %s\n", k);
    std::exit(1);
  }
  return std::strtod(it->second.c_str(), nullptr);
}

static u64 arg_u(const char* k) {
  auto it = g_args.find(k);
  if (it == g_args.end()) {
    std::fprintf(stderr, "missing argument %s\n", k);
    std::exit(1);
  }
  return std::strtoull(it->second.c_str(), nullptr, 0);
}

template <typename T>
static std::vector<T> load(const char* name, u64 n) {
  std::vector<T> v(n);
  const std::string path = g_dir + "/" + name + ".bin";
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f || std::fread(v.data(), sizeof(T), n, f) != n) {
    std::fprintf(stderr, "cannot read %llu values from %s\n", (unsigned long long)n, path.c_str());
    std::exit(1);
  }
  std::fclose(f);
  return v;
}

template <typename T>
static void save(const char* name, const std::vector<T>& v) {
  const std::string path = g_dir + "/" + name + ".out.bin";
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f || std::fwrite(v.data(), sizeof(T), v.size(), f) != v.size()) {
    std::fprintf(stderr, "cannot write %s\n", path.c_str());
    std::exit(1);
  }
  std::fclose(f);
}

// ----------------------------------------------------------------- flat (dropout.cu)

template <typename T, int OP>
static void flat_run(const std::vector<T>& a, const std::vector<T>& b, std::vector<T>& y, u64 n,
                     u64 seed, u64 stream, u64 t, T s) {
  for (u64 j = 0; 4 * j < n; ++j) {
    u32 r[4] = {0, 0, 0, 0};
    if (fcgpu::FlatOpTraits<OP>::rng) {
      const fcgpu::philox4 q = fcgpu::philox_block(j, seed, stream);
      for (int k = 0; k < 4; ++k) r[k] = q.v[k];
    }
    for (u64 k = 0; k < 4 && 4 * j + k < n; ++k) {
      const u64 i = 4 * j + k;
      const T bk = fcgpu::FlatOpTraits<OP>::second_input ? b[i] : T(0);
      y[i] = fcgpu::flat_elem<T, OP>(a[i], bk, r[k], t, s);
    }
  }
}

template <typename T>
static void op_flat() {
  const int op = (int)arg_u("op");
  const u64 n = arg_u("n"), seed = arg_u("seed"), stream = arg_u("stream"), t = arg_u("t");
  const T s = (T)arg_d("s");
  std::vector<T> a = load<T>("a", n), b, y(n);
  if (op == fcgpu::FLAT_RELU_DROPOUT_BWD) b = load<T>("b", n);
  switch (op) {
    case 0: flat_run<T, 0>(a, b, y, n, seed, stream, t, s); break;
    case 1: flat_run<T, 1>(a, b, y, n, seed, stream, t, s); break;
    case 2: flat_run<T, 2>(a, b, y, n, seed, stream, t, s); break;
    case 3: flat_run<T, 3>(a, b, y, n, seed, stream, t, s); break;
    default: std::fprintf(stderr, "bad op\n"); std::exit(1);
  }
  save("y", y);
}

// ----------------------------------------------------------------- column passes

template <typename T, int OP>
static void col_run(const T* a, const T* b, const T* c, T* y, u64 N, u64 D, const T* p0,
                    const T* p1, const T* p2, const T* p3, u64 seed, u64 stream, u64 t, T s) {
  typedef fcgpu::ColOpTraits<OP> traits;
  const u64 n = N * D;
  for (u64 j = 0; 4 * j < n; ++j) {
    u32 r[4] = {0, 0, 0, 0};
    if (traits::rng) {
      const fcgpu::philox4 q = fcgpu::philox_block(j, seed, stream);
      for (int k = 0; k < 4; ++k) r[k] = q.v[k];
    }
    u64 col = (4 * j) % D;
    for (u64 k = 0; k < 4; ++k) {
      const u64 e = 4 * j + k;
      if (e < n) {
        y[e] = fcgpu::col_elem<T, OP>(a[e], traits::uses_b ? b[e] : T(0),
                                      traits::uses_c ? c[e] : T(0), p0[col], p1[col], p2[col],
                                      traits::uses_p3 ? p3[col] : T(0), r[k], t, s);
      }
      col = (col + 1 == D) ? 0 : col + 1;
    }
  }
}

// ----------------------------------------------------------------- bn forward

template <typename T>
static void op_bn_train() {
  const int mode = (int)arg_u("mode");
  const u64 N = arg_u("N"), D = arg_u("D"), R = arg_u("R"), G = arg_u("G");
  const double eps = arg_d("eps"), momentum = arg_d("momentum");
  const u64 seed = arg_u("seed"), stream = arg_u("stream"), t = arg_u("t");
  const T s = (T)arg_d("s");
  std::vector<T> x = load<T>("x", N * D), gamma = load<T>("gamma", D), beta = load<T>("beta", D),
                 rm = load<T>("rm", D), rv = load<T>("rv", D);
  // stage 1: per (chunk, column) partials from 8 row lanes (as fcgpu_bn_stats)
  std::vector<T> ws_mean(G * D), ws_m2(G * D);
  for (u64 g = 0; g < G; ++g) {
    const u64 r0 = g * R, r1 = r0 + R < N ? r0 + R : N;
    for (u64 d = 0; d < D; ++d) {
      fcgpu::Moments<T> lanes[8];
      for (u64 ty = 0; ty < 8; ++ty) lanes[ty] = fcgpu::column_moments<T>(x.data() + d, D, r0 + ty, r1, 8);
      for (int k = 1; k < 8; ++k) fcgpu::moments_merge(lanes[0], lanes[k].n, lanes[k].mean, lanes[k].m2);
      ws_mean[g * D + d] = lanes[0].mean;
      ws_m2[g * D + d] = lanes[0].m2;
    }
  }
  // stage 2 (as fcgpu_bn_stats_finalize)
  std::vector<T> mean(D), inv_std(D), scale(D);
  for (u64 d = 0; d < D; ++d) {
    fcgpu::Moments<double> m = fcgpu::moments_zero<double>();
    for (u64 g = 0; g < G; ++g)
      fcgpu::moments_merge(m, (double)fcgpu::chunk_rows(g, N, R), (double)ws_mean[g * D + d],
                           (double)ws_m2[g * D + d]);
    const fcgpu::BnStats st = fcgpu::bn_stats_from_moments((double)N, m.mean, m.m2, eps);
    mean[d] = (T)st.mean;
    inv_std[d] = (T)st.inv_std;
    scale[d] = (T)((double)gamma[d] * st.inv_std);
    rm[d] = (T)fcgpu::running_update((double)rm[d], st.mean, momentum);
    rv[d] = (T)fcgpu::running_update((double)rv[d], st.var, momentum);
  }
  std::vector<T> out(N * D);
  const T* x0 = x.data();
  switch (mode) {
    case 0: col_run<T, 0>(x0, x0, x0, out.data(), N, D, mean.data(), scale.data(), beta.data(), mean.data(), seed, stream, t, s); break;
    case 1: col_run<T, 1>(x0, x0, x0, out.data(), N, D, mean.data(), scale.data(), beta.data(), mean.data(), seed, stream, t, s); break;
    case 2: col_run<T, 2>(x0, x0, x0, out.data(), N, D, mean.data(), scale.data(), beta.data(), mean.data(), seed, stream, t, s); break;
    default: std::fprintf(stderr, "bad mode\n"); std::exit(1);
  }
  save("out", out);
  save("mean", mean);
  save("inv_std", inv_std);
  save("rm", rm);
  save("rv", rv);
}

template <typename T>
static void op_bn_infer() {
  const u64 N = arg_u("N"), D = arg_u("D");
  const double eps = arg_d("eps");
  std::vector<T> x = load<T>("x", N * D), gamma = load<T>("gamma", D), beta = load<T>("beta", D),
                 rm = load<T>("rm", D), rv = load<T>("rv", D), scale(D), out(N * D);
  for (u64 d = 0; d < D; ++d) scale[d] = (T)((double)gamma[d] * fcgpu::inv_sqrt((double)rv[d] + eps));
  col_run<T, 0>(x.data(), x.data(), x.data(), out.data(), N, D, rm.data(), scale.data(), beta.data(),
                rm.data(), 0, 0, fcgpu::KEEP_ALL, T(1));
  save("out", out);
}

// ----------------------------------------------------------------- bn backward

template <typename T, bool FUSED>
static void bn_bwd_run(u64 N, u64 D, u64 R, u64 G, T s) {
  std::vector<T> dout = load<T>("dout", N * D), out, x = load<T>("x", N * D),
                 gamma = load<T>("gamma", D), mean = load<T>("mean", D),
                 inv_std = load<T>("inv_std", D);
  if (FUSED) out = load<T>("out", N * D);
  const T* outp = FUSED ? out.data() : dout.data();
  std::vector<T> ws_a(G * D), ws_b(G * D);
  for (u64 g = 0; g < G; ++g) {
    const u64 r0 = g * R, r1 = r0 + R < N ? r0 + R : N;
    for (u64 d = 0; d < D; ++d) {
      fcgpu::BwdSums<T> lanes[8];
      for (u64 ty = 0; ty < 8; ++ty)
        lanes[ty] = fcgpu::column_bwd_sums<T, FUSED>(dout.data(), outp, x.data(), mean[d], s, d, D,
                                                    r0 + ty, r1, 8);
      ws_a[g * D + d] = fcgpu::sum8(lanes[0].sdy, lanes[1].sdy, lanes[2].sdy, lanes[3].sdy,
                                    lanes[4].sdy, lanes[5].sdy, lanes[6].sdy, lanes[7].sdy);
      ws_b[g * D + d] = fcgpu::sum8(lanes[0].sdyx, lanes[1].sdyx, lanes[2].sdyx,
                                    lanes[3].sdyx, lanes[4].sdyx, lanes[5].sdyx,
                                    lanes[6].sdyx, lanes[7].sdyx);
    }
  }
  std::vector<T> dgamma(D), dbeta(D), k1(D), k2(D), k3(D), dx(N * D);
  for (u64 d = 0; d < D; ++d) {
    const fcgpu::BnBwdCoefs c = fcgpu::bn_bwd_finalize_column<T>(
        ws_a.data(), ws_b.data(), G, D, d, (double)gamma[d], (double)inv_std[d], (double)N);
    dgamma[d] = (T)c.dgamma;
    dbeta[d] = (T)c.dbeta;
    k1[d] = (T)c.k1;
    k2[d] = (T)c.k2;
    k3[d] = (T)c.k3;
  }
  if (FUSED)
    col_run<T, fcgpu::COL_BN_RELU_DROPOUT_BWD>(dout.data(), out.data(), x.data(), dx.data(), N, D,
                                               mean.data(), k1.data(), k2.data(), k3.data(), 0, 0,
                                               fcgpu::KEEP_ALL, s);
  else
    col_run<T, fcgpu::COL_BN_BWD>(dout.data(), dout.data(), x.data(), dx.data(), N, D, mean.data(),
                                  k1.data(), k2.data(), k3.data(), 0, 0, fcgpu::KEEP_ALL, s);
  save("dx", dx);
  save("dgamma", dgamma);
  save("dbeta", dbeta);
}

template <typename T>
static void op_bn_bwd() {
  const u64 N = arg_u("N"), D = arg_u("D"), R = arg_u("R"), G = arg_u("G");
  const T s = (T)arg_d("s");
  if (arg_u("fused"))
    bn_bwd_run<T, true>(N, D, R, G, s);
  else
    bn_bwd_run<T, false>(N, D, R, G, s);
}

// ----------------------------------------------------------------- main

template <typename T>
static int run(const std::string& op) {
  if (op == "flat") op_flat<T>();
  else if (op == "bn_train") op_bn_train<T>();
  else if (op == "bn_infer") op_bn_infer<T>();
  else if (op == "bn_bwd") op_bn_bwd<T>();
  else {
    std::fprintf(stderr, "unknown op %s\n", op.c_str());
    return 1;
  }
  return 0;
}

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: elem_ops OP f32|f64 DIR key=value...\n");
    return 1;
  }
  g_dir = argv[3];
  for (int i = 4; i < argc; ++i) {
    const char* eq = std::strchr(argv[i], '=');
    if (!eq) {
      std::fprintf(stderr, "bad argument %s\n", argv[i]);
      return 1;
    }
    g_args[std::string(argv[i], eq - argv[i])] = std::string(eq + 1);
  }
  const std::string dtype = argv[2];
  if (dtype == "f32") return run<float>(argv[1]);
  if (dtype == "f64") return run<double>(argv[1]);
  std::fprintf(stderr, "dtype must be f32 or f64\n");
  return 1;
}
