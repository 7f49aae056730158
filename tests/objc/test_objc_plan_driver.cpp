// The shim's portable half (objc/fa_metal_binding.cpp) on the project's REAL dispatch plans (csrc/plan), for a
// grid of calls: dtypes x head dims x layouts (dense, causal window, GQA decode with split-KV, varlen, paged,
// KV-cache append). For each plan: every bound buffer gets storage, outputs are copied back or wrapped, inputs are
// not, binding offsets fall inside their buffers, the encoding walk issues one dispatch per launch with barriers
// between them, and every launch fits an M1's limits (1024 threads, 32 KiB threadgroup memory). And the plan the C ABI
// builds for a device (fa_plan_build_for_device) asks it only about vector decode launches and, refused, serves them
// with the fragment kernel.
// Built and run by tests/objc/test_objc_binding.py. Prints "FAIL ..." lines and "passed N checks".
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "fa_host_memory.h"
#include "fa_metal_binding.h"
#include "plan/fa_plan_build.h"
#include "objc_driver_checks.h"

using namespace fametal;

#define CHECK(cond, what) fa_check((cond), __FILE__, __LINE__, #cond, (what) + " " + err)

static char err[1024];
static int g_multi_launch_plans = 0, g_wrapped = 0, g_copied = 0, g_vector_fallbacks = 0;

class Counter : public Encoder {
public:
    int pipelines = 0, dispatches = 0, barriers = 0, bytes_calls = 0;
    int pipeline(const fa_launch &, PipelineLimits *lim, char *, size_t) override {
        ++pipelines;
        // An M1's limits (maxTotalThreadsPerThreadgroup may be lower for a register-heavy pipeline; 1024 is the
        // device bound the plan must respect in any case).
        *lim = PipelineLimits{1024, {1024, 1024, 1024}, 32768, 0};
        return FA_OK;
    }
    void buffer(int, int64_t, int32_t) override {}
    void bytes(const void *, uint32_t, int32_t) override { ++bytes_calls; }
    void dispatch(const uint32_t *, const uint32_t *) override { ++dispatches; }
    void barrier() override { ++barriers; }
    void placeholder(int32_t) override {}
};

// Host memory for one call, laid out dense [batch, rows, heads, dim]: from the package's page allocator
// (csrc/fa_host_memory.h), as outputs the package allocates itself, so large buffers may be wrapped.
struct Tensors {
    std::vector<void *> blocks;
    Tensors() = default;
    Tensors(const Tensors &) = delete;
    ~Tensors() {
        for (void *b : blocks) fa_host::release(b);
    }
    void *alloc(size_t bytes) {
        blocks.push_back(fa_host::allocate(bytes + 64));
        return blocks.back();
    }
    void dense(fa_tensor &t, int batch, int rows, int heads, int dim, int eb) {
        t.data = alloc(size_t(batch) * rows * heads * dim * eb);
        t.head_stride = dim;
        t.row_stride = int64_t(heads) * dim;
        t.batch_stride = int64_t(rows) * heads * dim;
    }
    // q and out [q_outer, q_rows, nheads_q, dim], k and v [kv_outer, kv_rows, nheads_kv, dim] of an attention call.
    void attention(fa_params &p, int q_outer, int q_rows, int kv_outer, int kv_rows, int dim, int eb) {
        dense(p.q, q_outer, q_rows, p.nheads_q, dim, eb);
        dense(p.out, q_outer, q_rows, p.nheads_q, dim, eb);
        dense(p.k, kv_outer, kv_rows, p.nheads_kv, dim, eb);
        dense(p.v, kv_outer, kv_rows, p.nheads_kv, dim, eb);
    }
};

