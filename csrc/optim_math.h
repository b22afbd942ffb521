// The per-element update math of every tunebook optimizer, written once.
//
// Everything here is `TB_HOST_DEVICE` and header-only, so the CPU loops (csrc/cpu/, g++) and
// the CUDA functors (csrc/cuda/, nvcc) call the very same functions. The math runs in the
// params' "opmath" type `T` (as torch's fused kernels): float for float32/bfloat16/float16
// params, whose low-precision values are widened on load and rounded once on store by the
// caller, and double for float64 params (`OpMath<param_t>::type`).
//
// Two kinds of functions:
//   * `*_scalars(...)`: per-tensor scalars (bias corrections, step sizes, NAdam's mu
//     product), computed once per tensor per step in double from the tensor's step counter
//     and the learning rate, exactly as torch's single-tensor path does in Python floats.
//     The CUDA side may call them once per block (they are cheap and need no host sync).
//   * `*_update<...>(...)`: the per-element update, branch-free on the hot path (template
//     flags for the structural options), so that the CPU loop auto-vectorises.
//
// Every update first multiplies the raw gradient by `grad_mult` (= clip coefficient /
// GradScaler scale, from the step-control tensor, see `finalize_step_control`), then
// negates it when `maximize`, then applies weight decay, in torch's order.
//
// Rules (`rule` argument of the ops):
//   kRuleTorch    = 0: torch.optim's formulas (the default).
//   kRulePlaybook = 1: the Deep Learning Tuning Playbook FAQ's formulas:
//       RMSProp: v0 = 1, v = rho v + (1-rho) g^2, m = gamma m + lr g / sqrt(v + eps),
//                theta -= m                       (eps inside the root, lr inside m)
//       Adam:    b = sqrt(1-b2^t) / (1-b1^t),  theta -= lr * b * m / (sqrt(v) + eps)
//       NAdam:   theta -= lr * b * (b1 m + (1-b1) g) / (sqrt(v) + eps)
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define TB_HOST_DEVICE __host__ __device__
#define TB_INLINE __forceinline__
#else
#define TB_HOST_DEVICE
#define TB_INLINE inline __attribute__((always_inline))
#endif

