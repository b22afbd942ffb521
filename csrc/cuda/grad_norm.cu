// CUDA: tunebook::grad_sq_norm, the global sum of squares of all grads of all groups.
// Contract: csrc/ops.cpp.
//
// Pass 1 (one multi-tensor launch per grad dtype, 1,624 tensors per launch): every block
// reduces its 64K-element chunk, each thread in float32 (float64 for float64 grads; kVec
// independent FMA chains,
// <= 32 squares each), the block in float64, into one float64 partial per chunk. Pass 2
// (one block): the partials are summed in float64 in a fixed order and rounded once to
// the float32 result. No atomics, so the result is bitwise reproducible run to run, and
// no host synchronisation: the result stays on the device for step_control_.
//
// Loads. The pass is bound by bytes in flight: a thread reads 16 bytes per load whatever
// the dtype (4 fp32 or 8 bf16/fp16 values, where the update kernels' kILP = 4 would give
// bf16 8-byte loads and half the bytes in flight), two loads are issued before their
// FMAs, and the kernel is pinned to <= 32 registers so that 4 blocks of 512 (the SM's
// 2,048 threads) stay resident: 4 * 512 * 32 B = 64 KB in flight per SM, against the
// ~24 KB HBM3e needs. A grad that is not 16-byte aligned (a view at an odd offset, e.g.
// into a DDP bucket) is not read element by element: each chunk's first `head` elements
// (< kVec, up to the next 16-byte boundary) are read by threads 0 .. head-1, the rest as
// aligned vectors. Which element goes to which thread's FMA chain is fixed by the chunk's
// address and length alone (tests/cuda_emulation/ replays it element by element):
//   head element e (e < head)          -> thread e, chain 0
//   body element head + v * kVec + j    -> thread v % kBlockSize, chain j, in order of v
//   tail element head + n_body + e      -> thread e, chain 0 (after its body elements)
// and a thread's chains are combined pairwise: ((c0 + c1) + (c2 + c3)) [+ ((c4 + c5) +
// (c6 + c7))].
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

// Sum of x*x over one chunk of n elements starting at g, this thread's part: the mapping
// of the header comment. Returns the thread's sum of its kVec chains, accumulated in the
// grads' opmath type A (float; double for float64 grads, whose squares may exceed float).
template <typename G, typename A = typename math::OpMath<G>::type>
__device__ __forceinline__ A thread_sum_of_squares(const G* g, int n) {
  constexpr int kVec = 16 / sizeof(G);
  using Vec = AlignedVector<G, kVec>;
  const int t = static_cast<int>(threadIdx.x);
  A acc[kVec];
#pragma unroll
  for (int j = 0; j < kVec; ++j) acc[j] = A(0);
  // Elements before the first 16-byte boundary (torch's storage is always aligned to its
  // element size, so this is a whole number of elements, < kVec).
  const int misaligned = static_cast<int>(reinterpret_cast<uintptr_t>(g) % 16);
  int head = misaligned == 0 ? 0 : (16 - misaligned) / static_cast<int>(sizeof(G));
  head = head < n ? head : n;
  if (t < head) acc[0] = add_square(Convert<G, A>::load(g[t]), acc[0]);
  const Vec* body = reinterpret_cast<const Vec*>(g + head);
  const int vectors = (n - head) / kVec;
  // Two 16-byte loads in flight per pass; each chain still sees its elements in order.
  int v = t;
  for (; v + kBlockSize < vectors; v += 2 * kBlockSize) {
    const Vec a = body[v];
    const Vec b = body[v + kBlockSize];
#pragma unroll
    for (int j = 0; j < kVec; ++j) acc[j] = add_square(Convert<G, A>::load(a.val[j]), acc[j]);
#pragma unroll
    for (int j = 0; j < kVec; ++j) acc[j] = add_square(Convert<G, A>::load(b.val[j]), acc[j]);
  }
  if (v < vectors) {
    const Vec a = body[v];
#pragma unroll
    for (int j = 0; j < kVec; ++j) acc[j] = add_square(Convert<G, A>::load(a.val[j]), acc[j]);
  }
  const int tail = head + vectors * kVec + t;  // < kVec tail elements, one per thread
  if (tail < n) acc[0] = add_square(Convert<G, A>::load(g[tail]), acc[0]);
  if constexpr (kVec == 2) {
    return acc[0] + acc[1];
  } else if constexpr (kVec == 4) {
    return (acc[0] + acc[1]) + (acc[2] + acc[3]);
  } else {
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
  }
}

template <typename G>
struct SquaresFunctor {
  // 4 blocks (32 registers); float64 grads 2 blocks (64): the same bytes in flight, and
  // the double accumulators no longer spill (12/20 B under 32).
  static constexpr int kMinBlocksPerSm = std::is_same<G, double>::value ? 2 : 4;
  __device__ __forceinline__ void operator()(const TensorListMeta<1>& meta, const ChunkRef& ref,
                                             double* partials) const {
    const auto mine = thread_sum_of_squares(chunk_ptr<const G>(meta, 0, ref), ref.n);
    const double total = block_sum<kBlockSize>(static_cast<double>(mine));
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
