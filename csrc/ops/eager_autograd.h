// The eager path of the public functions in C++ (python_entry.cpp, and qkernels/ops.py's, learnable.py's and
// fused_observer.py's Python paths), for plain tensors in eager mode on the native backends, on checked
// arguments. Compile and export use the registered public ops instead, whose autograd is defined in Python.
//
//   _fake_quant_per_tensor_eager_<device>(Tensor x, float scale, int zero_point, Tensor? scale_t, ...) -> Tensor
//   _fake_quant_per_channel_eager_<device>(Tensor x, Tensor scale, Tensor zero_point, int axis, ...) -> Tensor
//     the whole forward in one call: outputs allocated (x's dense layout), qparams converted, the kernel launched
//     and, when requires_grad, the straight-through node attached (dx = dy * mask by the backward kernel);
//   _fused_observer_per_tensor_eager_<device>(Tensor x, Tensor observer_on, Tensor fake_quant_on, ...) -> Tensor
//     the fused observer op per tensor: the observer step, then the per-tensor eager forward above;
//   _fake_quant_learnable_eager_<device>(Tensor x, Tensor scale, Tensor zero_point, int? axis, int? group_size, ...)
//     -> Tensor
//     the learnable forward (layout, float32 qparams, launch) and, when requires_grad, the learnable backward
//     node (dx, dscale, dzero_point; qparam gradients only for the inputs that need them).
//
// Backward then runs in C++ without a call back into Python. Registered as CompositeImplicitAutograd, so that
// the nodes see the inputs' autograd state. Double backward: the straight-through node calls the registered
// backward op (differentiable); the learnable one raises, as aten's does.
#pragma once

#include <torch/autograd.h>

#include <algorithm>
#include <optional>
#include <tuple>
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
    // Packed mask bits follow out's storage order. (saved_data entries cost an allocation each: only this one,
    // and only when needed.)
    if (result.mask.scalar_type() == at::kByte) ctx->saved_data["strides"] = result.out.strides().vec();
    return result.out;
  }

  // As qkernels/ops.py's _grad_input and _backward_impl: dy in out's layout for a packed mask, aten's
  // broadcasting product where a bool mask's layout differs from dy's.
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const at::Tensor mask = ctx->get_saved_variables()[0];
    at::Tensor grad = grads[0];
    if (!grad.defined()) return {at::Tensor(), at::Tensor()};  // (x, the ForwardResult argument)
    const bool packed = mask.scalar_type() == at::kByte;
    if (packed) {
      const std::vector<int64_t> strides = ctx->saved_data["strides"].toIntVector();
      if (grad.strides() != at::IntArrayRef(strides)) {
        grad = at::empty_strided(grad.sizes(), strides, grad.options()).copy_(grad);
      }
    }
    if (at::GradMode::is_enabled()) {  // create_graph: the registered backward op, whose autograd is defined
      static const auto op = c10::Dispatcher::singleton()
                                  .findSchemaOrThrow("qkernels::fake_quantize_cachemask_backward", "")
                                  .typed<at::Tensor(const at::Tensor&, const at::Tensor&)>();
      return {op.call(grad, mask), at::Tensor()};
    }
    if (!packed && (grad.strides() != mask.strides() || grad.sizes() != mask.sizes())) {
      return {grad * mask.view(grad.sizes()), at::Tensor()};
    }
    at::Tensor dx = at::empty_like(grad);
    if (grad.numel() > 0) kBackward(grad, mask, dx);
    return {dx, at::Tensor()};
  }
};

// The device's forward launchers (the private ops _fake_quant_per_{tensor,channel}_<device>).
using PerTensorKernel = void (*)(const at::Tensor& x, at::Tensor& out, const std::optional<at::Tensor>& mask,
                                 double scale, int64_t zero_point, const std::optional<at::Tensor>& scale_t,
                                 const std::optional<at::Tensor>& zero_point_t,
                                 const std::optional<at::Tensor>& enabled_t, int64_t quant_min, int64_t quant_max,
                                 int64_t flavour);
using PerChannelKernel = void (*)(const at::Tensor& x, at::Tensor& out, const std::optional<at::Tensor>& mask,
                                  const at::Tensor& scale, const at::Tensor& zero_point, int64_t inner,
                                  int64_t quant_min, int64_t quant_max, int64_t flavour, bool use_fma);

// As qkernels/ops.py's _launch_args: out (and a bool mask) in x's layout when x is dense, else in the layout
// empty_like picks (contiguous or channels-last); the mask only when a gradient needs it (bit-packed on
// request); x in out's layout.
struct EagerLaunch {
  at::Tensor x, out, mask;
  std::optional<at::Tensor> kernel_mask() const {
    return mask.defined() ? std::optional<at::Tensor>(mask) : std::nullopt;
  }
};

