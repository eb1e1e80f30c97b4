// Torch glue of the gradient quantization family: its private launcher ops _grad_quant_{absmax, quantize}_<device>
// (csrc/ops/grad_quant_{cpu,cuda}.cpp), tensors -> the params of qkernels/grad_quant_kernels.h. The schemas are
// LAUNCHERS in qkernels/grad_quant.py; the public op checks its inputs, these checks are internal checks of what it
// hands over (layouts, dtypes, sizes, devices: never values, which may live on the device). No eager fast path
// (ARCHITECTURE.md: opt-in).
#pragma once

#include <optional>

#include "glue.h"
#include "qkernels/grad_quant_kernels.h"

namespace qkernels {

// The family's launchers, one set per device: absmax writes max|g| per group of n (float32 [G], NaN for a
// non-finite group); quantize writes out (g's dtype and sizes, or packed uint8 [ceil(numel / 2)]), the scales
// (float32 [G]) and the clipped count (int64 []).
using GradQuantAbsmaxLauncher = void(const at::Tensor& g, int64_t n, at::Tensor& amax);
using GradQuantQuantizeLauncher = void(const at::Tensor& g, int64_t n, const at::Tensor& amax, int64_t bits,
                                       const at::Tensor& clip_ratio, const std::optional<at::Tensor>& key,
                                       bool packed, at::Tensor& out, at::Tensor& scales, at::Tensor& n_clipped);
GradQuantAbsmaxLauncher grad_quant_absmax_cpu, grad_quant_absmax_cuda;
GradQuantQuantizeLauncher grad_quant_quantize_cpu, grad_quant_quantize_cuda;

namespace glue {

// The groups G = numel / n of g: checks that g is a contiguous float32/float16/bfloat16 tensor with elements and
// that n divides its numel.
inline int64_t grad_quant_groups(const at::Tensor& g, int64_t n, const char* launcher) {
  const at::ScalarType t = g.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kHalf || t == at::kBFloat16, "qkernels: ", launcher,
              ": `g` must be float32, float16 or bfloat16, got ", t);
  TORCH_CHECK(g.numel() > 0 && g.is_contiguous(), "qkernels: ", launcher,
              ": `g` must be contiguous with at least one element, got sizes ", g.sizes());
  TORCH_CHECK(n >= 1 && g.numel() % n == 0, "qkernels: ", launcher, ": `n` must be a positive divisor of g's numel (",
              g.numel(), "), got ", n);
  return g.numel() / n;
}

// An array of the call: contiguous, `dtype`, `sizes`, on g's device.
inline void check_array(const at::Tensor& t, at::IntArrayRef sizes, at::ScalarType dtype, const at::Tensor& g,
                        const char* launcher, const char* what) {
  TORCH_CHECK(t.scalar_type() == dtype && t.sizes() == sizes && t.is_contiguous() && t.device() == g.device(),
              "qkernels: ", launcher, ": `", what, "` must be a contiguous ", dtype, " tensor of sizes ", sizes, " on ",
              g.device(), ", got ", t.scalar_type(), " of sizes ", t.sizes(), " on ", t.device());
}

inline GradQuantAbsmaxParams grad_quant_absmax_params(const at::Tensor& g, int64_t n, at::Tensor& amax,
                                                      const char* launcher) {
  const int64_t groups = grad_quant_groups(g, n, launcher);
  check_array(amax, {groups}, at::kFloat, g, launcher, "amax");
  GradQuantAbsmaxParams p{};
  p.g = g.const_data_ptr();
  p.dtype = dtype_of(g);
  p.numel = g.numel();
  p.n = n;
  p.amax = amax.data_ptr<float>();
  return p;
}

// Every field but count_partial, whose layout is the device's.
inline GradQuantParams grad_quant_params(const at::Tensor& g, int64_t n, const at::Tensor& amax, int64_t bits,
                                         const at::Tensor& clip_ratio, const std::optional<at::Tensor>& key,
                                         bool packed, at::Tensor& out, at::Tensor& scales,
                                         const at::Tensor& n_clipped, const char* launcher) {
  const int64_t groups = grad_quant_groups(g, n, launcher);
  check_array(amax, {groups}, at::kFloat, g, launcher, "amax");
  TORCH_CHECK(bits >= 2 && bits <= (packed ? 4 : 8), "qkernels: ", launcher, ": `bits` must be 2 to ",
              packed ? "4 (packed int4 codes)" : "8", ", got ", bits);
  check_array(clip_ratio, {}, at::kFloat, g, launcher, "clip_ratio");
  if (key.has_value()) check_array(*key, {2}, at::kLong, g, launcher, "key");
  if (packed) {
    check_array(out, {(g.numel() + 1) / 2}, at::kByte, g, launcher, "out");
  } else {
    check_array(out, g.sizes(), g.scalar_type(), g, launcher, "out");
  }
  check_array(scales, {groups}, at::kFloat, g, launcher, "scales");
  check_array(n_clipped, {}, at::kLong, g, launcher, "n_clipped");
  GradQuantParams p{};
  p.g = g.const_data_ptr();
  p.dtype = dtype_of(g);
  p.numel = g.numel();
  p.n = n;
  p.bits = static_cast<int>(bits);
  p.amax = amax.const_data_ptr<float>();
  p.clip_ratio = clip_ratio.const_data_ptr<float>();
  p.key = key.has_value() ? key->const_data_ptr<int64_t>() : nullptr;
  p.packed = packed;
  p.out = out.data_ptr();
  p.scales = scales.data_ptr<float>();
  return p;
}

}  // namespace glue
}  // namespace qkernels

#define QKERNELS_GRAD_QUANT_IMPLS(m, dev)                                      \
  m.impl("_grad_quant_absmax_" #dev, &qkernels::grad_quant_absmax_##dev);     \
  m.impl("_grad_quant_quantize_" #dev, &qkernels::grad_quant_quantize_##dev)
