// fa_check_internal.h - the pieces of the ABI's checks shared by fa_check.cpp (fa_check_params) and
// fa_check_kvcache.cpp (fa_check_kvcache_update): overflow-checked offsets, strided views, the check context.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>

#include "fa_abi.h"
#include "plan/fa_plan_internal.h"  // faplan::fail

namespace fa_check {

using faplan::fail;

constexpr int64_t kI64Max = std::numeric_limits<int64_t>::max();

// a * b + c without signed overflow; false on overflow (all inputs >= 0).
inline bool mul_add(int64_t a, int64_t b, int64_t c, int64_t *out) {
    if (a < 0 || b < 0 || c < 0) return false;
    if (a != 0 && b > (kI64Max - c) / a) return false;
    *out = a * b + c;
    return true;
}

inline size_t dtype_size(fa_dtype d) {
    switch (d) {
        case FA_F32: return 4;
        case FA_F16: return 2;
        case FA_BF16: return 2;
        case FA_F64: return 8;
    }
    return 0;
}

// One strided axis of a tensor view.
struct Axis {
    int64_t extent;
    int64_t stride;
};

// Largest element offset reachable by the view (0 if any extent is 0), or -1 on overflow.
int64_t max_offset(const Axis *axes, int n);
// True if no two distinct index tuples of the view map to the same element (outputs: two threads must never write
// one address).
bool non_aliasing(const Axis *axes, int n);

// What every check reads: the params, where the message goes, the layout, and the Metal buffers (or null).
struct Ctx {
    const fa_params *p;
    char *err;
    size_t errlen;
    bool varlen;
    bool paged;
    const fa_device_buffers *dev;
};

// Is buffer `slot` given (host pointer or Metal buffer handle)?
inline bool present(const Ctx &c, const void *host, int slot) {
    if (host) return true;
    return c.dev && slot >= 0 && slot < FA_DEVICE_BUFFER_SLOTS && c.dev->handle[slot] != nullptr;
}

// Checks one 4-d tensor view [n0, rows, heads, dim] (or [rows, heads, dim] when `packed`): presence, non-negative
// strides, no int64 overflow, device byte bounds, and non-aliasing when the tensor is written.
int check_tensor(const Ctx &c, const char *name, const fa_tensor &t, int slot, bool packed, int64_t n0, int64_t rows,
                 int64_t heads, int64_t dim, bool written);

}  // namespace fa_check