inline EagerLaunch eager_launch(const at::Tensor& x, bool need_mask, bool pack_mask) {
  EagerLaunch l;
  l.out = at::empty_like(x);
  if (need_mask) {
    l.mask = pack_mask ? at::empty({(x.numel() + 7) / 8}, x.options().dtype(at::kByte))
                       : at::empty_like(x, x.options().dtype(at::kBool));
  }
  l.x = x.strides() == l.out.strides() ? x
                                       : at::empty_strided(l.out.sizes(), l.out.strides(), x.options()).copy_(x);
  return l;
}

// The output, with the straight-through node from x when a gradient is needed.
template <BackwardKernel kBackward>
at::Tensor eager_result(const at::Tensor& x, const EagerLaunch& l) {
  return l.mask.defined() ? StraightThrough<kBackward>::apply(x, ForwardResult{l.out, l.mask}) : l.out;
}

// One-element tensor qparams as the kernels read them (any shape), as qkernels/ops.py's _device_qparams: float32
// scale, int32 zero point and flag (a float one truncated toward zero first). No host read.
inline std::optional<at::Tensor> int32_qparam(const std::optional<at::Tensor>& t) {
  if (!t) return std::nullopt;
  return (t->is_floating_point() ? t->trunc() : *t).to(at::kInt);
}

// The per-tensor kernel on a prepared launch (under no-grad): one-element tensor qparams, when given, are converted
// as the kernels read them.
template <PerTensorKernel kForward>
void per_tensor_launch(EagerLaunch& l, double scale, int64_t zero_point, const std::optional<at::Tensor>& scale_t,
                       const std::optional<at::Tensor>& zero_point_t, const std::optional<at::Tensor>& enabled_t,
                       int64_t quant_min, int64_t quant_max) {
  if (l.x.numel() == 0) return;
  const std::optional<at::Tensor> s = scale_t ? std::optional<at::Tensor>(scale_t->to(at::kFloat)) : std::nullopt;
  kForward(l.x, l.out, l.kernel_mask(), scale, zero_point, s, int32_qparam(zero_point_t), int32_qparam(enabled_t),
           quant_min, quant_max, flavour_of(l.x));
}

// The whole eager forward of the public functions (qkernels/ops.py, `_call`) on arguments Python has checked:
// allocation, the launch and the autograd node, in one call from Python. requires_grad: write the mask and
// attach the node (dx = dy * mask).
template <PerTensorKernel kForward, BackwardKernel kBackward>
at::Tensor per_tensor_eager(const at::Tensor& x, double scale, int64_t zero_point,
                            const std::optional<at::Tensor>& scale_t, const std::optional<at::Tensor>& zero_point_t,
                            const std::optional<at::Tensor>& enabled_t, int64_t quant_min, int64_t quant_max,
                            bool requires_grad, bool pack_mask) {
  EagerLaunch l;
  {
    const at::NoGradGuard no_grad;  // the kernels' inputs carry no history; the node connects out to x
    l = eager_launch(x, requires_grad, pack_mask);
    per_tensor_launch<kForward>(l, scale, zero_point, scale_t, zero_point_t, enabled_t, quant_min, quant_max);
  }
  return eager_result<kBackward>(x, l);
}

// Per channel: float32 scale, int32 or float32 zero point (as qkernels/ops.py's _per_channel_run); use_fma is
// the spec's uses_fma for the zero point's original dtype.
template <PerChannelKernel kForward, BackwardKernel kBackward>
at::Tensor per_channel_eager(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point, int64_t axis,
                             int64_t quant_min, int64_t quant_max, bool use_fma, bool requires_grad, bool pack_mask) {
  EagerLaunch l;
  {
    const at::NoGradGuard no_grad;
    l = eager_launch(x, requires_grad, pack_mask);
    if (x.numel() > 0) {
      axis = c10::maybe_wrap_dim(axis, x.dim());
      const int64_t inner = inner_stride(l.out, axis);
      const at::Tensor z = zero_point.is_floating_point() ? zero_point.to(at::kFloat) : zero_point;
      kForward(l.x, l.out, l.kernel_mask(), scale.to(at::kFloat).contiguous(), z.contiguous(), inner, quant_min,
               quant_max, flavour_of(x), use_fma);
    }
  }
  return eager_result<kBackward>(x, l);
}

