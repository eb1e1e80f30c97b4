// Torch glue of the fused observer family: its private launcher op (_fused_observer_update_<device>,
// csrc/ops/fused_observer_{cpu,cuda}.cpp) and its per-tensor eager step (_fused_observer_per_tensor_eager_<device>:
// the observer step, then the fake-quant family's per-tensor forward and straight-through node, in one call).
#pragma once

#include "fake_quant_glue.h"
#include "glue.h"
#include "qkernels/fused_observer_kernels.h"

namespace qkernels {

// The family's launcher, one per device (the private op).
using ObserverLauncher = void(const at::Tensor& x, const at::Tensor& observer_on, const at::Tensor& fake_quant_on,
                              at::Tensor& running_min, at::Tensor& running_max, at::Tensor& scale,
                              at::Tensor& zero_point, double averaging_const, int64_t quant_min, int64_t quant_max,
                              int64_t inner, bool symmetric, int64_t mode, double eps, int64_t symmetric_zero_point,
                              int64_t flavour);
ObserverLauncher fused_observer_update_cpu, fused_observer_update_cuda;

namespace glue {

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
  TORCH_CHECK(mode == static_cast<int64_t>(QParamsMode::Fused) || mode == static_cast<int64_t>(QParamsMode::Observer),
              "qkernels: observer qparams mode must be a qkernels::QParamsMode, got ", mode);
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

// The fused observer op per tensor (qkernels/fused_observer.py) on checked arguments: the observer and qparam
// step in place on x in the outputs' dense layout (the one copy of a non-dense x serves both steps), then the
// per-tensor fake quantization with the new qparams and the fake_quant_on flag, and the node. The new qparams are
// not value-checked, as torch's op does not check them (a NaN input gives a NaN scale and NaN outputs).
template <ObserverLauncher* kObserver, PerTensorLauncher* kForward, BackwardLauncher* kBackward>
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

}  // namespace glue
}  // namespace qkernels

#define QKERNELS_FUSED_OBSERVER_IMPLS(m, dev) \
  m.impl("_fused_observer_update_" #dev, &qkernels::fused_observer_update_##dev)

#define QKERNELS_FUSED_OBSERVER_EAGER_SCHEMAS(m, suffix)                                                           \
  m.def("_fused_observer_per_tensor_eager_" suffix                                                                \
        "(Tensor x, Tensor observer_on, Tensor fake_quant_on, Tensor(a!) running_min, Tensor(b!) running_max, "    \
        "Tensor(c!) scale, Tensor(d!) zero_point, float averaging_const, int quant_min, int quant_max, "          \
        "bool symmetric, int mode, float eps, int symmetric_zero_point, bool requires_grad, bool pack_mask) "     \
        "-> Tensor")

#define QKERNELS_FUSED_OBSERVER_EAGER_IMPLS(m, dev)                                                              \
  m.impl("_fused_observer_per_tensor_eager_" #dev,                                                                \
         &qkernels::glue::fused_observer_per_tensor_eager<&qkernels::fused_observer_update_##dev,                 \
                                                          &qkernels::per_tensor_##dev, &qkernels::backward_##dev>)
