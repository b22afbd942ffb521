// The CPU multi-tensor loop: one parallel pass over all elements of all tensors of a call.
//
// The tensors of a call are laid end to end in one flat index space; at::parallel_for cuts
// that space into one contiguous range per thread, so the cores stay busy whether the call
// holds three 20M-element tensors or 2000 tiny ones, and no thread ever sees a tensor
// boundary more than once. Within a range the element body runs on plain arrays of the
// opmath type (float, or double for float64 params): operands already of that type are used
// in place (the loop is the whole range, auto-vectorised), bf16 and fp16 operands are
// widened into small stack blocks, updated, and rounded back once.
#pragma once

// Narrow headers, not <ATen/ATen.h>: these files use only Tensor metadata, parallel_for and
// at::empty, and ATen.h (every op's declaration) was most of each file's compile time: 111 s
// of parsing alone against 29 s on 2 loaded cores, per translation unit, on a new user's
// first optimizer step.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <array>
#include <type_traits>
#include <vector>

#include "../optim_math.h"

namespace tunebook {
namespace cpu {

// Elements per widening block for bf16/fp16 (stack buffers: 512 * 4 B per operand).
constexpr int64_t kBlock = 512;
// Below this many elements in total a call runs on one thread (OpenMP wake-up ~ a few us).
constexpr int64_t kGrain = 1 << 15;

// Storage type T <-> opmath type O blocks (the identity when T is O).
template <typename T, typename O>
struct Widen {
  static O* load(T* src, O* buf, int64_t n) {
    for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<O>(src[i]);
    return buf;
  }
  static void store(T* dst, const O* buf, int64_t n) {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<T>(buf[i]);
  }
};
template <typename O>
struct Widen<O, O> {
  static O* load(O* src, O*, int64_t) { return src; }
  static void store(O*, const O*, int64_t) {}
};

inline void check_dense(const at::Tensor& t, const char* what, size_t i) {
  TORCH_CHECK(t.is_non_overlapping_and_dense(), "tunebook: ", what, "[", i,
              "] must be non-overlapping and dense (e.g. contiguous); got strides ",
              t.strides());
}

// Checks the lists of one update call and returns the params' dtype and the state dtype.
// `states`: lists that are either empty (option off) or as long as `params`.
inline std::pair<at::ScalarType, at::ScalarType> check_update_lists(
    const char* op, at::TensorList params, at::TensorList grads,
    std::initializer_list<std::pair<const char*, at::TensorList>> states) {
  TORCH_CHECK(params.size() == grads.size(), "tunebook::", op, ": got ", params.size(),
              " params but ", grads.size(), " grads");
  at::ScalarType pdt = params.empty() ? at::kFloat : params[0].scalar_type();
  at::ScalarType sdt = pdt;
  bool sdt_set = false;
  for (const auto& s : states) {
    TORCH_CHECK(s.second.empty() || s.second.size() == params.size(), "tunebook::", op,
                ": ", s.first, " has ", s.second.size(), " tensors, expected 0 or ",
                params.size());
  }
  for (size_t i = 0; i < params.size(); ++i) {
    const auto& p = params[i];
    const auto& g = grads[i];
    TORCH_CHECK(p.device().is_cpu() && g.device().is_cpu(), "tunebook::", op,
                " (CPU): params[", i, "] and grads[", i, "] must be CPU tensors");
    TORCH_CHECK(p.scalar_type() == pdt, "tunebook::", op, ": params[", i, "] has dtype ",
                p.scalar_type(), " but params[0] has ", pdt,
                "; one call takes one params dtype");
    TORCH_CHECK(pdt == at::kFloat || pdt == at::kBFloat16 || pdt == at::kHalf ||
                    pdt == at::kDouble,
                "tunebook::", op, ": params must be float32, bfloat16, float16 or float64, got ",
                pdt);
    TORCH_CHECK(g.scalar_type() == pdt, "tunebook::", op, ": grads[", i, "] has dtype ",
                g.scalar_type(), ", expected the param's ", pdt);
    TORCH_CHECK(g.sizes() == p.sizes() && g.strides() == p.strides(), "tunebook::", op,
                ": grads[", i, "] must have the shape and strides of params[", i, "]");
    check_dense(p, "params", i);
    for (const auto& s : states) {
      if (s.second.empty()) continue;
      const auto& t = s.second[i];
      if (!sdt_set) {
        sdt = t.scalar_type();
        sdt_set = true;
        TORCH_CHECK(sdt == pdt || (sdt == at::kFloat && pdt != at::kDouble), "tunebook::", op,
                    ": state dtype must be the params' dtype (or float32 for 16-bit params), "
                    "got ", sdt, " for ", pdt, " params");
      }
      TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == sdt, "tunebook::", op, ": ",
                  s.first, "[", i, "] must be a CPU tensor of dtype ", sdt);
      TORCH_CHECK(t.sizes() == p.sizes() && t.strides() == p.strides(), "tunebook::", op,
                  ": ", s.first, "[", i, "] must have the shape and strides of params[", i,
                  "]");
    }
  }
  return {pdt, sdt};
}

// Reads a 0-dim step-like scalar tensor (float32 or float64) on the CPU.
inline double read_scalar(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.numel() == 1, "tunebook: ", what,
              " must be a 1-element CPU tensor");
  return t.item<double>();
}

