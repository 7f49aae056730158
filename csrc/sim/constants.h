// constants.h - what a launch specialises in a kernel (MSL specification §5.8.1 function constants,
// [[threadgroup(n)]] lengths and [[max_total_threads_per_threadgroup]]), checked and resolved before any simulated
// thread runs (constants.cpp).
#pragma once

#include <stdint.h>

#include <string>
#include <vector>

#include "include/fasim_rt.h"
#include "sim_api.h"

namespace fasim {
namespace detail {

// Matches the launch's values to the function constants of the kernel's file, first by index, then by name, as
// Metal does; values that match no declaration are ignored (Metal ignores them too). `values` gets one entry per
// declaration (FcValue::defined false where none was given). Returns "" or why the launch is invalid (a value of
// another type or size than the declaration's).
std::string resolve_constants(const KernelInfo *kernel, const std::vector<FunctionConstantValue> &given,
                              std::vector<FcValue> &values);

// The [[buffer(n)]] indices the launch must bind: the kernel's fixed ones, plus each argument gated by a function
// constant that is true. Returns "" or why the launch is invalid (a gating constant without a value).
std::string required_buffers(const KernelInfo *kernel, const std::vector<FcValue> &values, uint32_t *mask);

// [[threadgroup(n)]] argument lengths into values->tg_mem: "" or why the launch is invalid (an argument without a
// length, a length that is not a multiple of 16 or above 32 KiB, an index the kernel does not have).
std::string threadgroup_memory(const KernelInfo *kernel, const std::vector<ThreadgroupMemoryArg> &given,
                               LaunchValues *values);

// [[max_total_threads_per_threadgroup(N)]]: "" or why a threadgroup of `nthreads` is refused.
std::string check_threadgroup_size(const KernelInfo *kernel, uint64_t nthreads);

}  // namespace detail
}  // namespace fasim
