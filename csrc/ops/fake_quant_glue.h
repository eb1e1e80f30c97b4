// Torch glue shared by the CPU and CUDA private ops: tensors -> the POD params of fake_quant_kernels.h.
// Argument checking of public inputs happens once, in Python (qkernels/ops.py) or in the entry points that
// stand in for it (python_entry.cpp); these are internal checks of what they hand over.
#pragma once

#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "qkernels/fake_quant_kernels.h"
#include "qkernels/fake_quant_learnable_kernels.h"
#include "qkernels/fused_observer_kernels.h"

namespace qkernels {
namespace glue {

inline int64_t flavour_of(const at::Tensor& x) {
  return static_cast<int64_t>(x.is_cuda() ? Flavour::Cuda : Flavour::Cpu);
}

// Elements between consecutive indices of `axis` in t's dense storage (as qkernels/ops.py's _inner_stride): its
// stride, or every element when the axis has one index.
inline int64_t inner_stride(const at::Tensor& t, int64_t axis) {
  const int64_t size = t.size(axis);
  return size > 1 ? t.stride(axis) : std::max<int64_t>(1, t.numel() / std::max<int64_t>(1, size));
}

inline DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return DType::Float32;
    case at::kHalf:
      return DType::Float16;
    case at::kBFloat16:
      return DType::BFloat16;
    default:
      TORCH_CHECK(false, "qkernels: unsupported dtype ", t.scalar_type());
  }
}

// A mask is bool with the layout of `like`, or packed: uint8, contiguous, one bit per element.
inline bool mask_is_packed(const at::Tensor& mask, const at::Tensor& like) {
  if (mask.scalar_type() == at::kByte) {
    TORCH_CHECK(mask.is_contiguous() && mask.numel() == (like.numel() + 7) / 8,
                "qkernels: a packed mask is contiguous uint8 with one bit per element");
    return true;
  }
  TORCH_CHECK(mask.scalar_type() == at::kBool && mask.strides() == like.strides() && mask.sizes() == like.sizes(),
              "qkernels: mask must be bool with the sizes and strides of its tensor, or packed uint8");
  return false;
}

// x and out must share one dense layout; the kernels walk storage order.
inline void check_pair(const at::Tensor& x, const at::Tensor& out) {
  TORCH_CHECK(out.scalar_type() == x.scalar_type() && out.strides() == x.strides() && out.sizes() == x.sizes(),
              "qkernels: out must match x in dtype, sizes and strides");
  TORCH_CHECK(x.is_non_overlapping_and_dense(), "qkernels: x must be dense");
}

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
  TORCH_CHECK(rule >= 0 && rule <= 2, "qkernels: zero-point rule must be 0, 1 or 2");
  LearnableBackwardParams p{};
  p.dtype = dtype_of(x);
  p.flavour = static_cast<Flavour>(flavour);
  p.dims = dims;
  p.blocks = make_learnable_blocks(dims, target);
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

// (dscale, dzero_point) from the [2, B, P, C] partials: each summed over P in float64 and rounded once to
// its dtype, 1-D [B * C], in storages of their own; empty tensors when the partials are (no qparam grads).
inline std::tuple<at::Tensor, at::Tensor> reduce_partials(const at::Tensor& partials, at::ScalarType ds_dtype,
                                                          at::ScalarType dz_dtype) {
  if (partials.dim() != 4) return {partials.new_empty({0}, ds_dtype), partials.new_empty({0}, dz_dtype)};
  const at::Tensor sums = partials.sum(2, /*keepdim=*/false, at::kDouble);
  return {sums[0].reshape(-1).to(ds_dtype, false, /*copy=*/true), sums[1].reshape(-1).to(dz_dtype, false, true)};
}

// Fused observer: x (dense) in storage order as [outer, channels, inner], channels = running_min.numel();
// float32 running stats and scale, int32 or int64 zero point, all contiguous with `channels` elements.
inline Flag flag_of(const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK(t.numel() == 1 && t.device() == x.device(), "qkernels: an observer flag has one element on x's device");
  FlagType type;
  switch (t.scalar_type()) {
    // Integer flags are read as bit patterns (on = nonzero), so signedness does not matter; a bool is a byte.
    case at::kBool:
    case at::kChar:
    case at::kByte: type = FlagType::Int8; break;
    case at::kShort:
    case at::kUInt16: type = FlagType::Int16; break;
    case at::kInt:
    case at::kUInt32: type = FlagType::Int32; break;
    case at::kLong:
    case at::kUInt64: type = FlagType::Int64; break;
    case at::kHalf: type = FlagType::Float16; break;
    case at::kBFloat16: type = FlagType::BFloat16; break;
    case at::kFloat: type = FlagType::Float32; break;
    case at::kDouble: type = FlagType::Float64; break;
    default: TORCH_CHECK(false, "qkernels: unsupported observer flag dtype ", t.scalar_type());
  }
  return {t.data_ptr(), type};
}