inline void check_scalar_list(const char* op, const char* what, at::TensorList list,
                              size_t n) {
  TORCH_CHECK(list.size() == n, "tunebook::", op, ": ", what, " has ", list.size(),
              " tensors, expected ", n);
  for (size_t i = 0; i < n; ++i) {
    TORCH_CHECK(list[i].device().is_cpu() && list[i].numel() == 1 &&
                    list[i].scalar_type() == at::kFloat,
                "tunebook::", op, ": ", what, "[", i,
                "] must be a 1-element float32 CPU tensor");
  }
}

// Returns (grad multiplier, skip) from the step-control tensor.
inline std::pair<float, bool> read_control(const at::Tensor& control) {
  TORCH_CHECK(control.device().is_cpu() && control.scalar_type() == at::kFloat &&
                  control.numel() == math::kControlSize && control.is_contiguous(),
              "tunebook: control must be a contiguous float32 CPU tensor of ",
              math::kControlSize, " elements (from tunebook::step_control_)");
  const float* c = control.data_ptr<float>();
  return {c[math::kControlGradMult], c[math::kControlSkip] != 0.0f};
}

inline double read_lr(const std::optional<at::Tensor>& lr_tensor, double lr) {
  return lr_tensor.has_value() ? read_scalar(*lr_tensor, "lr_tensor") : lr;
}

// GradScaler's scale for the unscaled-gradient store (see math::unscaled_grad): (given, value).
inline std::pair<bool, float> read_grad_scale(const std::optional<at::Tensor>& grad_scale) {
  if (!grad_scale.has_value()) return {false, 1.0f};
  const at::Tensor& t = *grad_scale;
  TORCH_CHECK(t.device().is_cpu() && t.numel() == 1 && t.scalar_type() == at::kFloat,
              "tunebook: grad_scale must be a 1-element float32 CPU tensor, got ",
              t.scalar_type(), " with ", t.numel(), " elements on ", t.device());
  return {true, *t.data_ptr<float>()};
}

template <typename F>
inline void with_bool(bool b, F&& f) {
  if (b) f(std::true_type{});
  else f(std::false_type{});
}

// Calls f(param_t{}, state_t{}) for the supported (params dtype, state dtype) pairs.
template <typename F>
inline void dispatch_dtypes(at::ScalarType pdt, at::ScalarType sdt, F&& f) {
  if (pdt == at::kFloat) {
    f(float{}, float{});
  } else if (pdt == at::kDouble) {
    f(double{}, double{});
  } else if (pdt == at::kBFloat16) {
    if (sdt == at::kFloat) f(c10::BFloat16{}, float{});
    else f(c10::BFloat16{}, c10::BFloat16{});
  } else {
    if (sdt == at::kFloat) f(c10::Half{}, float{});
    else f(c10::Half{}, c10::Half{});
  }
}

