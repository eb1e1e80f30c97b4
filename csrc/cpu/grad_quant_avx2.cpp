// The CPU gradient quantization loops built for AVX2+FMA+F16C (selected at run time by grad_quant.cpp). Every
// header is parsed before the target pragma, so only the loops below are compiled for this instruction set; the
// math headers' functions are force-inlined into them (no FMA contraction: -ffp-contract=off).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "qkernels/grad_quant_kernels.h"

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("avx2,fma,f16c")
#define QK_CPU_ISA avx2
#include "grad_quant_impl.h"
#endif