// The learnable forward's launch arguments that the backward reuses: x and the float32 qparams as the kernels
// read them (x in its dense layout, possibly a copy), the [B, O, C, I] view and the scalar arguments.
struct LearnableForward {
  at::Tensor out, x, scale, zero_point;
  int64_t B, O, C, I, quant_min, quant_max;
  double grad_factor;
  int64_t flavour, rule;
  bool use_fma;
  at::ScalarType ds_dtype, dz_dtype;
};

// The device's learnable backward op (returns dscale and dzero_point per quantizer, 1-D, or empty tensors).
using LearnableBackwardKernel = std::tuple<at::Tensor, at::Tensor> (*)(
    const at::Tensor& dy, const at::Tensor& x, at::Tensor& dx, const at::Tensor& scale, const at::Tensor& zero_point,
    int64_t B, int64_t O, int64_t C, int64_t I, int64_t quant_min, int64_t quant_max, double grad_factor,
    int64_t flavour, int64_t rule, bool use_fma, bool need_qgrads, at::ScalarType ds_dtype, at::ScalarType dz_dtype);

template <LearnableBackwardKernel kBackward>
struct LearnableNode : torch::autograd::Function<LearnableNode<kBackward>> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& /*x*/, const at::Tensor& scale,
                            const at::Tensor& /*zero_point*/, const LearnableForward& f) {
    ctx->save_for_backward({f.x, f.scale, f.zero_point});
    // Two saved_data entries (each costs a hash insert and an allocation): the integers in the order of Slot,
    // then the shape that scale and zero_point share (checked in Python); the float.
    std::vector<int64_t> ints{f.B, f.O, f.C, f.I, f.quant_min, f.quant_max, f.flavour, f.rule, f.use_fma,
                              static_cast<int64_t>(f.ds_dtype), static_cast<int64_t>(f.dz_dtype)};
    ints.insert(ints.end(), scale.sizes().begin(), scale.sizes().end());
    ctx->saved_data["ints"] = std::move(ints);
    ctx->saved_data["grad_factor"] = f.grad_factor;
    return f.out;
  }

  // Where each integer sits in saved_data["ints"]; the qparams' shape starts at kQparamSizes.
  enum Slot : size_t {
    kB, kO, kC, kI, kQuantMin, kQuantMax, kFlavour, kRule, kUseFma, kDsDtype, kDzDtype,
    kQparamSizes
  };

  // As qkernels/learnable.py's _backward_checked: dy in x's kernel layout and dtype, the qparam work only
  // when scale or zero_point needs a gradient.
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& x = saved[0];
    at::Tensor dy = grads[0];
    if (!dy.defined()) return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    if (dy.strides() != x.strides() || dy.scalar_type() != x.scalar_type()) dy = at::empty_like(x).copy_(dy);
    const std::vector<int64_t> v = ctx->saved_data.at("ints").toIntVector();
    const bool need_qgrads = ctx->needs_input_grad(1) || ctx->needs_input_grad(2);
    at::Tensor dx = at::empty_like(x);
    auto grads_q = kBackward(dy, x, dx, saved[1], saved[2], v[kB], v[kO], v[kC], v[kI], v[kQuantMin], v[kQuantMax],
                             ctx->saved_data.at("grad_factor").toDouble(), v[kFlavour], v[kRule], v[kUseFma] != 0,
                             need_qgrads, static_cast<at::ScalarType>(v[kDsDtype]),
                             static_cast<at::ScalarType>(v[kDzDtype]));
    const at::IntArrayRef qparam_sizes = at::IntArrayRef(v).slice(kQparamSizes);
    return {ctx->needs_input_grad(0) ? dx : at::Tensor(),
            ctx->needs_input_grad(1) ? std::get<0>(grads_q).view(qparam_sizes) : at::Tensor(),
            ctx->needs_input_grad(2) ? std::get<1>(grads_q).view(qparam_sizes) : at::Tensor(),
            at::Tensor()};  // the LearnableForward argument
  }
};

// The device's observer launcher (the private op _fused_observer_update_<device>).
using ObserverKernel = void (*)(const at::Tensor& x, const at::Tensor& observer_on, const at::Tensor& fake_quant_on,
                                at::Tensor& running_min, at::Tensor& running_max, at::Tensor& scale,
                                at::Tensor& zero_point, double averaging_const, int64_t quant_min, int64_t quant_max,
                                int64_t inner, bool symmetric, int64_t mode, double eps, int64_t symmetric_zero_point,
                                int64_t flavour);

