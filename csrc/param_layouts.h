// tunebook::ParamLayouts: the per-step layout check of the eager step's cached plan, in one
// call with no arguments (python/tunebook/optim/_base.py, _StepPlan).
//
// The eager step reuses the lists it hands to the update ops while nothing they were built
// from has changed. Python checks the identities (group, params, state tensors); what it
// cannot check cheaply is the metadata of each param and its grad: a param may be re-laid
// out in place (module.to(memory_format=torch.channels_last) assigns `.data` of the param
// and of a retained grad: same objects, new strides), a grad may appear or disappear, and a
// new grad may arrive in another layout. Reading every grad's stride() from Python costs
// ~0.2 us per param, and passing the params to an op each step costs as much (the boxed
// argument conversion), so this object records the params once, when the plan is built,
// and each step compares, in C++, every param's dtype, device, sizes and strides, whether it
// has a grad, and that grad's layout, dtype, device, sizes and strides, with the recorded
// ones. The plan was built for exactly that state (which grads it copies into its param's
// layout, which params it steps through working copies), so it stays valid while nothing
// differs.
//
// Host metadata only: no tensor data is read, nothing synchronises, any device works (meta
// included). Used by the eager step only, never under torch.compile.
//
// The params are recorded as their Python objects, borrowed: the caller (the plan) keeps
// them alive and checks they are still its params before each call. No reference of any
// kind is held on a TensorImpl: torch.utils.swap_tensors (module.to() of tensor subclasses
// and, with torch.__future__.set_swap_module_params_on_conversion(True), of all params)
// refuses a tensor with an extra strong or weak reference. Each call reads the tensor the
// Python object wraps now, so a swapped-in tensor is the one compared.
#pragma once

#include <ATen/ATen.h>
#include <c10/core/impl/PyObjectSlot.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/custom_class.h>

#include <cstdint>
#include <vector>

namespace tunebook {

namespace detail {

// The Python object wrapping a TensorImpl (null when none does). The accessor was renamed
// in torch 2.10 (`load_pyobj`); older releases (down to 2.4) have `_unchecked_untagged_pyobj`.
template <typename Slot>
auto slot_pyobj(const Slot* slot, int) -> decltype(slot->load_pyobj()) {
  return slot->load_pyobj();
}
template <typename Slot>
PyObject* slot_pyobj(const Slot* slot, long) {
  return slot->_unchecked_untagged_pyobj();
}

inline PyObject* python_object(const c10::TensorImpl* impl) {
  return slot_pyobj(impl->pyobj_slot(), 0);
}

}  // namespace detail

class ParamLayouts : public torch::CustomClassHolder {
 public:
  explicit ParamLayouts(const std::vector<at::Tensor>& params) {
    entries_.reserve(params.size());
    for (const at::Tensor& p : params) {
      // TensorImpl::grad(), not Tensor::grad(): no "non-leaf .grad" warning for a param
      // that is a view.
      const at::Tensor& g = p.unsafeGetTensorImpl()->grad();
      PyObject* object = detail::python_object(p.unsafeGetTensorImpl());
      TORCH_CHECK(object != nullptr, "tunebook::ParamLayouts: a param has no Python object");
      Entry entry{object,
                  p.dtype(),
                  p.device(),
                  p.dim(),
                  g.defined() ? g.layout() : at::kStrided,
                  g.defined(),
                  g.defined() ? g.scalar_type() : p.scalar_type(),
                  g.defined() ? g.device() : p.device(),
                  metadata_.size()};
      record(p);
      if (g.defined()) record(g);
      entries_.push_back(std::move(entry));
    }
  }

  // Whether every param and grad is as recorded (see the file comment). The caller keeps the
  // recorded params alive (their Python objects are borrowed).
  bool unchanged() const {
    for (const Entry& entry : entries_) {
      // Borrowed: alive, and still the param, as the caller guarantees.
      const c10::TensorImpl* impl = THPVariable_Unpack(entry.param).unsafeGetTensorImpl();
      if (impl->dtype() != entry.dtype || impl->device() != entry.device ||
          impl->dim() != entry.dim) {
        return false;
      }
      const int64_t* recorded = metadata_.data() + entry.offset;
      if (!same(*impl, recorded)) return false;
      const at::Tensor& g = impl->grad();
      if (g.defined() != entry.has_grad) return false;
      if (!entry.has_grad) continue;
      if (g.layout() != entry.grad_layout || g.scalar_type() != entry.grad_dtype ||
          g.device() != entry.grad_device || g.dim() != entry.dim) {
        return false;
      }
      const int64_t* grad_recorded = recorded + 2 * entry.dim;
      if (g.layout() == at::kStrided ? !same(*g.unsafeGetTensorImpl(), grad_recorded)
                                     : g.sizes() != c10::IntArrayRef(grad_recorded, entry.dim)) {
        return false;  // (sparse grads: densified each step, only their sizes matter)
      }
    }
    return true;
  }

  int64_t size() const { return static_cast<int64_t>(entries_.size()); }

 private:
  struct Entry {
    PyObject* param;  // borrowed
    caffe2::TypeMeta dtype;
    at::Device device;
    int64_t dim;
    at::Layout grad_layout;
    bool has_grad;
    at::ScalarType grad_dtype;
    at::Device grad_device;
    size_t offset;  // into metadata_: sizes, strides, then (a strided grad) its sizes, strides
  };

  // Sizes then strides (a non-strided tensor: its sizes twice, never compared as strides).
  void record(const at::Tensor& t) {
    metadata_.insert(metadata_.end(), t.sizes().begin(), t.sizes().end());
    if (t.layout() == at::kStrided) {
      metadata_.insert(metadata_.end(), t.strides().begin(), t.strides().end());
    } else {
      metadata_.insert(metadata_.end(), t.sizes().begin(), t.sizes().end());
    }
  }

  static bool same(const c10::TensorImpl& t, const int64_t* recorded) {
    const int64_t dim = t.dim();
    return t.sizes() == c10::IntArrayRef(recorded, dim) &&
           t.strides() == c10::IntArrayRef(recorded + dim, dim);
  }

  std::vector<Entry> entries_;
  std::vector<int64_t> metadata_;
};

}  // namespace tunebook
