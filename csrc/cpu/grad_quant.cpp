// CPU gradient quantization entry points: the loops of grad_quant_impl.h built for baseline x86-64 (here) and for
// AVX2+FMA+F16C (grad_quant_avx2.cpp), chosen once from the running CPU (isa.h).
#include "qkernels/grad_quant_kernels.h"

#define QK_CPU_ISA baseline
#include "grad_quant_impl.h"
#undef QK_CPU_ISA
#include "isa.h"

namespace qkernels {
namespace cpu {

QK_CPU_ENTRY(void, grad_quant_absmax, GradQuantAbsmaxParams)
QK_CPU_ENTRY(void, grad_quant_quantize, GradQuantParams)

}  // namespace cpu
}  // namespace qkernels
