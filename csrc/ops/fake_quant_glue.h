// Torch glue of the fake-quant family: its private launcher ops (_fake_quant_{per_tensor,per_channel,backward}_
// <device>, csrc/ops/fake_quant_{cpu,cuda}.cpp) and its eager forwards with the C++ straight-through node
// (_fake_quant_per_{tensor,channel}_eager_<device>: allocation, launch and node in one call from Python, for plain
// tensors in eager mode on the native backends, on checked arguments; compile and export use the registered
// public ops, whose autograd is defined in Python). Backward then runs in C++ without a call back into Python;
// double backward calls the registered backward op, which is differentiable.
#pragma once

#include <torch/autograd.h>

#include "glue.h"
#include "qkernels/fake_quant_kernels.h"

namespace qkernels {

// The family's launchers, one per device (the private ops; the fused observer's eager forward calls them too).
using PerTensorLauncher = void(const at::Tensor& x, at::Tensor& out, const std::optional<at::Tensor>& mask,
                               double scale, int64_t zero_point, const std::optional<at::Tensor>& scale_t,
                               const std::optional<at::Tensor>& zero_point_t,
                               const std::optional<at::Tensor>& enabled_t, int64_t quant_min, int64_t quant_max,
                               int64_t flavour);
using PerChannelLauncher = void(const at::Tensor& x, at::Tensor& out, const std::optional<at::Tensor>& mask,
                                const at::Tensor& scale, const at::Tensor& zero_point, int64_t inner,
                                int64_t quant_min, int64_t quant_max, int64_t flavour, bool use_fma);
// Writes dy * mask into its last argument.
using BackwardLauncher = void(const at::Tensor& grad, const at::Tensor& mask, at::Tensor& out);
PerTensorLauncher per_tensor_cpu, per_tensor_cuda;
PerChannelLauncher per_channel_cpu, per_channel_cuda;
BackwardLauncher backward_cpu, backward_cuda;

namespace glue {

// The fields both forward param structs share: element type, flavour, and the x/out/mask pointers.
template <typename Params>
void set_io(Params& p, const at::Tensor& x, at::Tensor& out, const std::optional<at::Tensor>& mask, int64_t flavour) {
  check_pair(x, out);
  p.dtype = dtype_of(x);
  p.flavour = static_cast<Flavour>(flavour);
  p.numel = x.numel();
  p.x = x.data_ptr();
  p.out = out.data_ptr();
  p.mask_packed = mask && mask_is_packed(*mask, x);
  p.mask = mask ? static_cast<uint8_t*>(mask->data_ptr()) : nullptr;
}

inline PerTensorParams per_tensor_params(const at::Tensor& x, at::Tensor& out, const std::optional<at::Tensor>& mask,
                                         double scale, int64_t zero_point, int64_t quant_min, int64_t quant_max,
                                         int64_t flavour) {
  PerTensorParams p{};
  set_io(p, x, out, mask, flavour);
  p.scale = static_cast<float>(scale);
  p.zero_point = zero_point;
  p.enabled = true;
  p.quant_min = quant_min;
  p.quant_max = quant_max;
  return p;
}

// Tensor qparams, already converted by the dispatcher: float32 scale, int32 zero point, int32 flag, one
// element each, on x's device. Each is optional.
inline void set_tensor_qparams(PerTensorParams& p, const std::optional<at::Tensor>& scale,
                               const std::optional<at::Tensor>& zero_point, const std::optional<at::Tensor>& enabled) {
  const auto one = [](const std::optional<at::Tensor>& t, at::ScalarType dtype) {
    TORCH_CHECK(!t || (t->scalar_type() == dtype && t->numel() == 1),
                "qkernels: tensor qparams must be float32/int32/int32 with one element");
  };
  one(scale, at::kFloat);
  one(zero_point, at::kInt);
  one(enabled, at::kInt);
  p.scale_ptr = scale ? scale->data_ptr<float>() : nullptr;
  p.zero_point_ptr = zero_point ? zero_point->data_ptr<int32_t>() : nullptr;
  p.enabled_ptr = enabled ? enabled->data_ptr<int32_t>() : nullptr;
}

inline PerChannelParams per_channel_params(const at::Tensor& x, at::Tensor& out, const std::optional<at::Tensor>& mask,
                                           const at::Tensor& scale, const at::Tensor& zero_point, int64_t inner,
                                           int64_t quant_min, int64_t quant_max, int64_t flavour, bool use_fma) {
  TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.is_contiguous() && zero_point.is_contiguous() &&
                  scale.numel() == zero_point.numel() && scale.numel() > 0 && inner > 0,
              "qkernels: per-channel qparams must be contiguous float32 scale and zero point of equal length");
  TORCH_CHECK(zero_point.scalar_type() == at::kInt || zero_point.scalar_type() == at::kFloat,
              "qkernels: per-channel zero point must be int32 or float32");
  PerChannelParams p{};
  set_io(p, x, out, mask, flavour);
  p.scale = scale.data_ptr<float>();
  p.zero_point_i = zero_point.scalar_type() == at::kInt ? zero_point.data_ptr<int32_t>() : nullptr;
  p.zero_point_f = zero_point.scalar_type() == at::kFloat ? zero_point.data_ptr<float>() : nullptr;
  p.channels = scale.numel();
  p.inner = inner;
  p.quant_min = quant_min;
  p.quant_max = quant_max;
  p.use_fma = use_fma;
  return p;
}

inline BackwardParams backward_params(const at::Tensor& grad, const at::Tensor& mask, at::Tensor& out) {
  check_pair(grad, out);
  BackwardParams p{};
  p.dtype = dtype_of(grad);
  p.numel = grad.numel();
  p.grad = grad.data_ptr();
  p.mask_packed = mask_is_packed(mask, grad);
  p.mask = static_cast<const uint8_t*>(mask.data_ptr());
  p.out = out.data_ptr();
  return p;
}

// Out and mask of a forward call, passed to the autograd function as one non-tensor argument so that out
// is not taken for an input returned as is.
struct ForwardResult {
  at::Tensor out, mask;
};

template <BackwardLauncher* kBackward>
struct StraightThrough : torch::autograd::Function<StraightThrough<kBackward>> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& /*x*/,
                            const ForwardResult& result) {
    ctx->save_for_backward({result.mask});
    // Packed mask bits follow out's storage order. (saved_data entries cost an allocation each: only this one,
    // and only when needed.)
    if (result.mask.scalar_type() == at::kByte) ctx->saved_data["strides"] = result.out.strides().vec();
    return result.out;
  }

  // As qkernels/fake_quant.py's _grad_input and _backward_impl: dy in out's layout for a packed mask, aten's
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

