// One launch over many tensors: the multi-tensor launcher behind every CUDA kernel of
// tunebook's fused optimizers.
//
// Design notes
// ------------
// Work unit. Every tensor is cut into chunks of kChunkSize elements; one thread block
// handles one chunk. A launch covers a *list* of tensors (params, grads, states: `Depth`
// parallel lists with equal numels per index), so a step over 2000 small tensors costs a
// few launches instead of one per tensor.
//
// Metadata in the kernel parameters, not in device memory. The per-launch table (Depth
// pointers, the numel and the first chunk index of each tensor) is passed by value as a
// `__grid_constant__` kernel parameter. Kernel parameters are captured into CUDA graph
// nodes, so a captured step replays with the exact pointers it was captured with, and
// there is no host->device copy whose pinned staging buffer would have to outlive the
// graph. Since CUDA 12.1, sm_70+ kernels may take up to 32,764 bytes of parameters
// (torch's own launcher still keeps to the old 4 KB and so stops at 36 tensors / 320
// chunks per launch for Adam). The table gets all but 256 bytes of the 32,764: 1,624
// tensors per launch at Depth 1 (the norm pass), 902 at Depth 3 (SGD), 624 at Depth 5
// (RMSprop, NAdam) and 541 at Depth 6 (Adam: params, grads, three state slots and a
// per-tensor scalars slot). ~2000 small tensors therefore take 2 norm launches and 4 Adam
// launches where torch takes ~56 fused-Adam launches plus ~40 foreach norm and scaling
// launches.
//
// No block->tensor table. torch and Apex store a (tensor, chunk) pair per block, which
// caps the blocks per launch (320). We store the prefix sum of chunk counts per tensor
// instead and every block finds its tensor by a binary search over at most 11 uniform
// reads of the parameter bank. A launch therefore has no block limit: a 1B-element
// tensor is one launch of 15,259 blocks.
//
// 64-bit indexing. The element offset of a chunk inside its tensor is int64 (chunk index
// * kChunkSize), so tensors beyond 2^31 elements work; within a chunk indices are int32.
// Chunk indices are int32 per launch (2^31 chunks = 2^47 elements).
//
// Vectorised loads. When every pointer of a tensor is aligned to kILP elements of its
// dtype (always true for fresh torch allocations, which are 512-byte aligned), each
// thread moves kILP contiguous elements with one 16-byte (fp32) or 8-byte (bf16/fp16)
// load/store per operand. The vector body covers floor(n / kILP) * kILP elements and a
// scalar tail handles the rest, so an odd-sized tensor still runs vectorised (torch falls
// back to scalar loads for the whole tensor when numel % 4 != 0). Misaligned tensors
// (views at odd storage offsets) take a coalesced scalar path. (The one-operand norm pass
// in grad_norm.cu has its own loop: 16-byte loads for every dtype, and misaligned grads
// read as aligned vectors after a short head.)
//
// Launch constants. 512 threads, kILP = 4, 64K-element chunks: each thread makes 32
// passes over its chunk with one vector load per operand in flight per pass; with >= 2
// resident blocks per SM that is >= 48 KB in flight per SM for Adam, above what HBM3e
// needs (~24 KB per SM at 4.8 TB/s and ~650 ns latency over 132 SMs). Tiny tensors waste
// a mostly idle block each, the same trade torch makes; they are launch-bound anyway.
//
// Registers, pinned. The SM's register file (64K) is what limits resident blocks: an
// update kernel at <= 64 registers per thread keeps 2 blocks of 512 per SM, at 65-128 only
// one, which halves the bytes in flight. Left to itself, ptxas (nvcc 13.0, sm_90) used
// 26-52 registers, but __launch_bounds__(512) alone would let another nvcc go up to 128,
// so every functor names its minimum resident blocks (kMinBlocksPerSm: 2 for the updates,
// 4 for the one-operand norm pass, whose bytes in flight are all it has; half that for
// float64, see wide_update_min_blocks_per_sm) and the kernel is
// capped at 64K / (512 * blocks) registers. The cap is set with __maxnreg__ (nvcc >= 12.4):
// __launch_bounds__(512, 2) sets the same 64-register cap but made ptxas 13.0 schedule up
// to it and spill 4 bytes in four mixed-precision RMSprop kernels, where __maxnreg__(64)
// compiles every kernel without a spill. tests/test_cuda_build.py checks the cap in the
// PTX and that ptxas reports no spill and no stack frame for any kernel.
//
// No host synchronisation. Nothing here reads device memory from the host. Per-step
// device scalars (step counters, tensor learning rates, the clip coefficient and skip
// flag, GradScaler's scale and found_inf) are passed as device pointers and read inside
// the kernels, so a whole optimizer step can be captured in a CUDA graph and replayed.
//
// This header and the .cu files include no torch headers: the torch-facing code (checks,
// TORCH_LIBRARY_IMPL) is csrc/cuda/ops_cuda.cpp, compiled by the host compiler. That keeps
// each nvcc translation unit to a few seconds of front-end work instead of ~40 s.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "../optim_math.h"
#include "cuda_ops.h"

