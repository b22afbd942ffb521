// Runs tunebook's CUDA update kernels serially on the host and compares them bit for bit
// with a plain per-element loop over the same math (csrc/optim_math.h), in the opmath type
// of the params (float, or double for float64 params), including the unscaled-gradient
// store that GradScaler's scale turns on.
//
// Built by tests/test_cuda_emulation.py with the host compiler: TUNEBOOK_HOST_EMULATION
// replaces each `<<<...>>>` launch by a loop over blocks and threads (blockDim.x = 512, as on
// the GPU), so the multi-tensor launcher's tables, binary search, 64-bit chunk offsets,
// vector/scalar paths and tails, the step-prepare kernel and the dtype dispatch all run for
// real. Both sides are compiled by the same compiler with -ffp-contract=off, so any
// difference is an indexing or logic error, not rounding. Device numerics (FMA contraction,
// nvcc's math) are the GPU test suite's job.
#define TUNEBOOK_HOST_EMULATION 1
#define __launch_bounds__(...)
#define __STORAGE__ extern
#include <device_launch_parameters.h>
extern "C" {
uint3 threadIdx;
uint3 blockIdx;
dim3 blockDim;
dim3 gridDim;
int warpSize = 32;
}

#include "cuda/adam.cu"
#include "cuda/grad_norm.cu"
#include "cuda/nadam.cu"
#include "cuda/rmsprop.cu"
#include "cuda/sgd.cu"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace tunebook {
namespace cuda {
namespace emulation {

// Threads run in descending order, so thread 0 comes last: block_sum then returns the
// block's total to thread 0 (the only thread that uses it), as on the GPU.
double g_block_total = 0.0;
double block_sum(double value) {
  if (threadIdx.x == blockDim.x - 1) g_block_total = 0.0;
  g_block_total += value;
  return g_block_total;
}

void run_sum_partials(const double* partials, int64_t count, float* out) {
  blockDim = dim3(kSumThreads, 1, 1);
  gridDim = dim3(1, 1, 1);
  blockIdx = make_uint3(0, 0, 0);
  for (int t = kSumThreads - 1; t >= 0; --t) {
    threadIdx = make_uint3(t, 0, 0);
    sum_partials_kernel(partials, count, out);
  }
}

// The body of multi_tensor_kernel (locate the chunk, run the functor) for every thread of
// every block; the table is passed by reference instead of being copied per thread.
template <int Depth, typename Functor, typename... Args>
void run_multi_tensor(int blocks, const TensorListMeta<Depth>& meta, const Functor& functor,
                      Args... args) {
  blockDim = dim3(kBlockSize, 1, 1);
  gridDim = dim3(blocks, 1, 1);
  for (int b = 0; b < blocks; ++b) {
    blockIdx = make_uint3(b, 0, 0);
    for (int t = kBlockSize - 1; t >= 0; --t) {
      threadIdx = make_uint3(t, 0, 0);
      const ChunkRef ref = locate_chunk(meta);
      functor(meta, ref, args...);
    }
  }
}

template <bool kMuProducts, typename Prepare>
void run_prepare(int blocks, const PrepareMeta<kMuProducts>& meta, const float* control,
                 const Prepare& prepare, void* scratch) {
  blockDim = dim3(kPrepareThreads, 1, 1);
  gridDim = dim3(blocks, 1, 1);
  for (int b = 0; b < blocks; ++b) {
    blockIdx = make_uint3(b, 0, 0);
    for (int t = kPrepareThreads - 1; t >= 0; --t) {
      threadIdx = make_uint3(t, 0, 0);
      prepare_kernel<kMuProducts, Prepare>(meta, control, prepare, scratch);
    }
  }
}

}  // namespace emulation
}  // namespace cuda
}  // namespace tunebook

using namespace tunebook;
using namespace tunebook::cuda;

