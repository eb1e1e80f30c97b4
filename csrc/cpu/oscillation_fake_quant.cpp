// CPU oscillation fake-quant entry points: the loops of oscillation_fake_quant_impl.h built for baseline x86-64
// (here) and for AVX2+FMA+F16C (oscillation_fake_quant_avx2.cpp), chosen once from the running CPU (isa.h).
#include "qkernels/oscillation_fake_quant_kernels.h"

#define QK_CPU_ISA baseline
#include "oscillation_fake_quant_impl.h"
#undef QK_CPU_ISA
#include "isa.h"

namespace qkernels {
namespace cpu {

#ifdef QK_CPU_HAS_AVX2_BUILD
namespace avx2 {
int64_t oscillation_fake_quant_forward(const OscillationForwardParams& p, int64_t begin, int64_t end);
void oscillation_fake_quant_backward(const OscillationBackwardParams& p, int64_t begin, int64_t end);
}  // namespace avx2
#endif

int64_t oscillation_fake_quant_forward(const OscillationForwardParams& p, int64_t begin, int64_t end) {
  return QK_CPU_DISPATCH(oscillation_fake_quant_forward, p, begin, end);
}
void oscillation_fake_quant_backward(const OscillationBackwardParams& p, int64_t begin, int64_t end) {
  QK_CPU_DISPATCH(oscillation_fake_quant_backward, p, begin, end);
}

}  // namespace cpu
}  // namespace qkernels