// x dense, viewed in storage order as [outer, channels, inner] with channels = running_min.numel().
inline ObserverParams observer_params(const at::Tensor& x, const at::Tensor& observer_on,
                                      const at::Tensor& fake_quant_on, at::Tensor& running_min,
                                      at::Tensor& running_max, at::Tensor& scale, at::Tensor& zero_point,
                                      double averaging_const, int64_t quant_min, int64_t quant_max, int64_t inner,
                                      bool symmetric, int64_t mode, double eps, int64_t symmetric_zero_point,
                                      int64_t flavour) {
  const int64_t channels = running_min.numel();
  TORCH_CHECK(x.is_non_overlapping_and_dense() && channels > 0 && inner > 0 && x.numel() % (channels * inner) == 0,
              "qkernels: observer x must be dense and split into [outer, channels, inner]");
  for (const at::Tensor* t : {&running_min, &running_max, &scale}) {
    TORCH_CHECK(t->scalar_type() == at::kFloat && t->is_contiguous() && t->numel() == channels &&
                    t->device() == x.device(),
                "qkernels: observer running stats and scale must be contiguous float32 with one value per channel");
  }
  TORCH_CHECK((zero_point.scalar_type() == at::kInt || zero_point.scalar_type() == at::kLong) &&
                  zero_point.is_contiguous() && zero_point.numel() == channels && zero_point.device() == x.device(),
              "qkernels: observer zero point must be contiguous int32 or int64 with one value per channel");
  TORCH_CHECK(mode == 0 || mode == 1, "qkernels: observer qparams mode must be 0 (fused) or 1 (observer)");
  ObserverParams p{};
  p.dtype = dtype_of(x);
  p.outer = x.numel() / (channels * inner);
  p.channels = channels;
  p.inner = inner;
  p.x = x.data_ptr();
  p.observer_on = flag_of(observer_on, x);
  p.fake_quant_on = flag_of(fake_quant_on, x);
  p.running_min = running_min.data_ptr<float>();
  p.running_max = running_max.data_ptr<float>();
  p.scale = scale.data_ptr<float>();
  p.zero_point_i32 = zero_point.scalar_type() == at::kInt ? zero_point.data_ptr<int32_t>() : nullptr;
  p.zero_point_i64 = zero_point.scalar_type() == at::kLong ? zero_point.data_ptr<int64_t>() : nullptr;
  p.averaging_const = static_cast<float>(averaging_const);
  p.quant_min = quant_min;
  p.quant_max = quant_max;
  p.symmetric = symmetric;
  p.mode = static_cast<QParamsMode>(mode);
  p.eps = static_cast<float>(eps);
  p.symmetric_zero_point = static_cast<int32_t>(symmetric_zero_point);
  p.flavour = static_cast<Flavour>(flavour);
  return p;
}

// Schemas of the private ops, identical for each device (the suffix names the device).
#define QKERNELS_FAKE_QUANT_SCHEMAS(m, suffix)                                                                     \
  m.def("_fake_quant_per_tensor_" suffix                                                                          \
        "(Tensor x, Tensor(a!) out, Tensor(b!)? mask, float scale, int zero_point, Tensor? scale_t, " \
        "Tensor? zero_point_t, Tensor? enabled_t, int quant_min, int quant_max, int flavour) -> ()");              \
  m.def("_fake_quant_per_channel_" suffix                                                                         \
        "(Tensor x, Tensor(a!) out, Tensor(b!)? mask, Tensor scale, Tensor zero_point, int inner, int quant_min, " \
        "int quant_max, int flavour, bool use_fma) -> ()");                                                         \
  m.def("_fake_quant_backward_" suffix "(Tensor grad, Tensor mask, Tensor(a!) out) -> ()");                    \
  m.def("_fake_quant_learnable_forward_" suffix                                                                 \
        "(Tensor x, Tensor(a!) out, Tensor scale, Tensor zero_point, int B, int O, int C, int I, int quant_min, " \
        "int quant_max, int flavour, bool per_tensor) -> ()");                                                      \
  m.def("_fake_quant_learnable_backward_" suffix                                                                \
        "(Tensor dy, Tensor x, Tensor(a!) dx, Tensor scale, Tensor zero_point, int B, int O, int C, int I, "       \
        "int quant_min, int quant_max, float grad_factor, int flavour, int rule, bool use_fma, bool need_qgrads, " \
        "ScalarType ds_dtype, ScalarType dz_dtype) -> (Tensor, Tensor)");                                          \
  m.def("_fused_observer_update_" suffix                                                                        \
        "(Tensor x, Tensor observer_on, Tensor fake_quant_on, Tensor(a!) running_min, Tensor(b!) running_max, "    \
        "Tensor(c!) scale, Tensor(d!) zero_point, float averaging_const, int quant_min, int quant_max, int inner, " \
        "bool symmetric, int mode, float eps, int symmetric_zero_point, int flavour) -> ()")

}  // namespace glue
}  // namespace qkernels
