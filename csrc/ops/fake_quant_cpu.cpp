// Private CPU ops qkernels::_fake_quant_*_cpu: thin torch glue over csrc/cpu/fake_quant.cpp.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <mutex>
#include <vector>

#include "fake_quant_glue.h"
#include "eager_autograd.h"

namespace qkernels {
namespace {

constexpr int64_t kGrain = 1 << 15;

// Splits [0, n) across threads; with a packed mask at multiples of 8 elements, so no byte is shared.
template <typename Params, typename Fn>
void parallel_over(const Params& p, Fn fn) {
  if (!p.mask_packed) {
    at::parallel_for(0, p.numel, kGrain, fn);
    return;
  }
  at::parallel_for(0, (p.numel + 7) / 8, kGrain / 8,
                   [&](int64_t b, int64_t e) { fn(8 * b, std::min(8 * e, p.numel)); });
}

void per_tensor_cpu(const at::Tensor& x, at::Tensor& out, const std::optional<at::Tensor>& mask, double scale,
                    int64_t zero_point, const std::optional<at::Tensor>& scale_t,
                    const std::optional<at::Tensor>& zero_point_t, const std::optional<at::Tensor>& enabled_t,
                    int64_t quant_min, int64_t quant_max, int64_t flavour) {
  PerTensorParams p =
      glue::per_tensor_params(x, out, mask, scale, zero_point, quant_min, quant_max, flavour);
  // CPU tensors: reading them here is not a device sync.
  glue::set_tensor_qparams(p, scale_t, zero_point_t, enabled_t);
  if (p.scale_ptr) p.scale = *p.scale_ptr;
  if (p.zero_point_ptr) p.zero_point = *p.zero_point_ptr;
  if (p.enabled_ptr) p.enabled = *p.enabled_ptr != 0;
  parallel_over(p, [&](int64_t b, int64_t e) { cpu::fake_quant_per_tensor(p, b, e); });
}

void per_channel_cpu(const at::Tensor& x, at::Tensor& out, const std::optional<at::Tensor>& mask,
                     const at::Tensor& scale, const at::Tensor& zero_point, int64_t inner, int64_t quant_min,
                     int64_t quant_max, int64_t flavour, bool use_fma) {
  const PerChannelParams p = glue::per_channel_params(x, out, mask, scale, zero_point, inner, quant_min, quant_max,
                                                      flavour, use_fma);
  parallel_over(p, [&](int64_t b, int64_t e) { cpu::fake_quant_per_channel(p, b, e); });
}

void backward_cpu(const at::Tensor& grad, const at::Tensor& mask, at::Tensor& out) {
  const BackwardParams p = glue::backward_params(grad, mask, out);
  parallel_over(p, [&](int64_t b, int64_t e) { cpu::fake_quant_backward(p, b, e); });
}

constexpr int64_t kLearnableItem = 1 << 14;  // elements per backward work item (fixes the summation order)

void learnable_forward_cpu(const at::Tensor& x, at::Tensor& out, const at::Tensor& scale,
                           const at::Tensor& zero_point, int64_t B, int64_t O, int64_t C, int64_t I, int64_t quant_min,
                           int64_t quant_max, int64_t flavour, bool per_tensor) {
  const LearnableDims dims = glue::learnable_dims(x, scale, zero_point, B, O, C, I);
  const LearnableForwardParams p =
      glue::learnable_forward_params(x, out, scale, zero_point, dims, quant_min, quant_max, flavour, per_tensor);
  at::parallel_for(0, dims.numel(), kGrain, [&](int64_t b, int64_t e) { cpu::fake_quant_learnable_forward(p, b, e); });
}

// glue::reduce_partials (the rule of qkernels.reference.fake_quant_learnable.reduce_partials) as one host loop:
// aten's float64 sum and casts cost far more than these few sums.
// The sum runs over P in order; double -> dtype as aten's casts convert.
std::tuple<at::Tensor, at::Tensor> reduce_partials_cpu(const at::Tensor& partials, at::ScalarType ds_dtype,
                                                       at::ScalarType dz_dtype) {
  if (partials.dim() != 4) return glue::reduce_partials(partials, ds_dtype, dz_dtype);
  const int64_t B = partials.size(1), P = partials.size(2), C = partials.size(3);
  const float* src = partials.const_data_ptr<float>();
  at::Tensor grads[2] = {at::empty({B * C}, partials.options().dtype(ds_dtype)),
                         at::empty({B * C}, partials.options().dtype(dz_dtype))};
  for (int64_t g = 0; g < 2; ++g) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grads[g].scalar_type(), "reduce_partials", [&] {
      scalar_t* dst = grads[g].data_ptr<scalar_t>();
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t c = 0; c < C; ++c) {
          double acc = 0.0;
          for (int64_t k = 0; k < P; ++k) acc += src[((g * B + b) * P + k) * C + c];
          dst[b * C + c] = static_cast<scalar_t>(acc);
        }
      }
    });
  }
  return {grads[0], grads[1]};
}

