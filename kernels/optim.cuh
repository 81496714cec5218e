// Per-element math of the optimizer kernels (optim.cu): Adam, and the device-lr
// variants of SGD, SGD with momentum and RMSProp used inside a captured CUDA graph.
//
// __host__ __device__ and header-free like ops.cuh, so tests/host/ compiles the same
// functions for the CPU. Every operation is one of ops.cuh's IEEE helpers (rounded
// once, never contracted into an FMA, float32 subnormals kept despite CuPy's
// -ftz=true) and they follow the order of the xp references (fcgpu.optim,
// fcgpu.fused_optim.adam_step_ref) with the hyperparameters cast to T first, as
// NumPy/CuPy do with Python floats: the results equal the references bit for bit,
// given the same bias corrections (Adam's 1 - beta**t are computed on the host, in
// Python, for the plain and the CUDA-graph step alike).
#ifndef FCGPU_OPTIM_CUH
#define FCGPU_OPTIM_CUH

#include "ops.cuh"

namespace fcgpu {

// Adam's scalars, in T (fcgpu.cpu.ops.adam_step casts them the same way).
template <typename T>
struct AdamCoefs {
  T lr, b1, omb1, b2, omb2, c1, c2, eps;
};

template <typename T>
FCGPU_HD AdamCoefs<T> adam_coefs(double lr, double beta1, double beta2, double eps, double c1,
                                 double c2) {
  AdamCoefs<T> k;
  k.lr = narrow<T>(lr);
  k.b1 = narrow<T>(beta1);
  k.omb1 = narrow<T>(1.0 - beta1);
  k.b2 = narrow<T>(beta2);
  k.omb2 = narrow<T>(1.0 - beta2);
  k.c1 = narrow<T>(c1);
  k.c2 = narrow<T>(c2);
  k.eps = narrow<T>(eps);
  return k;
}

// One element of Adam: m, v updated in place, next w returned.
//   m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*(g*g)
//   next_w = w - lr * (m / c1) / (sqrt(v / c2) + eps)
template <typename T>
FCGPU_HD T adam_elem(T w, T g, T& m, T& v, const AdamCoefs<T>& k) {
  const T mi = add_rn(mul_rn(k.b1, m), mul_rn(k.omb1, g));
  const T vi = add_rn(mul_rn(k.b2, v), mul_rn(k.omb2, mul_rn(g, g)));
  m = mi;
  v = vi;
  const T num = mul_rn(k.lr, div_rn(mi, k.c1));
  const T den = add_rn(sqrt_rn(div_rn(vi, k.c2)), k.eps);
  return sub_rn(w, div_rn(num, den));
}

// The other update rules with the learning rate read at run time (CUDA graphs).
enum UpdateRule {
  RULE_SGD = 0,           // w - lr*dw
  RULE_SGD_MOMENTUM = 1,  // v = mu*v - lr*dw; w + v            (s = velocity, h = momentum)
  RULE_RMSPROP = 2,       // c = dr*c + (1-dr)*dw*dw; w - lr*dw / (sqrt(c) + eps)
                          //                                    (s = cache, h = decay_rate)
  RULE_SGD_NESTEROV = 3,  // v = mu*v - lr*dw; w + mu*v - lr*dw (s = velocity, h = momentum)
};

template <typename T, int RULE>
FCGPU_HD T rule_elem(T w, T g, T& s, T lr, T h, T omh, T eps) {
  if (RULE == RULE_SGD) return sub_rn(w, mul_rn(lr, g));
  if (RULE == RULE_SGD_MOMENTUM) {
    const T vel = sub_rn(mul_rn(s, h), mul_rn(lr, g));
    s = vel;
    return add_rn(w, vel);
  }
  if (RULE == RULE_SGD_NESTEROV) {
    const T step = mul_rn(lr, g);
    const T vel = sub_rn(mul_rn(s, h), step);
    s = vel;
    return sub_rn(add_rn(w, mul_rn(h, vel)), step);
  }
  const T c = add_rn(mul_rn(s, h), mul_rn(mul_rn(omh, g), g));
  s = c;
  return sub_rn(w, div_rn(mul_rn(lr, g), add_rn(sqrt_rn(c), eps)));
}

template <int RULE>
struct RuleTraits {
  static constexpr bool state = (RULE != RULE_SGD);
};

}  // namespace fcgpu

#endif  // FCGPU_OPTIM_CUH