// Runs body(t, p, g, s, n) over every element of every tensor, where p, g are opmath arrays
// of params[t]/grads[t] and s[k] of states[k][t] (nullptr when list k is empty), n long.
// The body writes p and s in place, and g too when `store_grads`; bf16/fp16 blocks are
// rounded back after it returns.
template <typename param_t, typename state_t, int kStates, typename Body>
void multi_tensor_apply(at::TensorList params, at::TensorList grads,
                        const std::array<at::TensorList, kStates>& states, bool store_grads,
                        const Body& body) {
  using opmath_t = typename math::OpMath<param_t>::type;
  static_assert(std::is_same_v<state_t, param_t> || std::is_same_v<state_t, float>,
                "state dtype: the params' or float32");
  const int64_t n_tensors = static_cast<int64_t>(params.size());
  std::vector<int64_t> prefix(n_tensors + 1, 0);
  std::vector<std::array<void*, kStates + 2>> ptrs(n_tensors);
  for (int64_t t = 0; t < n_tensors; ++t) {
    prefix[t + 1] = prefix[t] + params[t].numel();
    ptrs[t][0] = params[t].data_ptr();
    ptrs[t][1] = grads[t].data_ptr();
    for (int k = 0; k < kStates; ++k)
      ptrs[t][k + 2] = states[k].empty() ? nullptr : states[k][t].data_ptr();
  }
  const int64_t total = prefix[n_tensors];
  if (total == 0) return;

  at::parallel_for(0, total, kGrain, [&](int64_t begin, int64_t end) {
    int64_t t = std::upper_bound(prefix.begin(), prefix.end(), begin) - prefix.begin() - 1;
    while (begin < end) {
      const int64_t stop = std::min(end, prefix[t + 1]);
      const int64_t offset = begin - prefix[t];
      const int64_t len = stop - begin;
      auto* P = static_cast<param_t*>(ptrs[t][0]) + offset;
      auto* G = static_cast<param_t*>(ptrs[t][1]) + offset;
      state_t* S[kStates > 0 ? kStates : 1];
      for (int k = 0; k < kStates; ++k)
        S[k] = ptrs[t][k + 2] ? static_cast<state_t*>(ptrs[t][k + 2]) + offset : nullptr;
      if constexpr (std::is_same_v<param_t, opmath_t> && std::is_same_v<state_t, opmath_t>) {
        opmath_t* s[kStates > 0 ? kStates : 1];
        for (int k = 0; k < kStates; ++k) s[k] = S[k];
        body(t, P, G, s, len);
      } else {
        opmath_t pbuf[kBlock], gbuf[kBlock], sbuf[kStates > 0 ? kStates : 1][kBlock];
        for (int64_t b = 0; b < len; b += kBlock) {
          const int64_t n = std::min(kBlock, len - b);
          opmath_t* p = Widen<param_t, opmath_t>::load(P + b, pbuf, n);
          opmath_t* g = Widen<param_t, opmath_t>::load(G + b, gbuf, n);
          opmath_t* s[kStates > 0 ? kStates : 1];
          for (int k = 0; k < kStates; ++k)
            s[k] = S[k] ? Widen<state_t, opmath_t>::load(S[k] + b, sbuf[k], n) : nullptr;
          body(t, p, g, s, n);
          Widen<param_t, opmath_t>::store(P + b, p, n);
          if (store_grads) Widen<param_t, opmath_t>::store(G + b, g, n);
          for (int k = 0; k < kStates; ++k)
            if (S[k]) Widen<state_t, opmath_t>::store(S[k] + b, s[k], n);
        }
      }
      begin = stop;
      ++t;
    }
  });
}

}  // namespace cpu
}  // namespace tunebook
