// The enums that cross between Python and the C++ kernels: this file is their one table. C++ includes it;
// Python parses it (qkernels/enums.py, which accepts exactly the form below: `enum class Name : int { A = 0,
// B = 1 };` on one line), so a value is written once. Torch-free, host and device.
#pragma once

namespace qkernels {

// Which aten kernel's arithmetic to reproduce: aten's CPU kernels or its CUDA kernels (README, "Numerics
// contract"). Every kernel backend can run either where both are implemented.
enum class Flavour : int { Cpu = 0, Cuda = 1 };

// Element type of x, out and grad; fp16/bf16 travel as raw 16-bit patterns.
enum class DType : int { Float32 = 0, Float16 = 1, BFloat16 = 2 };

// Which zero point and which integer level the learnable backward pass uses (reference: zero_point_rounding).
//   TorchPerTensor: aten's per-tensor backward, zb = trunc(clamp(zp + 0.5, qmin, qmax)), flavour's level
//   Torch         : aten's per-channel backward, zb = clamp(rne(zp), qmin, qmax), flavour's level
//   Consistent    : zb = the forward zero point and q = rne(x * inv) + zb, so the mask is the forward mask
enum class ZpRule : int { TorchPerTensor = 0, Torch = 1, Consistent = 2 };

// How the fused observer computes qparams: torch's fused op (Fused) or the unfused torch.ao observer (Observer).
enum class QParamsMode : int { Fused = 0, Observer = 1 };

}  // namespace qkernels
