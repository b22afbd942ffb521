// Schemas of every tunebook optimizer op. Implementations: csrc/cpu/ (CPU), csrc/cuda/
// (CUDA); fake (meta) kernels for torch.compile are registered in Python
// (python/tunebook/optim/_fake.py). The per-element math is csrc/optim_math.h.
//
// One optimizer step is, with no host synchronisation anywhere:
//
//   sq = tunebook::grad_sq_norm(all_grads_of_all_groups)          # skipped if nothing needs it
//   tunebook::step_control_(sq, grad_scale, found_inf, control, counters, norm_log, ...)
//   tunebook::<family>_step_(params, grads, states..., control, lr_tensor, lr, ...)  # per group
//
// CONTRACTS (shared by every backend):
//
// grad_sq_norm(Tensor[] grads) -> Tensor
//   Sum over all elements of all `grads` of float(g)^2 (double(g)^2 for float64 grads),
//   accumulated in (at least) float32, returned as a new 0-dim float32 tensor on the grads'
//   device: a sum above the float32 maximum is inf, on every backend. `grads` is non-empty,
//   all on one device, each non-overlapping and dense (any strides, e.g. contiguous or
//   channels_last), any mix of float32/bfloat16/float16/float64, any sizes (empty allowed).
//   NaN/inf propagate.
//   The CPU result is deterministic (fixed-size blocks, independent of the thread count).
//
// step_control_(Tensor? sq_norm, Tensor? grad_scale, Tensor? found_inf, Tensor(a!) control,
//               Tensor(b!) counters, Tensor(c!) norm_log, float? max_grad_norm,
//               bool skip_nonfinite) -> ()
//   One tiny device-side step (a single thread on CUDA) = math::finalize_step_control:
//     norm   = sqrt(sq_norm) / grad_scale            (grad_scale: 0-dim/1-elem float32, or 1)
//     skip   = found_inf != 0  or  (skip_nonfinite and norm is inf/NaN)
//     coef   = min(1, max_grad_norm / (norm + 1e-6))  if max_grad_norm given and sq_norm given
//              (NaN stays NaN, as clip_grad_norm_), else 1
//     control[0] = coef / grad_scale;  control[1] = skip ? 1 : 0
//     if sq_norm given and norm_log.numel() > 0: norm_log[counters[0] % numel] = norm
//     counters[0] += 1;  counters[1] += (!skip && coef < 1);  counters[2] += skip
//   control: float32 [2]; counters: int64 [3]; norm_log: float32 [capacity] (capacity may be
//   0); all on the params' device (sq_norm, grad_scale, found_inf too).
//
// Update ops, one per family, in place over lists (all lists of a call have equal length, or
// length 0 where an option is off as noted). Within one call: params all on one device with
// one dtype (float32/bfloat16/float16/float64; complex params are passed as their real
// view), grads with the params' dtype and shape, state tensors with the params' shape and
// one dtype (the params' dtype, or float32 for 16-bit params). The math runs in float32, or
// in float64 for float64 params. `steps`, `mu_products`: 0-dim float32 tensors on the
// params' device (torch's fused layout).
// The tensors at one index share their strides and are non-overlapping and dense, so each is
// processed as its flat storage (the Python layer hands over working copies of anything
// else and writes them back).
// `control` is the step_control_ output:
//   if control[1] != 0 the op changes nothing at all (params, states, steps, grads stay
//   bit-identical); otherwise every raw grad element is multiplied by control[0] on load,
//   each `steps[i]` is incremented by 1 first and the update uses the incremented value.
// `lr_tensor`, when given (0-dim float32/float64 on the params' device, or on the CPU, where
// it is read on the host), is read inside the op every call and overrides `lr` (a schedule
// may rewrite it in place on the device).
// `rule`: 0 = torch.optim's formulas, 1 = the Tuning Playbook's (see optim_math.h).
// `grad_scale` (GradScaler's scale, 1-element float32 on the params' device), when given:
//   each applied step writes every grad back as raw grad / grad_scale (torch's fused
//   optimizers' conditional gradient store, math::unscaled_grad), so `grads` are mutable.
//
// sgd_step_(params, grads, momentum_buffers, control, lr_tensor, lr, momentum, dampening,
//           weight_decay, nesterov, maximize, is_first_step, grad_scale)
//   momentum_buffers: empty iff momentum == 0. is_first_step: buffers are written as
//   buf = g (torch's clone on the first step); all tensors of a call share it.
// adam_step_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, control,
//            lr_tensor, lr, beta1, beta2, eps, weight_decay, amsgrad, maximize,
//            decoupled_weight_decay, rule, grad_scale)
//   max_exp_avg_sqs: empty iff not amsgrad. AdamW = decoupled_weight_decay=True.
// rmsprop_step_(params, grads, square_avgs, grad_avgs, momentum_buffers, steps, control,
//               lr_tensor, lr, alpha, eps, weight_decay, momentum, centered, maximize, rule,
//               grad_scale)
//   grad_avgs: empty iff not centered; momentum_buffers: empty iff momentum == 0.
// nadam_step_(params, grads, exp_avgs, exp_avg_sqs, mu_products, steps, control, lr_tensor,
//             lr, beta1, beta2, eps, weight_decay, momentum_decay, decoupled_weight_decay,
//             maximize, rule, grad_scale)
//   mu_products[i] *= mu_t each applied step (also under the playbook rule, for the state).
//
// ParamLayouts(Tensor[] params), a class (torch.classes.tunebook), not an op: the eager
//   step's per-step layout check, host metadata only, any device (csrc/param_layouts.h).
//   unchanged() -> bool: every param is still the tensor wrapped by the same Python object,
//   with the recorded dtype, device, sizes and strides, and has a grad exactly where one
//   was recorded, with the recorded layout, dtype, device, sizes and strides.
//
// Version counters: every tensor an op may write (the `!` arguments) has its `_version`
// bumped by each call, as torch's default (foreach) optimizers do, so autograd still catches
// a parameter that was saved for backward and then updated (ADInplaceOrView kernels below).
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/library.h>

