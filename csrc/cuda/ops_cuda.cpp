// CUDA implementations of the tunebook ops (schemas and contracts: csrc/ops.cpp): argument
// checks, tensor tables and workspaces on the host, then the kernels of csrc/cuda/*.cu on
// the current stream. Compiled by the host compiler; the kernels see no torch headers
// (cuda_ops.h is the boundary).
//
// Nothing here reads device memory: the control tensor, step counters, learning-rate
// tensors and GradScaler's scale/found_inf are read by the kernels, so every op is free of
// host synchronisation and can be captured in a CUDA graph. Workspaces (norm partials,
// per-tensor scalars) come from the caching allocator on the current stream, which makes
// them stream-ordered and graph-capture safe.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <array>
#include <optional>
#include <string>
#include <vector>

#include "../optim_math.h"
#include "cuda_ops.h"

namespace tunebook {
namespace cuda {
namespace {

void* current_stream(const c10::Device& device) {
  return static_cast<void*>(c10::cuda::getCurrentCUDAStream(device.index()).stream());
}

std::optional<DType> to_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return DType::kFloat32;
    case at::kBFloat16:
      return DType::kBFloat16;
    case at::kHalf:
      return DType::kFloat16;
    case at::kDouble:
      return DType::kFloat64;
    default:
      return std::nullopt;
  }
}

void check_dense(const char* op, const at::Tensor& t, const char* what, size_t i) {
  TORCH_CHECK(t.is_non_overlapping_and_dense(), "tunebook::", op, ": ", what, "[", i,
              "] must be non-overlapping and dense (e.g. contiguous); got strides ",
              t.strides());
}

// A 1-element float32 tensor on `device` (scalar state or an optional scalar input).
void check_device_scalar(const char* op, const at::Tensor& t, const std::string& what,
                         const c10::Device& device) {
  TORCH_CHECK(t.device() == device && t.numel() == 1 && t.scalar_type() == at::kFloat,
              "tunebook::", op, ": ", what, " must be a 1-element float32 tensor on ", device,
              ", got ", t.scalar_type(), " with ", t.numel(), " elements on ", t.device());
}

void check_control(const char* op, const at::Tensor& control, const c10::Device& device) {
  TORCH_CHECK(control.device() == device && control.scalar_type() == at::kFloat &&
                  control.numel() == math::kControlSize && control.is_contiguous(),
              "tunebook::", op, ": control must be a contiguous float32 tensor of ",
              math::kControlSize, " elements on ", device,
              " (the output of tunebook::step_control_), got ", control.scalar_type(), " ",
              control.sizes(), " on ", control.device());
}

LrArg make_lr(const char* op, const std::optional<at::Tensor>& lr_tensor, double lr,
              const c10::Device& device) {
  LrArg arg;
  arg.value = lr;
  if (!lr_tensor.has_value()) return arg;
  const at::Tensor& t = *lr_tensor;
  TORCH_CHECK(t.numel() == 1 && (t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble),
              "tunebook::", op, ": lr_tensor must be a 1-element float32 or float64 tensor, got ",
              t.scalar_type(), " with ", t.numel(), " elements");
  if (t.device().is_cpu()) {
    arg.value = t.item<double>();  // host memory: no device synchronisation
    return arg;
  }
  TORCH_CHECK(t.device() == device, "tunebook::", op, ": lr_tensor is on ", t.device(),
              " but the params are on ", device, "; move it to the params' device");
  arg.tensor = t.data_ptr();
  arg.tensor_is_double = t.scalar_type() == at::kDouble;
  return arg;
}

struct ListCheck {
  DType param;
  DType state;
  c10::Device device;
};

// Checks one update call's lists (see csrc/ops.cpp) and fills slots 0 (params), 1 (grads)
// and 2.. (the state lists, nullptr where a list is empty) of `table`.
ListCheck check_update_lists(const char* op, at::TensorList params, at::TensorList grads,
                             std::initializer_list<std::pair<const char*, at::TensorList>> states,
                             TensorTable& table) {
  TORCH_CHECK(params.size() == grads.size(), "tunebook::", op, ": got ", params.size(),
              " params but ", grads.size(), " grads");
  const at::ScalarType pdt = params[0].scalar_type();
  const c10::Device device = params[0].device();
  TORCH_CHECK(device.is_cuda(), "tunebook::", op, " (CUDA): params[0] is on ", device);
  const auto param_dtype = to_dtype(pdt);
  TORCH_CHECK(param_dtype.has_value(), "tunebook::", op,
              ": params must be float32, bfloat16, float16 or float64, got ", pdt);
  at::ScalarType sdt = pdt;
  bool sdt_set = false;
  for (const auto& s : states) {
    TORCH_CHECK(s.second.empty() || s.second.size() == params.size(), "tunebook::", op, ": ",
                s.first, " has ", s.second.size(), " tensors, expected 0 or ", params.size());
  }
  for (size_t i = 0; i < params.size(); ++i) {
    const at::Tensor& p = params[i];
    const at::Tensor& g = grads[i];
    TORCH_CHECK(p.device() == device && g.device() == device, "tunebook::", op, ": params[",
                i, "] and grads[", i, "] must be on ", device, " like params[0]; got ",
                p.device(), " and ", g.device());
    TORCH_CHECK(p.scalar_type() == pdt, "tunebook::", op, ": params[", i, "] has dtype ",
                p.scalar_type(), " but params[0] has ", pdt, "; one call takes one params dtype");
    TORCH_CHECK(g.scalar_type() == pdt, "tunebook::", op, ": grads[", i, "] has dtype ",
                g.scalar_type(), ", expected the param's ", pdt);
    TORCH_CHECK(g.sizes() == p.sizes() && g.strides() == p.strides(), "tunebook::", op,
                ": grads[", i, "] must have the shape and strides of params[", i, "]");
    check_dense(op, p, "params", i);
    table.numel[i] = p.numel();
    table.set(0, static_cast<int64_t>(i), p.data_ptr());
    table.set(1, static_cast<int64_t>(i), g.data_ptr());
    int slot = 2;
    for (const auto& s : states) {
      if (!s.second.empty()) {
        const at::Tensor& t = s.second[i];
        if (!sdt_set) {
          sdt = t.scalar_type();
          sdt_set = true;
          TORCH_CHECK(sdt == pdt || (sdt == at::kFloat && pdt != at::kDouble), "tunebook::", op,
                      ": state dtype must be the params' dtype (or float32 for 16-bit "
                      "params), got ", sdt, " for ", pdt, " params");
        }
        TORCH_CHECK(t.device() == device && t.scalar_type() == sdt, "tunebook::", op, ": ",
                    s.first, "[", i, "] must be a ", sdt, " tensor on ", device, ", got ",
                    t.scalar_type(), " on ", t.device());
        TORCH_CHECK(t.sizes() == p.sizes() && t.strides() == p.strides(), "tunebook::", op,
                    ": ", s.first, "[", i, "] must have the shape and strides of params[", i,
                    "]");
        table.set(slot, static_cast<int64_t>(i), t.data_ptr());
      }
      ++slot;
    }
  }
  return ListCheck{*param_dtype, *to_dtype(sdt), device};
}

std::vector<void*> scalar_pointers(const char* op, const char* what, at::TensorList list,
                                   size_t n, const c10::Device& device) {
  TORCH_CHECK(list.size() == n, "tunebook::", op, ": ", what, " has ", list.size(),
              " tensors, expected ", n);
  std::vector<void*> out(n);
  for (size_t i = 0; i < n; ++i) {
    check_device_scalar(op, list[i], std::string(what) + "[" + std::to_string(i) + "]", device);
    out[i] = list[i].data_ptr();
  }
  return out;
}

// GradScaler's scale for the unscaled-gradient store, or nullptr.
const float* grad_scale_ptr(const char* op, const std::optional<at::Tensor>& grad_scale,
                            const c10::Device& device) {
  if (!grad_scale.has_value()) return nullptr;
  check_device_scalar(op, *grad_scale, "grad_scale", device);
  return grad_scale->data_ptr<float>();
}

void check_rule(const char* op, int64_t rule) {
  TORCH_CHECK(rule == math::kRuleTorch || rule == math::kRulePlaybook, "tunebook::", op,
              ": rule must be 0 (torch) or 1 (playbook), got ", rule);
}

at::Tensor scratch_buffer(size_t bytes, const c10::Device& device) {
  return at::empty({static_cast<int64_t>(bytes > 0 ? bytes : 1)},
                   at::TensorOptions().dtype(at::kByte).device(device));
}

// ---- ops ----------------------------------------------------------------------------------

at::Tensor grad_sq_norm_cuda(at::TensorList grads) {
  TORCH_CHECK(!grads.empty(), "tunebook::grad_sq_norm: grads must not be empty");
  const c10::Device device = grads[0].device();
  TORCH_CHECK(device.is_cuda(), "tunebook::grad_sq_norm (CUDA): grads[0] is on ", device);
  c10::cuda::CUDAGuard guard(device);
  // One table per dtype (grads of different groups may differ in dtype).
  std::array<std::vector<size_t>, 4> by_dtype;
  for (size_t i = 0; i < grads.size(); ++i) {
    const at::Tensor& g = grads[i];
    TORCH_CHECK(g.device() == device, "tunebook::grad_sq_norm: grads[", i, "] is on ",
                g.device(), " but grads[0] is on ", device, "; all grads must share a device");
    const auto dtype = to_dtype(g.scalar_type());
    TORCH_CHECK(dtype.has_value(), "tunebook::grad_sq_norm: grads[", i,
                "] must be float32, bfloat16, float16 or float64, got ", g.scalar_type());
    check_dense("grad_sq_norm", g, "grads", i);
    by_dtype[static_cast<int>(*dtype)].push_back(i);
  }
  std::vector<std::pair<DType, TensorTable>> tables;
  int64_t partial_count = 0;
  for (int d = 0; d < 4; ++d) {
    if (by_dtype[d].empty()) continue;
    TensorTable table(1, static_cast<int64_t>(by_dtype[d].size()));
    for (size_t k = 0; k < by_dtype[d].size(); ++k) {
      const at::Tensor& g = grads[by_dtype[d][k]];
      table.numel[k] = g.numel();
      table.set(0, static_cast<int64_t>(k), g.data_ptr());
    }
    partial_count += grad_sq_norm_partial_count(table);
    tables.emplace_back(static_cast<DType>(d), std::move(table));
  }
  at::Tensor partials = at::empty({partial_count > 0 ? partial_count : 1},
                                  at::TensorOptions().dtype(at::kDouble).device(device));
  at::Tensor out = at::empty({}, at::TensorOptions().dtype(at::kFloat).device(device));
  void* stream = current_stream(device);
  int64_t written = 0;
  for (const auto& [dtype, table] : tables) {
    written += launch_grad_sq_norm_partials(table, dtype, partials.data_ptr<double>(), written,
                                            stream);
  }
  TORCH_INTERNAL_ASSERT(written == partial_count, "tunebook::grad_sq_norm: wrote ", written,
                        " partials, expected ", partial_count);
  launch_sum_partials(partials.data_ptr<double>(), written, out.data_ptr<float>(), stream);
  return out;
}

const float* optional_scalar_ptr(const std::optional<at::Tensor>& t, const char* what,
                                 const c10::Device& device) {
  if (!t.has_value()) return nullptr;
  check_device_scalar("step_control_", *t, what, device);
  return t->data_ptr<float>();
}

void step_control_cuda(const std::optional<at::Tensor>& sq_norm,
                       const std::optional<at::Tensor>& grad_scale,
                       const std::optional<at::Tensor>& found_inf, const at::Tensor& control,
                       const at::Tensor& counters, const at::Tensor& norm_log,
                       std::optional<double> max_grad_norm, bool skip_nonfinite) {
  const c10::Device device = control.device();
  TORCH_CHECK(device.is_cuda(), "tunebook::step_control_ (CUDA): control is on ", device);
  check_control("step_control_", control, device);
  TORCH_CHECK(counters.device() == device && counters.scalar_type() == at::kLong &&
                  counters.numel() == math::kCounterSize && counters.is_contiguous(),
              "tunebook::step_control_: counters must be a contiguous int64 tensor of ",
              math::kCounterSize, " elements on ", device);
  TORCH_CHECK(norm_log.device() == device && norm_log.scalar_type() == at::kFloat &&
                  norm_log.dim() == 1 && norm_log.is_contiguous(),
              "tunebook::step_control_: norm_log must be a contiguous 1-D float32 tensor on ",
              device);
  if (max_grad_norm.has_value()) {
    TORCH_CHECK(*max_grad_norm > 0, "tunebook::step_control_: max_grad_norm=", *max_grad_norm,
                " must be > 0");
  }
  c10::cuda::CUDAGuard guard(device);
  launch_step_control(optional_scalar_ptr(sq_norm, "sq_norm", device),
                      optional_scalar_ptr(grad_scale, "grad_scale", device),
                      optional_scalar_ptr(found_inf, "found_inf", device),
                      control.data_ptr<float>(), counters.data_ptr<int64_t>(),
                      norm_log.numel() > 0 ? norm_log.data_ptr<float>() : nullptr,
                      norm_log.numel(), max_grad_norm.has_value(),
                      static_cast<float>(max_grad_norm.value_or(1.0)), skip_nonfinite,
                      current_stream(device));
}

void sgd_step_cuda(at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers,
                   const at::Tensor& control, const std::optional<at::Tensor>& lr_tensor,
                   double lr, double momentum, double dampening, double weight_decay,
                   bool nesterov, bool maximize, bool is_first_step,
                   const std::optional<at::Tensor>& grad_scale) {
  if (params.empty()) return;
  TensorTable table(3, static_cast<int64_t>(params.size()));
  const ListCheck lists = check_update_lists("sgd_step_", params, grads,
                                             {{"momentum_buffers", momentum_buffers}}, table);
  const bool has_momentum = momentum != 0.0;
  TORCH_CHECK(momentum_buffers.size() == (has_momentum ? params.size() : 0),
              "tunebook::sgd_step_: momentum_buffers must hold one tensor per param iff "
              "momentum != 0");
  check_control("sgd_step_", control, lists.device);
  c10::cuda::CUDAGuard guard(lists.device);
  SgdArgs args;
  args.lr = make_lr("sgd_step_", lr_tensor, lr, lists.device);
  args.momentum = momentum;
  args.dampening = dampening;
  args.weight_decay = weight_decay;
  args.nesterov = nesterov;
  args.maximize = maximize;
  args.is_first_step = is_first_step;
  args.control = control.data_ptr<float>();
  args.grad_scale = grad_scale_ptr("sgd_step_", grad_scale, lists.device);
  launch_sgd_step(table, lists.param, lists.state, args, current_stream(lists.device));
}

void adam_step_cuda(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                    at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs,
                    at::TensorList steps, const at::Tensor& control,
                    const std::optional<at::Tensor>& lr_tensor, double lr, double beta1,
                    double beta2, double eps, double weight_decay, bool amsgrad, bool maximize,
                    bool decoupled_weight_decay, int64_t rule,
                    const std::optional<at::Tensor>& grad_scale) {
  if (params.empty()) return;
  TensorTable table(kAdamDepth, static_cast<int64_t>(params.size()));
  const ListCheck lists = check_update_lists(
      "adam_step_", params, grads,
      {{"exp_avgs", exp_avgs}, {"exp_avg_sqs", exp_avg_sqs},
       {"max_exp_avg_sqs", max_exp_avg_sqs}},
      table);
  TORCH_CHECK(exp_avgs.size() == params.size() && exp_avg_sqs.size() == params.size(),
              "tunebook::adam_step_: exp_avgs and exp_avg_sqs need one tensor per param");
  TORCH_CHECK(max_exp_avg_sqs.size() == (amsgrad ? params.size() : 0),
              "tunebook::adam_step_: max_exp_avg_sqs must hold one tensor per param iff "
              "amsgrad");
  const auto step_ptrs = scalar_pointers("adam_step_", "steps", steps, params.size(),
                                         lists.device);
  check_rule("adam_step_", rule);
  check_control("adam_step_", control, lists.device);
  c10::cuda::CUDAGuard guard(lists.device);
  AdamArgs args;
  args.lr = make_lr("adam_step_", lr_tensor, lr, lists.device);
  args.beta1 = beta1;
  args.beta2 = beta2;
  args.eps = eps;
  args.weight_decay = weight_decay;
  args.amsgrad = amsgrad;
  args.maximize = maximize;
  args.decoupled_weight_decay = decoupled_weight_decay;
  args.rule = static_cast<int>(rule);
  args.control = control.data_ptr<float>();
  args.grad_scale = grad_scale_ptr("adam_step_", grad_scale, lists.device);
  at::Tensor scratch = scratch_buffer(adam_scratch_bytes(table.count), lists.device);
  launch_adam_step(table, step_ptrs, scratch.data_ptr(), lists.param, lists.state, args,
                   current_stream(lists.device));
}

void rmsprop_step_cuda(at::TensorList params, at::TensorList grads, at::TensorList square_avgs,
                       at::TensorList grad_avgs, at::TensorList momentum_buffers,
                       at::TensorList steps, const at::Tensor& control,
                       const std::optional<at::Tensor>& lr_tensor, double lr, double alpha,
                       double eps, double weight_decay, double momentum, bool centered,
                       bool maximize, int64_t rule,
                       const std::optional<at::Tensor>& grad_scale) {
  if (params.empty()) return;
  TensorTable table(kRmspropDepth, static_cast<int64_t>(params.size()));
  const ListCheck lists = check_update_lists(
      "rmsprop_step_", params, grads,
      {{"square_avgs", square_avgs}, {"grad_avgs", grad_avgs},
       {"momentum_buffers", momentum_buffers}},
      table);
  TORCH_CHECK(square_avgs.size() == params.size(),
              "tunebook::rmsprop_step_: square_avgs needs one tensor per param");
  TORCH_CHECK(grad_avgs.size() == (centered ? params.size() : 0),
              "tunebook::rmsprop_step_: grad_avgs must hold one tensor per param iff centered");
  TORCH_CHECK(momentum_buffers.size() == (momentum > 0 ? params.size() : 0),
              "tunebook::rmsprop_step_: momentum_buffers must hold one tensor per param iff "
              "momentum > 0");
  const auto step_ptrs = scalar_pointers("rmsprop_step_", "steps", steps, params.size(),
                                         lists.device);
  check_rule("rmsprop_step_", rule);
  check_control("rmsprop_step_", control, lists.device);
  c10::cuda::CUDAGuard guard(lists.device);
  RmspropArgs args;
  args.lr = make_lr("rmsprop_step_", lr_tensor, lr, lists.device);
  args.alpha = alpha;
  args.eps = eps;
  args.weight_decay = weight_decay;
  args.momentum = momentum;
  args.centered = centered;
  args.maximize = maximize;
  args.rule = static_cast<int>(rule);
  args.control = control.data_ptr<float>();
  args.grad_scale = grad_scale_ptr("rmsprop_step_", grad_scale, lists.device);
  launch_rmsprop_step(table, step_ptrs, lists.param, lists.state, args,
                      current_stream(lists.device));
}

void nadam_step_cuda(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                     at::TensorList exp_avg_sqs, at::TensorList mu_products,
                     at::TensorList steps, const at::Tensor& control,
                     const std::optional<at::Tensor>& lr_tensor, double lr, double beta1,
                     double beta2, double eps, double weight_decay, double momentum_decay,
                     bool decoupled_weight_decay, bool maximize, int64_t rule,
                     const std::optional<at::Tensor>& grad_scale) {
  if (params.empty()) return;
  TensorTable table(kNadamDepth, static_cast<int64_t>(params.size()));
  const ListCheck lists = check_update_lists(
      "nadam_step_", params, grads, {{"exp_avgs", exp_avgs}, {"exp_avg_sqs", exp_avg_sqs}},
      table);
  TORCH_CHECK(exp_avgs.size() == params.size() && exp_avg_sqs.size() == params.size(),
              "tunebook::nadam_step_: exp_avgs and exp_avg_sqs need one tensor per param");
  const auto step_ptrs = scalar_pointers("nadam_step_", "steps", steps, params.size(),
                                         lists.device);
  const auto mu_ptrs = scalar_pointers("nadam_step_", "mu_products", mu_products,
                                       params.size(), lists.device);
  check_rule("nadam_step_", rule);
  check_control("nadam_step_", control, lists.device);
  c10::cuda::CUDAGuard guard(lists.device);
  NadamArgs args;
  args.lr = make_lr("nadam_step_", lr_tensor, lr, lists.device);
  args.beta1 = beta1;
  args.beta2 = beta2;
  args.eps = eps;
  args.weight_decay = weight_decay;
  args.momentum_decay = momentum_decay;
  args.decoupled_weight_decay = decoupled_weight_decay;
  args.maximize = maximize;
  args.rule = static_cast<int>(rule);
  args.control = control.data_ptr<float>();
  args.grad_scale = grad_scale_ptr("nadam_step_", grad_scale, lists.device);
  at::Tensor scratch = scratch_buffer(nadam_scratch_bytes(table.count), lists.device);
  launch_nadam_step(table, step_ptrs, mu_ptrs, scratch.data_ptr(), lists.param, lists.state,
                    args, current_stream(lists.device));
}

}  // namespace

TORCH_LIBRARY_IMPL(tunebook, CUDA, m) {
  m.impl("grad_sq_norm", &grad_sq_norm_cuda);
  m.impl("step_control_", &step_control_cuda);
  m.impl("sgd_step_", &sgd_step_cuda);
  m.impl("adam_step_", &adam_step_cuda);
  m.impl("rmsprop_step_", &rmsprop_step_cuda);
  m.impl("nadam_step_", &nadam_step_cuda);
}

}  // namespace cuda
}  // namespace tunebook