namespace {

int g_failures = 0;
int g_checks = 0;

float widen(__nv_bfloat16 x) { return __bfloat162float(x); }
float widen(__half x) { return __half2float(x); }
template <typename T>
T narrow(float x);
template <>
__nv_bfloat16 narrow<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <>
__half narrow<__half>(float x) { return __float2half_rn(x); }

size_t dtype_size(DType d) {
  return d == DType::kFloat64 ? 8 : d == DType::kFloat32 ? 4 : 2;
}

// Element i of a buffer of dtype d, in double (exact for every dtype).
double load(const void* p, DType d, int64_t i) {
  switch (d) {
    case DType::kFloat64: return static_cast<const double*>(p)[i];
    case DType::kFloat32: return static_cast<const float*>(p)[i];
    case DType::kBFloat16: return widen(static_cast<const __nv_bfloat16*>(p)[i]);
    default: return widen(static_cast<const __half*>(p)[i]);
  }
}
// Stores v (an opmath value: float, or double for float64) rounded to dtype d.
void store(void* p, DType d, int64_t i, double v) {
  switch (d) {
    case DType::kFloat64: static_cast<double*>(p)[i] = v; break;
    case DType::kFloat32: static_cast<float*>(p)[i] = static_cast<float>(v); break;
    case DType::kBFloat16:
      static_cast<__nv_bfloat16*>(p)[i] = narrow<__nv_bfloat16>(static_cast<float>(v));
      break;
    default: static_cast<__half*>(p)[i] = narrow<__half>(static_cast<float>(v)); break;
  }
}

// One tensor's buffer, 256-byte aligned plus `offset` elements (offset 1 = misaligned for
// vector access, like a view at an odd storage offset).
struct Buffer {
  std::vector<unsigned char> bytes;
  void* data = nullptr;
  Buffer(int64_t n, DType d, int offset) {
    const size_t size = dtype_size(d);
    bytes.resize(static_cast<size_t>(n + offset) * size + 512);
    auto base = reinterpret_cast<uintptr_t>(bytes.data());
    base = (base + 255) / 256 * 256;
    data = reinterpret_cast<void*>(base + offset * size);
  }
};

// Params, grads, K state lists over `sizes`; a deep copy gives the reference its own data.
struct Problem {
  DType param, state;
  std::vector<int64_t> sizes;
  std::vector<std::vector<std::shared_ptr<Buffer>>> lists;  // [0] params, [1] grads, [2..] states
  std::vector<float> steps, mu_products;

