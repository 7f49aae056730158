// sim_profile_hook.h - how flash_attn_cy.sim.profile() sees the `sim` backend's dispatches.
//
// The package's own simulator (linked into the core library) counts nothing: counting needs a kernel module built
// for it (csrc/sim/counters.h). While a profile is active, Python installs a hook here; the sim backend then hands
// each launch of its plan to the hook (which runs it on a profile module of the same kernel and records the counts)
// instead of running it itself. Without a hook the backend is exactly as before: one relaxed load per launch.
#pragma once

#include <stddef.h>
#include <stdint.h>

#include <vector>

#include "plan/fa_plan.h"
#include "sim/sim_api.h"

extern "C" {

// One launch, in the argument form of the simulator's C entry point (csrc/sim/c_api.cpp, fasim_launch), its function
// constants included (nconst entries of index, name, MTLDataType, value bytes: the profiled module is specialised
// with them as the backend's own launch is, and the dispatch record names them), plus the attention call it belongs
// to: call_id (the same for every launch of one call) and that call's useful flops (the attention's own matrix
// products over the visible query-key pairs, see fa_useful_flops). Faults go to `out` as "kind\tmessage" lines;
// returns their number, or -1 with an error message in `out`.
typedef int (*fasim_launch_hook)(const char *kernel, const unsigned *grid, const unsigned *threads, int nbuf,
                                 const int *buf_index, void *const *buf_data, const size_t *buf_bytes,
                                 const int *buf_writable, int nbytes, const int *bytes_index,
                                 const void *const *bytes_data, const size_t *bytes_len, int nconst,
                                 const int *const_index, const char *const *const_name, const unsigned *const_type,
                                 const void *const *const_value, const size_t *const_bytes, int schedules,
                                 const void *cancel, double useful_flops, unsigned long long call_id, char *out,
                                 size_t outlen);

// Installed (or, with NULL, removed) by fa_sim_set_launch_hook (fa_abi.h), which flash_attn_cy.sim.profile calls
// through flash_attn_cy._core.

}  // extern "C"

namespace fasim {

// The useful floating-point work of an attention call: 4 * headdim flops per visible (query, key) pair and query
// head for a forward (S = QK^T and O = PV, 2 flops per multiply-add), 10 * headdim for a backward (S and dP
// recomputed, dV, dQ, dK: five products, as FlashAttention-2 counts it), 0 for a KV-cache append. Masked pairs
// (causal, sliding window, past the end of varlen or seqused_k sequences) are excluded.
double fa_useful_flops(fa_plan_kind kind, const fa_params *p);

// One sim-backend call (sim_backend.cpp holds one for the duration of fa_sim_execute).
class ProfiledCall {
  public:
    ProfiledCall(fa_plan_kind kind, const fa_params *p);
    // True while flash_attn_cy.sim.profile() is active: launch() then runs on a profile module, which takes precedence
    // over FLASH_ATTN_CY_SIM_HAZARDS (a profile module answers the instrumentation with its counters).
    bool profiling() const { return id_ != 0; }
    // Runs one launch of the call: through the hook when one is installed, else fasim::launch.
    std::vector<Fault> launch(const char *name, const KernelInfo *kernel, const LaunchConfig &cfg,
                              const std::vector<BufferArg> &buffers, const std::vector<BytesArg> &bytes) const;

  private:
    fa_plan_kind kind_;
    const fa_params *p_;
    unsigned long long id_;
};

}  // namespace fasim
