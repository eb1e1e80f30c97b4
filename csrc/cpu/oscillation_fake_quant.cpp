// CPU oscillation fake-quant entry points: the loops of oscillation_fake_quant_impl.h built for baseline x86-64
// (here) and for AVX2+FMA+F16C (oscillation_fake_quant_avx2.cpp), chosen once from the running CPU (isa.h).
#include "qkernels/oscillation_fake_quant_kernels.h"

#define QK_CPU_ISA baseline
#include "oscillation_fake_quant_impl.h"
#undef QK_CPU_ISA
#include "isa.h"

namespace qkernels {
namespace cpu {

QK_CPU_ENTRY(int64_t, oscillation_fake_quant_forward, OscillationForwardParams)
QK_CPU_ENTRY(void, oscillation_fake_quant_backward, OscillationBackwardParams)

}  // namespace cpu
}  // namespace qkernels