  // State list j starts at |N(0, 0.01^2)| + state_init[j] (0 where not given).
  Problem(const std::vector<int64_t>& sizes_, DType p, DType s, int states, uint32_t seed,
          std::vector<float> state_init = {})
      : param(p), state(s), sizes(sizes_) {
    std::mt19937 gen(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    lists.resize(2 + states);
    for (size_t k = 0; k < lists.size(); ++k) {
      for (size_t i = 0; i < sizes.size(); ++i) {
        const DType d = k < 2 ? p : s;
        // Every third tensor has one misaligned operand (rotating which one).
        const int offset = (i % 3 == 0 && (i / 3) % lists.size() == k) ? 1 : 0;
        auto buf = std::make_shared<Buffer>(sizes[i], d, offset);
        for (int64_t e = 0; e < sizes[i]; ++e) {
          const float init = k >= 2 && k - 2 < state_init.size() ? state_init[k - 2] : 0.0f;
          float v = k == 0 ? normal(gen) : k == 1 ? normal(gen) * 0.1f
                                                  : std::fabs(normal(gen)) * 0.01f + init;
          store(buf->data, d, e, v);
        }
        lists[k].push_back(buf);
      }
    }
    steps.assign(sizes.size(), 3.0f);
    mu_products.assign(sizes.size(), 0.7f);
  }

  Problem deep_copy() const {
    Problem c = *this;
    for (auto& list : c.lists) {
      for (auto& buf : list) {
        auto copy = std::make_shared<Buffer>(*buf);
        // Re-point into the copy's bytes at the same offset from its start.
        copy->data = copy->bytes.data() +
                     (static_cast<unsigned char*>(buf->data) - buf->bytes.data());
        buf = copy;
      }
    }
    return c;
  }

  void* ptr(size_t k, size_t i) const { return lists[k][i]->data; }

  TensorTable table(int depth) const {
    TensorTable t(depth, static_cast<int64_t>(sizes.size()));
    for (size_t i = 0; i < sizes.size(); ++i) {
      t.numel[i] = sizes[i];
      for (size_t k = 0; k < lists.size(); ++k) t.set(static_cast<int>(k), i, ptr(k, i));
    }
    return t;
  }
  std::vector<void*> step_ptrs() {
    std::vector<void*> out;
    for (auto& s : steps) out.push_back(&s);
    return out;
  }
  std::vector<void*> mu_ptrs() {
    std::vector<void*> out;
    for (auto& m : mu_products) out.push_back(&m);
    return out;
  }
};

void compare(const std::string& name, const Problem& got, const Problem& want) {
  ++g_checks;
  for (size_t k = 0; k < got.lists.size(); ++k) {
    const DType d = k < 2 ? got.param : got.state;
    for (size_t i = 0; i < got.sizes.size(); ++i) {
      const size_t bytes = static_cast<size_t>(got.sizes[i]) * dtype_size(d);
      if (bytes && std::memcmp(got.ptr(k, i), want.ptr(k, i), bytes) != 0) {
        for (int64_t e = 0; e < got.sizes[i]; ++e) {
          const double a = load(got.ptr(k, i), d, e), b = load(want.ptr(k, i), d, e);
          if (std::memcmp(&a, &b, sizeof a) != 0) {
            std::printf("FAIL %s: list %zu tensor %zu (numel %lld) element %lld: %.9g vs %.9g\n",
                        name.c_str(), k, i, static_cast<long long>(got.sizes[i]),
                        static_cast<long long>(e), a, b);
            break;
          }
        }
        ++g_failures;
        return;
      }
    }
  }
  if (got.steps != want.steps || got.mu_products != want.mu_products) {
    std::printf("FAIL %s: steps or mu_products differ\n", name.c_str());
    ++g_failures;
  }
}

// Reference: the per-element loop of the CPU path, element by element through the opmath
// type T. With `grad_scale` the grads are written back as math::unscaled_grad of the raw
// grad; otherwise they are read-only.
template <typename T, typename Update>
void reference_loop(Problem& r, const std::function<void(size_t)>& per_tensor,
                    const Update& update, const float* grad_scale = nullptr) {
  for (size_t i = 0; i < r.sizes.size(); ++i) {
    per_tensor(i);
    for (int64_t e = 0; e < r.sizes[i]; ++e) {
      T v[8] = {};
      for (size_t k = 0; k < r.lists.size(); ++k) {
        v[k] = static_cast<T>(load(r.ptr(k, i), k < 2 ? r.param : r.state, e));
      }
      const T raw_grad = v[1];
      update(i, v);
      for (size_t k = 0; k < r.lists.size(); ++k) {
        if (k == 1) continue;
        store(r.ptr(k, i), k < 2 ? r.param : r.state, e, v[k]);
      }
      if (grad_scale != nullptr) {
        store(r.ptr(1, i), r.param, e, math::unscaled_grad(raw_grad, *grad_scale));
      }
    }
  }
}

// Calls f(T{}) with the opmath type of params of dtype d.
template <typename F>
void with_opmath(DType d, F&& f) {
  if (d == DType::kFloat64) {
    f(double{});
  } else {
    f(float{});
  }
}

std::vector<int64_t> test_sizes() {
  // Chunk edges, a tail of every length, an empty tensor, and enough tiny tensors that every
  // update kernel needs more than one launch (SGD's table holds 902 tensors).
  std::vector<int64_t> sizes = {0, 1, 3, 5, 6, 7, 4099, 65535, 65536, 65537, 2 * 65536 + 3};
  for (int i = 0; i < 950; ++i) sizes.push_back(1 + (i * 7) % 9);
  return sizes;
}

const char* dtype_name(DType d) {
  return d == DType::kFloat64   ? "f64"
         : d == DType::kFloat32 ? "f32"
         : d == DType::kBFloat16 ? "bf16"
                                 : "f16";
}

const std::vector<std::pair<DType, DType>> kDtypes = {
    {DType::kFloat32, DType::kFloat32}, {DType::kBFloat16, DType::kBFloat16},
    {DType::kBFloat16, DType::kFloat32}, {DType::kFloat16, DType::kFloat16},
    {DType::kFloat16, DType::kFloat32}, {DType::kFloat64, DType::kFloat64}};

// GradScaler's scale for the checks that turn the unscaled-gradient store on: not a power of
// two, so a multiplication by 1/scale would not match the division.
const float kGradScale = 3.0f;

void check_adam(bool amsgrad, bool decoupled, double wd, bool maximize, int rule, bool skip,
                bool lr_tensor, DType p, DType s,
                const std::vector<int64_t>& sizes = test_sizes(), bool unscale = false) {
  const std::string name = std::string("adam ams=") + std::to_string(amsgrad) +
                           " unscale=" + std::to_string(unscale) +
                           " decoupled=" + std::to_string(decoupled) + " wd=" +
                           std::to_string(wd) + " max=" + std::to_string(maximize) + " rule=" +
                           std::to_string(rule) + " skip=" + std::to_string(skip) + " " +
                           dtype_name(p) + "/" + dtype_name(s) + " tensors=" +
                           std::to_string(sizes.size());
  Problem got(sizes, p, s, 3, 1);
  Problem want = got.deep_copy();
  float control[2] = {0.7f, skip ? 1.0f : 0.0f};
  const double lr_value = 0.01;
  AdamArgs args;
  args.lr.value = lr_tensor ? 123.0 : lr_value;  // the tensor must win
  args.lr.tensor = lr_tensor ? &lr_value : nullptr;
  args.lr.tensor_is_double = true;
  args.beta1 = 0.9, args.beta2 = 0.99, args.eps = 1e-6, args.weight_decay = wd;
  args.amsgrad = amsgrad, args.maximize = maximize, args.decoupled_weight_decay = decoupled;
  args.rule = rule, args.control = control;
  args.grad_scale = unscale ? &kGradScale : nullptr;
  for (int step = 0; step < 2; ++step) {
    TensorTable table = got.table(kAdamDepth);
    if (!amsgrad) {
      for (int64_t i = 0; i < table.count; ++i) table.set(4, i, nullptr);
    }
    std::vector<unsigned char> scratch(adam_scratch_bytes(table.count) + 16);
    launch_adam_step(table, got.step_ptrs(), scratch.data(), p, s, args, nullptr);
    if (skip) continue;
    with_opmath(p, [&](auto opmath_tag) {
      using T = decltype(opmath_tag);
      std::vector<math::AdamScalars<T>> sc(want.sizes.size());
      const T mult = maximize ? -control[0] : control[0];
      auto run = [&](auto ams_tag, auto wd_tag) {
        reference_loop<T>(
            want,
            [&](size_t i) {
              want.steps[i] += 1.0f;
              sc[i] = math::adam_scalars<T>(want.steps[i], lr_value, args.beta1, args.beta2,
                                            args.eps, wd, decoupled, rule);
            },
            [&](size_t i, T* v) {
              math::adam_update<decltype(ams_tag)::value, false, decltype(wd_tag)::value>(
                  v[0], v[1], v[2], v[3], v[4], mult, sc[i]);
            },
            args.grad_scale);
      };
      with_bool(amsgrad, [&](auto a) { with_bool(wd != 0.0, [&](auto w) { run(a, w); }); });
    });
  }
  compare(name, got, want);
}

void check_sgd(double momentum, double dampening, double wd, bool nesterov, bool maximize,
               DType p, DType s, bool unscale = false) {
  const std::string name = "sgd mom=" + std::to_string(momentum) + " nest=" +
                           std::to_string(nesterov) + " unscale=" + std::to_string(unscale) +
                           " " + dtype_name(p) + "/" + dtype_name(s);
  const bool has_momentum = momentum != 0.0;
  Problem got(test_sizes(), p, has_momentum ? s : p, has_momentum ? 1 : 0, 2);
  Problem want = got.deep_copy();
  float control[2] = {0.5f, 0.0f};
  for (int step = 0; step < 2; ++step) {
    SgdArgs args;
    args.lr.value = 0.1, args.momentum = momentum, args.dampening = dampening;
    args.weight_decay = wd, args.nesterov = nesterov, args.maximize = maximize;
    args.is_first_step = step == 0, args.control = control;
    args.grad_scale = unscale ? &kGradScale : nullptr;
    TensorTable table = got.table(3);
    launch_sgd_step(table, p, has_momentum ? s : p, args, nullptr);
    with_opmath(p, [&](auto opmath_tag) {
      using T = decltype(opmath_tag);
      const math::SgdScalars<T> sc = math::sgd_scalars<T>(0.1, momentum, dampening, wd);
      const T mult = maximize ? -control[0] : control[0];
      auto run = [&](auto mom, auto nest, auto first, auto wdt) {
        reference_loop<T>(
            want, [](size_t) {},
            [&](size_t, T* v) {
              T buf = decltype(mom)::value ? v[2] : T(0);
              math::sgd_update<decltype(mom)::value, decltype(nest)::value,
                               decltype(first)::value, false, decltype(wdt)::value>(
                  v[0], v[1], buf, mult, sc);
              v[2] = buf;
            },
            args.grad_scale);
      };
      with_bool(wd != 0.0, [&](auto w) {
        if (!has_momentum) {
          run(std::false_type{}, std::false_type{}, std::false_type{}, w);
        } else {
          with_bool(nesterov, [&](auto n) {
            with_bool(step == 0, [&](auto f) { run(std::true_type{}, n, f, w); });
          });
        }
      });
    });
  }
  compare(name, got, want);
}

void check_rmsprop(int rule, bool centered, double momentum, double wd, bool maximize, DType p,
                   DType s, bool unscale = false) {
  const std::string name = "rmsprop rule=" + std::to_string(rule) + " centered=" +
                           std::to_string(centered) + " mom=" + std::to_string(momentum) +
                           " unscale=" + std::to_string(unscale) + " " + dtype_name(p) + "/" +
                           dtype_name(s);
  // square_avg >= 1 > grad_avg^2: a consistent centered state (no sqrt of a negative).
  Problem got(test_sizes(), p, s, 3, 3, {1.0f, 0.0f, 0.0f});
  Problem want = got.deep_copy();
  float control[2] = {0.9f, 0.0f};
  const float lr_value = 0.01f;
  RmspropArgs args;
  args.lr.tensor = &lr_value;  // a float32 lr tensor
  args.alpha = 0.95, args.eps = 1e-6, args.weight_decay = wd, args.momentum = momentum;
  args.centered = centered, args.maximize = maximize, args.rule = rule, args.control = control;
  args.grad_scale = unscale ? &kGradScale : nullptr;
  for (int step = 0; step < 2; ++step) {
    TensorTable table = got.table(kRmspropDepth);
    for (int64_t i = 0; i < table.count; ++i) {
      if (!centered) table.set(3, i, nullptr);
      if (momentum == 0.0) table.set(4, i, nullptr);
    }
    launch_rmsprop_step(table, got.step_ptrs(), p, s, args, nullptr);
    with_opmath(p, [&](auto opmath_tag) {
      using T = decltype(opmath_tag);
      const math::RmspropScalars<T> sc =
          math::rmsprop_scalars<T>(static_cast<double>(lr_value), 0.95, 1e-6, wd, momentum);
      const T mult = maximize ? -control[0] : control[0];
      auto run = [&](auto pb, auto cen, auto mom, auto wdt) {
        constexpr int kRule = decltype(pb)::value ? math::kRulePlaybook : math::kRuleTorch;
        reference_loop<T>(
            want, [&](size_t i) { want.steps[i] += 1.0f; },
            [&](size_t, T* v) {
              const T ga0 = v[3], buf0 = v[4];
              math::rmsprop_update<kRule, decltype(cen)::value, decltype(mom)::value, false,
                                   decltype(wdt)::value>(v[0], v[1], v[2], v[3], v[4], mult,
                                                         sc);
              if (!decltype(cen)::value) v[3] = ga0;  // absent lists stay untouched
              if (!decltype(mom)::value) v[4] = buf0;
            },
            args.grad_scale);
      };
      with_bool(rule == math::kRulePlaybook, [&](auto pb) {
        with_bool(centered, [&](auto c) {
          with_bool(momentum != 0.0,
                    [&](auto m) { with_bool(wd != 0.0, [&](auto w) { run(pb, c, m, w); }); });
        });
      });
    });
  }
  compare(name, got, want);
}

void check_nadam(int rule, bool decoupled, double wd, bool maximize, DType p, DType s,
                 bool unscale = false) {
  const std::string name = "nadam rule=" + std::to_string(rule) + " decoupled=" +
                           std::to_string(decoupled) + " unscale=" + std::to_string(unscale) +
                           " " + dtype_name(p) + "/" + dtype_name(s);
  Problem got(test_sizes(), p, s, 2, 4);
  Problem want = got.deep_copy();
  float control[2] = {1.0f, 0.0f};
  NadamArgs args;
  args.lr.value = 2e-3, args.beta1 = 0.9, args.beta2 = 0.999, args.eps = 1e-8;
  args.weight_decay = wd, args.momentum_decay = 4e-3, args.decoupled_weight_decay = decoupled;
  args.maximize = maximize, args.rule = rule, args.control = control;
  args.grad_scale = unscale ? &kGradScale : nullptr;
  for (int step = 0; step < 2; ++step) {
    TensorTable table = got.table(kNadamDepth);
    std::vector<unsigned char> scratch(nadam_scratch_bytes(table.count) + 16);
    launch_nadam_step(table, got.step_ptrs(), got.mu_ptrs(), scratch.data(), p, s, args,
                      nullptr);
    with_opmath(p, [&](auto opmath_tag) {
      using T = decltype(opmath_tag);
      std::vector<math::NadamScalars<T>> sc(want.sizes.size());
      const T mult = maximize ? -control[0] : control[0];
      auto run = [&](auto pb, auto wdt) {
        constexpr int kRule = decltype(pb)::value ? math::kRulePlaybook : math::kRuleTorch;
        reference_loop<T>(
            want,
            [&](size_t i) {
              want.steps[i] += 1.0f;
              sc[i] = math::nadam_scalars<T>(want.steps[i], 2e-3, 0.9, 0.999, 1e-8, wd, 4e-3,
                                             decoupled, want.mu_products[i], rule);
              want.mu_products[i] = sc[i].new_mu_product;
            },
            [&](size_t i, T* v) {
              math::nadam_update<kRule, false, decltype(wdt)::value>(v[0], v[1], v[2], v[3],
                                                                    mult, sc[i]);
            },
            args.grad_scale);
      };
      with_bool(rule == math::kRulePlaybook, [&](auto pb) {
        with_bool(wd != 0.0, [&](auto w) { run(pb, w); });
      });
    });
  }
  compare(name, got, want);
}

// A table holds at most kMaxTensors per launch; the prefix sums must also be right when a
// single tensor has more chunks than blocks of any earlier launch: checked by sizes above.
void check_locate_chunk() {
  TensorListMeta<1> meta;
  const int64_t numels[] = {1, 65536, 65537, 3 * 65536 + 1, 5};
  meta.num_tensors = 5;
  meta.chunk_start[0] = 0;
  for (int t = 0; t < 5; ++t) {
    meta.numel[t] = numels[t];
    meta.chunk_start[t + 1] =
        meta.chunk_start[t] + static_cast<int32_t>((numels[t] + kChunkSize - 1) / kChunkSize);
  }
  int64_t covered[5] = {};
  for (int b = 0; b < meta.chunk_start[5]; ++b) {
    blockIdx = make_uint3(b, 0, 0);
    const ChunkRef ref = locate_chunk(meta);
    if (ref.offset != static_cast<int64_t>(b - meta.chunk_start[ref.tensor]) * kChunkSize ||
        ref.n <= 0 || ref.n > kChunkSize) {
      std::printf("FAIL locate_chunk: block %d -> tensor %d offset %lld n %d\n", b, ref.tensor,
                  static_cast<long long>(ref.offset), ref.n);
      ++g_failures;
    }
    covered[ref.tensor] += ref.n;
  }
  for (int t = 0; t < 5; ++t) {
    if (covered[t] != numels[t]) {
      std::printf("FAIL locate_chunk: tensor %d covered %lld of %lld\n", t,
                  static_cast<long long>(covered[t]), static_cast<long long>(numels[t]));
      ++g_failures;
    }
  }
  ++g_checks;
}

// The norm pass's reduction, replayed element by element from its specification (the
// header comment of csrc/cuda/grad_norm.cu) rather than from its code: one 64K-element
// chunk starting at `data` with `n` elements. Every element goes to one (thread, chain)
// pair and is squared into it with one fmaf, in increasing element order:
//   head:  e < head                        -> thread e, chain 0
//   body:  e = head + v * kVec + j          -> thread v % 512, chain j
//   tail:  e >= head + vectors * kVec       -> thread e - head - vectors * kVec, chain 0
// with head = the elements before the first 16-byte boundary (capped at n) and kVec = 16
// bytes of elements. Each thread's chains are added pairwise, widened to double and added
// over the threads in the order the emulated block_sum uses (thread 511 first).
// float64 grads: the same mapping with double chains (kVec = 2), one fma each.
template <typename C>
double reference_chunk_partial_in(const void* data, DType d, int64_t n) {
  const int size = static_cast<int>(dtype_size(d));
  const int vec = 16 / size;
  const int misaligned = static_cast<int>(reinterpret_cast<uintptr_t>(data) % 16);
  int64_t head = misaligned == 0 ? 0 : (16 - misaligned) / size;
  if (head > n) head = n;
  const int64_t vectors = (n - head) / vec;
  std::vector<C> chains(static_cast<size_t>(kBlockSize) * vec, C(0));
  for (int64_t e = 0; e < n; ++e) {
    int64_t thread, chain;
    if (e < head) {
      thread = e, chain = 0;
    } else if (e < head + vectors * vec) {
      thread = ((e - head) / vec) % kBlockSize, chain = (e - head) % vec;
    } else {
      thread = e - head - vectors * vec, chain = 0;
    }
    const C x = static_cast<C>(load(data, d, e));
    C& c = chains[static_cast<size_t>(thread * vec + chain)];
    c = std::fma(x, x, c);
  }
  double total = 0.0;
  for (int t = kBlockSize - 1; t >= 0; --t) {
    const C* c = &chains[static_cast<size_t>(t) * vec];
    C mine = c[0] + c[1];
    if (vec >= 4) mine = (c[0] + c[1]) + (c[2] + c[3]);
    if (vec == 8) mine = mine + ((c[4] + c[5]) + (c[6] + c[7]));
    total += static_cast<double>(mine);
  }
  return total;
}

double reference_chunk_partial(const void* data, DType d, int64_t n) {
  return d == DType::kFloat64 ? reference_chunk_partial_in<double>(data, d, n)
                              : reference_chunk_partial_in<float>(data, d, n);
}

// The final pass, replayed: thread t adds partials t, t + 1024, ... in order; the threads'
// sums are added from thread 1023 down to thread 0; one rounding to float.
float reference_final_sum(const std::vector<double>& partials) {
  double total = 0.0;
  for (int t = kSumThreads - 1; t >= 0; --t) {
    double mine = 0.0;
    for (size_t i = t; i < partials.size(); i += kSumThreads) mine += partials[i];
    total += mine;
  }
  return static_cast<float>(total);
}

// grad_sq_norm as ops_cuda.cpp runs it: one partials launch per grad dtype into one
// workspace (block_base), then the final sum. 1,700 grads: two launches for one dtype.
// Every partial and the result are compared bit for bit with the replayed specification
// (tails of every length, each of the 16-byte misalignments: heads of every length, and
// heads longer than the tensor), and the result with float64 to 1e-6.
void check_grad_norm() {
  std::vector<int64_t> sizes = test_sizes();
  for (int i = 0; i < 750; ++i) sizes.push_back(2 + i % 5);
  for (int64_t n = 1; n <= 40; ++n) sizes.push_back(n);  // every head x tail combination
  for (int64_t n : {8191, 8192, 8193, 16383, 16385, 3 * 65536 - 9}) sizes.push_back(n);
  const DType dtypes[4] = {DType::kFloat32, DType::kBFloat16, DType::kFloat16,
                           DType::kFloat64};
  std::mt19937 gen(5);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<std::shared_ptr<Buffer>> buffers;
  TensorTable tables[4] = {TensorTable(1, 0), TensorTable(1, 0), TensorTable(1, 0),
                           TensorTable(1, 0)};
  double expected = 0.0;
  for (size_t i = 0; i < sizes.size(); ++i) {
    // Most grads float32 (so that table overflows), every 7th bf16, every 11th fp16, every
    // 13th float64; the storage offset cycles through 0-7 elements.
    const int d = i % 7 == 0 ? 1 : i % 11 == 0 ? 2 : i % 13 == 0 ? 3 : 0;
    auto buf = std::make_shared<Buffer>(sizes[i], dtypes[d], static_cast<int>(i % 8));
    for (int64_t e = 0; e < sizes[i]; ++e) {
      store(buf->data, dtypes[d], e, normal(gen));
      const double v = load(buf->data, dtypes[d], e);
      expected += v * v;
    }
    buffers.push_back(buf);
    TensorTable& t = tables[d];
    t.count += 1;
    t.ptrs.push_back(buf->data);
    t.numel.push_back(sizes[i]);
  }
  int64_t count = 0;
  for (const auto& t : tables) count += grad_sq_norm_partial_count(t);
  std::vector<double> partials(count, std::nan(""));
  int64_t written = 0;
  for (int d = 0; d < 4; ++d) {
    written += launch_grad_sq_norm_partials(tables[d], dtypes[d], partials.data(), written,
                                            nullptr);
  }
  float out = std::nanf("");
  launch_sum_partials(partials.data(), written, &out, nullptr);
  ++g_checks;
  // The same partials in launch order: dtype by dtype, tensor by tensor, chunk by chunk.
  std::vector<double> want;
  for (int d = 0; d < 4; ++d) {
    const TensorTable& t = tables[d];
    for (int64_t i = 0; i < t.count; ++i) {
      for (int64_t off = 0; off < t.numel[i]; off += kChunkSize) {
        const int64_t n = std::min<int64_t>(kChunkSize, t.numel[i] - off);
        const auto* base = static_cast<const unsigned char*>(t.ptrs[i]);
        want.push_back(reference_chunk_partial(base + off * dtype_size(dtypes[d]), dtypes[d], n));
      }
    }
  }
  bool ok = written == count && static_cast<int64_t>(want.size()) == count;
  for (size_t k = 0; ok && k < want.size(); ++k) {
    if (std::memcmp(&partials[k], &want[k], sizeof(double)) != 0) {
      std::printf("FAIL grad_sq_norm: partial %zu is %.17g, the specification gives %.17g\n", k,
                  partials[k], want[k]);
      ok = false;
    }
  }
  const float want_out = reference_final_sum(want);
  ok = ok && std::memcmp(&out, &want_out, sizeof(float)) == 0;
  ok = ok && std::fabs(out - expected) <= 1e-6 * expected;
  if (!ok) {
    std::printf("FAIL grad_sq_norm: %lld of %lld partials, sum %.9g vs %.9g (float64 %.9g)\n",
                static_cast<long long>(written), static_cast<long long>(count), out, want_out,
                expected);
    ++g_failures;
  }
  // A finite sum of squares above the float32 maximum rounds to inf (a skipped step), as on
  // the CPU: float32 grads of 2e19 and a float64 grad of 1e30.
  const float big[3] = {2e19f, 0.0f, -2e19f};
  const double huge[1] = {1e30};
  TensorTable big_table(1, 1), huge_table(1, 1);
  big_table.set(0, 0, const_cast<float*>(big));
  big_table.numel[0] = 3;
  huge_table.set(0, 0, const_cast<double*>(huge));
  huge_table.numel[0] = 1;
  for (const auto& [table, dtype] : {std::make_pair(&big_table, DType::kFloat32),
                                     std::make_pair(&huge_table, DType::kFloat64)}) {
    std::vector<double> part(grad_sq_norm_partial_count(*table));
    const int64_t n = launch_grad_sq_norm_partials(*table, dtype, part.data(), 0, nullptr);
    float sum = 0.0f;
    launch_sum_partials(part.data(), n, &sum, nullptr);
    ++g_checks;
    if (!std::isinf(sum)) {
      std::printf("FAIL grad_sq_norm overflow (%s): %.9g, expected inf\n", dtype_name(dtype),
                  sum);
      ++g_failures;
    }
  }
}

}  // namespace

int main() {
  check_grad_norm();
  check_locate_chunk();
  for (const auto& [p, s] : kDtypes) {
    check_adam(true, false, 0.01, true, math::kRuleTorch, false, false, p, s);
    check_sgd(0.9, 0.1, 0.01, true, true, p, s);
    check_rmsprop(math::kRuleTorch, true, 0.9, 0.01, false, p, s);
    check_nadam(math::kRuleTorch, false, 0.01, true, p, s);
  }
  const DType f32 = DType::kFloat32, bf16 = DType::kBFloat16;
  check_adam(false, true, 0.1, false, math::kRulePlaybook, false, true, f32, f32);
  check_adam(false, false, 0.0, false, math::kRuleTorch, false, true, bf16, f32);
  check_adam(true, false, 0.01, false, math::kRuleTorch, true, false, f32, f32);  // skipped
  // More tensors than one step-prepare launch holds (3600) and than 6 update launches.
  check_adam(false, false, 0.0, false, math::kRuleTorch, false, false, f32, f32,
             std::vector<int64_t>(3700, 2));
  check_sgd(0.0, 0.0, 0.0, false, false, bf16, bf16);
  check_sgd(0.0, 0.0, 0.01, false, true, f32, f32);
  check_sgd(0.8, 0.3, 0.0, false, false, f32, f32);
  check_rmsprop(math::kRulePlaybook, false, 0.9, 0.0, true, f32, f32);
  check_rmsprop(math::kRulePlaybook, true, 0.0, 0.01, false, bf16, f32);
  check_rmsprop(math::kRuleTorch, false, 0.0, 0.0, false, f32, f32);
  check_nadam(math::kRulePlaybook, true, 0.05, false, f32, f32);
  check_nadam(math::kRulePlaybook, false, 0.0, false, bf16, f32);
  // GradScaler's unscaled-gradient store, every family, float32 / bf16 / float64.
  const DType f64 = DType::kFloat64;
  check_adam(true, false, 0.01, true, math::kRuleTorch, false, false, f32, f32, test_sizes(),
             true);
  check_adam(false, true, 0.01, false, math::kRuleTorch, false, false, bf16, f32, test_sizes(),
             true);
  check_adam(false, false, 0.01, false, math::kRuleTorch, true, false, f32, f32, test_sizes(),
             true);  // skipped: the grads stay scaled
  check_sgd(0.9, 0.0, 0.01, true, false, f64, f64, true);
  check_sgd(0.0, 0.0, 0.0, false, true, bf16, bf16, true);
  check_rmsprop(math::kRuleTorch, true, 0.9, 0.01, true, f32, f32, true);
  check_nadam(math::kRuleTorch, true, 0.01, false, f64, f64, true);
  check_adam(false, false, 0.0, false, math::kRulePlaybook, false, true, f64, f64);
  if (g_failures) {
    std::printf("%d of %d checks failed\n", g_failures, g_checks);
    return 1;
  }
  std::printf("all %d checks passed\n", g_checks);
  return 0;
}