static void check_plan(const std::string &what, fa_plan_kind kind, const fa_params &p, const fa_kvcache_update *u) {
    fa_plan plan;
    std::memset(&plan, 0, sizeof plan);
    int rc = fa_plan_build(kind, &p, u, &plan, err, sizeof err);
    CHECK(rc == FA_OK, what);
    if (rc != FA_OK) return;
    CHECK(plan.nlaunches >= 1, what);
    g_multi_launch_plans += plan.nlaunches > 1;
    BindingPlan bp;
    rc = plan_bindings(kind, &p, u, &plan, kApplePageBytes, kWrapMinBytes, &bp, err, sizeof err);
    CHECK(rc == FA_OK, what);
    if (rc != FA_OK) return;
    for (int id = 0; id < FA_BUF_COUNT; ++id) {
        const BufferBinding &b = bp.buf[id];
        if (b.storage == Storage::Unused) continue;
        const std::string w = what + " " + buffer_name(id);
        CHECK(b.bytes > 0, w);
        g_wrapped += b.storage == Storage::Wrap;
        g_copied += b.storage == Storage::Copy;
        if (b.storage == Storage::Copy) CHECK(b.copy_back == b.written, w);
        if (b.storage == Storage::Wrap) {
            CHECK(reinterpret_cast<uintptr_t>(b.wrap_base) % kApplePageBytes == 0, w);
            CHECK(b.wrap_bytes % int64_t(kApplePageBytes) == 0, w);
            CHECK(b.base_offset + b.bytes <= b.wrap_bytes, w);
        }
    }
    if (kind == FA_PLAN_FORWARD) {
        CHECK(bp.buf[FA_BUF_OUT].storage != Storage::Unused && bp.buf[FA_BUF_OUT].written, what);
        CHECK(!bp.buf[FA_BUF_Q].written && !bp.buf[FA_BUF_K].written && !bp.buf[FA_BUF_V].written, what);
        if (p.lse) CHECK(bp.buf[FA_BUF_LSE].storage != Storage::Unused && bp.buf[FA_BUF_LSE].written, what);
    } else if (kind == FA_PLAN_KVCACHE_APPEND) {
        if (u->knew.data) CHECK(bp.buf[FA_BUF_K].written && bp.buf[FA_BUF_V].written, what);
    }
    Counter c;
    rc = encode_plan(plan, bp, c, err, sizeof err);
    CHECK(rc == FA_OK, what);
    CHECK(c.dispatches == plan.nlaunches && c.pipelines == plan.nlaunches, what);
    CHECK(c.barriers == plan.nlaunches - 1, what);
    CHECK(c.bytes_calls == plan.nlaunches, what);  // every kernel takes its constant block
}

// fa_plan_build_for_device: what the C ABI builds for an executor that answers "does this launch fit?".
static int g_asked = 0, g_asked_other = 0;  // questions, and questions about launches that are not vector decode
static int fits_all(const fa_launch *l) {
    ++g_asked, g_asked_other += l->desc.family != FA_KERNEL_VECTOR;
    return 1;
}
static int refuses_vector(const fa_launch *l) {
    ++g_asked, g_asked_other += l->desc.family != FA_KERNEL_VECTOR;
    return l->desc.family != FA_KERNEL_VECTOR;
}
static bool has_family(const fa_plan &plan, int family) {
    for (int i = 0; i < plan.nlaunches; ++i)
        if (plan.launches[i].desc.family == family) return true;
    return false;
}

static void check_for_device(const std::string &what, fa_plan_kind kind, const fa_params &p,
                             const fa_kvcache_update *u) {
    static fa_plan plain, fitted;  // large: not on the stack
    CHECK(fa_plan_build(kind, &p, u, &plain, err, sizeof err) == FA_OK, what);
    CHECK(plain.kind == kind, what);
    const bool vector = has_family(plain, FA_KERNEL_VECTOR);
    g_asked = g_asked_other = 0;
    CHECK(fa_plan_build_for_device(kind, &p, u, fits_all, &fitted, err, sizeof err) == FA_OK, what);
    CHECK(std::memcmp(&plain, &fitted, sizeof plain) == 0, what + ": a device that fits everything changes nothing");
    CHECK(g_asked == (vector ? 1 : 0) && g_asked_other == 0, what + ": asked about launches it has no alternative to");
    CHECK(fa_plan_build_for_device(kind, &p, u, nullptr, &fitted, err, sizeof err) == FA_OK, what);
    CHECK(std::memcmp(&plain, &fitted, sizeof plain) == 0, what + ": no device question");
    CHECK(fa_plan_build_for_device(kind, &p, u, refuses_vector, &fitted, err, sizeof err) == FA_OK, what);
    CHECK(fitted.kind == kind && !has_family(fitted, FA_KERNEL_VECTOR), what);
    if (vector) {
        g_vector_fallbacks++;
        CHECK(has_family(fitted, FA_KERNEL_FRAGMENT) && fitted.nlaunches == plain.nlaunches,
              what + ": the vector decode launch goes to the fragment kernel, the merge stays");
    } else {
        CHECK(std::memcmp(&plain, &fitted, sizeof plain) == 0, what + ": nothing to refuse");
    }
}

static fa_params base_params(fa_dtype dt, int d) {
    fa_params p;
    std::memset(&p, 0, sizeof p);
    p.dtype = dt;
    p.headdim = p.headdim_v = d;
    p.window_left = p.window_right = -1;
    p.softmax_scale = 0.125f;
    return p;
}

