// CHECK(cond, printf format, ...) of the host tests: counts a failure and prints the first 20; report() prints the
// count and gives main's exit status.
#pragma once

#include <cstdio>

static int failures = 0;
#define CHECK(cond, ...)                              \
  do {                                                \
    if (!(cond)) {                                    \
      if (++failures <= 20) std::printf(__VA_ARGS__); \
    }                                                 \
  } while (0)

static int report() {
  std::printf("%s: %d failures\n", failures ? "FAILED" : "ok", failures);
  return failures ? 1 : 0;
}
