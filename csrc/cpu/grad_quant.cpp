// CPU gradient quantization entry points: the loops of grad_quant_impl.h built for baseline x86-64 (here) and for
// AVX2+FMA+F16C (grad_quant_avx2.cpp), chosen once from the running CPU (isa.h).
#include "qkernels/grad_quant_kernels.h"

#define QK_CPU_ISA baseline
#include "grad_quant_impl.h"
#undef QK_CPU_ISA
#include "isa.h"

namespace qkernels {
namespace cpu {

#ifdef QK_CPU_HAS_AVX2_BUILD
namespace avx2 {
void grad_quant_absmax(const GradQuantAbsmaxParams& p, int64_t begin, int64_t end);
void grad_quant_quantize(const GradQuantParams& p, int64_t begin, int64_t end);
}  // namespace avx2
#endif

void grad_quant_absmax(const GradQuantAbsmaxParams& p, int64_t begin, int64_t end) {
  QK_CPU_DISPATCH(grad_quant_absmax, p, begin, end);
}

void grad_quant_quantize(const GradQuantParams& p, int64_t begin, int64_t end) {
  QK_CPU_DISPATCH(grad_quant_quantize, p, begin, end);
}

}  // namespace cpu
}  // namespace qkernels
