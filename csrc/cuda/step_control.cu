// CUDA: tunebook::step_control_, one thread that turns the global sum of squares into the
// step's control values on the device: the clip coefficient (folded with GradScaler's
// 1/scale into one grad multiplier), the skip flag (non-finite norm or found_inf), the
// clipped/skipped counters and the norm log entry. It is math::finalize_step_control, the
// function the CPU path runs. Contract: csrc/ops.cpp.
#include "multi_tensor_apply.cuh"

namespace tunebook {
namespace cuda {
namespace {

__global__ void step_control_kernel(const float* sq_norm, const float* grad_scale,
                                    const float* found_inf, float* control, int64_t* counters,
                                    float* norm_log, int64_t log_capacity, bool clip,
                                    float max_grad_norm, bool skip_nonfinite) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  math::finalize_step_control(sq_norm ? *sq_norm : 0.0f, sq_norm != nullptr,
                              grad_scale ? *grad_scale : 1.0f,
                              found_inf ? *found_inf : 0.0f, clip, max_grad_norm,
                              skip_nonfinite, control, counters, norm_log, log_capacity);
}

}  // namespace

void launch_step_control(const float* sq_norm, const float* grad_scale, const float* found_inf,
                         float* control, int64_t* counters, float* norm_log,
                         int64_t log_capacity, bool clip, float max_grad_norm,
                         bool skip_nonfinite, void* stream_ptr) {
  step_control_kernel<<<1, 1, 0, static_cast<cudaStream_t>(stream_ptr)>>>(
      sq_norm, grad_scale, found_inf, control, counters, norm_log, log_capacity, clip,
      max_grad_norm, skip_nonfinite);
  check_launch("step_control_");
}

}  // namespace cuda
}  // namespace tunebook
