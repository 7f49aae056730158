// fa_plan_json.cpp - fa_plan_to_json: the plan as JSON for tests and `python -m flash_attn_cy info`.
//
// Each launch shows its typed descriptor (family, specialisation constants, tile) next to the derived kernel name.
// Besides the raw launches it decodes the attention launches' constants into an "attention" object (tile sizes,
// packing, splits) and, for dense (non-varlen) inputs, counts the (query tile, key tile) pairs the kernel visits
// with the same range arithmetic the kernel uses, so tests can check causal / window tile skipping.
#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <string>

#include "fa_kernel_params.h"
#include "fa_mask.h"
#include "fa_plan_build.h"
#include "fa_plan_internal.h"
#include "fa_tiles.h"

namespace {

void add(std::string &s, const char *fmt, ...) {
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    s += buf;
}

// Key-tile range of query tile mt, exactly as fa_attention computes it (dense inputs, no seqused_k).
void tile_range(const fa_fwd_params &k, int bq, int bk, int64_t mt, int64_t *n_begin, int64_t *n_end) {
    const int64_t rows = int64_t(k.seqlen_q) * k.pack;
    const int64_t m0 = mt * bq;
    const int64_t i_lo = m0 / k.pack, i_hi = (std::min(m0 + bq, rows) - 1) / k.pack;
    const int64_t k_lo = fa_mask_key_lo(i_lo, k.seqlen_q, k.seqlen_k, k.window_left);
    const int64_t k_hi = fa_mask_key_hi(i_hi, k.seqlen_q, k.seqlen_k, k.window_right);
    *n_begin = *n_end = 0;
    if (k_lo < k_hi) {
        *n_begin = k_lo / bk;
        *n_end = (k_hi + bk - 1) / bk;
    }
}

bool is_attention(const fa_launch &l) {
    const int f = l.desc.family;
    return f == FA_KERNEL_PREFILL || f == FA_KERNEL_PREFILL_LONG || f == FA_KERNEL_FRAGMENT || f == FA_KERNEL_VECTOR;
}

// Tile and specialisation of an attention launch, with the counts of key tiles it visits (dense inputs).
void attention_info(std::string &s, const fa_launch &l) {
    fa_fwd_params k;
    std::memcpy(&k, l.constants, sizeof(k));
    const bool vector = l.desc.family == FA_KERNEL_VECTOR;
    const fa_spec_constant *bd_spec = fa_kernel_spec(&l.desc, "BD");
    const int bd = bd_spec ? bd_spec->value.i : 0;
    // vector kernel: bq = rows per threadgroup, bk = keys per split block (no key tile in memory)
    const int bq = l.tile.rows, bk = l.tile.keys;
    add(s, ",\"attention\":{\"kind\":\"%s\",\"bq\":%d,\"bk\":%d,\"bd\":%d,\"simdgroups\":%d,\"pack\":%d,"
           "\"num_splits\":%d,\"headdim\":%d,\"flags\":%u",
        l.desc.family == FA_KERNEL_PREFILL_LONG ? "prefill" : fa_kernel_family_name(l.desc.family), bq, bk, bd,
        l.tile.simdgroups, k.pack, k.num_splits, k.headdim, k.flags);
    if (k.acc_block_tiles > 0) add(s, ",\"acc_block_tiles\":%d", k.acc_block_tiles);
    if (vector) add(s, ",\"vector_width\":%d,\"kv_vector_loads\":%s", fa_vec_width(bd),
                    (k.flags & FA_FLAG_KV_ALIGNED) ? "true" : "false");
    const bool dense = !(k.flags & (FA_FLAG_VARLEN_Q | FA_FLAG_VARLEN_K | FA_FLAG_SEQUSED_K));
    if (dense) {
        const int64_t qtiles = (int64_t(k.seqlen_q) * k.pack + bq - 1) / bq;
        const int64_t ktiles = (int64_t(k.seqlen_k) + bk - 1) / bk;
        int64_t visited = 0;
        for (int64_t mt = 0; mt < qtiles; ++mt) {
            int64_t b0, b1;
            tile_range(k, bq, bk, mt, &b0, &b1);
            visited += b1 - b0;
        }
        const int64_t heads = k.nheads_q / k.pack;
        add(s, ",\"key_tiles_total\":%lld,\"key_tiles_visited\":%lld",
            (long long)(qtiles * ktiles * heads * k.batch), (long long)(visited * heads * k.batch));
    }
    s += "}";
}

// The kernel descriptor: family, specialisation constants, tile.
void kernel_info(std::string &s, const fa_launch &l) {
    static const char *const types[] = {"dtype", "int", "uint", "bool", "float"};
    add(s, "\"family\":\"%s\",\"specialization\":[", fa_kernel_family_name(l.desc.family));
    for (int i = 0; i < l.desc.nspecs && i < FA_PLAN_MAX_SPECS; ++i) {
        const fa_spec_constant &c = l.desc.specs[i];
        const bool known = c.type >= FA_SPEC_DTYPE && c.type <= FA_SPEC_FLOAT;
        add(s, "%s{\"name\":\"%s\",\"index\":%d,\"type\":\"%s\",\"value\":", i ? "," : "", c.name, c.index,
            known ? types[c.type] : "invalid");
        if (c.type == FA_SPEC_DTYPE) {
            const char *tag = faplan::dtype_tag(static_cast<fa_dtype>(c.value.i));
            add(s, "\"%s\"}", tag ? tag : "invalid");
        } else if (c.type == FA_SPEC_FLOAT) {
            add(s, "%.9g}", double(c.value.f));
        } else {
            add(s, "%lld}", c.type == FA_SPEC_UINT ? (long long)c.value.u : (long long)c.value.i);
        }
    }
    add(s, "],\"tile\":{\"rows\":%d,\"keys\":%d,\"simdgroups\":%d},", l.tile.rows, l.tile.keys, l.tile.simdgroups);
}

void launch_json(std::string &s, const fa_launch &l) {
    add(s, "{\"kernel\":\"%s\",", l.kernel);
    kernel_info(s, l);
    add(s, "\"grid\":[%u,%u,%u],\"threads\":[%u,%u,%u],\"threadgroup_memory_bytes\":%u,", l.grid[0], l.grid[1],
        l.grid[2], l.threads[0], l.threads[1], l.threads[2], l.threadgroup_memory_bytes);
    s += "\"bindings\":[";
    for (int b = 0; b < l.nbindings; ++b) {
        add(s, "%s{\"index\":%d,\"buffer\":\"%s\",\"byte_offset\":%lld}", b ? "," : "", l.bindings[b].index,
            fa_buffer_name(l.bindings[b].buffer), (long long)l.bindings[b].byte_offset);
    }
    add(s, "],\"constants_index\":%d,\"constants_size\":%u,\"constants_hex\":\"", l.constants_index, l.constants_size);
    for (uint32_t i = 0; i < l.constants_size && i < FA_PLAN_MAX_CONSTANT_BYTES; ++i) add(s, "%02x", l.constants[i]);
    s += "\"";
    if (is_attention(l) && l.constants_size == sizeof(fa_fwd_params)) attention_info(s, l);
    s += "}";
}

}  // namespace

int fa_plan_to_json(const fa_plan *plan, char *out, size_t outlen) {
    std::string s = "{\"nlaunches\":";
    add(s, "%d,\"launches\":[", plan->nlaunches);
    for (int li = 0; li < plan->nlaunches; ++li) {
        if (li) s += ",";
        launch_json(s, plan->launches[li]);
    }
    s += "],\"scratch_bytes\":[";
    for (int i = 0; i < FA_PLAN_SCRATCH_COUNT; ++i) add(s, "%s%lld", i ? "," : "", (long long)plan->scratch_bytes[i]);
    s += "],\"buffer_bytes\":{";
    bool first = true;
    for (int i = 0; i < FA_BUF_COUNT; ++i) {
        if (!plan->buffer_bytes[i]) continue;
        add(s, "%s\"%s\":%lld", first ? "" : ",", fa_buffer_name(i), (long long)plan->buffer_bytes[i]);
        first = false;
    }
    s += "}}";
    if (!out || s.size() + 1 > outlen) return FA_ERR_VALUE;
    std::memcpy(out, s.c_str(), s.size() + 1);
    return FA_OK;
}
