// CPU: tunebook::sgd_step_ (SGD with momentum, dampening, Nesterov). Contract:
// csrc/ops.cpp; per-element math: csrc/optim_math.h (math::sgd_update).
#include <torch/library.h>

#include "multi_tensor_cpu.h"

namespace tunebook {
namespace cpu {
namespace {

void sgd_step_cpu(at::TensorList params, at::TensorList grads,
                  at::TensorList momentum_buffers, const at::Tensor& control,
                  const std::optional<at::Tensor>& lr_tensor, double lr, double momentum,
                  double dampening, double weight_decay, bool nesterov, bool maximize,
                  bool is_first_step, const std::optional<at::Tensor>& grad_scale) {
  const auto [pdt, sdt] = check_update_lists("sgd_step_", params, grads,
                                             {{"momentum_buffers", momentum_buffers}});
  const bool has_momentum = momentum != 0.0;
  TORCH_CHECK(momentum_buffers.size() == (has_momentum ? params.size() : 0),
              "tunebook::sgd_step_: momentum_buffers must hold one tensor per param iff "
              "momentum != 0");
  const auto [unscale, scale] = read_grad_scale(grad_scale);
  auto [grad_mult, skip] = read_control(control);
  if (skip || params.empty()) return;
  if (maximize) grad_mult = -grad_mult;
  const double lr_value = read_lr(lr_tensor, lr);

  auto run = [&](auto mom, auto nest, auto first, auto wd) {
    constexpr bool kMom = decltype(mom)::value;
    constexpr bool kNest = decltype(nest)::value;
    constexpr bool kFirst = decltype(first)::value;
    constexpr bool kWd = decltype(wd)::value;
    dispatch_dtypes(pdt, sdt, [&](auto param_tag, auto state_tag) {
      using param_t = decltype(param_tag);
      using T = typename math::OpMath<param_t>::type;
      const math::SgdScalars<T> sc =
          math::sgd_scalars<T>(lr_value, momentum, dampening, weight_decay);
      const T mult = grad_mult;
      multi_tensor_apply<param_t, decltype(state_tag), 1>(
          params, grads, {momentum_buffers}, unscale,
          [&](int64_t, T* __restrict__ p, T* __restrict__ g, T* const* s, int64_t n) {
            T* __restrict__ buf = kMom ? s[0] : p;  // unused without momentum
#pragma GCC ivdep
            for (int64_t i = 0; i < n; ++i) {
              T b = kMom ? buf[i] : T(0);
              math::sgd_update<kMom, kNest, kFirst, false, kWd>(p[i], g[i], b, mult, sc);
              if (kMom) buf[i] = b;
              if (unscale) g[i] = math::unscaled_grad(g[i], scale);
            }
          });
    });
  };
  with_bool(weight_decay != 0.0, [&](auto wd) {
    if (!has_momentum) {
      run(std::false_type{}, std::false_type{}, std::false_type{}, wd);
    } else {
      with_bool(nesterov, [&](auto nest) {
        with_bool(is_first_step, [&](auto first) { run(std::true_type{}, nest, first, wd); });
      });
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(tunebook, CPU, m) { m.impl("sgd_step_", &sgd_step_cpu); }

}  // namespace cpu
}  // namespace tunebook
