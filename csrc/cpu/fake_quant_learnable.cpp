// CPU learnable (LSQ) fake-quant entry points: the loops of fake_quant_learnable_impl.h built for baseline x86-64
// (here) and for AVX2+FMA+F16C (fake_quant_learnable_avx2.cpp), chosen once from the running CPU (isa.h).
#include "qkernels/fake_quant_learnable_kernels.h"

#define QK_CPU_ISA baseline
#include "fake_quant_learnable_impl.h"
#undef QK_CPU_ISA
#include "isa.h"

namespace qkernels {
namespace cpu {

QK_CPU_ENTRY(void, fake_quant_learnable_forward, LearnableForwardParams)
QK_CPU_ENTRY(void, fake_quant_learnable_backward, LearnableBackwardParams)

}  // namespace cpu
}  // namespace qkernels
