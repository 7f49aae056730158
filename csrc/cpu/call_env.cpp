// call_env.cpp - see call_env.h.
#include "call_env.h"

#include <cstdlib>
#include <cstring>

namespace fa_cpu {
namespace {

thread_local const CallEnv *tl_scope = nullptr;

CpuIsaRequest parse_isa(const char *env) {
    if (!env || !*env) return CpuIsaRequest::best;
    if (std::strcmp(env, "portable") == 0) return CpuIsaRequest::portable;
    if (std::strcmp(env, "avx2") == 0) return CpuIsaRequest::avx2;
    if (std::strcmp(env, "avx512") == 0) return CpuIsaRequest::avx512;
    if (std::strcmp(env, "neon") == 0) return CpuIsaRequest::neon;
    if (std::strcmp(env, "amx") == 0) return CpuIsaRequest::amx;
    if (std::strcmp(env, "amx-emulated") == 0) return CpuIsaRequest::amx_emulated;
    return CpuIsaRequest::unknown;
}

}  // namespace

CallEnv read_call_env() {
    const char *caps = std::getenv("FLASH_ATTN_CY_THREAD_CAPS");
    return CallEnv{parse_isa(std::getenv("FLASH_ATTN_CY_CPU_ISA")), caps && caps[0] == '0' && caps[1] == 0};
}

CallEnv call_env() { return tl_scope ? *tl_scope : read_call_env(); }

CallEnvScope::CallEnvScope() : env_(call_env()), outer_(tl_scope) { tl_scope = &env_; }

CallEnvScope::~CallEnvScope() { tl_scope = outer_; }

}  // namespace fa_cpu
