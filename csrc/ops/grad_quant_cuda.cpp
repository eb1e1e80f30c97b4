// The gradient quantization family's private CUDA ops qkernels::_grad_quant_{absmax,quantize}_cuda: thin torch
// glue over csrc/cuda/grad_quant.cu (qkernels/grad_quant_cuda.h). Also built for the CPU emulator (cuda_glue.h).
// The schemas are LAUNCHERS in qkernels/grad_quant.py; the public op checks its inputs, these checks are internal
// checks of what it hands over. Nothing here reads a device value: amax, clip_ratio and the key are read by the
// kernels, which also finish their partials on the device (the partials' buffers are stream-ordered allocations).
#include "cuda_glue.h"
#include "qkernels/grad_quant_cuda.h"

// The family has no eager fast path: nothing to register beyond the launchers.
#define QKERNELS_GRAD_QUANT_CUDA_NO_EAGER(m, ...) (void)m

namespace qkernels {

namespace {

// g contiguous float32/float16/bfloat16 with elements, in groups of n; returns the group count.
int64_t check_groups(const at::Tensor& g, int64_t n, const char* launcher) {
  TORCH_CHECK(g.numel() > 0 && g.is_contiguous(), "qkernels: ", launcher,
              ": `g` must be contiguous with at least one element, got sizes ", g.sizes());
  glue::dtype_of(g);  // float32, float16 or bfloat16
  TORCH_CHECK(n >= 1 && g.numel() % n == 0, "qkernels: ", launcher, ": `n` must divide numel (", g.numel(),
              "), got ", n);
  return g.numel() / n;
}

// A tensor of the call: contiguous, `dtype`, `sizes`, on g's device.
void check_tensor(const at::Tensor& t, at::IntArrayRef sizes, at::ScalarType dtype, const at::Tensor& g,
                  const char* launcher, const char* what) {
  TORCH_CHECK(t.scalar_type() == dtype && t.sizes() == sizes && t.is_contiguous() && t.device() == g.device(),
              "qkernels: ", launcher, ": `", what, "` must be a contiguous ", dtype, " tensor of sizes ", sizes,
              " on ", g.device(), ", got ", t.scalar_type(), " of sizes ", t.sizes(), " on ", t.device());
}

}  // namespace

void grad_quant_absmax_cuda(const at::Tensor& g, int64_t n, at::Tensor& amax) {
  const char* launcher = "_grad_quant_absmax_cuda";
  const int64_t groups = check_groups(g, n, launcher);
  check_tensor(amax, {groups}, at::kFloat, g, launcher, "amax");
  const glue::DeviceGuard guard(g.device());
  const at::Tensor partial = at::empty({grad_quant_absmax_partials(g.numel(), n)}, amax.options());
  GradQuantAbsmaxParams p{};
  p.g = g.const_data_ptr();
  p.dtype = glue::dtype_of(g);
  p.numel = g.numel();
  p.n = n;
  p.amax = amax.data_ptr<float>();
  p.partial = partial.numel() > 0 ? partial.data_ptr<float>() : nullptr;
  glue::check_launch(cuda::grad_quant_absmax(p, glue::current_stream()));
}

void grad_quant_quantize_cuda(const at::Tensor& g, int64_t n, const at::Tensor& amax, int64_t bits,
                              const at::Tensor& clip_ratio, const std::optional<at::Tensor>& key, bool packed,
                              at::Tensor& out, at::Tensor& scales, at::Tensor& n_clipped) {
  const char* launcher = "_grad_quant_quantize_cuda";
  const int64_t groups = check_groups(g, n, launcher);
  TORCH_CHECK(bits >= 2 && bits <= (packed ? 4 : 8), "qkernels: ", launcher, ": `bits` must be 2 to ",
              packed ? 4 : 8, ", got ", bits);
  check_tensor(amax, {groups}, at::kFloat, g, launcher, "amax");
  check_tensor(clip_ratio, {}, at::kFloat, g, launcher, "clip_ratio");
  if (key.has_value()) check_tensor(*key, {2}, at::kLong, g, launcher, "key");
  if (packed) {
    check_tensor(out, {(g.numel() + 1) / 2}, at::kByte, g, launcher, "out");
  } else {
    check_tensor(out, g.sizes(), g.scalar_type(), g, launcher, "out");
  }
  check_tensor(scales, {groups}, at::kFloat, g, launcher, "scales");
  check_tensor(n_clipped, {}, at::kLong, g, launcher, "n_clipped");
  const glue::DeviceGuard guard(g.device());
  const at::Tensor partial = at::empty({grad_quant_count_partials(g.numel())}, n_clipped.options());
  GradQuantParams p{};
  p.g = g.const_data_ptr();
  p.dtype = glue::dtype_of(g);
  p.numel = g.numel();
  p.n = n;
  p.bits = static_cast<int>(bits);
  p.amax = amax.const_data_ptr<float>();
  p.clip_ratio = clip_ratio.const_data_ptr<float>();
  p.key = key.has_value() ? key->const_data_ptr<int64_t>() : nullptr;
  p.packed = packed;
  p.out = out.data_ptr();
  p.scales = scales.data_ptr<float>();
  p.n_clipped = n_clipped.data_ptr<int64_t>();
  p.count_partial = partial.data_ptr<int64_t>();
  glue::check_launch(cuda::grad_quant_quantize(p, glue::current_stream()));
}

}  // namespace qkernels

#define QKERNELS_GRAD_QUANT_CUDA_IMPLS(m, dev)                                \
  m.impl("_grad_quant_absmax_" #dev, &qkernels::grad_quant_absmax_##dev);     \
  m.impl("_grad_quant_quantize_" #dev, &qkernels::grad_quant_quantize_##dev)

QKERNELS_REGISTER_CUDA(QKERNELS_GRAD_QUANT_CUDA_IMPLS, QKERNELS_GRAD_QUANT_CUDA_NO_EAGER,
                       QKERNELS_GRAD_QUANT_CUDA_NO_EAGER)
