// CPU oscillation dampening entry point: the loops of oscillation_dampening_impl.h built for baseline x86-64 (here)
// and for AVX2+FMA+F16C (oscillation_dampening_avx2.cpp), chosen once from the running CPU (isa.h).
#include "qkernels/oscillation_dampening_kernels.h"

#define QK_CPU_ISA baseline
#include "oscillation_dampening_impl.h"
#undef QK_CPU_ISA
#include "isa.h"

namespace qkernels {
namespace cpu {

QK_CPU_ENTRY(void, oscillation_dampening_forward, DampeningParams)

}  // namespace cpu
}  // namespace qkernels
