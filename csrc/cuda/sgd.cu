// CUDA: tunebook::sgd_step_ (plain, momentum, dampening, Nesterov, coupled weight decay).
// Contract: csrc/ops.cpp. Per-element math: math::sgd_update (csrc/optim_math.h), the same
// function the CPU loop calls. SGD keeps no step counter: one call is ceil(tensors / 902)
// launches.
#include "multi_tensor_apply.cuh"

namespace tunebook {
namespace cuda {
namespace {

constexpr int kSgdDepth = 3;

template <typename P, typename S, bool kMomentum, bool kNesterov, bool kFirstStep,
          bool kWeightDecay>
struct SgdBody {
  using T = typename math::OpMath<P>::type;
  P* p;
  P* g;
  S* buf;
  T grad_mult;
  math::SgdScalars<T> s;
  const float* grad_scale;  // nullptr: the grads are not written back
  float scale;

  template <bool V>
  __device__ __forceinline__ void run(const Access& a) {
    T rp[kILP], rg[kILP], rb[kILP] = {};
    load<V>(rp, p, a);
    load<V>(rg, g, a);
    // On the first step torch clones the grad into the buffer: the old contents are unused.
    if constexpr (kMomentum && !kFirstStep) load<V>(rb, buf, a);
#pragma unroll
    for (int j = 0; j < kILP; ++j) {
      math::sgd_update<kMomentum, kNesterov, kFirstStep, false, kWeightDecay>(
          rp[j], rg[j], rb[j], grad_mult, s);
    }
    store<V>(p, a, rp);
    if constexpr (kMomentum) store<V>(buf, a, rb);
    if (grad_scale != nullptr) {
#pragma unroll
      for (int j = 0; j < kILP; ++j) rg[j] = math::unscaled_grad(rg[j], scale);
      store<V>(g, a, rg);
    }
  }
};

struct SgdHyper {
  LrArg lr;
  double momentum, dampening, weight_decay;
};

template <typename P, typename S, bool kMomentum, bool kNesterov, bool kFirstStep,
          bool kWeightDecay>
struct SgdFunctor {
  static constexpr int kMinBlocksPerSm = kUpdateMinBlocksPerSm;
  __device__ __forceinline__ void operator()(const TensorListMeta<kSgdDepth>& meta,
                                             const ChunkRef& ref, const float* control,
                                             bool maximize, SgdHyper h,
                                             const float* grad_scale) const {
    const StepControl c = read_control(control, maximize);
    if (c.skip) return;
    using T = typename math::OpMath<P>::type;
    SgdBody<P, S, kMomentum, kNesterov, kFirstStep, kWeightDecay> body{
        chunk_ptr<P>(meta, 0, ref), chunk_ptr<P>(meta, 1, ref),
        chunk_ptr<S>(meta, 2, ref), static_cast<T>(c.grad_mult),
        math::sgd_scalars<T>(read_lr(h.lr), h.momentum, h.dampening, h.weight_decay),
        grad_scale, read_grad_scale(grad_scale)};
    const bool aligned = is_vector_aligned<P>(body.p) && is_vector_aligned<P>(body.g) &&
                         is_vector_aligned<S>(body.buf);
    for_each_in_chunk(ref.n, aligned, body);
  }
};

}  // namespace

void launch_sgd_step(const TensorTable& table, DType param, DType state, const SgdArgs& args,
                     void* stream_ptr) {
  const auto stream = static_cast<cudaStream_t>(stream_ptr);
  if (table.count == 0) return;
  const SgdHyper hyper{args.lr, args.momentum, args.dampening, args.weight_decay};
  auto run = [&](auto mom, auto nest, auto first, auto wd) {
    auto apply = [&](auto param_tag, auto state_tag) {
      using Functor = SgdFunctor<decltype(param_tag), decltype(state_tag), decltype(mom)::value,
                                 decltype(nest)::value, decltype(first)::value,
                                 decltype(wd)::value>;
      multi_tensor_apply<kSgdDepth>(table, stream, 0, "sgd_step_", Functor{}, args.control,
                                    args.maximize, hyper, args.grad_scale);
    };
    if constexpr (decltype(mom)::value) {
      dispatch_dtypes(param, state, apply);
    } else {
      // No buffers: the state dtype is irrelevant, instantiate with the params' dtype only.
      dispatch_param_dtype(param, apply);
    }
  };
  with_bool(args.weight_decay != 0.0, [&](auto wd) {
    if (args.momentum == 0.0) {
      run(std::false_type{}, std::false_type{}, std::false_type{}, wd);
    } else {
      with_bool(args.nesterov, [&](auto nest) {
        with_bool(args.is_first_step, [&](auto first) { run(std::true_type{}, nest, first, wd); });
      });
    }
  });
}

}  // namespace cuda
}  // namespace tunebook
