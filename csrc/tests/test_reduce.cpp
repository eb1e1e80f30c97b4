// Host test of qkernels/reduce.h: the block planner against the layouts qkernels.reference.reduce.make_blocks gives
// (tests/test_reduce.py checks the Python planner's coverage), the four combine kinds with NaN and infinities, and
// the finish order. (The kinds' use in the kernels is tested through the families in tests/test_reduce.py.)
#include <cmath>
#include <cstdio>
#include <cstring>
#include <initializer_list>

#include "qkernels/reduce.h"
#include "host_check.h"

using namespace qkernels;

static bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof(a)) == 0 || (a != a && b != b); }

struct PlanCase {
  ReduceDims dims;
  int64_t target, rows_multiple;
  ReduceBlocks want;
};

// make_blocks(dims, target, rows_multiple) of qkernels/reference/reduce.py.
static const PlanCase kPlans[] = {
    {{1, 1, 1, 70000}, 16384, 1, {false, 1, 16384, 5, 5}},   {{1, 3, 5, 9000}, 4096, 1, {false, 1, 4096, 3, 9}},
    {{2, 40, 3, 700}, 16384, 1, {false, 23, 700, 1, 2}},     {{1, 1300, 48, 1}, 16384, 1, {true, 342, 1, 1, 4}},
    {{3, 500, 1, 1}, 4096, 1, {false, 4096, 1, 1, 1}},       {{1, 100, 3, 100}, 2048, 16, {false, 16, 100, 1, 7}},
    {{1, 70, 24, 1}, 2048, 64, {true, 64, 1, 1, 2}},         {{2, 1, 4, 3}, 64, 4, {false, 20, 3, 1, 1}},
};

int main() {
  for (const PlanCase& c : kPlans) {
    const ReduceBlocks k = make_reduce_blocks(c.dims, c.target, c.rows_multiple);
    CHECK(k.row_mode == c.want.row_mode && k.rows == c.want.rows && k.chunk == c.want.chunk && k.n_ib == c.want.n_ib &&
              k.P == c.want.P,
          "plan [%lld, %lld, %lld, %lld] target %lld: got (%d, %lld, %lld, %lld, %lld)\n", (long long)c.dims.B,
          (long long)c.dims.O, (long long)c.dims.C, (long long)c.dims.I, (long long)c.target, k.row_mode,
          (long long)k.rows, (long long)k.chunk, (long long)k.n_ib, (long long)k.P);
    CHECK(reduce_items(c.dims, k) == c.dims.B * k.P * (k.row_mode ? 1 : c.dims.C), "reduce_items\n");
  }

  // MinMax: NaN sticks on either side and in either order; infinities are ordinary values.
  const float values[] = {1.5f, -INFINITY, NAN, 3.0f, INFINITY, -0.0f};
  MinMax m = MinMaxCombine::identity();
  for (int k = 0; k < 2; ++k) m = MinMaxCombine::fold(m, values[k]);
  CHECK(same_bits(m.lo, -INFINITY) && same_bits(m.hi, 1.5f), "minmax without NaN\n");
  const MinMax with_nan = MinMaxCombine::fold(m, values[2]);
  CHECK(with_nan.lo != with_nan.lo && with_nan.hi != with_nan.hi, "minmax: NaN must stick\n");
  const MinMax after = MinMaxCombine::combine(with_nan, MinMax{-5.0f, 9.0f});
  const MinMax before = MinMaxCombine::combine(MinMax{-5.0f, 9.0f}, with_nan);
  CHECK(after.lo != after.lo && before.hi != before.hi, "minmax combine: NaN must stick in either order\n");

  // AbsMax: |v| with NaN sticking; Count: exact integers.
  float a = AbsMaxCombine::identity();
  for (const float v : {1.5f, -INFINITY, 3.0f}) a = AbsMaxCombine::fold(a, v);
  CHECK(same_bits(a, INFINITY), "absmax of -inf\n");
  const float nan_then_7 = AbsMaxCombine::fold(AbsMaxCombine::fold(0.0f, NAN), 7.0f);
  const float combined = AbsMaxCombine::combine(2.0f, NAN);
  CHECK(nan_then_7 != nan_then_7 && combined != combined, "absmax: NaN must stick\n");
  const int64_t counts[] = {int64_t(1) << 40, 3, 0, 5};
  CHECK(finish<CountCombine>(counts, 4, 1) == (int64_t(1) << 40) + 8, "count finish\n");

  // Finish: partials `stride` apart (the 99s are not this quantizer's), sums in float64 (2^-30 next to 1 is kept).
  const float sums[] = {1.0f, 99.0f, 0x1p-30f, 99.0f, -1.0f, 99.0f};
  CHECK(finish_sum(sums, 3, 2) == 0x1p-30, "finish_sum: stride or precision\n");
  const MinMax parts[] = {{-1.0f, 2.0f}, {-3.0f, 1.0f}, {0.0f, INFINITY}};
  const MinMax f = finish<MinMaxCombine>(parts, 3, 1);
  CHECK(same_bits(f.lo, -3.0f) && same_bits(f.hi, INFINITY), "minmax finish\n");

  return report();
}
