// CPU: the global sum of squares of all grads, and the per-step control (clip coefficient,
// skip flag, counters, norm log). Contracts: csrc/ops.cpp.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <vector>

#include "multi_tensor_cpu.h"

namespace tunebook {
namespace cpu {
namespace {

// Fixed reduction blocks over the flat index space of all grads: each block's partial sum
// depends only on the data, and the partials are added in block order, so the norm is the
// same for any thread count.
constexpr int64_t kNormBlock = 1 << 16;

// Sum of squares of n floats, in double: 4 independent lanes of 4 doubles each give the
// compiler a vectorisable reduction without -ffast-math (the order is fixed by the code,
// not by the optimiser, so results are reproducible).
inline double sum_squares(const float* x, int64_t n) {
  constexpr int kLanes = 16;
  double acc[kLanes] = {0};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const double v = x[i + l];
      acc[l] += v * v;
    }
  }
  double total = 0;
  for (; i < n; ++i) total += (double)x[i] * (double)x[i];
  for (int l = 0; l < kLanes; ++l) total += acc[l];
  return total;
}

// float64 grads: the same fixed lane order, in double (their squares may overflow to inf).
inline double sum_squares(const double* x, int64_t n) {
  constexpr int kLanes = 16;
  double acc[kLanes] = {0};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) acc[l] += x[i + l] * x[i + l];
  }
  double total = 0;
  for (; i < n; ++i) total += x[i] * x[i];
  for (int l = 0; l < kLanes; ++l) total += acc[l];
  return total;
}

template <typename T>
double sum_squares_typed(const T* x, int64_t n) {
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    return sum_squares(x, n);
  } else {
    float buf[kBlock];
    double total = 0;
    for (int64_t b = 0; b < n; b += kBlock) {
      const int64_t m = std::min(kBlock, n - b);
      for (int64_t i = 0; i < m; ++i) buf[i] = static_cast<float>(x[b + i]);
      total += sum_squares(buf, m);
    }
    return total;
  }
}

at::Tensor grad_sq_norm_cpu(at::TensorList grads) {
  TORCH_CHECK(!grads.empty(), "tunebook::grad_sq_norm: grads must not be empty");
  const int64_t n_tensors = static_cast<int64_t>(grads.size());
  std::vector<int64_t> prefix(n_tensors + 1, 0);
  for (int64_t t = 0; t < n_tensors; ++t) {
    const auto& g = grads[t];
    TORCH_CHECK(g.device().is_cpu(), "tunebook::grad_sq_norm (CPU): grads[", t,
                "] is on ", g.device(), "; all grads must be on the CPU");
    const auto dt = g.scalar_type();
    TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf || dt == at::kDouble,
                "tunebook::grad_sq_norm: grads[", t,
                "] must be float32, bfloat16, float16 or float64, got ", dt);
    check_dense(g, "grads", t);
    prefix[t + 1] = prefix[t] + g.numel();
  }
  const int64_t total = prefix[n_tensors];
  const int64_t n_blocks = (total + kNormBlock - 1) / kNormBlock;
  std::vector<double> partial(n_blocks, 0.0);

  at::parallel_for(0, n_blocks, 1, [&](int64_t block_begin, int64_t block_end) {
    for (int64_t blk = block_begin; blk < block_end; ++blk) {
      int64_t begin = blk * kNormBlock;
      const int64_t end = std::min(total, begin + kNormBlock);
      int64_t t = std::upper_bound(prefix.begin(), prefix.end(), begin) - prefix.begin() - 1;
      double acc = 0;
      while (begin < end) {
        const int64_t stop = std::min(end, prefix[t + 1]);
        const int64_t offset = begin - prefix[t];
        const auto& g = grads[t];
        const int64_t n = stop - begin;
        switch (g.scalar_type()) {
          case at::kFloat:
            acc += sum_squares_typed(g.const_data_ptr<float>() + offset, n);
            break;
          case at::kDouble:
            acc += sum_squares_typed(g.const_data_ptr<double>() + offset, n);
            break;
          case at::kBFloat16:
            acc += sum_squares_typed(g.const_data_ptr<c10::BFloat16>() + offset, n);
            break;
          default:
            acc += sum_squares_typed(g.const_data_ptr<c10::Half>() + offset, n);
        }
        begin = stop;
        ++t;
      }
      partial[blk] = acc;
    }
  });
  double sum = 0;
  for (double p : partial) sum += p;
  // Rounded to float32 as on CUDA: a sum above the float32 maximum becomes inf (a non-finite,
  // skipped step). at::scalar_tensor would refuse that conversion with an exception.
  at::Tensor out = at::empty({}, at::TensorOptions().dtype(at::kFloat));
  *out.data_ptr<float>() = static_cast<float>(sum);
  return out;
}

float optional_scalar(const std::optional<at::Tensor>& t, const char* what, float fallback) {
  if (!t.has_value()) return fallback;
  TORCH_CHECK(t->device().is_cpu() && t->numel() == 1, "tunebook::step_control_: ", what,
              " must be a 1-element CPU tensor");
  return t->item<float>();
}

void step_control_cpu(const std::optional<at::Tensor>& sq_norm,
                      const std::optional<at::Tensor>& grad_scale,
                      const std::optional<at::Tensor>& found_inf, const at::Tensor& control,
                      const at::Tensor& counters, const at::Tensor& norm_log,
                      std::optional<double> max_grad_norm, bool skip_nonfinite) {
  TORCH_CHECK(control.device().is_cpu() && control.scalar_type() == at::kFloat &&
                  control.numel() == math::kControlSize && control.is_contiguous(),
              "tunebook::step_control_: control must be a contiguous float32 CPU tensor of ",
              math::kControlSize, " elements");
  TORCH_CHECK(counters.device().is_cpu() && counters.scalar_type() == at::kLong &&
                  counters.numel() == math::kCounterSize && counters.is_contiguous(),
              "tunebook::step_control_: counters must be a contiguous int64 CPU tensor of ",
              math::kCounterSize, " elements");
  TORCH_CHECK(norm_log.device().is_cpu() && norm_log.scalar_type() == at::kFloat &&
                  norm_log.dim() == 1 && norm_log.is_contiguous(),
              "tunebook::step_control_: norm_log must be a contiguous 1-D float32 CPU tensor");
  if (max_grad_norm.has_value()) {
    TORCH_CHECK(*max_grad_norm > 0, "tunebook::step_control_: max_grad_norm=",
                *max_grad_norm, " must be > 0");
  }
  const float sq = optional_scalar(sq_norm, "sq_norm", 0.0f);
  math::finalize_step_control(
      sq, sq_norm.has_value(), optional_scalar(grad_scale, "grad_scale", 1.0f),
      optional_scalar(found_inf, "found_inf", 0.0f), max_grad_norm.has_value(),
      static_cast<float>(max_grad_norm.value_or(1.0)), skip_nonfinite,
      control.data_ptr<float>(), counters.data_ptr<int64_t>(), norm_log.data_ptr<float>(),
      norm_log.numel());
}

}  // namespace

TORCH_LIBRARY_IMPL(tunebook, CPU, m) {
  m.impl("grad_sq_norm", &grad_sq_norm_cpu);
  m.impl("step_control_", &step_control_cpu);
}

}  // namespace cpu
}  // namespace tunebook
