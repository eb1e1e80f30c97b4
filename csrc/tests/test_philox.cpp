// Host test of qkernels/philox.h: Random123's known-answer vectors for philox4x32 at 10 and 7 rounds
// (tests/kat_vectors of DEShawResearch/random123; the reference qkernels/reference/philox.py and Triton's tl.philox
// give the same, tests/test_philox.py), and the element convention against the raw function and against values
// of the reference's element_words.
#include <cstdint>

#include "qkernels/philox.h"
#include "host_check.h"

using namespace qkernels;

struct Kat {
  uint32_t counter[4], key[2], want[4];
};

static const Kat kKat10[] = {
    {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
    {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
     {0xffffffff, 0xffffffff},
     {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
    {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
     {0xa4093822, 0x299f31d0},
     {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
};
static const Kat kKat7[] = {
    {{0, 0, 0, 0}, {0, 0}, {0x5f6fb709, 0x0d893f64, 0x4f121f81, 0x4f730a48}},
    {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff},
     {0xffffffff, 0xffffffff},
     {0x5207ddc2, 0x45165e59, 0x4d8ee751, 0x8c52f662}},
    {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344},
     {0xa4093822, 0x299f31d0},
     {0x4dfccaba, 0x190a87f0, 0xc47362ba, 0xb6b5242a}},
};

template <int Rounds>
static void check_kat(const Kat& k) {
  const PhiloxWords w =
      philox4x32<Rounds>(k.counter[0], k.counter[1], k.counter[2], k.counter[3], k.key[0], k.key[1]);
  CHECK(w.w0 == k.want[0] && w.w1 == k.want[1] && w.w2 == k.want[2] && w.w3 == k.want[3],
        "philox4x32-%d(%08x %08x %08x %08x; %08x %08x) = %08x %08x %08x %08x, want %08x %08x %08x %08x\n", Rounds,
        k.counter[0], k.counter[1], k.counter[2], k.counter[3], k.key[0], k.key[1], w.w0, w.w1, w.w2, w.w3,
        k.want[0], k.want[1], k.want[2], k.want[3]);
}

int main() {
  for (const Kat& k : kKat10) check_kat<10>(k);
  for (const Kat& k : kKat7) check_kat<7>(k);

  // The element convention: index -> counter words 0-1, offset -> words 2-3, seed -> key; 64-bit values split
  // low word first.
  const int64_t seed = 0x123456789abcdefLL, offset = 0x2468ace013579bdLL, index = 0x1234567890LL;
  const PhiloxWords e = philox_element(seed, offset, index);
  const PhiloxWords r = philox4x32(0x34567890u, 0x12u, 0x013579bdu, 0x2468aceu, 0x89abcdefu, 0x1234567u);
  CHECK(e.w0 == r.w0 && e.w1 == r.w1 && e.w2 == r.w2 && e.w3 == r.w3, "philox_element: counter/key layout\n");
  // element_words(tensor([seed, offset]), tensor([index])) of qkernels/reference/philox.py.
  const uint32_t want[4] = {0xc7e94312u, 0x09fe211fu, 0xceba1894u, 0x3fde2dc9u};
  CHECK(e.w0 == want[0] && e.w1 == want[1] && e.w2 == want[2] && e.w3 == want[3],
        "philox_element = %08x %08x %08x %08x, want the reference's %08x %08x %08x %08x\n", e.w0, e.w1, e.w2, e.w3,
        want[0], want[1], want[2], want[3]);
  return report();
}
