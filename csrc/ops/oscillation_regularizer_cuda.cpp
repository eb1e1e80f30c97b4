// The oscillation regularizer family's private CUDA ops qkernels::_oscillation_regularizer_{amax,sums,backward}_cuda:
// thin torch glue over csrc/cuda/oscillation_regularizer.cu. Also built for the CPU emulator (cuda_glue.h). The
// schemas are LAUNCHERS in qkernels/oscillation_regularizer.py. Nothing here reads a device value: the kernels read
// amax, sums, ties and grad where they are, and finish the partials on the device. The slot table stays in host
// memory (the kernels take it as a launch argument).
#include <vector>

#include "cuda_glue.h"
#include "qkernels/oscillation_regularizer_kernels.h"

namespace qkernels {
namespace glue {
namespace {

void check_vector(const at::Tensor& t, const at::Tensor& like, at::ScalarType dtype, at::IntArrayRef sizes,
                  const char* what) {
  TORCH_CHECK(t.scalar_type() == dtype && t.sizes() == sizes && t.is_contiguous() && t.device() == like.device(),
              "qkernels: ", what, " must be contiguous ", dtype, " of sizes ", sizes, " on ", like.device());
}

// The params of a call over the weights w (dw: their gradients, or empty): the slots in `slots`, the blocks of
// make_reduce_blocks({1, 1, 1, N_l}, kRegularizerReduceTarget), their partials concatenated in tensor order (P:
// all of them).
RegularizerParams regularizer_params(at::TensorList w, at::TensorList dw, std::vector<RegularizerSlot>& slots,
                                     int64_t& P) {
  TORCH_CHECK(!w.empty(), "qkernels: oscillation_regularizer needs at least one weight");
  TORCH_CHECK(dw.empty() || dw.size() == w.size(), "qkernels: oscillation_regularizer needs one dw per weight");
  const at::Tensor& first = w[0];
  RegularizerParams p{};
  p.dtype = dtype_of(first);
  p.L = static_cast<int64_t>(w.size());
  slots.resize(w.size());
  P = 0;
  for (size_t l = 0; l < w.size(); ++l) {
    const at::Tensor& t = w[l];
    TORCH_CHECK(t.scalar_type() == first.scalar_type() && t.device() == first.device() && t.is_contiguous() &&
                    t.numel() > 0,
                "qkernels: oscillation_regularizer weights must be non-empty, contiguous, of one dtype and device");
    RegularizerSlot& s = slots[l];
    s.w = t.const_data_ptr();
    if (!dw.empty()) {
      const at::Tensor& d = dw[l];
      TORCH_CHECK(d.scalar_type() == t.scalar_type() && d.sizes() == t.sizes() && d.is_contiguous() &&
                      d.device() == t.device(),
                  "qkernels: oscillation_regularizer dw must match its weight in dtype, sizes and device, contiguous");
      s.dw = d.data_ptr();
    }
    s.numel = t.numel();
    s.blocks = make_reduce_blocks(ReduceDims{1, 1, 1, s.numel}, kRegularizerReduceTarget);
    s.offset = P;
    P += s.blocks.P;
  }
  p.slots = slots.data();
  return p;
}

int bits_of(int64_t bits) {
  TORCH_CHECK(bits >= 2 && bits <= 8, "qkernels: oscillation_regularizer bits must be 2 to 8, got ", bits);
  return static_cast<int>(bits);
}

}  // namespace
}  // namespace glue

void oscillation_regularizer_amax_cuda(at::TensorList w, at::Tensor& out) {
  std::vector<RegularizerSlot> slots;
  int64_t P = 0;
  RegularizerParams p = glue::regularizer_params(w, {}, slots, P);
  const glue::DeviceGuard guard(w[0].device());
  glue::check_vector(out, w[0], at::kFloat, {p.L}, "amax out");
  const at::Tensor partials = at::empty({P}, w[0].options().dtype(at::kFloat));
  p.amax_partial = partials.data_ptr<float>();
  glue::check_launch(cuda::oscillation_regularizer_amax(p, out.data_ptr<float>(), glue::current_stream()));
}

void oscillation_regularizer_sums_cuda(at::TensorList w, const at::Tensor& amax, int64_t bits, at::Tensor& out,
                                       at::Tensor& ties) {
  std::vector<RegularizerSlot> slots;
  int64_t P = 0;
  RegularizerParams p = glue::regularizer_params(w, {}, slots, P);
  p.bits = glue::bits_of(bits);
  const glue::DeviceGuard guard(w[0].device());
  glue::check_vector(amax, w[0], at::kFloat, {p.L}, "amax");
  glue::check_vector(out, w[0], at::kDouble, {p.L, 2}, "sums out");
  glue::check_vector(ties, w[0], at::kLong, {p.L}, "ties");
  const at::Tensor partials = at::empty({2, P}, w[0].options().dtype(at::kFloat));
  const at::Tensor counts = at::empty({P}, w[0].options().dtype(at::kLong));
  p.amax = amax.const_data_ptr<float>();
  p.e_partial = partials.data_ptr<float>();
  p.t_partial = p.e_partial + P;
  p.tie_partial = counts.data_ptr<int64_t>();
  glue::check_launch(cuda::oscillation_regularizer_sums(p, out.data_ptr<double>(), ties.data_ptr<int64_t>(),
                                                        glue::current_stream()));
}

void oscillation_regularizer_backward_cuda(at::TensorList w, at::TensorList dw, const at::Tensor& grad,
                                           const at::Tensor& amax, const at::Tensor& sums, const at::Tensor& ties,
                                           int64_t bits, bool scale_grad) {
  std::vector<RegularizerSlot> slots;
  int64_t P = 0;
  RegularizerParams p = glue::regularizer_params(w, dw, slots, P);
  p.bits = glue::bits_of(bits);
  const glue::DeviceGuard guard(w[0].device());
  glue::check_vector(grad, w[0], at::kFloat, {}, "grad");
  glue::check_vector(amax, w[0], at::kFloat, {p.L}, "amax");
  glue::check_vector(sums, w[0], at::kDouble, {p.L, 2}, "sums");
  glue::check_vector(ties, w[0], at::kLong, {p.L}, "ties");
  p.amax = amax.const_data_ptr<float>();
  p.sums = sums.const_data_ptr<double>();
  p.ties = ties.const_data_ptr<int64_t>();
  p.grad = grad.const_data_ptr<float>();
  p.scale_grad = scale_grad;
  glue::check_launch(cuda::oscillation_regularizer_backward(p, glue::current_stream()));
}

}  // namespace qkernels

// The family has no eager fast path (ARCHITECTURE.md: opt-in): nothing to register beyond the launchers.
#define QKERNELS_OSCILLATION_REGULARIZER_NO_EAGER(m, ...) (void)m
#define QKERNELS_OSCILLATION_REGULARIZER_CUDA_IMPLS(m, dev)                                    \
  m.impl("_oscillation_regularizer_amax_" #dev, &qkernels::oscillation_regularizer_amax_##dev); \
  m.impl("_oscillation_regularizer_sums_" #dev, &qkernels::oscillation_regularizer_sums_##dev); \
  m.impl("_oscillation_regularizer_backward_" #dev, &qkernels::oscillation_regularizer_backward_##dev)

QKERNELS_REGISTER_CUDA(QKERNELS_OSCILLATION_REGULARIZER_CUDA_IMPLS, QKERNELS_OSCILLATION_REGULARIZER_NO_EAGER,
                       QKERNELS_OSCILLATION_REGULARIZER_NO_EAGER)
