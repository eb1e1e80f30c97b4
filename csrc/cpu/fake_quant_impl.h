// The CPU fake-quant entry points of one instruction-set build (namespace QK_CPU_ISA): the loops of
// fake_quant_loops.h by dtype. Included once per build: csrc/cpu/fake_quant.cpp (baseline) and
// fake_quant_avx2.cpp.
#include "fake_quant_loops.h"

namespace qkernels {
namespace cpu {
namespace QK_CPU_ISA {
namespace {

template <typename T>
struct PerTensorFn {
  static void call(const PerTensorParams& p, int64_t b, int64_t e, uint8_t* m) { per_tensor_typed<T>(p, b, e, m); }
};
template <typename T>
struct PerChannelFn {
  static void call(const PerChannelParams& p, int64_t b, int64_t e, uint8_t* m) { per_channel_typed<T>(p, b, e, m); }
};
template <typename T>
struct BackwardFn {
  static void call(const BackwardParams& p, int64_t b, int64_t e, const uint8_t* m) { backward_typed<T>(p, b, e, m); }
};

}  // namespace

// `mask` holds one byte per element for [begin, end) (nullptr: no mask); packing is the caller's.
void fake_quant_per_tensor(const PerTensorParams& p, int64_t begin, int64_t end, uint8_t* mask) {
  by_dtype<PerTensorFn>(p, begin, end, mask);
}
void fake_quant_per_channel(const PerChannelParams& p, int64_t begin, int64_t end, uint8_t* mask) {
  by_dtype<PerChannelFn>(p, begin, end, mask);
}
void fake_quant_backward(const BackwardParams& p, int64_t begin, int64_t end, const uint8_t* mask) {
  by_dtype<BackwardFn>(p, begin, end, mask);
}

}  // namespace QK_CPU_ISA
}  // namespace cpu
}  // namespace qkernels
