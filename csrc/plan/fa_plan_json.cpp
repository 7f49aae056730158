// fa_plan_json.cpp - fa_plan_to_json: the plan as JSON for tests and `python -m flash_attn_cy info`.
//
// Besides the raw launches it decodes the attention launches' constants into an "attention" object (tile sizes,
// packing, splits) and, for dense (non-varlen) inputs, counts the (query tile, key tile) pairs the kernel visits
// with the same range arithmetic the kernel uses, so tests can check causal / window tile skipping.
#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "fa_backends.h"
#include "fa_kernel_params.h"
#include "fa_mask.h"
#include "fa_plan_internal.h"
#include "fa_tiles.h"

namespace {

const char *buffer_name(int id) {
    static const char *names[FA_BUF_COUNT] = {
        "q",         "k",         "v",          "out",        "lse",       "alibi",      "cu_seqlens_q",
        "cu_seqlens_k", "seqused_k", "leftpad_k", "cache_batch_idx", "block_table", "dout",  "dq",
        "dk",        "dv",        "knew",       "vnew",       "rotary_cos", "rotary_sin", "attn_probs",
        "scratch0",  "scratch1",  "scratch2",   "scratch3",
    };
    return (id >= 0 && id < FA_BUF_COUNT) ? names[id] : "invalid";
}

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

void attention_info(std::string &s, const fa_launch &l) {
    fa_fwd_params k;
    std::memcpy(&k, l.constants, sizeof(k));
    const bool vector = std::strncmp(l.kernel, "fa_vec", 6) == 0;  // fa_vec1_ / fa_vec4_: rows in the name
    const bool decode = std::strncmp(l.kernel, "fa_dec_", 7) == 0;
    const int eb = std::strstr(l.kernel, "_f32_") ? 4 : 2;
    const char *dpos = std::strrchr(l.kernel, 'd');
    const int bd = dpos ? std::atoi(dpos + 1) : 0;
    const int nsg = vector ? FA_VEC_SIMDGROUPS : decode ? FA_DEC_SIMDGROUPS : FA_FWD_SIMDGROUPS;
    // vector kernel: bq = rows per threadgroup, bk = keys per split block (no key tile in memory)
    const int bq = vector ? std::atoi(l.kernel + 6) : 8 * nsg;
    const int bk = vector ? FA_VEC_BK : decode ? fa_dec_bk(bd, eb) : fa_fwd_bk(bd, eb);
    add(s, ",\"attention\":{\"kind\":\"%s\",\"bq\":%d,\"bk\":%d,\"bd\":%d,\"simdgroups\":%d,\"pack\":%d,"
           "\"num_splits\":%d,\"headdim\":%d,\"flags\":%u",
        vector ? "vector" : decode ? "fragment" : "prefill", bq, bk, bd, nsg, k.pack, k.num_splits, k.headdim,
        k.flags);
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

}  // namespace

int fa_plan_to_json(const fa_plan *plan, char *out, size_t outlen) {
    std::string s = "{\"nlaunches\":";
    add(s, "%d,\"launches\":[", plan->nlaunches);
    for (int li = 0; li < plan->nlaunches; ++li) {
        const fa_launch &l = plan->launches[li];
        if (li) s += ",";
        add(s, "{\"kernel\":\"%s\",\"grid\":[%u,%u,%u],\"threads\":[%u,%u,%u],\"threadgroup_memory_bytes\":%u,",
            l.kernel, l.grid[0], l.grid[1], l.grid[2], l.threads[0], l.threads[1], l.threads[2],
            l.threadgroup_memory_bytes);
        s += "\"bindings\":[";
        for (int b = 0; b < l.nbindings; ++b) {
            add(s, "%s{\"index\":%d,\"buffer\":\"%s\",\"byte_offset\":%lld}", b ? "," : "", l.bindings[b].index,
                buffer_name(l.bindings[b].buffer), (long long)l.bindings[b].byte_offset);
        }
        add(s, "],\"constants_index\":%d,\"constants_size\":%u,\"constants_hex\":\"", l.constants_index,
            l.constants_size);
        for (uint32_t i = 0; i < l.constants_size && i < FA_PLAN_MAX_CONSTANT_BYTES; ++i) add(s, "%02x", l.constants[i]);
        s += "\"";
        const bool attention = std::strncmp(l.kernel, "fa_fwd_", 7) == 0 || std::strncmp(l.kernel, "fa_dec_", 7) == 0 ||
                               std::strncmp(l.kernel, "fa_vec", 6) == 0;
        if (attention && l.constants_size == sizeof(fa_fwd_params)) attention_info(s, l);
        s += "}";
    }
    s += "],\"scratch_bytes\":[";
    for (int i = 0; i < FA_PLAN_SCRATCH_COUNT; ++i) add(s, "%s%lld", i ? "," : "", (long long)plan->scratch_bytes[i]);
    s += "],\"buffer_bytes\":{";
    bool first = true;
    for (int i = 0; i < FA_BUF_COUNT; ++i) {
        if (!plan->buffer_bytes[i]) continue;
        add(s, "%s\"%s\":%lld", first ? "" : ",", buffer_name(i), (long long)plan->buffer_bytes[i]);
        first = false;
    }
    s += "}}";
    if (!out || s.size() + 1 > outlen) return FA_ERR_VALUE;
    std::memcpy(out, s.c_str(), s.size() + 1);
    return FA_OK;
}