std::tuple<at::Tensor, at::Tensor> learnable_backward_cpu(
    const at::Tensor& dy, const at::Tensor& x, at::Tensor& dx, const at::Tensor& scale, const at::Tensor& zero_point,
    int64_t B, int64_t O, int64_t C, int64_t I, int64_t quant_min, int64_t quant_max, double grad_factor,
    int64_t flavour, int64_t rule, bool use_fma, bool need_qgrads, at::ScalarType ds_dtype, at::ScalarType dz_dtype) {
  const LearnableDims dims = glue::learnable_dims(x, scale, zero_point, B, O, C, I);
  at::Tensor partials;
  const LearnableBackwardParams p =
      glue::learnable_backward_params(dy, x, dx, scale, zero_point, dims, quant_min, quant_max, grad_factor, flavour,
                                      rule, use_fma, need_qgrads, kLearnableItem, partials);
  // Items hold up to kLearnableItem elements, and far fewer in a small input: each thread takes at least kGrain
  // elements' worth of them (waking the thread pool costs more than a small backward pass).
  const int64_t items = cpu::learnable_backward_items(p);
  const int64_t per_item = std::max<int64_t>(1, dims.numel() / std::max<int64_t>(1, items));
  at::parallel_for(0, items, std::max<int64_t>(1, kGrain / per_item),
                   [&](int64_t b, int64_t e) { cpu::fake_quant_learnable_backward(p, b, e); });
  return reduce_partials_cpu(partials, ds_dtype, dz_dtype);
}

void fused_observer_update_cpu(const at::Tensor& x, const at::Tensor& observer_on, const at::Tensor& fake_quant_on,
                               at::Tensor& running_min, at::Tensor& running_max, at::Tensor& scale,
                               at::Tensor& zero_point, double averaging_const, int64_t quant_min, int64_t quant_max,
                               int64_t inner, bool symmetric, int64_t mode, double eps, int64_t symmetric_zero_point,
                               int64_t flavour) {
  const ObserverParams p = glue::observer_params(x, observer_on, fake_quant_on, running_min, running_max, scale,
                                                 zero_point, averaging_const, quant_min, quant_max, inner, symmetric,
                                                 mode, eps, symmetric_zero_point, flavour);
  // CPU tensors: the flags are read on the host, which is no device sync, and the pass over x is skipped
  // while the observer is off.
  const bool observe = flag_is_on(p.observer_on);
  const bool recompute = observer_recomputes(p, observe);
  std::vector<float> lo(p.channels, INFINITY), hi(p.channels, -INFINITY);
  if (observe && x.numel() > 0) {
    std::mutex fold;
    const auto combine = [&](const float* l, const float* h) {
      const std::lock_guard<std::mutex> lock(fold);
      for (int64_t c = 0; c < p.channels; ++c) lo[c] = nan_min(lo[c], l[c]), hi[c] = nan_max(hi[c], h[c]);
    };
    const int64_t size = x.element_size();
    if (p.channels == 1) {  // one run: split it into element ranges
      at::parallel_for(0, x.numel(), kGrain, [&](int64_t b, int64_t e) {
        ObserverParams q = p;
        q.x = static_cast<const char*>(p.x) + b * size;
        q.outer = 1;
        q.inner = e - b;
        float l = INFINITY, h = -INFINITY;
        cpu::fused_observer_minmax(q, 0, 1, &l, &h);
        combine(&l, &h);
      });
    } else if (p.outer == 1) {  // one row of channels (e.g. a weight on axis 0): split the channels
      at::parallel_for(0, p.channels, std::max<int64_t>(1, kGrain / p.inner), [&](int64_t b, int64_t e) {
        ObserverParams q = p;
        q.x = static_cast<const char*>(p.x) + b * p.inner * size;
        q.channels = e - b;
        cpu::fused_observer_minmax(q, 0, 1, lo.data() + b, hi.data() + b);  // disjoint channels: no combine
      });
    } else {
      at::parallel_for(0, p.outer, std::max<int64_t>(1, kGrain / (p.channels * p.inner)), [&](int64_t b, int64_t e) {
        std::vector<float> l(p.channels, INFINITY), h(p.channels, -INFINITY);
        cpu::fused_observer_minmax(p, b, e, l.data(), h.data());
        combine(l.data(), h.data());
      });
    }
  }
  for (int64_t c = 0; c < p.channels; ++c) observer_finish_channel(p, c, lo[c], hi[c], observe, recompute);
}

}  // namespace

QKERNELS_REGISTER_DEVICE(cpu, CPU)

}  // namespace qkernels
