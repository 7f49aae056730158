// hazard_module.h - the package's own kernels under the hazard detector (hazard.h), for the `sim` backend.
//
// The core library's kernels carry no instrumentation (detection off costs nothing). The same kernels compiled with
// it live in a module of their own, flash_attn_cy/sim/_sim_hazard.so (flash_attn_cy/sim/meson.build), with its own
// copy of the simulator runtime; launch_with_hazards loads it on first use and runs the dispatch there.
#pragma once

#include <string>
#include <vector>

#include "sim_api.h"

namespace fasim {

// FLASH_ATTN_CY_SIM_HAZARDS set to anything but "" or "0": the `sim` backend checks every launch for races.
bool hazards_requested();

// Runs `kernel` of the instrumented module with cfg.hazards on. False (with *why) when the module cannot be loaded
// (not built: the compiler lacks -fsanitize=thread) or does not hold the kernel.
bool launch_with_hazards(const char *kernel, const LaunchConfig &cfg, const std::vector<BufferArg> &buffers,
                         const std::vector<BytesArg> &bytes, std::vector<Fault> *faults, std::string *why);

}  // namespace fasim
