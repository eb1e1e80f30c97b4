// Torch glue of the learnable (LSQ) fake-quant family: its private launcher ops (_fake_quant_learnable_
// {forward,backward}_<device>, csrc/ops/fake_quant_learnable_{cpu,cuda}.cpp) and its eager call with the C++
// autograd node (_fake_quant_learnable_forward_eager_<device>: layout, launch and node in one call from Python, for
// plain tensors in eager mode on the native backends, on checked arguments). Its backward runs in C++; double backward
// raises, as aten's does.
#pragma once

#include <torch/autograd.h>

#include "glue.h"
#include "qkernels/fake_quant_learnable_kernels.h"
#include "reduce_glue.h"

namespace qkernels {

// The family's launchers, one per device (the private ops).
using LearnableForwardLauncher = void(const at::Tensor& x, at::Tensor& out, const at::Tensor& scale,
                                      const at::Tensor& zero_point, int64_t B, int64_t O, int64_t C, int64_t I,
                                      int64_t quant_min, int64_t quant_max, int64_t flavour, bool per_tensor);
// Returns dscale and dzero_point per quantizer, 1-D, or empty tensors when need_qgrads is false.
using LearnableBackwardLauncher = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor& dy, const at::Tensor& x, at::Tensor& dx, const at::Tensor& scale, const at::Tensor& zero_point,
    int64_t B, int64_t O, int64_t C, int64_t I, int64_t quant_min, int64_t quant_max, double grad_factor,
    int64_t flavour, int64_t rule, bool use_fma, bool need_qgrads, at::ScalarType ds_dtype, at::ScalarType dz_dtype);
LearnableForwardLauncher learnable_forward_cpu, learnable_forward_cuda;
LearnableBackwardLauncher learnable_backward_cpu, learnable_backward_cuda;

namespace glue {

// Learnable ops: x viewed as [B, O, C, I] in storage order; float32 contiguous qparams of B * C elements.
inline LearnableDims learnable_dims(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point,
                                    int64_t B, int64_t O, int64_t C, int64_t I) {
  TORCH_CHECK(B > 0 && O > 0 && C > 0 && I > 0 && B * O * C * I == x.numel(),
              "qkernels: learnable dims [B, O, C, I] must be positive and multiply to numel");
  TORCH_CHECK(x.is_non_overlapping_and_dense(), "qkernels: x must be dense");
  for (const at::Tensor* t : {&scale, &zero_point}) {
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && t->numel() == B * C &&
                    t->device() == x.device(),
                "qkernels: learnable qparams must be contiguous float32 with B * C elements on x's device");
  }
  return LearnableDims{B, O, C, I};
}

inline LearnableForwardParams learnable_forward_params(const at::Tensor& x, at::Tensor& out, const at::Tensor& scale,
                                                       const at::Tensor& zero_point, const LearnableDims& dims,
                                                       int64_t quant_min, int64_t quant_max, int64_t flavour,
                                                       bool per_tensor) {
  check_pair(x, out);
  LearnableForwardParams p{};
  p.dtype = dtype_of(x);
  p.flavour = static_cast<Flavour>(flavour);
  p.dims = dims;
  p.x = x.data_ptr();
  p.out = out.data_ptr();
  p.scale = scale.data_ptr<float>();
  p.zero_point = zero_point.data_ptr<float>();
  p.quant_min = quant_min;
  p.quant_max = quant_max;
  p.per_tensor = per_tensor;
  return p;
}

