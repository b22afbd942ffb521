// CUDA: tunebook::adam_step_ (Adam, AdamW, AMSGrad; torch or playbook rule).
// Contract: csrc/ops.cpp. Per-element math: math::adam_update (csrc/optim_math.h), the
// same function the CPU loop calls. Launches per call: ceil(tensors / 3600) prepare
// launches + ceil(tensors / 541) update launches.
#include "step_scalars.cuh"

namespace tunebook {
namespace cuda {
namespace {

// Prepare: step += 1, then this tensor's scalars from the incremented step (in double),
// stored in the opmath type T of the params.
template <typename T>
struct AdamPrepare {
  LrArg lr;
  double beta1, beta2, eps, weight_decay;
  bool decoupled;
  int rule;

  __device__ __forceinline__ void operator()(int64_t i, float* step, float*,
                                             void* scratch) const {
    const float t = *step + 1.0f;
    *step = t;
    static_cast<math::AdamScalars<T>*>(scratch)[i] = math::adam_scalars<T>(
        t, read_lr(lr), beta1, beta2, eps, weight_decay, decoupled, rule);
  }
};

template <typename P, typename S, bool kAmsgrad, bool kWeightDecay>
struct AdamBody {
  using T = typename math::OpMath<P>::type;
  P* p;
  P* g;
  S* m;
  S* v;
  S* vmax;
  T grad_mult;
  math::AdamScalars<T> s;
  const float* grad_scale;  // nullptr: the grads are not written back
  float scale;

  template <bool V>
  __device__ __forceinline__ void run(const Access& a) {
    T rp[kILP], rg[kILP], rm[kILP], rv[kILP], rx[kILP] = {};
    load<V>(rp, p, a);
    load<V>(rg, g, a);
    load<V>(rm, m, a);
    load<V>(rv, v, a);
    if constexpr (kAmsgrad) load<V>(rx, vmax, a);
#pragma unroll
    for (int j = 0; j < kILP; ++j) {
      math::adam_update<kAmsgrad, false, kWeightDecay>(rp[j], rg[j], rm[j], rv[j], rx[j],
                                                       grad_mult, s);
    }
    store<V>(p, a, rp);
    store<V>(m, a, rm);
    store<V>(v, a, rv);
    if constexpr (kAmsgrad) store<V>(vmax, a, rx);
    if (grad_scale != nullptr) {
#pragma unroll
      for (int j = 0; j < kILP; ++j) rg[j] = math::unscaled_grad(rg[j], scale);
      store<V>(g, a, rg);
    }
  }
};

template <typename P, typename S, bool kAmsgrad, bool kWeightDecay>
struct AdamFunctor {
  static constexpr int kMinBlocksPerSm = wide_update_min_blocks_per_sm<P>();
  __device__ __forceinline__ void operator()(const TensorListMeta<kAdamDepth>& meta,
                                             const ChunkRef& ref, const float* control,
                                             bool maximize, const float* grad_scale) const {
    const StepControl c = read_control(control, maximize);
    if (c.skip) return;
    using T = typename math::OpMath<P>::type;
    AdamBody<P, S, kAmsgrad, kWeightDecay> body{
        chunk_ptr<P>(meta, 0, ref),
        chunk_ptr<P>(meta, 1, ref),
        chunk_ptr<S>(meta, 2, ref),
        chunk_ptr<S>(meta, 3, ref),
        chunk_ptr<S>(meta, 4, ref),
        static_cast<T>(c.grad_mult),
        *static_cast<const math::AdamScalars<T>*>(meta.addresses[5][ref.tensor]),
        grad_scale,
        read_grad_scale(grad_scale)};
    const bool aligned = is_vector_aligned<P>(body.p) && is_vector_aligned<P>(body.g) &&
                         is_vector_aligned<S>(body.m) && is_vector_aligned<S>(body.v) &&
                         is_vector_aligned<S>(body.vmax);
    for_each_in_chunk(ref.n, aligned, body);
  }
};

}  // namespace

// Sized for the widest opmath (double), whatever the call's dtype.
size_t adam_scratch_bytes(int64_t count) {
  return static_cast<size_t>(count) * sizeof(math::AdamScalars<double>);
}

void launch_adam_step(TensorTable& table, const std::vector<void*>& steps, void* scratch,
                      DType param, DType state, const AdamArgs& args, void* stream_ptr) {
  const auto stream = static_cast<cudaStream_t>(stream_ptr);
  if (table.count == 0) return;
  auto prepare = [&](auto opmath_tag) {
    using T = decltype(opmath_tag);
    launch_prepare<false>(steps, nullptr, args.control,
                          AdamPrepare<T>{args.lr, args.beta1, args.beta2, args.eps,
                                         args.weight_decay, args.decoupled_weight_decay,
                                         args.rule},
                          scratch, stream);
    point_at_scratch<math::AdamScalars<T>>(table, 5, scratch);
  };
  if (param == DType::kFloat64) {
    prepare(double{});
  } else {
    prepare(float{});
  }
  with_bool(args.amsgrad, [&](auto ams) {
    with_bool(args.weight_decay != 0.0, [&](auto wd) {
      dispatch_dtypes(param, state, [&](auto param_tag, auto state_tag) {
        using Functor = AdamFunctor<decltype(param_tag), decltype(state_tag),
                                    decltype(ams)::value, decltype(wd)::value>;
        multi_tensor_apply<kAdamDepth>(table, stream, 0, "adam_step_", Functor{},
                                       args.control, args.maximize, args.grad_scale);
      });
    });
  });
}

}  // namespace cuda
}  // namespace tunebook