// The fused observer op per tensor (qkernels/fused_observer.py) on checked arguments: the observer and qparam
// step in place on x in the outputs' dense layout (the one copy of a non-dense x serves both steps), then the
// per-tensor fake quantization with the new qparams and the fake_quant_on flag, and the node. The new qparams are
// not value-checked, as torch's op does not check them (a NaN input gives a NaN scale and NaN outputs).
template <ObserverKernel kObserver, PerTensorKernel kForward, BackwardKernel kBackward>
at::Tensor fused_observer_per_tensor_eager(const at::Tensor& x, const at::Tensor& observer_on,
                                           const at::Tensor& fake_quant_on, at::Tensor& running_min,
                                           at::Tensor& running_max, at::Tensor& scale, at::Tensor& zero_point,
                                           double averaging_const, int64_t quant_min, int64_t quant_max,
                                           bool symmetric, int64_t mode, double eps, int64_t symmetric_zero_point,
                                           bool requires_grad, bool pack_mask) {
  EagerLaunch l;
  {
    const at::NoGradGuard no_grad;
    l = eager_launch(x, requires_grad, pack_mask);
    kObserver(l.x, observer_on, fake_quant_on, running_min, running_max, scale, zero_point, averaging_const,
              quant_min, quant_max, l.x.numel(), symmetric, mode, eps, symmetric_zero_point, flavour_of(x));
    per_tensor_launch<kForward>(l, 0.0, 0, scale, zero_point, fake_quant_on, quant_min, quant_max);
  }
  return eager_result<kBackward>(x, l);
}

// The device's learnable forward launcher (the private op _fake_quant_learnable_forward_<device>).
using LearnableForwardKernel = void (*)(const at::Tensor& x, at::Tensor& out, const at::Tensor& scale,
                                        const at::Tensor& zero_point, int64_t B, int64_t O, int64_t C, int64_t I,
                                        int64_t quant_min, int64_t quant_max, int64_t flavour, bool per_tensor);

// As qkernels/learnable.py's _layout: x in its output layout (a dense x keeps its own, another is copied into
// empty_like's; per group, contiguous), a fresh output of that layout, and the kernels' [B, O, C, I] view.
struct LearnableLayout {
  at::Tensor x, out;
  int64_t B = 1, O = 1, C = 1, I = 1;
};

inline LearnableLayout learnable_layout(const at::Tensor& x, std::optional<int64_t> axis,
                                        std::optional<int64_t> group_size) {
  LearnableLayout l;
  l.x = group_size ? x.contiguous() : x;
  l.out = at::empty_like(l.x);
  if (l.out.strides() != l.x.strides()) l.x = at::empty_like(l.out).copy_(l.x);
  const int64_t n = l.x.numel();
  if (!axis || n == 0) {
    l.I = std::max<int64_t>(n, 1);
    return l;
  }
  const int64_t a = c10::maybe_wrap_dim(*axis, l.x.dim());
  if (!group_size) {
    l.C = l.x.size(a);
    l.I = inner_stride(l.x, a);
    l.O = n / (l.C * l.I);
  } else {
    const int64_t g = *group_size;
    int64_t inner = 1;
    for (int64_t d = a + 1; d < l.x.dim(); ++d) inner *= l.x.size(d);
    if (inner == 1) {
      l.B = n / g, l.I = g;
    } else {
      l.B = n / (g * inner), l.O = g, l.C = inner;
    }
  }
  if (l.C == 1) l.I *= l.O, l.O = 1;  // one quantizer per b: its O * I elements are one run
  return l;
}

// As learnable.py's _flat_qparam: contiguous float32 (the kernels read flat [B * C] arrays).
inline at::Tensor flat_float32(const at::Tensor& t) {
  return t.scalar_type() == at::kFloat && t.is_contiguous() ? t : t.reshape(-1).to(at::kFloat).contiguous();
}

// The learnable op's eager call (qkernels/learnable.py, `_call`) on checked arguments: the layout, the forward
// kernel and, when requires_grad, the node from x, scale and zero_point (qparam gradients in their dtypes, float32
// for integer ones). axis: none per tensor; group_size: none per channel. rule: qkernels::ZpRule.
template <LearnableForwardKernel kForward, LearnableBackwardKernel kBackward>
at::Tensor learnable_eager(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point,
                           std::optional<int64_t> axis, std::optional<int64_t> group_size, int64_t quant_min,
                           int64_t quant_max, double grad_factor, int64_t rule, bool use_fma, bool requires_grad) {
  const int64_t flavour = flavour_of(x);
  LearnableLayout l;
  at::Tensor s, z;
  {
    const at::NoGradGuard no_grad;  // the kernels' inputs carry no history; the node connects out to x
    l = learnable_layout(x, axis, group_size);
    s = flat_float32(scale);
    z = flat_float32(zero_point);
    if (l.x.numel() > 0) kForward(l.x, l.out, s, z, l.B, l.O, l.C, l.I, quant_min, quant_max, flavour, !axis);
  }
  if (!requires_grad) return l.out;
  const auto grad_dtype = [](const at::Tensor& t) { return t.is_floating_point() ? t.scalar_type() : at::kFloat; };
  return LearnableNode<kBackward>::apply(
      x, scale, zero_point,
      LearnableForward{l.out, l.x, s, z, l.B, l.O, l.C, l.I, quant_min, quant_max, grad_factor, flavour, rule,
                       use_fma, grad_dtype(scale), grad_dtype(zero_point)});
}

}  // namespace glue
}  // namespace qkernels

