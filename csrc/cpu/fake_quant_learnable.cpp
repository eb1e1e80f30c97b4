// CPU learnable (LSQ) fake-quant entry points: the loops of fake_quant_learnable_impl.h built for baseline x86-64
// (here) and for AVX2+FMA+F16C (fake_quant_learnable_avx2.cpp), chosen once from the running CPU (isa.h).
#include "qkernels/fake_quant_learnable_kernels.h"

#define QK_CPU_ISA baseline
#include "fake_quant_learnable_impl.h"
#undef QK_CPU_ISA
#include "isa.h"

namespace qkernels {
namespace cpu {

#ifdef QK_CPU_HAS_AVX2_BUILD
namespace avx2 {
void fake_quant_learnable_forward(const LearnableForwardParams& p, int64_t begin, int64_t end);
void fake_quant_learnable_backward(const LearnableBackwardParams& p, int64_t begin, int64_t end);
}  // namespace avx2
#endif

void fake_quant_learnable_forward(const LearnableForwardParams& p, int64_t begin, int64_t end) {
  QK_CPU_DISPATCH(fake_quant_learnable_forward, p, begin, end);
}
void fake_quant_learnable_backward(const LearnableBackwardParams& p, int64_t begin, int64_t end) {
  QK_CPU_DISPATCH(fake_quant_learnable_backward, p, begin, end);
}

}  // namespace cpu
}  // namespace qkernels
