// CUDA: tunebook::nadam_step_ (NAdam, NAdamW; torch or playbook rule).
// Contract: csrc/ops.cpp. Per-element math: math::nadam_update (csrc/optim_math.h), the same
// function the CPU loop calls. Launches per call: ceil(tensors / 1800) prepare launches
// (step += 1, mu_product *= mu_t, scalars) + ceil(tensors / 624) updates.
#include "step_scalars.cuh"

namespace tunebook {
namespace cuda {
namespace {

template <typename T>
struct NadamPrepare {
  LrArg lr;
  double beta1, beta2, eps, weight_decay, momentum_decay;
  bool decoupled;
  int rule;

  __device__ __forceinline__ void operator()(int64_t i, float* step, float* mu_product,
                                             void* scratch) const {
    const float t = *step + 1.0f;
    *step = t;
    const math::NadamScalars<T> s =
        math::nadam_scalars<T>(t, read_lr(lr), beta1, beta2, eps, weight_decay,
                               momentum_decay, decoupled, *mu_product, rule);
    *mu_product = s.new_mu_product;
    static_cast<math::NadamScalars<T>*>(scratch)[i] = s;
  }
};

template <typename P, typename S, int kRule, bool kWeightDecay>
struct NadamBody {
  using T = typename math::OpMath<P>::type;
  P* p;
  P* g;
  S* m;
  S* v;
  T grad_mult;
  math::NadamScalars<T> s;
  const float* grad_scale;  // nullptr: the grads are not written back
  float scale;

  template <bool V>
  __device__ __forceinline__ void run(const Access& a) {
    T rp[kILP], rg[kILP], rm[kILP], rv[kILP];
    load<V>(rp, p, a);
    load<V>(rg, g, a);
    load<V>(rm, m, a);
    load<V>(rv, v, a);
#pragma unroll
    for (int j = 0; j < kILP; ++j) {
      math::nadam_update<kRule, false, kWeightDecay>(rp[j], rg[j], rm[j], rv[j], grad_mult, s);
    }
    store<V>(p, a, rp);
    store<V>(m, a, rm);
    store<V>(v, a, rv);
    if (grad_scale != nullptr) {
#pragma unroll
      for (int j = 0; j < kILP; ++j) rg[j] = math::unscaled_grad(rg[j], scale);
      store<V>(g, a, rg);
    }
  }
};

template <typename P, typename S, int kRule, bool kWeightDecay>
struct NadamFunctor {
  static constexpr int kMinBlocksPerSm = wide_update_min_blocks_per_sm<P>();
  __device__ __forceinline__ void operator()(const TensorListMeta<kNadamDepth>& meta,
                                             const ChunkRef& ref, const float* control,
                                             bool maximize, const float* grad_scale) const {
    const StepControl c = read_control(control, maximize);
    if (c.skip) return;
    using T = typename math::OpMath<P>::type;
    NadamBody<P, S, kRule, kWeightDecay> body{
        chunk_ptr<P>(meta, 0, ref),
        chunk_ptr<P>(meta, 1, ref),
        chunk_ptr<S>(meta, 2, ref),
        chunk_ptr<S>(meta, 3, ref),
        static_cast<T>(c.grad_mult),
        *static_cast<const math::NadamScalars<T>*>(meta.addresses[4][ref.tensor]),
        grad_scale,
        read_grad_scale(grad_scale)};
    const bool aligned = is_vector_aligned<P>(body.p) && is_vector_aligned<P>(body.g) &&
                         is_vector_aligned<S>(body.m) && is_vector_aligned<S>(body.v);
    for_each_in_chunk(ref.n, aligned, body);
  }
};

}  // namespace

// Sized for the widest opmath (double), whatever the call's dtype.
size_t nadam_scratch_bytes(int64_t count) {
  return static_cast<size_t>(count) * sizeof(math::NadamScalars<double>);
}

void launch_nadam_step(TensorTable& table, const std::vector<void*>& steps,
                       const std::vector<void*>& mu_products, void* scratch, DType param,
                       DType state, const NadamArgs& args, void* stream_ptr) {
  const auto stream = static_cast<cudaStream_t>(stream_ptr);
  if (table.count == 0) return;
  auto prepare = [&](auto opmath_tag) {
    using T = decltype(opmath_tag);
    launch_prepare<true>(steps, &mu_products, args.control,
                         NadamPrepare<T>{args.lr, args.beta1, args.beta2, args.eps,
                                         args.weight_decay, args.momentum_decay,
                                         args.decoupled_weight_decay, args.rule},
                         scratch, stream);
    point_at_scratch<math::NadamScalars<T>>(table, 4, scratch);
  };
  if (param == DType::kFloat64) {
    prepare(double{});
  } else {
    prepare(float{});
  }
  with_bool(args.rule == math::kRulePlaybook, [&](auto playbook) {
    with_bool(args.weight_decay != 0.0, [&](auto wd) {
      dispatch_dtypes(param, state, [&](auto param_tag, auto state_tag) {
        constexpr int kRule = decltype(playbook)::value ? math::kRulePlaybook : math::kRuleTorch;
        using Functor =
            NadamFunctor<decltype(param_tag), decltype(state_tag), kRule, decltype(wd)::value>;
        multi_tensor_apply<kNadamDepth>(table, stream, 0, "nadam_step_", Functor{},
                                        args.control, args.maximize, args.grad_scale);
      });
    });
  });
}

}  // namespace cuda
}  // namespace tunebook
