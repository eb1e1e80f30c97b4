// The oscillation regularizer family's private CUDA ops qkernels::_oscillation_regularizer_{amax,sums,backward}_cuda:
// thin torch glue over csrc/cuda/oscillation_regularizer.cu. Also built for the CPU emulator (cuda_glue.h). Nothing
// here reads a device value: the kernels read amax, sums, ties and grad where they are, and finish the partials on
// the device. The slot table stays in host memory (the kernels take it as a launch argument, so there is no copy
// to the device to wait for, and a captured CUDA graph holds its own copy).
#include "cuda_glue.h"
#include "oscillation_regularizer_glue.h"

// The family has no eager fast path: nothing to register beyond the launchers.
#define QKERNELS_OSCILLATION_REGULARIZER_NO_EAGER(m, ...) (void)m

namespace qkernels {

void oscillation_regularizer_amax_cuda(at::TensorList w, at::Tensor& out) {
  const glue::RegularizerCall call = glue::regularizer_amax_call(w, out, "_oscillation_regularizer_amax_cuda");
  const glue::DeviceGuard guard(w[0].device());
  glue::check_launch(cuda::oscillation_regularizer_amax(call.p, out.data_ptr<float>(), glue::current_stream()));
}

void oscillation_regularizer_sums_cuda(at::TensorList w, const at::Tensor& amax, int64_t bits, at::Tensor& out,
                                       at::Tensor& ties) {
  const glue::RegularizerCall call =
      glue::regularizer_sums_call(w, amax, bits, out, ties, "_oscillation_regularizer_sums_cuda");
  const glue::DeviceGuard guard(w[0].device());
  glue::check_launch(cuda::oscillation_regularizer_sums(call.p, out.data_ptr<double>(), ties.data_ptr<int64_t>(),
                                                        glue::current_stream()));
}

void oscillation_regularizer_backward_cuda(at::TensorList w, at::TensorList dw, const at::Tensor& grad,
                                           const at::Tensor& amax, const at::Tensor& sums, const at::Tensor& ties,
                                           int64_t bits, bool scale_grad) {
  const glue::RegularizerCall call = glue::regularizer_backward_call(w, dw, grad, amax, sums, ties, bits, scale_grad,
                                                                     "_oscillation_regularizer_backward_cuda");
  const glue::DeviceGuard guard(w[0].device());
  glue::check_launch(cuda::oscillation_regularizer_backward(call.p, glue::current_stream()));
}

}  // namespace qkernels

QKERNELS_REGISTER_CUDA(QKERNELS_OSCILLATION_REGULARIZER_IMPLS, QKERNELS_OSCILLATION_REGULARIZER_NO_EAGER,
                       QKERNELS_OSCILLATION_REGULARIZER_NO_EAGER)