// As qkernels/fake_quant.py's _launch_args: out (and a bool mask) in x's layout when x is dense, else in the layout
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
template <BackwardLauncher* kBackward>
at::Tensor eager_result(const at::Tensor& x, const EagerLaunch& l) {
  return l.mask.defined() ? StraightThrough<kBackward>::apply(x, ForwardResult{l.out, l.mask}) : l.out;
}

// One-element tensor qparams as the kernels read them (any shape), as qkernels/fake_quant.py's _device_qparams: float32
// scale, int32 zero point and flag (a float one truncated toward zero first). No host read.
inline std::optional<at::Tensor> int32_qparam(const std::optional<at::Tensor>& t) {
  if (!t) return std::nullopt;
  return (t->is_floating_point() ? t->trunc() : *t).to(at::kInt);
}

// The per-tensor kernel on a prepared launch (under no-grad): one-element tensor qparams, when given, are converted
// as the kernels read them.
template <PerTensorLauncher* kForward>
void per_tensor_launch(EagerLaunch& l, double scale, int64_t zero_point, const std::optional<at::Tensor>& scale_t,
                       const std::optional<at::Tensor>& zero_point_t, const std::optional<at::Tensor>& enabled_t,
                       int64_t quant_min, int64_t quant_max) {
  if (l.x.numel() == 0) return;
  const std::optional<at::Tensor> s = scale_t ? std::optional<at::Tensor>(scale_t->to(at::kFloat)) : std::nullopt;
  kForward(l.x, l.out, l.kernel_mask(), scale, zero_point, s, int32_qparam(zero_point_t), int32_qparam(enabled_t),
           quant_min, quant_max, flavour_of(l.x));
}

// The whole eager forward of the public functions (qkernels/fake_quant.py, `_call`) on arguments Python has checked:
// allocation, the launch and the autograd node, in one call from Python. requires_grad: write the mask and
// attach the node (dx = dy * mask).
template <PerTensorLauncher* kForward, BackwardLauncher* kBackward>
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

// Per channel: float32 scale, int32 or float32 zero point (as qkernels/fake_quant.py's _per_channel_run); use_fma is
// the spec's uses_fma for the zero point's original dtype.
template <PerChannelLauncher* kForward, BackwardLauncher* kBackward>
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

}  // namespace glue
}  // namespace qkernels

#define QKERNELS_FAKE_QUANT_IMPLS(m, dev)                           \
  m.impl("_fake_quant_per_tensor_" #dev, &qkernels::per_tensor_##dev);   \
  m.impl("_fake_quant_per_channel_" #dev, &qkernels::per_channel_##dev); \
  m.impl("_fake_quant_backward_" #dev, &qkernels::backward_##dev)

#define QKERNELS_FAKE_QUANT_EAGER_SCHEMAS(m, suffix)                                                               \
  m.def("_fake_quant_per_tensor_eager_" suffix                                                                    \
        "(Tensor x, float scale, int zero_point, Tensor? scale_t, Tensor? zero_point_t, Tensor? enabled_t, "       \
        "int quant_min, int quant_max, bool requires_grad, bool pack_mask) -> Tensor");                            \
  m.def("_fake_quant_per_channel_eager_" suffix                                                                   \
        "(Tensor x, Tensor scale, Tensor zero_point, int axis, int quant_min, int quant_max, bool use_fma, "       \
        "bool requires_grad, bool pack_mask) -> Tensor")

#define QKERNELS_FAKE_QUANT_EAGER_IMPLS(m, dev)                                                                  \
  m.impl("_fake_quant_per_tensor_eager_" #dev,                                                                    \
         &qkernels::glue::per_tensor_eager<&qkernels::per_tensor_##dev, &qkernels::backward_##dev>);              \
  m.impl("_fake_quant_per_channel_eager_" #dev,                                                                   \
         &qkernels::glue::per_channel_eager<&qkernels::per_channel_##dev, &qkernels::backward_##dev>)
