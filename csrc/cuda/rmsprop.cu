// CUDA: tunebook::rmsprop_step_ (centered, momentum; torch or playbook rule).
// Contract: csrc/ops.cpp. Per-element math: math::rmsprop_update (csrc/optim_math.h), the
// same function the CPU loop calls. Launches per call: ceil(tensors / 3600) step
// increments + ceil(tensors / 624) updates.
#include "step_scalars.cuh"

namespace tunebook {
namespace cuda {
namespace {

template <typename P, typename S, int kRule, bool kCentered, bool kMomentum,
          bool kWeightDecay>
struct RmspropBody {
  using T = typename math::OpMath<P>::type;
  P* p;
  P* g;
  S* sq;
  S* ga;
  S* buf;
  T grad_mult;
  math::RmspropScalars<T> s;
  const float* grad_scale;  // nullptr: the grads are not written back
  float scale;

  template <bool V>
  __device__ __forceinline__ void run(const Access& a) {
    T rp[kILP], rg[kILP], rs[kILP], ra[kILP] = {}, rb[kILP] = {};
    load<V>(rp, p, a);
    load<V>(rg, g, a);
    load<V>(rs, sq, a);
    if constexpr (kCentered) load<V>(ra, ga, a);
    if constexpr (kMomentum) load<V>(rb, buf, a);
#pragma unroll
    for (int j = 0; j < kILP; ++j) {
      math::rmsprop_update<kRule, kCentered, kMomentum, false, kWeightDecay>(
          rp[j], rg[j], rs[j], ra[j], rb[j], grad_mult, s);
    }
    store<V>(p, a, rp);
    store<V>(sq, a, rs);
    if constexpr (kCentered) store<V>(ga, a, ra);
    if constexpr (kMomentum) store<V>(buf, a, rb);
    if (grad_scale != nullptr) {
#pragma unroll
      for (int j = 0; j < kILP; ++j) rg[j] = math::unscaled_grad(rg[j], scale);
      store<V>(g, a, rg);
    }
  }
};

struct RmspropHyper {
  LrArg lr;
  double alpha, eps, weight_decay, momentum;
};

template <typename P, typename S, int kRule, bool kCentered, bool kMomentum,
          bool kWeightDecay>
struct RmspropFunctor {
  static constexpr int kMinBlocksPerSm = wide_update_min_blocks_per_sm<P>();
  __device__ __forceinline__ void operator()(const TensorListMeta<kRmspropDepth>& meta,
                                             const ChunkRef& ref, const float* control,
                                             bool maximize, RmspropHyper h,
                                             const float* grad_scale) const {
    const StepControl c = read_control(control, maximize);
    if (c.skip) return;
    using T = typename math::OpMath<P>::type;
    RmspropBody<P, S, kRule, kCentered, kMomentum, kWeightDecay> body{
        chunk_ptr<P>(meta, 0, ref), chunk_ptr<P>(meta, 1, ref),
        chunk_ptr<S>(meta, 2, ref), chunk_ptr<S>(meta, 3, ref),
        chunk_ptr<S>(meta, 4, ref), static_cast<T>(c.grad_mult),
        math::rmsprop_scalars<T>(read_lr(h.lr), h.alpha, h.eps, h.weight_decay, h.momentum),
        grad_scale, read_grad_scale(grad_scale)};
    const bool aligned = is_vector_aligned<P>(body.p) && is_vector_aligned<P>(body.g) &&
                         is_vector_aligned<S>(body.sq) && is_vector_aligned<S>(body.ga) &&
                         is_vector_aligned<S>(body.buf);
    for_each_in_chunk(ref.n, aligned, body);
  }
};

}  // namespace

void launch_rmsprop_step(const TensorTable& table, const std::vector<void*>& steps,
                         DType param, DType state, const RmspropArgs& args,
                         void* stream_ptr) {
  const auto stream = static_cast<cudaStream_t>(stream_ptr);
  if (table.count == 0) return;
  // The update reads no step, so the order of the two launches does not matter; the
  // increment goes first as in the contract.
  launch_prepare<false>(steps, nullptr, args.control, IncrementStep{}, nullptr, stream);
  const RmspropHyper hyper{args.lr, args.alpha, args.eps, args.weight_decay, args.momentum};
  with_bool(args.rule == math::kRulePlaybook, [&](auto playbook) {
    with_bool(args.centered, [&](auto centered) {
      with_bool(args.momentum != 0.0, [&](auto mom) {
        with_bool(args.weight_decay != 0.0, [&](auto wd) {
          dispatch_dtypes(param, state, [&](auto param_tag, auto state_tag) {
            constexpr int kRule =
                decltype(playbook)::value ? math::kRulePlaybook : math::kRuleTorch;
            using Functor = RmspropFunctor<decltype(param_tag), decltype(state_tag), kRule,
                                           decltype(centered)::value, decltype(mom)::value,
                                           decltype(wd)::value>;
            multi_tensor_apply<kRmspropDepth>(table, stream, 0, "rmsprop_step_", Functor{},
                                              args.control, args.maximize, hyper,
                                              args.grad_scale);
          });
        });
      });
    });
  });
}

}  // namespace cuda
}  // namespace tunebook
