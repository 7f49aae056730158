// Prints, as JSON, the kernel argument and buffer tables as the C++ compiler sees them (kernels/fa_kernel_args.h,
// csrc/plan/fa_buffers.h, the kernel families of csrc/plan/fa_plan.h), and every kernel name the plan's naming
// function (fa_kernel_name) derives for the specialisations the plan can ask for. Built with the plan's sources and
// run by tests/core/test_kernel_args.py, which compares all of it with the MSL sources and with real plans.
#include <cstdio>
#include <cstring>
#include <string>

#include "fa_bwd_params.h"
#include "fa_kernel_params.h"
#include "fa_plan_internal.h"
#include "fa_tiles.h"

namespace {

std::string quoted(const char *s) { return std::string("\"") + s + "\""; }

void print_buffers() {
    std::printf("\"buffers\":[");
    for (int id = 0; id < FA_BUF_COUNT; ++id) {
        std::printf("%s{\"id\":%d,\"name\":%s,\"message_name\":%s,\"element_bytes_f16\":%lld,\"scratch\":%s,"
                    "\"written\":[%d,%d,%d]}",
                    id ? "," : "", id, quoted(fa_buffer_name(id)).c_str(), quoted(fa_buffer_message_name(id)).c_str(),
                    (long long)fa_buffer_element_bytes(id, FA_F16), fa_buffer_is_scratch(id) ? "true" : "false",
                    fa_buffer_written(FA_PLAN_FORWARD, id), fa_buffer_written(FA_PLAN_BACKWARD, id),
                    fa_buffer_written(FA_PLAN_KVCACHE_APPEND, id));
    }
    std::printf("],");
}

// Each family's signature, expanded with its index space exactly as csrc/plan/fa_plan_launch.cpp expands it.
#define DUMP_ARG_FWD_(ARG, param, BUFFER) dump_arg(first, FA_FWD_BUF_##ARG, #param, FA_BUF_##BUFFER);
#define DUMP_ARG_MERGE_(ARG, param, BUFFER) dump_arg(first, FA_MERGE_BUF_##ARG, #param, FA_BUF_##BUFFER);
#define DUMP_ARG_APPEND_(ARG, param, BUFFER) dump_arg(first, FA_APPEND_BUF_##ARG, #param, FA_BUF_##BUFFER);
#define DUMP_ARG_BWD_(ARG, param, BUFFER) dump_arg(first, FA_BWD_BUF_##ARG, #param, FA_BUF_##BUFFER);

void dump_arg(bool &first, int index, const char *param, int buffer) {
    std::printf("%s{\"index\":%d,\"param\":%s,\"buffer\":%s}", first ? "" : ",", index, quoted(param).c_str(),
                quoted(fa_buffer_name(buffer)).c_str());
    first = false;
}

void print_families() {
    std::printf("\"families\":[");
    int n = 0;
#define DUMP_FAMILY_(ID, name, pattern, signature, space, block)                                               \
    {                                                                                                          \
        std::printf("%s{\"id\":%d,\"name\":%s,\"pattern\":%s,\"constant_block_bytes\":%zu,\"signature\":[",     \
                    n++ ? "," : "", int(FA_KERNEL_##ID), quoted(name).c_str(), quoted(pattern).c_str(),       \
                    sizeof(block));                                                                            \
        bool first = true;                                                                                     \
        signature(DUMP_ARG_##space##_)                                                                         \
        std::printf("]}");                                                                                     \
    }
    FA_KERNEL_FAMILIES(DUMP_FAMILY_)
#undef DUMP_FAMILY_
    std::printf("],");
}

// Every name fa_kernel_name accepts for a family, dtype, head-dim bucket and vector row count the plan can choose.
void print_kernel_names() {
    const fa_dtype dtypes[] = {FA_F16, FA_BF16, FA_F32};
    int buckets[FA_NUM_BUCKETS + 1] = {0};  // 0: a family without BD
    int nb = 1;
    for (int d = 1; d <= FA_MAX_HEADDIM; ++d)
        if (nb == 1 || buckets[nb - 1] != fa_bucket_headdim(d)) buckets[nb++] = fa_bucket_headdim(d);
    const int rows[] = {0, fa_vec_rows(1), fa_vec_rows(FA_VEC_ROWS)};
    std::printf("\"kernels\":[");
    int n = 0;
    for (int family = 0; family < FA_KERNEL_FAMILY_COUNT; ++family)
        for (fa_dtype dt : dtypes)
            for (int b = 0; b < nb; ++b)
                for (int r : rows) {
                    const fa_kernel_desc d = faplan::kernel_desc(fa_kernel_family(family), dt, buckets[b], r);
                    char name[FA_PLAN_KERNEL_NAME_LEN];
                    if (fa_kernel_name(&d, name, sizeof name) != FA_OK) continue;
                    std::printf("%s{\"name\":%s,\"family\":%s}", n++ ? "," : "", quoted(name).c_str(),
                                quoted(fa_kernel_family_name(family)).c_str());
                }
    std::printf("]");
}

}  // namespace

int main() {
    std::printf("{\"params_index\":%d,\"arg_slots\":%d,", FA_KERNEL_PARAMS_INDEX, FA_KERNEL_ARG_SLOTS);
    print_buffers();
    print_families();
    print_kernel_names();
    std::printf("}\n");
    return 0;
}
