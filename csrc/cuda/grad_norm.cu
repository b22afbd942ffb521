// CUDA: tunebook::grad_sq_norm, the global sum of squares of all grads of all groups.
// Contract: csrc/ops.cpp.
//
// Pass 1 (one multi-tensor launch per grad dtype, 1,624 tensors per launch): every block
// reduces its 64K-element chunk, each thread in float32 (<= 32 squares per thread per
// chunk, four independent FMA chains), the block in float64, into one float64 partial
// per chunk. Pass 2 (one block): the partials are summed in float64 in a fixed order and
// rounded once to the float32 result. No atomics, so the result is bitwise reproducible
// run to run, and no host synchronisation: the result stays on the device for
// step_control_.
#include "multi_tensor_apply.cuh"

namespace tunebook {
namespace cuda {

constexpr int kSumThreads = 1024;

#if defined(TUNEBOOK_HOST_EMULATION)
namespace emulation {  // defined by tests/cuda_emulation/emulate_kernels.cpp
double block_sum(double value);
void run_sum_partials(const double* partials, int64_t count, float* out);
}  // namespace emulation
#endif

namespace {

// Sum of `value` over the block, valid in thread 0. Fixed shuffle/shared-memory order.
template <int kThreads>
__device__ __forceinline__ double block_sum(double value) {
  static_assert(kThreads % 32 == 0 && kThreads <= 1024, "block size");
#if defined(TUNEBOOK_HOST_EMULATION)
  return emulation::block_sum(value);
#else
  __shared__ double warp_sums[kThreads / 32];
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    value += __shfl_down_sync(0xffffffffu, value, offset);
  }
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (lane == 0) warp_sums[warp] = value;
  __syncthreads();
  if (warp == 0) {
    value = lane < kThreads / 32 ? warp_sums[lane] : 0.0;
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
      value += __shfl_down_sync(0xffffffffu, value, offset);
    }
  }
  return value;
#endif
}

__device__ __forceinline__ float add_square(float x, float acc) { return fmaf(x, x, acc); }
__device__ __forceinline__ double add_square(double x, double acc) { return fma(x, x, acc); }

// Per-thread accumulation in the grads' opmath type: float, double for float64 grads.
template <typename G>
struct SquaresBody {
  using A = typename math::OpMath<G>::type;
  const G* g;
  A acc[kILP];

  template <bool V>
  __device__ __forceinline__ void run(const Access& a) {
    A r[kILP];
    load<V>(r, g, a);  // padding elements of the scalar path load as 0
#pragma unroll
    for (int j = 0; j < kILP; ++j) acc[j] = add_square(r[j], acc[j]);
  }
};

template <typename G>
struct SquaresFunctor {
  __device__ __forceinline__ void operator()(const TensorListMeta<1>& meta, const ChunkRef& ref,
                                             double* partials) const {
    SquaresBody<G> body{chunk_ptr<const G>(meta, 0, ref), {0, 0, 0, 0}};
    for_each_in_chunk(ref.n, is_vector_aligned<G>(body.g), body);
    const double mine = static_cast<double>((body.acc[0] + body.acc[1]) +
                                            (body.acc[2] + body.acc[3]));
    const double total = block_sum<kBlockSize>(mine);
    if (threadIdx.x == 0) partials[meta.block_offset + blockIdx.x] = total;
  }
};

}  // namespace

__global__ void __launch_bounds__(kSumThreads)
    sum_partials_kernel(const double* partials, int64_t count, float* out) {
  double mine = 0.0;
  for (int64_t i = threadIdx.x; i < count; i += kSumThreads) mine += partials[i];
  const double total = block_sum<kSumThreads>(mine);
  if (threadIdx.x == 0) out[0] = static_cast<float>(total);
}

int64_t grad_sq_norm_partial_count(const TensorTable& grads) { return count_chunks(grads); }

int64_t launch_grad_sq_norm_partials(const TensorTable& grads, DType dtype, double* partials,
                                     int64_t block_base, void* stream_ptr) {
  const auto stream = static_cast<cudaStream_t>(stream_ptr);
  switch (dtype) {
    case DType::kFloat32:
      return multi_tensor_apply<1>(grads, stream, block_base, "grad_sq_norm",
                                   SquaresFunctor<float>{}, partials);
    case DType::kBFloat16:
      return multi_tensor_apply<1>(grads, stream, block_base, "grad_sq_norm",
                                   SquaresFunctor<__nv_bfloat16>{}, partials);
    case DType::kFloat16:
      return multi_tensor_apply<1>(grads, stream, block_base, "grad_sq_norm",
                                   SquaresFunctor<__half>{}, partials);
    case DType::kFloat64:
      return multi_tensor_apply<1>(grads, stream, block_base, "grad_sq_norm",
                                   SquaresFunctor<double>{}, partials);
  }
  return 0;
}

void launch_sum_partials(const double* partials, int64_t count, float* out, void* stream_ptr) {
#if defined(TUNEBOOK_HOST_EMULATION)
  emulation::run_sum_partials(partials, count, out);
#else
  sum_partials_kernel<<<1, kSumThreads, 0, static_cast<cudaStream_t>(stream_ptr)>>>(
      partials, count, out);
#endif
  check_launch("grad_sq_norm (final sum)");
}

}  // namespace cuda
}  // namespace tunebook
