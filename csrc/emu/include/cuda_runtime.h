// The CUDA emulator's stand-in for the CUDA runtime header (see ../emulator.h).
#pragma once

#include <cmath>
#include <cstdint>

#include "../emulator.h"