namespace tunebook {
namespace cuda {

constexpr int kBlockSize = 512;
constexpr int kILP = 4;
// 32-bit registers per SM on sm_70 .. sm_90 (the cap of a kernel that must keep `blocks`
// blocks of kBlockSize resident is kRegistersPerSm / (kBlockSize * blocks)).
constexpr int kRegistersPerSm = 65536;
constexpr int kUpdateMinBlocksPerSm = 2;

// float64 params: every double takes two registers, so the same per-thread work needs about
// twice the registers (Adam/NAdam/RMSprop spilled 64-208 B under the 64-register cap). One
// resident block of 512 keeps as many bytes in flight as two blocks of float32, since each
// element is twice as wide: those functors ask for one block (a 128-register cap). SGD's
// float64 update fits in 64 without a spill and keeps two.
template <typename P>
constexpr int wide_update_min_blocks_per_sm() {
  return std::is_same<P, double>::value ? 1 : kUpdateMinBlocksPerSm;
}

constexpr int max_registers_for(int min_blocks_per_sm) {
  return kRegistersPerSm / (kBlockSize * min_blocks_per_sm);
}
constexpr int64_t kChunkSize = 65536;
// Kernel-parameter limit since CUDA 12.1 on sm_70+ (4,096 before).
constexpr int kMaxKernelParamBytes = 32764;
// Bytes of that budget given to the tensor table; the rest is left for the functor's own
// arguments (checked per kernel in multi_tensor_apply).
constexpr int kMetaBytes = kMaxKernelParamBytes - 256;

constexpr int max_tensors_for_depth(int depth) {
  // Per tensor: Depth pointers, an int64 numel, an int32 chunk start. Per launch: one more
  // int32 chunk start, two int32 counts and an int64 block offset.
  return (kMetaBytes - 24) / (8 * depth + 8 + 4);
}

// The per-launch tensor table, passed by value as a __grid_constant__ kernel argument.
template <int Depth>
struct TensorListMeta {
  static constexpr int kMaxTensors = max_tensors_for_depth(Depth);
  void* addresses[Depth][kMaxTensors];
  int64_t numel[kMaxTensors];
  // chunk_start[t] = the first block of tensor t in this launch;
  // chunk_start[num_tensors] = the number of blocks of this launch.
  int32_t chunk_start[kMaxTensors + 1];
  int32_t num_tensors;
  int32_t unused;
  // Global number of this launch's block 0 among all blocks of one multi_tensor_apply
  // call (plus the caller's base), so reductions can write per-block partials into one
  // workspace across launches.
  int64_t block_offset;
};
static_assert(sizeof(TensorListMeta<1>) <= kMetaBytes && sizeof(TensorListMeta<6>) <= kMetaBytes,
              "tensor table too large");

// What one block works on: a chunk of one tensor.
struct ChunkRef {
  int tensor;      // index into the launch's table
  int n;           // elements in this chunk (1 .. kChunkSize)
  int64_t offset;  // element offset of the chunk in the tensor (64-bit)
};

template <int Depth>
__device__ __forceinline__ ChunkRef locate_chunk(const TensorListMeta<Depth>& meta) {
  const int block = static_cast<int>(blockIdx.x);
  // Largest t with chunk_start[t] <= block. Uniform across the block: every thread reads
  // the same parameter words (constant-cache broadcasts).
  int lo = 0;
  int hi = meta.num_tensors - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (meta.chunk_start[mid] <= block) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  ChunkRef ref;
  ref.tensor = lo;
  ref.offset = static_cast<int64_t>(block - meta.chunk_start[lo]) * kChunkSize;
  const int64_t remaining = meta.numel[lo] - ref.offset;
  ref.n = static_cast<int>(remaining < kChunkSize ? remaining : kChunkSize);
  return ref;
}

// Pointer to the chunk's first element in slot `d` (nullptr stays nullptr).
template <typename T, int Depth>
__device__ __forceinline__ T* chunk_ptr(const TensorListMeta<Depth>& meta, int d,
                                        const ChunkRef& ref) {
  T* base = static_cast<T*>(meta.addresses[d][ref.tensor]);
  return base == nullptr ? nullptr : base + ref.offset;
}

// ---------------------------------------------------------------------------------------
// Storage dtypes <-> registers of the opmath type (math::OpMath: float, double for double).

template <typename T, int N>
struct alignas(sizeof(T) * N) AlignedVector {
  T val[N];
};

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }

// Round to nearest even, as c10::BFloat16 / c10::Half and torch's kernels do.
template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }

