// CPU: tunebook::rmsprop_step_ (centered, momentum; torch or playbook rule). Contract:
// csrc/ops.cpp; per-element math: csrc/optim_math.h (math::rmsprop_update).
#include <torch/library.h>

#include "multi_tensor_cpu.h"

namespace tunebook {
namespace cpu {
namespace {

void rmsprop_step_cpu(at::TensorList params, at::TensorList grads, at::TensorList square_avgs,
                      at::TensorList grad_avgs, at::TensorList momentum_buffers,
                      at::TensorList steps, const at::Tensor& control,
                      const std::optional<at::Tensor>& lr_tensor, double lr, double alpha,
                      double eps, double weight_decay, double momentum, bool centered,
                      bool maximize, int64_t rule, const std::optional<at::Tensor>& grad_scale) {
  const auto [pdt, sdt] = check_update_lists(
      "rmsprop_step_", params, grads,
      {{"square_avgs", square_avgs}, {"grad_avgs", grad_avgs},
       {"momentum_buffers", momentum_buffers}});
  const bool has_momentum = momentum > 0.0;
  TORCH_CHECK(square_avgs.size() == params.size(),
              "tunebook::rmsprop_step_: square_avgs needs one tensor per param");
  TORCH_CHECK(grad_avgs.size() == (centered ? params.size() : 0),
              "tunebook::rmsprop_step_: grad_avgs must hold one tensor per param iff centered");
  TORCH_CHECK(momentum_buffers.size() == (has_momentum ? params.size() : 0),
              "tunebook::rmsprop_step_: momentum_buffers must hold one tensor per param iff "
              "momentum > 0");
  check_scalar_list("rmsprop_step_", "steps", steps, params.size());
  TORCH_CHECK(rule == math::kRuleTorch || rule == math::kRulePlaybook,
              "tunebook::rmsprop_step_: rule must be 0 (torch) or 1 (playbook), got ", rule);
  const auto [unscale, scale] = read_grad_scale(grad_scale);
  auto [grad_mult, skip] = read_control(control);
  if (skip || params.empty()) return;
  if (maximize) grad_mult = -grad_mult;
  for (size_t i = 0; i < params.size(); ++i) *steps[i].data_ptr<float>() += 1.0f;
  const double lr_value = read_lr(lr_tensor, lr);

  with_bool(rule == math::kRulePlaybook, [&](auto playbook) {
    with_bool(centered, [&](auto cen) {
      with_bool(has_momentum, [&](auto mom) {
        with_bool(weight_decay != 0.0, [&](auto wd) {
          constexpr int kRule = decltype(playbook)::value ? math::kRulePlaybook : math::kRuleTorch;
          constexpr bool kCen = decltype(cen)::value;
          constexpr bool kMom = decltype(mom)::value;
          constexpr bool kWd = decltype(wd)::value;
          dispatch_dtypes(pdt, sdt, [&](auto param_tag, auto state_tag) {
            using param_t = decltype(param_tag);
            using T = typename math::OpMath<param_t>::type;
            const math::RmspropScalars<T> sc =
                math::rmsprop_scalars<T>(lr_value, alpha, eps, weight_decay, momentum);
            const T mult = grad_mult;
            multi_tensor_apply<param_t, decltype(state_tag), 3>(
                params, grads, {square_avgs, grad_avgs, momentum_buffers}, unscale,
                [&](int64_t, T* __restrict__ p, T* __restrict__ g, T* const* s, int64_t n) {
                  T* __restrict__ sq = s[0];
                  T* __restrict__ ga = kCen ? s[1] : s[0];
                  T* __restrict__ buf = kMom ? s[2] : s[0];
#pragma GCC ivdep
                  for (int64_t i = 0; i < n; ++i) {
                    T gav = kCen ? ga[i] : T(0);
                    T b = kMom ? buf[i] : T(0);
                    math::rmsprop_update<kRule, kCen, kMom, false, kWd>(p[i], g[i], sq[i], gav,
                                                                       b, mult, sc);
                    if (kCen) ga[i] = gav;
                    if (kMom) buf[i] = b;
                    if (unscale) g[i] = math::unscaled_grad(g[i], scale);
                  }
                });
          });
        });
      });
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(tunebook, CPU, m) { m.impl("rmsprop_step_", &rmsprop_step_cpu); }

}  // namespace cpu
}  // namespace tunebook