#include "param_layouts.h"

TORCH_LIBRARY(tunebook, m) {
  m.def("grad_sq_norm(Tensor[] grads) -> Tensor");
  m.def(
      "step_control_(Tensor? sq_norm, Tensor? grad_scale, Tensor? found_inf, "
      "Tensor(a!) control, Tensor(b!) counters, Tensor(c!) norm_log, float? max_grad_norm, "
      "bool skip_nonfinite) -> ()");
  m.def(
      "sgd_step_(Tensor(a!)[] params, Tensor(f!)[] grads, Tensor(b!)[] momentum_buffers, "
      "Tensor control, Tensor? lr_tensor, float lr, float momentum, float dampening, "
      "float weight_decay, bool nesterov, bool maximize, bool is_first_step, "
      "Tensor? grad_scale=None) -> ()");
  m.def(
      "adam_step_(Tensor(a!)[] params, Tensor(f!)[] grads, Tensor(b!)[] exp_avgs, "
      "Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] max_exp_avg_sqs, Tensor(e!)[] steps, "
      "Tensor control, Tensor? lr_tensor, float lr, float beta1, float beta2, float eps, "
      "float weight_decay, bool amsgrad, bool maximize, bool decoupled_weight_decay, "
      "int rule, Tensor? grad_scale=None) -> ()");
  m.def(
      "rmsprop_step_(Tensor(a!)[] params, Tensor(f!)[] grads, Tensor(b!)[] square_avgs, "
      "Tensor(c!)[] grad_avgs, Tensor(d!)[] momentum_buffers, Tensor(e!)[] steps, "
      "Tensor control, Tensor? lr_tensor, float lr, float alpha, float eps, "
      "float weight_decay, float momentum, bool centered, bool maximize, int rule, "
      "Tensor? grad_scale=None) -> ()");
  m.def(
      "nadam_step_(Tensor(a!)[] params, Tensor(f!)[] grads, Tensor(b!)[] exp_avgs, "
      "Tensor(c!)[] exp_avg_sqs, Tensor(d!)[] mu_products, Tensor(e!)[] steps, "
      "Tensor control, Tensor? lr_tensor, float lr, float beta1, float beta2, float eps, "
      "float weight_decay, float momentum_decay, bool decoupled_weight_decay, "
      "bool maximize, int rule, Tensor? grad_scale=None) -> ()");
  m.class_<tunebook::ParamLayouts>("ParamLayouts")
      .def(torch::init<std::vector<at::Tensor>>())
      .def("unchanged", &tunebook::ParamLayouts::unchanged)
      .def("__len__", &tunebook::ParamLayouts::size);
}

namespace {

constexpr const char* kMutatingOps[] = {"step_control_", "sgd_step_", "adam_step_",
                                        "rmsprop_step_", "nadam_step_"};

// The optimizer ops have no derivative: autograd passes them straight to ADInplaceOrView
// below. (torch's default autograd fallback for ops without an autograd kernel skips the
// ADInplaceOrView key, so without this no version counter would move.)
void to_inplace_or_view(const c10::OperatorHandle& op, c10::DispatchKeySet keys,
                        torch::jit::Stack* stack) {
  op.redispatchBoxed(keys & c10::after_autograd_keyset, stack);
}

// Bumps the version counter of every tensor the op may write (the schema's `!` arguments),
// then runs the device kernel. torch's generic ADInplaceOrView fallback bumps only mutable
// *returns*, and these ops return nothing. Cost: one atomic increment per tensor per call.
void bump_versions_then_run(const c10::OperatorHandle& op, c10::DispatchKeySet keys,
                            torch::jit::Stack* stack) {
  const auto& arguments = op.schema().arguments();
  const size_t start = stack->size() - arguments.size();
  for (size_t i = 0; i < arguments.size(); ++i) {
    const auto* alias = arguments[i].alias_info();
    if (alias == nullptr || !alias->isWrite()) continue;
    const c10::IValue& value = (*stack)[start + i];
    if (value.isTensor()) {
      torch::autograd::impl::bump_version(value.toTensor());
    } else if (value.isTensorList()) {
      for (const at::Tensor& t : value.toTensorList()) torch::autograd::impl::bump_version(t);
    }
  }
  at::AutoDispatchBelowADInplaceOrView guard;
  op.redispatchBoxed(keys & c10::after_ADInplaceOrView_keyset, stack);
}

}  // namespace

TORCH_LIBRARY_IMPL(tunebook, Autograd, m) {
  for (const char* name : kMutatingOps) {
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&to_inplace_or_view>());
  }
}

TORCH_LIBRARY_IMPL(tunebook, ADInplaceOrView, m) {
  for (const char* name : kMutatingOps) {
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&bump_versions_then_run>());
  }
}