int main() {
    const fa_dtype dtypes[] = {FA_F16, FA_BF16, FA_F32};
    const char *dnames[] = {"f16", "bf16", "f32"};
    const int dims[] = {32, 64, 80, 96, 128, 192, 256};
    for (int di = 0; di < 3; ++di) {
        const int eb = dtypes[di] == FA_F32 ? 4 : 2;
        for (int d : dims) {
            const std::string tag = std::string(dnames[di]) + " d" + std::to_string(d);
            {  // dense prefill, causal window, with lse
                Tensors t;
                fa_params p = base_params(dtypes[di], d);
                p.batch = 2, p.seqlen_q = 77, p.seqlen_k = 131, p.nheads_q = 4, p.nheads_kv = 4;
                t.attention(p, 2, 77, 2, 131, d, eb);
                p.lse = static_cast<float *>(t.alloc(2 * 4 * 77 * 4));
                p.lse_batch_stride = 4 * 77, p.lse_head_stride = 77, p.lse_row_stride = 1;
                p.window_left = 32, p.window_right = 0;
                check_plan("dense " + tag, FA_PLAN_FORWARD, p, nullptr);
                check_for_device("dense " + tag, FA_PLAN_FORWARD, p, nullptr);
            }
            {  // GQA decode: one query row, long cache, split-KV (two launches through scratch)
                Tensors t;
                fa_params p = base_params(dtypes[di], d);
                p.batch = 1, p.seqlen_q = 1, p.seqlen_k = 4099, p.nheads_q = 8, p.nheads_kv = 2;
                t.attention(p, 1, 1, 1, 4099, d, eb);
                p.lse = static_cast<float *>(t.alloc(8 * 4));
                p.lse_batch_stride = 8, p.lse_head_stride = 1, p.lse_row_stride = 1;
                p.num_splits = 4;
                check_plan("decode " + tag, FA_PLAN_FORWARD, p, nullptr);
                check_for_device("decode " + tag, FA_PLAN_FORWARD, p, nullptr);
            }
            {  // varlen, no lse
                Tensors t;
                static const int32_t cu_q[] = {0, 5, 23, 24};
                static const int32_t cu_k[] = {0, 9, 40, 41};
                fa_params p = base_params(dtypes[di], d);
                p.batch = 3, p.seqlen_q = 18, p.seqlen_k = 31, p.nheads_q = 2, p.nheads_kv = 1;
                p.cu_seqlens_q = cu_q, p.cu_seqlens_k = cu_k, p.total_q = 24, p.total_k = 41;
                t.attention(p, 1, 24, 1, 41, d, eb);
                check_plan("varlen " + tag, FA_PLAN_FORWARD, p, nullptr);
            }
            {  // paged cache with seqused_k
                Tensors t;
                static const int32_t table[] = {3, 1, 0, 2};
                static const int32_t used[] = {50, 17};
                fa_params p = base_params(dtypes[di], d);
                p.batch = 2, p.seqlen_q = 3, p.seqlen_k = 64, p.nheads_q = 2, p.nheads_kv = 2;
                p.block_table = table, p.block_table_batch_stride = 2, p.max_blocks_per_seq = 2;
                p.page_block_size = 32, p.num_blocks = 4, p.seqused_k = used;
                t.attention(p, 2, 3, 4, 32, d, eb);
                check_plan("paged " + tag, FA_PLAN_FORWARD, p, nullptr);
            }
            {  // KV-cache append with rotary
                Tensors t;
                static const int32_t used[] = {5, 9};
                fa_params p = base_params(dtypes[di], d);
                p.batch = 2, p.seqlen_q = 2, p.seqlen_k = 20, p.nheads_q = 4, p.nheads_kv = 2;
                p.seqused_k = used;
                t.dense(p.q, 2, 2, 4, d, eb);
                t.dense(p.k, 2, 20, 2, d, eb);
                t.dense(p.v, 2, 20, 2, d, eb);
                fa_kvcache_update u;
                std::memset(&u, 0, sizeof u);
                t.dense(u.knew, 2, 2, 2, d, eb);
                t.dense(u.vnew, 2, 2, 2, d, eb);
                u.seqlen_new = 2;
                u.rotary_dim = d - d % 4 >= 2 ? (d / 2) & ~1 : 0;
                u.seqlen_ro = 32;
                u.rotary_cos = t.alloc(size_t(32) * d * eb);
                u.rotary_sin = t.alloc(size_t(32) * d * eb);
                check_plan("kvcache " + tag, FA_PLAN_KVCACHE_APPEND, p, &u);
                check_for_device("kvcache " + tag, FA_PLAN_KVCACHE_APPEND, p, &u);
            }
        }
    }
    // The grid must have exercised split-KV (two launches) and both host storage kinds.
    CHECK(g_multi_launch_plans > 0 && g_wrapped > 0 && g_copied > 0, std::string("grid coverage"));
    CHECK(g_vector_fallbacks > 0, std::string("grid coverage: vector decode plans served by the fragment kernel"));
    std::printf("%d multi-launch plans, %d wrapped and %d copied buffers\n", g_multi_launch_plans, g_wrapped,
                g_copied);
    return fa_checks_report() ? 1 : 0;
}