// Also allocates the partial sums: one float32 tensor [2, B, P, C] (ds, then dz; empty when the qparams need
// no gradient), so that one reduction gives both gradients (reduce_partials).
inline LearnableBackwardParams learnable_backward_params(const at::Tensor& dy, const at::Tensor& x, at::Tensor& dx,
                                                         const at::Tensor& scale, const at::Tensor& zero_point,
                                                         const LearnableDims& dims, int64_t quant_min,
                                                         int64_t quant_max, double grad_factor, int64_t flavour,
                                                         int64_t rule, bool use_fma, bool need_qgrads,
                                                         int64_t target, at::Tensor& partials) {
  check_pair(x, dx);
  check_pair(x, dy);
  TORCH_CHECK(rule == static_cast<int64_t>(ZpRule::TorchPerTensor) || rule == static_cast<int64_t>(ZpRule::Torch) ||
                  rule == static_cast<int64_t>(ZpRule::Consistent),
              "qkernels: zero-point rule must be a qkernels::ZpRule, got ", rule);
  LearnableBackwardParams p{};
  p.dtype = dtype_of(x);
  p.flavour = static_cast<Flavour>(flavour);
  p.dims = dims;
  p.blocks = make_reduce_blocks(dims, target);
  p.x = x.data_ptr();
  p.dy = dy.data_ptr();
  p.dx = dx.data_ptr();
  p.scale = scale.data_ptr<float>();
  p.zero_point = zero_point.data_ptr<float>();
  p.quant_min = quant_min;
  p.quant_max = quant_max;
  p.grad_factor = static_cast<float>(grad_factor);
  p.rule = static_cast<ZpRule>(rule);
  p.use_fma = use_fma;
  const auto shape = need_qgrads ? std::vector<int64_t>{2, dims.B, p.blocks.P, dims.C} : std::vector<int64_t>{0};
  partials = at::empty(shape, x.options().dtype(at::kFloat));
  p.ds_partial = need_qgrads ? partials.data_ptr<float>() : nullptr;
  p.dz_partial = need_qgrads ? partials.data_ptr<float>() + dims.B * p.blocks.P * dims.C : nullptr;
  return p;
}

// (dscale, dzero_point) from the [2, B, P, C] partials (reduce_glue.h's finish_sums): each summed over P in
// float64 and rounded once to its dtype, 1-D [B * C], in storages of their own; empty tensors when the partials
// are (no qparam grads).
inline std::tuple<at::Tensor, at::Tensor> reduce_partials(const at::Tensor& partials, at::ScalarType ds_dtype,
                                                          at::ScalarType dz_dtype) {
  const std::vector<at::Tensor> sums = finish_sums(partials, {ds_dtype, dz_dtype});
  return {sums[0], sums[1]};
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

template <LearnableBackwardLauncher* kBackward>
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

  // As fake_quant_learnable.py's _backward_checked: dy in x's kernel layout and dtype, the qparam work only
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

// As qkernels/fake_quant_learnable.py's _layout: x in its output layout (a dense x keeps its own, another is copied
// into empty_like's; per group, contiguous), a fresh output of that layout, and the kernels' [B, O, C, I] view.
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

// As fake_quant_learnable.py's _flat_qparam: contiguous float32 (the kernels read flat [B * C] arrays).
inline at::Tensor flat_float32(const at::Tensor& t) {
  return t.scalar_type() == at::kFloat && t.is_contiguous() ? t : t.reshape(-1).to(at::kFloat).contiguous();
}

// The learnable op's eager call (qkernels/fake_quant_learnable.py, `_call`) on checked arguments: the layout, the
// forward kernel and, when requires_grad, the node from x, scale and zero_point (qparam gradients in their dtypes,
// float32 for integer ones). axis: none per tensor; group_size: none per channel. rule: qkernels::ZpRule.
template <LearnableForwardLauncher* kForward, LearnableBackwardLauncher* kBackward>
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

#define QKERNELS_FAKE_QUANT_LEARNABLE_IMPLS(m, dev)                                  \
  m.impl("_fake_quant_learnable_forward_" #dev, &qkernels::learnable_forward_##dev); \
  m.impl("_fake_quant_learnable_backward_" #dev, &qkernels::learnable_backward_##dev)

#define QKERNELS_FAKE_QUANT_LEARNABLE_EAGER_SCHEMAS(m, suffix)                                                   \
  m.def("_fake_quant_learnable_forward_eager_" suffix                                                            \
        "(Tensor x, Tensor scale, Tensor zero_point, int? axis, int? group_size, int quant_min, int quant_max, " \
        "float grad_factor, int rule, bool use_fma, bool requires_grad) -> Tensor")

#define QKERNELS_FAKE_QUANT_LEARNABLE_EAGER_IMPLS(m, dev)                                                           \
  m.impl("_fake_quant_learnable_forward_eager_" #dev,                                                               \
         &qkernels::glue::learnable_eager<&qkernels::learnable_forward_##dev, &qkernels::learnable_backward_##dev>)
