// The CUDA emulator's __nv_bfloat16 lives with __half in cuda_fp16.h.
#pragma once

#include "cuda_fp16.h"
