// Per-element math of the optimizer kernels (optim.cu): Adam, and the device-lr
// variants of SGD, SGD with momentum and RMSProp used inside a captured CUDA graph.
//
// __host__ __device__ and header-free like ops.cuh, so tests/host/ compiles the same
// functions for the CPU. Every product goes through mul_rn (never contracted into an
// FMA) and the operations follow the order of the xp references (fcgpu.optim,
// fcgpu.fused_optim.adam_step_ref) with the hyperparameters cast to T first, as
// NumPy/CuPy do with Python floats: the results equal the references bit for bit
// where the bias corrections are the same numbers (division and square root are
// correctly rounded on both sides: CuPy builds without fast math).
#ifndef FCGPU_OPTIM_CUH
#define FCGPU_OPTIM_CUH

#include "ops.cuh"

namespace fcgpu {

FCGPU_HD float sqrt_rn(float v) {
#if defined(__CUDA_ARCH__)
  return __fsqrt_rn(v);
#else
  return __builtin_sqrtf(v);
#endif
}
FCGPU_HD double sqrt_rn(double v) {
#if defined(__CUDA_ARCH__)
  return __dsqrt_rn(v);
#else
  return __builtin_sqrt(v);
#endif
}

// 1 - beta ** t in double, as Python computes `1 - beta1 ** t` (C pow). CUDA's pow is
// within 1 ulp of it (and so are the host builds of the tests).
FCGPU_HD double bias_correction(double beta, u64 t) {
#if defined(__CUDA_ARCH__)
  return 1.0 - pow(beta, (double)t);
#else
  return 1.0 - __builtin_pow(beta, (double)t);
#endif
}

// Adam's scalars, in T (fcgpu.cpu.ops.adam_step casts them the same way).
template <typename T>
struct AdamCoefs {
  T lr, b1, omb1, b2, omb2, c1, c2, eps;
};

template <typename T>
FCGPU_HD AdamCoefs<T> adam_coefs(double lr, double beta1, double beta2, double eps, double c1,
                                 double c2) {
  AdamCoefs<T> k;
  k.lr = (T)lr;
  k.b1 = (T)beta1;
  k.omb1 = (T)(1.0 - beta1);
  k.b2 = (T)beta2;
  k.omb2 = (T)(1.0 - beta2);
  k.c1 = (T)c1;
  k.c2 = (T)c2;
  k.eps = (T)eps;
  return k;
}

// One element of Adam: m, v updated in place, next w returned.
//   m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*(g*g)
//   next_w = w - lr * (m / c1) / (sqrt(v / c2) + eps)
template <typename T>
FCGPU_HD T adam_elem(T w, T g, T& m, T& v, const AdamCoefs<T>& k) {
  const T mi = mul_rn(k.b1, m) + mul_rn(k.omb1, g);
  const T vi = mul_rn(k.b2, v) + mul_rn(k.omb2, mul_rn(g, g));
  m = mi;
  v = vi;
  return w - mul_rn(k.lr, mi / k.c1) / (sqrt_rn(vi / k.c2) + k.eps);
}

// The other update rules with the learning rate read at run time (CUDA graphs).
enum UpdateRule {
  RULE_SGD = 0,           // w - lr*dw
  RULE_SGD_MOMENTUM = 1,  // v = mu*v - lr*dw; w + v            (s = velocity, h = momentum)
  RULE_RMSPROP = 2,       // c = dr*c + (1-dr)*dw*dw; w - lr*dw / (sqrt(c) + eps)
                          //                                    (s = cache, h = decay_rate)
};

template <typename T, int RULE>
FCGPU_HD T rule_elem(T w, T g, T& s, T lr, T h, T omh, T eps) {
  if (RULE == RULE_SGD) return w - mul_rn(lr, g);
  if (RULE == RULE_SGD_MOMENTUM) {
    const T vel = mul_rn(s, h) - mul_rn(lr, g);
    s = vel;
    return w + vel;
  }
  const T c = mul_rn(s, h) + mul_rn(mul_rn(omh, g), g);
  s = c;
  return w - mul_rn(lr, g) / (sqrt_rn(c) + eps);
}

template <int RULE>
struct RuleTraits {
  static constexpr bool state = (RULE != RULE_SGD);
};

}  // namespace fcgpu

#endif  // FCGPU_OPTIM_CUH
