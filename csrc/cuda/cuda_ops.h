// The boundary between the torch-facing CUDA op wrappers (ops_cuda.cpp, host compiler,
// torch headers) and the kernels (*.cu, nvcc, no torch headers). Plain C++ only: device
// pointers as void*, the CUDA stream as void* (a cudaStream_t).
//
// Every launch_* function enqueues work on `stream` and returns without synchronising;
// it throws std::runtime_error if a launch fails and std::invalid_argument on a malformed
// table. Contracts of the ops themselves: csrc/ops.cpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace tunebook {
namespace cuda {

enum class DType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2, kFloat64 = 3 };

// `depth` parallel lists of `count` tensors: slot d of tensor i is ptrs[d * count + i]
// (nullptr where a list is absent, e.g. max_exp_avg_sqs without amsgrad). All tensors of
// one index have numel[i] elements, stored densely (any order: the kernels treat each as
// its flat storage).
struct TensorTable {
  int depth = 0;
  int64_t count = 0;
  std::vector<void*> ptrs;
  std::vector<int64_t> numel;

  TensorTable(int depth_, int64_t count_)
      : depth(depth_), count(count_), ptrs(static_cast<size_t>(depth_ * count_), nullptr),
        numel(static_cast<size_t>(count_), 0) {}
  void* ptr(int slot, int64_t i) const { return ptrs[static_cast<size_t>(slot * count + i)]; }
  void set(int slot, int64_t i, void* p) { ptrs[static_cast<size_t>(slot * count + i)] = p; }
};

// The learning rate: `value`, unless `tensor` (a 0-dim float32/float64 device tensor) is
// given, which is then read inside the kernels on every call.
struct LrArg {
  double value = 0.0;
  const void* tensor = nullptr;
  bool tensor_is_double = false;
};

// ---- global gradient norm (grad_norm.cu) ----------------------------------------------
// Per-block partials written by launch_grad_sq_norm_partials for these tensors.
int64_t grad_sq_norm_partial_count(const TensorTable& grads);
// Sum of squares of each 64K-element chunk of `grads` (depth 1, one dtype), in
// float32 per thread and float64 across threads, into partials[block_base + k]. Returns
// the number of partials written.
int64_t launch_grad_sq_norm_partials(const TensorTable& grads, DType dtype, double* partials,
                                     int64_t block_base, void* stream);
// out[0] = float(sum of partials[0 .. count)), in a fixed order (bitwise reproducible).
void launch_sum_partials(const double* partials, int64_t count, float* out, void* stream);

// ---- step control (step_control.cu) ----------------------------------------------------
// One thread runs math::finalize_step_control with the optional device scalars (nullptr:
// absent) and writes control, counters and the norm log on the device.
void launch_step_control(const float* sq_norm, const float* grad_scale, const float* found_inf,
                         float* control, int64_t* counters, float* norm_log,
                         int64_t log_capacity, bool clip, float max_grad_norm,
                         bool skip_nonfinite, void* stream);

// ---- update ops (sgd.cu, adam.cu, rmsprop.cu, nadam.cu) -------------------------------
// `control` is the float32[2] step-control tensor; `steps` are the 0-dim float32 step
// tensors (one per param), `scratch` a device buffer of *_scratch_bytes(count) bytes that
// the op may reuse after the launches complete (stream-ordered). `grad_scale`: GradScaler's
// float32 scale on the device, or nullptr; when given, the grads are written back unscaled
// (math::unscaled_grad). float64 params run in double (math::OpMath).

struct SgdArgs {
  LrArg lr;
  double momentum = 0, dampening = 0, weight_decay = 0;
  bool nesterov = false, maximize = false, is_first_step = false;
  const float* control = nullptr;
  const float* grad_scale = nullptr;
};
// table slots: 0 params, 1 grads, 2 momentum_buffers (nullptr iff momentum == 0).
void launch_sgd_step(const TensorTable& table, DType param, DType state, const SgdArgs& args,
                     void* stream);

struct AdamArgs {
  LrArg lr;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0;
  bool amsgrad = false, maximize = false, decoupled_weight_decay = false;
  int rule = 0;
  const float* control = nullptr;
  const float* grad_scale = nullptr;
};
// table slots: 0 params, 1 grads, 2 exp_avgs, 3 exp_avg_sqs, 4 max_exp_avg_sqs (nullptr
// iff !amsgrad), 5 reserved (filled with per-tensor scalar pointers into `scratch`).
constexpr int kAdamDepth = 6;
size_t adam_scratch_bytes(int64_t count);
void launch_adam_step(TensorTable& table, const std::vector<void*>& steps, void* scratch,
                      DType param, DType state, const AdamArgs& args, void* stream);

struct RmspropArgs {
  LrArg lr;
  double alpha = 0.99, eps = 1e-8, weight_decay = 0, momentum = 0;
  bool centered = false, maximize = false;
  int rule = 0;
  const float* control = nullptr;
  const float* grad_scale = nullptr;
};
// table slots: 0 params, 1 grads, 2 square_avgs, 3 grad_avgs (nullptr iff !centered),
// 4 momentum_buffers (nullptr iff momentum == 0).
constexpr int kRmspropDepth = 5;
void launch_rmsprop_step(const TensorTable& table, const std::vector<void*>& steps,
                         DType param, DType state, const RmspropArgs& args, void* stream);

struct NadamArgs {
  LrArg lr;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0, momentum_decay = 4e-3;
  bool decoupled_weight_decay = false, maximize = false;
  int rule = 0;
  const float* control = nullptr;
  const float* grad_scale = nullptr;
};
// table slots: 0 params, 1 grads, 2 exp_avgs, 3 exp_avg_sqs, 4 reserved (per-tensor
// scalar pointers into `scratch`).
constexpr int kNadamDepth = 5;
size_t nadam_scratch_bytes(int64_t count);
void launch_nadam_step(TensorTable& table, const std::vector<void*>& steps,
                       const std::vector<void*>& mu_products, void* scratch, DType param,
                       DType state, const NadamArgs& args, void* stream);

}  // namespace cuda
}  // namespace tunebook
