// Per-tensor step bookkeeping on the device: step counters, NAdam's mu products and the
// per-tensor update scalars (bias corrections, step sizes) of one optimizer step.
//
// Why a separate launch. torch's fused path keeps one step tensor per param and the
// update of a tensor's chunks must all use the *incremented* step. Many blocks work on
// one tensor, and a block cannot know when its siblings have read the counter, so the
// increment cannot happen inside the update kernel. A tiny "prepare" kernel (one thread
// per tensor, up to 3,600 tensors per launch) runs first: it skips everything when the
// step-control flag says so, increments the step, advances the mu product, and writes
// the tensor's scalars (computed once, in double, by the shared math::*_scalars functions
// exactly as the CPU path does) into a scratch buffer. Update blocks then read a few
// floats instead of evaluating pow() in double, and every chunk of a tensor sees the
// same scalars by construction.
#pragma once

#include <vector>

#include "multi_tensor_apply.cuh"

namespace tunebook {
namespace cuda {

constexpr int kPrepareThreads = 128;

// One launch's tensors: step pointers and, for NAdam, mu-product pointers. 3,600 tensors
// per launch with steps only, 1,800 with both.
template <bool kMuProducts>
struct PrepareMeta {
  static constexpr int kMaxTensors = kMuProducts ? 1800 : 3600;
  float* steps[kMaxTensors];
  float* mu_products[kMuProducts ? kMaxTensors : 1];
  int64_t first;  // index of steps[0] in the caller's list
  int32_t count;
};
static_assert(sizeof(PrepareMeta<true>) + 256 <= kMaxKernelParamBytes &&
                  sizeof(PrepareMeta<false>) + 256 <= kMaxKernelParamBytes,
              "prepare table too large");

#if defined(TUNEBOOK_HOST_EMULATION)
namespace emulation {
template <bool kMuProducts, typename Prepare>
void run_prepare(int blocks, const PrepareMeta<kMuProducts>& meta, const float* control,
                 const Prepare& prepare, void* scratch);
}  // namespace emulation
#endif

// `Prepare` provides `__device__ void operator()(int64_t index, float* step,
// float* mu_product, void* scratch) const` (mu_product is nullptr without kMuProducts).
template <bool kMuProducts, typename Prepare>
__global__ void __launch_bounds__(kPrepareThreads)
    prepare_kernel(const __grid_constant__ PrepareMeta<kMuProducts> meta, const float* control,
                   Prepare prepare, void* scratch) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= meta.count) return;
  if (control[math::kControlSkip] != 0.0f) return;  // skipped step: nothing changes
  float* mu_product = nullptr;
  if constexpr (kMuProducts) mu_product = meta.mu_products[i];
  prepare(meta.first + i, meta.steps[i], mu_product, scratch);
}

// mu_products: nullptr, or one pointer per step.
template <bool kMuProducts, typename Prepare>
void launch_prepare(const std::vector<void*>& steps, const std::vector<void*>* mu_products,
                    const float* control, const Prepare& prepare, void* scratch,
                    cudaStream_t stream) {
  using Meta = PrepareMeta<kMuProducts>;
  const int64_t n = static_cast<int64_t>(steps.size());
  Meta meta;
  for (int64_t first = 0; first < n; first += Meta::kMaxTensors) {
    const int64_t count = (n - first < Meta::kMaxTensors) ? n - first : Meta::kMaxTensors;
    meta.first = first;
    meta.count = static_cast<int32_t>(count);
    for (int64_t k = 0; k < count; ++k) {
      meta.steps[k] = static_cast<float*>(steps[first + k]);
      if constexpr (kMuProducts) {
        meta.mu_products[k] = static_cast<float*>((*mu_products)[first + k]);
      }
    }
    const int blocks = static_cast<int>((count + kPrepareThreads - 1) / kPrepareThreads);
#if defined(TUNEBOOK_HOST_EMULATION)
    emulation::run_prepare<kMuProducts>(blocks, meta, control, prepare, scratch);
#else
    prepare_kernel<kMuProducts, Prepare>
        <<<blocks, kPrepareThreads, 0, stream>>>(meta, control, prepare, scratch);
#endif
    check_launch("the step-prepare kernel");
  }
}

// Points table slot `slot` of tensor i at scratch + i * sizeof(Scalars).
template <typename Scalars>
void point_at_scratch(TensorTable& table, int slot, void* scratch) {
  auto* base = static_cast<Scalars*>(scratch);
  for (int64_t i = 0; i < table.count; ++i) table.set(slot, i, base + i);
}

// Increments the step only (RMSprop: its scalars do not depend on the step).
struct IncrementStep {
  __device__ __forceinline__ void operator()(int64_t, float* step, float*, void*) const {
    *step = *step + 1.0f;
  }
};

}  // namespace cuda
}  // namespace tunebook