// Storage T <-> register R: through float, except float64 storage in double registers.
template <typename T, typename R>
struct Convert {
  static __device__ __forceinline__ R load(T x) { return static_cast<R>(to_float(x)); }
  static __device__ __forceinline__ T store(R x) { return from_float<T>(static_cast<float>(x)); }
};
template <>
struct Convert<double, double> {
  static __device__ __forceinline__ double load(double x) { return x; }
  static __device__ __forceinline__ double store(double x) { return x; }
};

template <typename T>
__device__ __forceinline__ bool is_vector_aligned(const void* p) {
  return p == nullptr || (reinterpret_cast<uintptr_t>(p) % (sizeof(T) * kILP)) == 0;
}

// Vector path: elements [i, i + kILP).
template <typename R, typename T>
__device__ __forceinline__ void load_vector(R (&r)[kILP], const T* base, int i) {
  const auto v = *reinterpret_cast<const AlignedVector<T, kILP>*>(base + i);
#pragma unroll
  for (int j = 0; j < kILP; ++j) r[j] = Convert<T, R>::load(v.val[j]);
}

template <typename R, typename T>
__device__ __forceinline__ void store_vector(T* base, int i, const R (&r)[kILP]) {
  AlignedVector<T, kILP> v;
#pragma unroll
  for (int j = 0; j < kILP; ++j) v.val[j] = Convert<T, R>::store(r[j]);
  *reinterpret_cast<AlignedVector<T, kILP>*>(base + i) = v;
}

// Scalar path: elements i + j * kBlockSize (j < kILP) that are < n. Consecutive threads
// hold consecutive i, so every j is one coalesced access across the block. The stride is
// the compile-time block size, not blockDim.x: element j's address is then element 0's
// plus an immediate offset, so each operand keeps one 64-bit address live instead of
// kILP of them (with a run-time stride ptxas needed ~80 registers for RMSprop and spilled
// under the 64-register cap of __launch_bounds__(kBlockSize, kMinBlocksPerSm)).
template <typename R, typename T>
__device__ __forceinline__ void load_strided(R (&r)[kILP], const T* base, int i, int n) {
#pragma unroll
  for (int j = 0; j < kILP; ++j) {
    const int k = i + j * kBlockSize;
    r[j] = k < n ? Convert<T, R>::load(base[k]) : R(0);
  }
}

template <typename R, typename T>
__device__ __forceinline__ void store_strided(T* base, int i, int n, const R (&r)[kILP]) {
#pragma unroll
  for (int j = 0; j < kILP; ++j) {
    const int k = i + j * kBlockSize;
    if (k < n) base[k] = Convert<T, R>::store(r[j]);
  }
}

// One access pattern for both paths, chosen at compile time.
struct Access {
  int i, n;
};

template <bool Vector, typename R, typename T>
__device__ __forceinline__ void load(R (&r)[kILP], const T* base, const Access& a) {
  if constexpr (Vector) {
    load_vector(r, base, a.i);
  } else {
    load_strided(r, base, a.i, a.n);
  }
}

template <bool Vector, typename R, typename T>
__device__ __forceinline__ void store(T* base, const Access& a, const R (&r)[kILP]) {
  if constexpr (Vector) {
    store_vector(base, a.i, r);
  } else {
    store_strided(base, a.i, a.n, r);
  }
}