namespace tunebook {
namespace math {

constexpr int kRuleTorch = 0;
constexpr int kRulePlaybook = 1;

// Layout of the step-control tensor (float32, 2 elements, on the params' device).
constexpr int kControlGradMult = 0;  // multiplier applied to every raw grad element
constexpr int kControlSkip = 1;      // 1.0: skip the whole step (no param/state/step change)
constexpr int kControlSize = 2;

// Layout of the counters tensor (int64, 3 elements, on the params' device).
constexpr int kCounterSteps = 0;    // steps attempted (= finalize calls); ring write position
constexpr int kCounterClipped = 1;  // steps whose clip coefficient was < 1 (and not skipped)
constexpr int kCounterSkipped = 2;  // steps skipped (non-finite norm or GradScaler found_inf)
constexpr int kCounterSize = 3;

// clip_grad_norm_'s epsilon: coef = max_norm / (norm + 1e-6), clamped to 1.
constexpr float kClipEps = 1e-6f;

// The type the math of a params dtype runs in: double for double, float for everything else
// (float32 and the 16-bit types, whatever their C++ type on the CPU or the GPU).
template <typename param_t>
struct OpMath {
  using type = float;
};
template <>
struct OpMath<double> {
  using type = double;
};

// torch's lerp (aten/src/ATen/native/Lerp.h), so that exp_avg matches torch bit for bit.
template <typename T>
TB_HOST_DEVICE TB_INLINE T lerp(T self, T end, T weight) {
  return (std::fabs(weight) < T(0.5)) ? self + weight * (end - self)
                                      : end - (end - self) * (T(1) - weight);
}

// torch.maximum semantics (NaN propagates), unlike fmaxf.
template <typename T>
TB_HOST_DEVICE TB_INLINE T nan_max(T a, T b) {
  return (a != a || a > b) ? a : b;
}

// torch's fused optimizers' "conditional gradient store": with GradScaler's scale handed to
// the step, the raw (scaled) gradient is written back divided by the scale, before any
// clipping, maximize or weight decay, so `p.grad` after `scaler.step(opt)` holds the true
// gradient. A skipped step (found_inf, non-finite norm) writes nothing.
template <typename T>
TB_HOST_DEVICE TB_INLINE T unscaled_grad(T g, float grad_scale) {
  return g / static_cast<T>(grad_scale);
}

// ---------------------------------------------------------------------------------------
// Step control: called once per step, by one thread, after the global sum of squares.
//   sq_norm        sum of squares of the raw grads of all params (ignored if !has_norm)
//   grad_scale     GradScaler's scale (1 when none): raw grads are divided by it
//   found_inf      GradScaler's flag (0 when none)
//   max_grad_norm  clip threshold (ignored if !clip)
// Writes control[kControl*], bumps counters[kCounter*] and, when log_capacity > 0 and
// has_norm, writes the unclipped (unscaled) norm to norm_log[counters[steps] % capacity].
// sq_norm is a float32 value: a sum of squares above the float32 maximum arrives here as inf
// (the producers round it so on every backend), so it is a non-finite step like NaN.
// ---------------------------------------------------------------------------------------
TB_HOST_DEVICE TB_INLINE void finalize_step_control(
    float sq_norm, bool has_norm, float grad_scale, float found_inf, bool clip,
    float max_grad_norm, bool skip_nonfinite, float* control, int64_t* counters,
    float* norm_log, int64_t log_capacity) {
  const float norm = has_norm ? std::sqrt(sq_norm) / grad_scale : 0.0f;
  const bool nonfinite = has_norm && !(std::isfinite(norm));
  const bool skip = (found_inf != 0.0f) || (skip_nonfinite && nonfinite);
  float coef = 1.0f;
  if (clip && has_norm) {
    coef = max_grad_norm / (norm + kClipEps);
    coef = (coef > 1.0f) ? 1.0f : coef;  // clamp(max=1) keeps NaN, as torch.clamp does
  }
  control[kControlGradMult] = coef / grad_scale;
  control[kControlSkip] = skip ? 1.0f : 0.0f;
  const int64_t position = counters[kCounterSteps];
  if (has_norm && log_capacity > 0) norm_log[position % log_capacity] = norm;
  counters[kCounterSteps] = position + 1;
  if (!skip && coef < 1.0f) counters[kCounterClipped] += 1;
  if (skip) counters[kCounterSkipped] += 1;
}

// ---------------------------------------------------------------------------------------
// SGD (torch.optim.SGD): momentum, dampening, Nesterov, coupled weight decay.
//   g' = g + wd p;  buf = g' (first step) | momentum buf + (1 - dampening) g'
//   d = nesterov ? g' + momentum buf : buf;  p -= lr d
// ---------------------------------------------------------------------------------------
template <typename T>
struct SgdScalars {
  T lr, momentum, one_minus_dampening, weight_decay;
};

template <typename T>
TB_HOST_DEVICE TB_INLINE SgdScalars<T> sgd_scalars(double lr, double momentum, double dampening,
                                                  double weight_decay) {
  return SgdScalars<T>{(T)lr, (T)momentum, (T)(1.0 - dampening), (T)weight_decay};
}

template <bool kMomentum, bool kNesterov, bool kFirstStep, bool kMaximize, bool kWeightDecay,
          typename T>
TB_HOST_DEVICE TB_INLINE void sgd_update(T& p, T g, T& buf, T grad_mult,
                                         const SgdScalars<T>& s) {
  g *= grad_mult;
  if (kMaximize) g = -g;
  if (kWeightDecay) g = g + s.weight_decay * p;
  if (kMomentum) {
    buf = kFirstStep ? g : buf * s.momentum + s.one_minus_dampening * g;
    g = kNesterov ? g + s.momentum * buf : buf;
  }
  p = p + (-s.lr) * g;
}

// ---------------------------------------------------------------------------------------
// Adam / AdamW (torch.optim.Adam, decoupled_weight_decay for AdamW), optional AMSGrad.
//   torch:    m = lerp(m, g, 1-b1); v = b2 v + (1-b2) g^2
//             p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps)
//   playbook: p -= lr * sqrt(1-b2^t)/(1-b1^t) * m / (sqrt(v) + eps)
// Both are  p -= step_size * m / (sqrt(v) / bc2_sqrt + eps)  with different scalars.
// ---------------------------------------------------------------------------------------
template <typename T>
struct AdamScalars {
  T param_decay;   // 1 - lr wd (decoupled) or 1
  T weight_decay;  // coupled L2 coefficient (0 when decoupled)
  T beta1_weight;  // 1 - b1 (lerp weight)
  T beta2, one_minus_beta2;
  T step_size;     // torch: lr / bc1;  playbook: lr sqrt(bc2) / bc1
  T bc2_sqrt;      // torch: sqrt(bc2); playbook: 1
  T eps;
};

// `step` is the already incremented step count t.
template <typename T>
TB_HOST_DEVICE TB_INLINE AdamScalars<T> adam_scalars(double step, double lr, double beta1,
                                                    double beta2, double eps,
                                                    double weight_decay, bool decoupled,
                                                    int rule) {
  const double bc1 = 1.0 - std::pow(beta1, step);
  const double bc2 = 1.0 - std::pow(beta2, step);
  AdamScalars<T> s;
  s.param_decay = decoupled ? (T)(1.0 - lr * weight_decay) : T(1);
  s.weight_decay = decoupled ? T(0) : (T)weight_decay;
  s.beta1_weight = (T)(1.0 - beta1);
  s.beta2 = (T)beta2;
  s.one_minus_beta2 = (T)(1.0 - beta2);
  if (rule == kRulePlaybook) {
    s.step_size = (T)(lr * std::sqrt(bc2) / bc1);
    s.bc2_sqrt = T(1);
  } else {
    s.step_size = (T)(lr / bc1);
    s.bc2_sqrt = (T)std::sqrt(bc2);
  }
  s.eps = (T)eps;
  return s;
}

template <bool kAmsgrad, bool kMaximize, bool kWeightDecay, typename T>
TB_HOST_DEVICE TB_INLINE void adam_update(T& p, T g, T& m, T& v, T& vmax, T grad_mult,
                                          const AdamScalars<T>& s) {
  g *= grad_mult;
  if (kMaximize) g = -g;
  if (kWeightDecay) {  // either decoupled (param_decay != 1) or coupled (weight_decay != 0)
    p = p * s.param_decay;
    g = g + s.weight_decay * p;
  }
  m = lerp(m, g, s.beta1_weight);
  v = v * s.beta2 + s.one_minus_beta2 * g * g;
  T vv = v;
  if (kAmsgrad) {
    vmax = nan_max(vmax, v);
    vv = vmax;
  }
  const T denom = std::sqrt(vv) / s.bc2_sqrt + s.eps;
  p = p + (-s.step_size) * (m / denom);
}

// ---------------------------------------------------------------------------------------
// NAdam (torch.optim.NAdam), momentum decay schedule mu_t = b1 (1 - 0.5 * 0.96^(t psi)).
//   torch:    p -= lr (1-mu_t)/(1-prod mu) * g / d  +  lr mu_{t+1}/(1-prod mu * mu_{t+1}) * m / d
//             with d = sqrt(v / (1-b2^t)) + eps
//   playbook: p -= lr sqrt(1-b2^t)/(1-b1^t) * (b1 m + (1-b1) g) / (sqrt(v) + eps)
// ---------------------------------------------------------------------------------------
template <typename T>
struct NadamScalars {
  T param_decay, weight_decay;
  T beta1, beta1_weight;  // b1, 1 - b1
  T beta2, one_minus_beta2;
  T bias_correction2;  // torch: 1 - b2^t; playbook: 1
  T eps;
  T grad_coef;  // torch: -lr (1-mu)/(1-mu_prod);       playbook: -lr b (1-b1)
  T avg_coef;   // torch: -lr mu_next/(1-mu_prod mu_next); playbook: -lr b b1
  float new_mu_product;  // to be stored in the tensor's mu_product state (float32, as torch)
};

template <typename T>
TB_HOST_DEVICE TB_INLINE NadamScalars<T> nadam_scalars(double step, double lr, double beta1,
                                                      double beta2, double eps,
                                                      double weight_decay,
                                                      double momentum_decay, bool decoupled,
                                                      float mu_product, int rule) {
  NadamScalars<T> s;
  const double bc2 = 1.0 - std::pow(beta2, step);
  const double mu = beta1 * (1.0 - 0.5 * std::pow(0.96, step * momentum_decay));
  const double mu_next = beta1 * (1.0 - 0.5 * std::pow(0.96, (step + 1.0) * momentum_decay));
  // torch: `mu_product *= mu` on a float32 tensor, then reads it back as a Python float.
  s.new_mu_product = mu_product * (float)mu;
  const double mu_product_next = (double)s.new_mu_product * mu_next;
  s.param_decay = decoupled ? (T)(1.0 - lr * weight_decay) : T(1);
  s.weight_decay = decoupled ? T(0) : (T)weight_decay;
  s.beta1 = (T)beta1;
  s.beta1_weight = (T)(1.0 - beta1);
  s.beta2 = (T)beta2;
  s.one_minus_beta2 = (T)(1.0 - beta2);
  s.eps = (T)eps;
  if (rule == kRulePlaybook) {
    const double bc1 = 1.0 - std::pow(beta1, step);
    const double b = std::sqrt(bc2) / bc1;
    s.bias_correction2 = T(1);
    s.grad_coef = (T)(-lr * b * (1.0 - beta1));
    s.avg_coef = (T)(-lr * b * beta1);
  } else {
    s.bias_correction2 = (T)bc2;
    s.grad_coef = (T)(-lr * (1.0 - mu) / (1.0 - (double)s.new_mu_product));
    s.avg_coef = (T)((-lr * mu_next) / (1.0 - mu_product_next));
  }
  return s;
}

template <int kRule, bool kMaximize, bool kWeightDecay, typename T>
TB_HOST_DEVICE TB_INLINE void nadam_update(T& p, T g, T& m, T& v, T grad_mult,
                                           const NadamScalars<T>& s) {
  g *= grad_mult;
  if (kMaximize) g = -g;
  if (kWeightDecay) {
    p = p * s.param_decay;
    g = g + s.weight_decay * p;
  }
  m = lerp(m, g, s.beta1_weight);
  v = v * s.beta2 + s.one_minus_beta2 * g * g;
  if (kRule == kRulePlaybook) {
    // (b1 m + (1-b1) g) b lr / (sqrt(v) + eps), folded into the two coefficients.
    const T denom = std::sqrt(v) + s.eps;
    p = p + (s.avg_coef * m + s.grad_coef * g) / denom;
  } else {
    const T denom = std::sqrt(v / s.bias_correction2) + s.eps;
    p = p + s.grad_coef * (g / denom);
    p = p + s.avg_coef * (m / denom);
  }
}

// ---------------------------------------------------------------------------------------
// RMSprop (torch.optim.RMSprop), optionally centered and with momentum.
//   torch:    sq = a sq + (1-a) g^2; [ga = lerp(ga, g, 1-a); sq' = sq - ga^2]
//             d = sqrt(sq') + eps;  buf = mom buf + g/d;  p -= lr buf   (or p -= lr g/d)
//   playbook: d = sqrt(sq' + eps); buf = mom buf + lr g/d; p -= buf     (or p -= lr g/d)
//             and square_avg starts at 1 (the optimizer initialises the state).
// ---------------------------------------------------------------------------------------
template <typename T>
struct RmspropScalars {
  T lr, alpha, one_minus_alpha, eps, weight_decay, momentum;
};

template <typename T>
TB_HOST_DEVICE TB_INLINE RmspropScalars<T> rmsprop_scalars(double lr, double alpha, double eps,
                                                          double weight_decay,
                                                          double momentum) {
  return RmspropScalars<T>{(T)lr, (T)alpha, (T)(1.0 - alpha), (T)eps, (T)weight_decay,
                           (T)momentum};
}

template <int kRule, bool kCentered, bool kMomentum, bool kMaximize, bool kWeightDecay,
          typename T>
TB_HOST_DEVICE TB_INLINE void rmsprop_update(T& p, T g, T& sq, T& ga, T& buf, T grad_mult,
                                             const RmspropScalars<T>& s) {
  g *= grad_mult;
  if (kMaximize) g = -g;
  if (kWeightDecay) g = g + s.weight_decay * p;
  sq = sq * s.alpha + s.one_minus_alpha * g * g;
  T base = sq;
  if (kCentered) {
    ga = lerp(ga, g, s.one_minus_alpha);
    base = sq + T(-1) * ga * ga;
  }
  const T avg = (kRule == kRulePlaybook) ? std::sqrt(base + s.eps) : std::sqrt(base) + s.eps;
  if (kMomentum) {
    if (kRule == kRulePlaybook) {
      buf = buf * s.momentum + s.lr * (g / avg);
      p = p - buf;
    } else {
      buf = buf * s.momentum + g / avg;
      p = p + (-s.lr) * buf;
    }
  } else {
    p = p + (-s.lr) * (g / avg);
  }
}

}  // namespace math
}  // namespace tunebook
