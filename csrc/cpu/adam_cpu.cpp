// CPU: tunebook::adam_step_ (Adam, AdamW, AMSGrad; torch or playbook rule). Contract:
// csrc/ops.cpp; per-element math: csrc/optim_math.h (math::adam_update).
#include <torch/library.h>

#include "multi_tensor_cpu.h"

namespace tunebook {
namespace cpu {
namespace {

void adam_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                   at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
                   at::TensorList steps, const at::Tensor& control,
                   const std::optional<at::Tensor>& lr_tensor, double lr, double beta1,
                   double beta2, double eps, double weight_decay, bool amsgrad, bool maximize,
                   bool decoupled_weight_decay, int64_t rule,
                   const std::optional<at::Tensor>& grad_scale) {
  const auto [pdt, sdt] = check_update_lists(
      "adam_step_", params, grads,
      {{"exp_avgs", exp_avgs}, {"exp_avg_sqs", exp_avg_sqs},
       {"max_exp_avg_sqs", max_exp_avg_sqs}});
  TORCH_CHECK(exp_avgs.size() == params.size() && exp_avg_sqs.size() == params.size(),
              "tunebook::adam_step_: exp_avgs and exp_avg_sqs need one tensor per param");
  TORCH_CHECK(max_exp_avg_sqs.size() == (amsgrad ? params.size() : 0),
              "tunebook::adam_step_: max_exp_avg_sqs must hold one tensor per param iff "
              "amsgrad");
  check_scalar_list("adam_step_", "steps", steps, params.size());
  TORCH_CHECK(rule == math::kRuleTorch || rule == math::kRulePlaybook,
              "tunebook::adam_step_: rule must be 0 (torch) or 1 (playbook), got ", rule);
  const auto [unscale, scale] = read_grad_scale(grad_scale);
  auto [grad_mult, skip] = read_control(control);
  if (skip || params.empty()) return;
  // maximize folds into the multiplier: (g * c) negated == g * (-c), exactly.
  if (maximize) grad_mult = -grad_mult;
  const double lr_value = read_lr(lr_tensor, lr);

  std::vector<double> step_values(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    float* step = steps[i].data_ptr<float>();
    *step += 1.0f;
    step_values[i] = *step;
  }
  with_bool(amsgrad, [&](auto ams) {
    with_bool(weight_decay != 0.0, [&](auto wd) {
      dispatch_dtypes(pdt, sdt, [&](auto param_tag, auto state_tag) {
        using param_t = decltype(param_tag);
        using state_t = decltype(state_tag);
        using T = typename math::OpMath<param_t>::type;
        constexpr bool kAms = decltype(ams)::value;
        constexpr bool kWd = decltype(wd)::value;
        std::vector<math::AdamScalars<T>> scalars(params.size());
        for (size_t i = 0; i < params.size(); ++i) {
          scalars[i] = math::adam_scalars<T>(step_values[i], lr_value, beta1, beta2, eps,
                                             weight_decay, decoupled_weight_decay,
                                             static_cast<int>(rule));
        }
        const T mult = grad_mult;
        multi_tensor_apply<param_t, state_t, 3>(
            params, grads, {exp_avgs, exp_avg_sqs, max_exp_avg_sqs}, unscale,
            [&](int64_t t, T* __restrict__ p, T* __restrict__ g, T* const* s, int64_t n) {
              const math::AdamScalars<T> sc = scalars[t];
              T* __restrict__ m = s[0];
              T* __restrict__ v = s[1];
              T* __restrict__ vmax = kAms ? s[2] : s[1];
#pragma GCC ivdep
              for (int64_t i = 0; i < n; ++i) {
                math::adam_update<kAms, false, kWd>(p[i], g[i], m[i], v[i], vmax[i], mult, sc);
                if (unscale) g[i] = math::unscaled_grad(g[i], scale);
              }
            });
      });
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(tunebook, CPU, m) { m.impl("adam_step_", &adam_step_cpu); }

}  // namespace cpu
}  // namespace tunebook
