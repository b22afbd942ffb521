// CPU: tunebook::nadam_step_ (NAdam, NAdamW; torch or playbook rule). Contract:
// csrc/ops.cpp; per-element math: csrc/optim_math.h (math::nadam_update).
#include <torch/library.h>

#include "multi_tensor_cpu.h"

namespace tunebook {
namespace cpu {
namespace {

void nadam_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                    at::TensorList exp_avg_sqs, at::TensorList mu_products,
                    at::TensorList steps, const at::Tensor& control,
                    const std::optional<at::Tensor>& lr_tensor, double lr, double beta1,
                    double beta2, double eps, double weight_decay, double momentum_decay,
                    bool decoupled_weight_decay, bool maximize, int64_t rule,
                    const std::optional<at::Tensor>& grad_scale) {
  const auto [pdt, sdt] = check_update_lists(
      "nadam_step_", params, grads, {{"exp_avgs", exp_avgs}, {"exp_avg_sqs", exp_avg_sqs}});
  TORCH_CHECK(exp_avgs.size() == params.size() && exp_avg_sqs.size() == params.size(),
              "tunebook::nadam_step_: exp_avgs and exp_avg_sqs need one tensor per param");
  check_scalar_list("nadam_step_", "steps", steps, params.size());
  check_scalar_list("nadam_step_", "mu_products", mu_products, params.size());
  TORCH_CHECK(rule == math::kRuleTorch || rule == math::kRulePlaybook,
              "tunebook::nadam_step_: rule must be 0 (torch) or 1 (playbook), got ", rule);
  const auto [unscale, scale] = read_grad_scale(grad_scale);
  auto [grad_mult, skip] = read_control(control);
  if (skip || params.empty()) return;
  if (maximize) grad_mult = -grad_mult;
  const double lr_value = read_lr(lr_tensor, lr);

  // The step and mu product advance once per tensor per step, whatever the opmath type.
  std::vector<double> step_values(params.size());
  std::vector<float> mu_before(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    float* step = steps[i].data_ptr<float>();
    *step += 1.0f;
    step_values[i] = *step;
    mu_before[i] = *mu_products[i].data_ptr<float>();
  }
  with_bool(rule == math::kRulePlaybook, [&](auto playbook) {
    with_bool(weight_decay != 0.0, [&](auto wd) {
      constexpr int kRule = decltype(playbook)::value ? math::kRulePlaybook : math::kRuleTorch;
      constexpr bool kWd = decltype(wd)::value;
      dispatch_dtypes(pdt, sdt, [&](auto param_tag, auto state_tag) {
        using param_t = decltype(param_tag);
        using T = typename math::OpMath<param_t>::type;
        std::vector<math::NadamScalars<T>> scalars(params.size());
        for (size_t i = 0; i < params.size(); ++i) {
          scalars[i] = math::nadam_scalars<T>(step_values[i], lr_value, beta1, beta2, eps,
                                              weight_decay, momentum_decay,
                                              decoupled_weight_decay, mu_before[i],
                                              static_cast<int>(rule));
          *mu_products[i].data_ptr<float>() = scalars[i].new_mu_product;
        }
        const T mult = grad_mult;
        multi_tensor_apply<param_t, decltype(state_tag), 2>(
            params, grads, {exp_avgs, exp_avg_sqs}, unscale,
            [&](int64_t t, T* __restrict__ p, T* __restrict__ g, T* const* s, int64_t n) {
              const math::NadamScalars<T> sc = scalars[t];
              T* __restrict__ m = s[0];
              T* __restrict__ v = s[1];
#pragma GCC ivdep
              for (int64_t i = 0; i < n; ++i) {
                math::nadam_update<kRule, false, kWd>(p[i], g[i], m[i], v[i], mult, sc);
                if (unscale) g[i] = math::unscaled_grad(g[i], scale);
              }
            });
      });
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(tunebook, CPU, m) { m.impl("nadam_step_", &nadam_step_cpu); }

}  // namespace cpu
}  // namespace tunebook
