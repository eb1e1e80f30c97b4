// Autograd of the fake-quant ops for direct eager calls (qkernels/ops.py, `_call`): the forward has already
// run and written (out, mask); this op attaches to out an autograd node that computes dx = dy * mask with the
// device's backward kernel, so that backward runs in C++ without a call back into Python.
//
//   _fake_quant_straight_through_<device>(Tensor x, Tensor(a) out, Tensor mask) -> Tensor(a)
//
// returns out itself, now with x as its autograd input. Registered as CompositeImplicitAutograd, and only
// ever called on plain tensors in eager mode (compile and export use the registered public ops, whose
// autograd is defined in Python). No double backward: the node's backward is not itself differentiable.
#pragma once

#include <torch/autograd.h>

#include <vector>

#include "fake_quant_glue.h"

namespace qkernels {
namespace glue {

// Out and mask of a forward call, passed to the autograd function as one non-tensor argument so that out
// is not taken for an input returned as is.
struct ForwardResult {
  at::Tensor out, mask;
};

// Backward: writes dy * mask into its last argument (the device's _fake_quant_backward kernel).
using BackwardKernel = void (*)(const at::Tensor& grad, const at::Tensor& mask, at::Tensor& out);

template <BackwardKernel kBackward>
struct StraightThrough : torch::autograd::Function<StraightThrough<kBackward>> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& /*x*/,
                            const ForwardResult& result) {
    ctx->save_for_backward({result.mask});
    ctx->saved_data["strides"] = result.out.strides().vec();  // packed mask bits follow out's storage order
    return result.out;
  }

  // As qkernels/ops.py's _grad_input and _backward_impl: dy in out's layout for a packed mask, aten's
  // broadcasting product where a bool mask's layout differs from dy's.
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const at::Tensor mask = ctx->get_saved_variables()[0];
    at::Tensor grad = grads[0];
    if (!grad.defined()) return {at::Tensor(), at::Tensor()};
    const std::vector<int64_t> strides = ctx->saved_data["strides"].toIntVector();
    const bool packed = mask.scalar_type() == at::kByte;
    if (packed && grad.strides() != at::IntArrayRef(strides)) {
      grad = at::empty_strided(grad.sizes(), strides, grad.options()).copy_(grad);
    }
    if (!packed && (grad.strides() != mask.strides() || grad.sizes() != mask.sizes())) {
      return {grad * mask.view(grad.sizes()), at::Tensor()};
    }
    at::Tensor dx = at::empty_like(grad);
    if (grad.numel() > 0) kBackward(grad, mask, dx);
    return {dx, at::Tensor()};
  }
};

template <BackwardKernel kBackward>
at::Tensor straight_through(const at::Tensor& x, const at::Tensor& out, const at::Tensor& mask) {
  return StraightThrough<kBackward>::apply(x, ForwardResult{out, mask});
}

}  // namespace glue
}  // namespace qkernels

#define QKERNELS_STRAIGHT_THROUGH_SCHEMA(m, suffix) \
  m.def("_fake_quant_straight_through_" suffix "(Tensor x, Tensor(a) out, Tensor mask) -> Tensor(a)")
