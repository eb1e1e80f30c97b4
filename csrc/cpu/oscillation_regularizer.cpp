// CPU oscillation regularizer entry points: the loops of oscillation_regularizer_impl.h built for baseline x86-64
// (here) and for AVX2+FMA+F16C (oscillation_regularizer_avx2.cpp), chosen once from the running CPU (isa.h).
#include "qkernels/oscillation_regularizer_kernels.h"

#define QK_CPU_ISA baseline
#include "oscillation_regularizer_impl.h"
#undef QK_CPU_ISA
#include "isa.h"

namespace qkernels {
namespace cpu {

QK_CPU_ENTRY(void, oscillation_regularizer_amax, RegularizerParams)
QK_CPU_ENTRY(void, oscillation_regularizer_sums, RegularizerParams)
QK_CPU_ENTRY(void, oscillation_regularizer_backward, RegularizerParams)

}  // namespace cpu
}  // namespace qkernels