// Runs body.template run<Vector>(Access) over one chunk of n elements:
//   Vector = true : elements a.i .. a.i + kILP - 1, all < n
//   Vector = false: elements a.i + j * kBlockSize < a.n, j < kILP (others are padding:
//                   loads read 0, stores are dropped)
// `aligned`: every operand pointer of the chunk is vector aligned. Kernels using this are
// launched with blockDim.x == kBlockSize.
template <typename Body>
__device__ __forceinline__ void for_each_in_chunk(int n, bool aligned, Body& body) {
  const int t = static_cast<int>(threadIdx.x);
  if (aligned) {
    const int n_vec = (n / kILP) * kILP;
    for (int i = t * kILP; i < n_vec; i += kBlockSize * kILP) {
      body.template run<true>(Access{i, n});
    }
    // Tail of < kILP elements: one element per thread (i + kBlockSize is past n).
    const int i = n_vec + t;
    if (i < n) body.template run<false>(Access{i, n});
  } else {
    for (int base = 0; base < n; base += kBlockSize * kILP) {
      body.template run<false>(Access{base + t, n});
    }
  }
}

// ---------------------------------------------------------------------------------------
// The kernel and its host-side launcher.

// `Functor` provides `__device__ void operator()(const TensorListMeta<Depth>&,
// const ChunkRef&, Args...) const` and `static constexpr int kMinBlocksPerSm` (see
// "Registers, pinned" above). The table is __grid_constant__ so that indexing it with a
// runtime tensor index reads the parameter bank instead of copying 30 KB to local memory.
#if defined(__CUDACC_VER_MAJOR__) && \
    (__CUDACC_VER_MAJOR__ > 12 || (__CUDACC_VER_MAJOR__ == 12 && __CUDACC_VER_MINOR__ >= 4))
#define TUNEBOOK_PIN_REGISTERS(min_blocks) __maxnreg__(max_registers_for(min_blocks))
#else
#define TUNEBOOK_PIN_REGISTERS(min_blocks) __launch_bounds__(kBlockSize, min_blocks)
#endif
template <int Depth, typename Functor, typename... Args>
__global__ void TUNEBOOK_PIN_REGISTERS(Functor::kMinBlocksPerSm)
    multi_tensor_kernel(const __grid_constant__ TensorListMeta<Depth> meta, Functor functor,
                        Args... args) {
  const ChunkRef ref = locate_chunk(meta);
  functor(meta, ref, args...);
}

#if defined(TUNEBOOK_HOST_EMULATION)
// tests/cuda_emulation/: the kernels run serially on the host (block by block, thread by
// thread) so the launcher's indexing is tested on machines without a GPU. The harness
// defines these before including this header.
namespace emulation {
template <int Depth, typename Functor, typename... Args>
void run_multi_tensor(int blocks, const TensorListMeta<Depth>& meta, const Functor& functor,
                      Args... args);
}  // namespace emulation
inline void check_launch(const char*) {}
#else
inline void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("tunebook: CUDA launch of ") + what +
                             " failed: " + cudaGetErrorString(err));
  }
}
#endif

// Applies `functor` over the tensors of `table` (its depth must be Depth). Tensors with
// numel 0 are skipped. Blocks are numbered globally (meta.block_offset + blockIdx.x,
// starting at `block_base`) in tensor order. Returns the number of blocks launched.
template <int Depth, typename Functor, typename... Args>
int64_t multi_tensor_apply(const TensorTable& table, cudaStream_t stream, int64_t block_base,
                           const char* what, const Functor& functor, Args... args) {
  if (table.depth != Depth) {
    throw std::invalid_argument(std::string("tunebook: ") + what + " expects " +
                                std::to_string(Depth) + " tensor slots, got " +
                                std::to_string(table.depth));
  }
  using Meta = TensorListMeta<Depth>;
  static_assert(sizeof(Meta) + sizeof(Functor) + (0 + ... + sizeof(Args)) + 64 <=
                    kMaxKernelParamBytes,
                "kernel parameters exceed the 32,764-byte limit");
  Meta meta;
  meta.num_tensors = 0;
  meta.unused = 0;
  meta.chunk_start[0] = 0;
  int64_t blocks_total = 0;

  auto launch = [&]() {
    const int blocks = meta.chunk_start[meta.num_tensors];
    if (blocks > 0) {
      meta.block_offset = block_base + blocks_total;
#if defined(TUNEBOOK_HOST_EMULATION)
      emulation::run_multi_tensor<Depth>(blocks, meta, functor, args...);
#else
      multi_tensor_kernel<Depth, Functor, Args...>
          <<<blocks, kBlockSize, 0, stream>>>(meta, functor, args...);
#endif
      check_launch(what);
      blocks_total += blocks;
    }
    meta.num_tensors = 0;
    meta.chunk_start[0] = 0;
  };

  for (int64_t t = 0; t < table.count; ++t) {
    const int64_t numel = table.numel[t];
    if (numel == 0) continue;
    const int64_t chunks = (numel + kChunkSize - 1) / kChunkSize;
    if (chunks > INT32_MAX) {
      throw std::invalid_argument("tunebook: a tensor of " + std::to_string(numel) +
                                  " elements is too large for one launch");
    }
    // Close the launch when the table is full or the int32 block count would overflow.
    if (meta.num_tensors == Meta::kMaxTensors ||
        static_cast<int64_t>(meta.chunk_start[meta.num_tensors]) + chunks > INT32_MAX) {
      launch();
    }
    const int slot = meta.num_tensors;
    for (int d = 0; d < Depth; ++d) meta.addresses[d][slot] = table.ptr(d, t);
    meta.numel[slot] = numel;
    meta.chunk_start[slot + 1] = meta.chunk_start[slot] + static_cast<int32_t>(chunks);
    meta.num_tensors = slot + 1;
  }
  launch();
  return blocks_total;
}