#define QKERNELS_EAGER_AUTOGRAD_SCHEMAS(m, suffix)                                                                 \
  m.def("_fake_quant_per_tensor_eager_" suffix                                                                    \
        "(Tensor x, float scale, int zero_point, Tensor? scale_t, Tensor? zero_point_t, Tensor? enabled_t, "       \
        "int quant_min, int quant_max, bool requires_grad, bool pack_mask) -> Tensor");                            \
  m.def("_fake_quant_per_channel_eager_" suffix                                                                   \
        "(Tensor x, Tensor scale, Tensor zero_point, int axis, int quant_min, int quant_max, bool use_fma, "       \
        "bool requires_grad, bool pack_mask) -> Tensor");                                                          \
  m.def("_fused_observer_per_tensor_eager_" suffix                                                                \
        "(Tensor x, Tensor observer_on, Tensor fake_quant_on, Tensor(a!) running_min, Tensor(b!) running_max, "    \
        "Tensor(c!) scale, Tensor(d!) zero_point, float averaging_const, int quant_min, int quant_max, "          \
        "bool symmetric, int mode, float eps, int symmetric_zero_point, bool requires_grad, bool pack_mask) "     \
        "-> Tensor");                                                                                              \
  m.def("_fake_quant_learnable_eager_" suffix                                                                     \
        "(Tensor x, Tensor scale, Tensor zero_point, int? axis, int? group_size, int quant_min, int quant_max, "    \
        "float grad_factor, int rule, bool use_fma, bool requires_grad) -> Tensor")

// The private launcher ops of one device (dev: cpu or cuda; Key: its dispatch key) in library ns, from the glue
// functions named <op>_<dev>.
#define QKERNELS_REGISTER_KERNELS(ns, dev, Key)                                                             \
  TORCH_LIBRARY_FRAGMENT(ns, m) { QKERNELS_FAKE_QUANT_SCHEMAS(m, #dev); }                                   \
  TORCH_LIBRARY_IMPL(ns, Key, m) {                                                                           \
    m.impl("_fake_quant_per_tensor_" #dev, &per_tensor_##dev);                                               \
    m.impl("_fake_quant_per_channel_" #dev, &per_channel_##dev);                                             \
    m.impl("_fake_quant_backward_" #dev, &backward_##dev);                                                   \
    m.impl("_fake_quant_learnable_forward_" #dev, &learnable_forward_##dev);                                 \
    m.impl("_fake_quant_learnable_backward_" #dev, &learnable_backward_##dev);                               \
    m.impl("_fused_observer_update_" #dev, &fused_observer_update_##dev);                                    \
  }

// Every op of one device: the private launcher ops on the device's key, the eager forwards as
// CompositeImplicitAutograd.
#define QKERNELS_REGISTER_DEVICE(dev, Key)                                                                  \
  QKERNELS_REGISTER_KERNELS(qkernels, dev, Key)                                                              \
  TORCH_LIBRARY_FRAGMENT(qkernels, m) { QKERNELS_EAGER_AUTOGRAD_SCHEMAS(m, #dev); }                          \
  TORCH_LIBRARY_IMPL(qkernels, CompositeImplicitAutograd, m) {                                               \
    m.impl("_fake_quant_per_tensor_eager_" #dev, &glue::per_tensor_eager<&per_tensor_##dev, &backward_##dev>); \
    m.impl("_fake_quant_per_channel_eager_" #dev,                                                            \
           &glue::per_channel_eager<&per_channel_##dev, &backward_##dev>);                                   \
    m.impl("_fused_observer_per_tensor_eager_" #dev,                                                         \
           &glue::fused_observer_per_tensor_eager<&fused_observer_update_##dev, &per_tensor_##dev,           \
                                                  &backward_##dev>);                                         \
    m.impl("_fake_quant_learnable_eager_" #dev,                                                              \
           &glue::learnable_eager<&learnable_forward_##dev, &learnable_backward_##dev>);                     \
  }