// Blocks (= chunks) multi_tensor_apply launches for these numels: sizes the workspace of
// per-block partials of a reduction before any launch.
inline int64_t count_chunks(const TensorTable& table) {
  int64_t chunks = 0;
  for (int64_t t = 0; t < table.count; ++t) {
    chunks += (table.numel[t] + kChunkSize - 1) / kChunkSize;
  }
  return chunks;
}

// ---------------------------------------------------------------------------------------
// Per-element dtype dispatch shared by the update ops.

template <typename F>
inline void with_bool(bool b, F&& f) {
  if (b) {
    f(std::true_type{});
  } else {
    f(std::false_type{});
  }
}

// Calls f(param_t{}, state_t{}) for the supported (params dtype, state dtype) pairs: the
// state is either in the params' dtype or float32 (e.g. bf16 params with fp32 moments).
template <typename F>
inline void dispatch_dtypes(DType param, DType state, F&& f) {
  switch (param) {
    case DType::kFloat32:
      f(float{}, float{});
      break;
    case DType::kFloat64:
      f(double{}, double{});
      break;
    case DType::kBFloat16:
      if (state == DType::kFloat32) {
        f(__nv_bfloat16{}, float{});
      } else {
        f(__nv_bfloat16{}, __nv_bfloat16{});
      }
      break;
    case DType::kFloat16:
      if (state == DType::kFloat32) {
        f(__half{}, float{});
      } else {
        f(__half{}, __half{});
      }
      break;
  }
}

// Calls f(param_t{}, param_t{}): for ops without state tensors.
template <typename F>
inline void dispatch_param_dtype(DType param, F&& f) {
  switch (param) {
    case DType::kFloat32:
      f(float{}, float{});
      break;
    case DType::kFloat64:
      f(double{}, double{});
      break;
    case DType::kBFloat16:
      f(__nv_bfloat16{}, __nv_bfloat16{});
      break;
    case DType::kFloat16:
      f(__half{}, __half{});
      break;
  }
}

// The block prologue of every update kernel: thread 0 reads the step-control tensor
// (skip flag, grad multiplier) and the learning rate from device memory once per block.
struct StepControl {
  bool skip;
  float grad_mult;
};

__device__ __forceinline__ StepControl read_control(const float* control, bool maximize) {
  StepControl c;
  c.skip = control[math::kControlSkip] != 0.0f;
  // maximize folds into the multiplier: (g * c) negated == g * (-c), exactly.
  const float mult = control[math::kControlGradMult];
  c.grad_mult = maximize ? -mult : mult;
  return c;
}

// GradScaler's scale for the unscaled-gradient store (math::unscaled_grad), read once per
// block; nullptr: no store.
__device__ __forceinline__ float read_grad_scale(const float* grad_scale) {
  return grad_scale == nullptr ? 1.0f : *grad_scale;
}

__device__ __forceinline__ double read_lr(const LrArg& lr) {
  if (lr.tensor == nullptr) return lr.value;
  return lr.tensor_is_double ? *static_cast<const double*>(lr.tensor)
                             : static_cast<double>(*static_cast<const float*>(lr.tensor));
}

}  // namespace cuda
}  // namespace tunebook
