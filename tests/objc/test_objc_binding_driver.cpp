// Unit tests of the portable half of the Metal shim (objc/fa_metal_binding.cpp), built and run by
// tests/objc/test_objc_binding.py with the host C++ compiler (and sanitizers where available). Prints one line per
// failed check and "passed N checks" at the end; the exit status is the number of failures (capped).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "fa_host_memory.h"
#include "fa_metal_binding.h"
#include "objc_driver_checks.h"

using namespace fametal;

#define CHECK(cond) fa_check((cond), __FILE__, __LINE__, #cond)

#define CHECK_CONTAINS(text, part) CHECK(std::strstr((text), (part)) != nullptr)

static void add_binding(fa_launch &l, int index, int buffer, int64_t offset) {
    l.bindings[l.nbindings++] = fa_binding{index, buffer, offset};
}

static fa_launch make_launch(const char *name) {
    fa_launch l;
    std::memset(&l, 0, sizeof l);
    std::snprintf(l.kernel, sizeof l.kernel, "%s", name);
    for (int d = 0; d < 3; ++d) l.grid[d] = l.threads[d] = 1;
    l.grid[0] = 7;
    l.threads[0] = 128;
    l.constants_index = -1;
    return l;
}

// A 64 KiB arena aligned to Apple's 16 KiB pages that we carve tensors from, so the expected page offsets are known
// exactly. `owned`: from the package's own page allocator (csrc/fa_host_memory.h), the only host memory the shim may
// wrap; otherwise from aligned_alloc, malloc's family, which Metal must never be asked to wrap.
struct Arena {
    unsigned char *base;
    void *region = nullptr;
    explicit Arena(bool owned = true) {
        if (owned) {
            region = fa_host::allocate(5 * kApplePageBytes);
            const uintptr_t r = reinterpret_cast<uintptr_t>(region);
            base = reinterpret_cast<unsigned char *>((r + kApplePageBytes - 1) & ~uintptr_t(kApplePageBytes - 1));
        } else {
            base = static_cast<unsigned char *>(std::aligned_alloc(kApplePageBytes, 4 * kApplePageBytes));
        }
    }
    ~Arena() {
        if (region) fa_host::release(region);
        else std::free(base);
    }
};

static void test_page_region() {
    Arena a;
    void *base = nullptr;
    int64_t bytes = 0, off = 0;
    // Already aligned, whole pages.
    CHECK(page_region(a.base, 2 * 16384, 16384, &base, &bytes, &off));
    CHECK(base == a.base && bytes == 2 * 16384 && off == 0);
    // Unaligned start inside the first page, ending inside the second: two pages, offset kept.
    CHECK(page_region(a.base + 100, 16384, 16384, &base, &bytes, &off));
    CHECK(base == a.base && bytes == 2 * 16384 && off == 100);
    // Ends exactly on a page boundary.
    CHECK(page_region(a.base + 16384 - 8, 8, 16384, &base, &bytes, &off));
    CHECK(base == a.base && bytes == 16384 && off == 16384 - 8);
    // One byte past a boundary needs the next page.
    CHECK(page_region(a.base + 16384 - 8, 9, 16384, &base, &bytes, &off));
    CHECK(bytes == 2 * 16384);
    // Refusals: null, empty, page not a power of two, address arithmetic that would wrap.
    CHECK(!page_region(nullptr, 16, 16384, &base, &bytes, &off));
    CHECK(!page_region(a.base, 0, 16384, &base, &bytes, &off));
    CHECK(!page_region(a.base, 16, 12000, &base, &bytes, &off));
    CHECK(!page_region(reinterpret_cast<void *>(UINTPTR_MAX - 100), 4096, 16384, &base, &bytes, &off));
}

// Forward call: q/k/v large (wrapped), out large but unaligned, lse small (copied).
struct ForwardCase {
    Arena arena;
    explicit ForwardCase(bool owned = true) : arena(owned) { init(); }
    ForwardCase(const ForwardCase &) = delete;
    std::vector<float> lse_storage = std::vector<float>(64);
    fa_params p;
    fa_plan plan;
    void init() {
        std::memset(&p, 0, sizeof p);
        std::memset(&plan, 0, sizeof plan);
        p.q.data = arena.base;                  // page aligned
        p.k.data = arena.base + 16384 + 256;    // 256 bytes into the second page
        p.v.data = arena.base + 2 * 16384;
        p.out.data = arena.base + 3 * 16384 + 64;
        p.lse = lse_storage.data();
        plan.buffer_bytes[FA_BUF_Q] = 16384;
        plan.buffer_bytes[FA_BUF_K] = 16384 - 256;
        plan.buffer_bytes[FA_BUF_V] = 16384;
        plan.buffer_bytes[FA_BUF_OUT] = 16384 - 64;
        plan.buffer_bytes[FA_BUF_LSE] = 64 * 4;
        plan.nlaunches = 1;
        fa_launch &l = plan.launches[0];
        l = make_launch("fa_fwd_f16_d64");
        add_binding(l, 0, FA_BUF_Q, 0);
        add_binding(l, 1, FA_BUF_K, 128);
        add_binding(l, 2, FA_BUF_V, 0);
        add_binding(l, 3, FA_BUF_OUT, 0);
        add_binding(l, 4, FA_BUF_LSE, 16);
        l.constants_index = 5;
        l.constants_size = 12;
        std::memcpy(l.constants, "abcdefghijkl", 12);
    }
};

static void test_forward_storage() {
    ForwardCase c;
    BindingPlan bp;
    char err[512] = "";
    CHECK(plan_bindings(FA_PLAN_FORWARD, &c.p, nullptr, &c.plan, 16384, kWrapMinBytes, &bp, err, sizeof err) == FA_OK);
    CHECK(bp.buf[FA_BUF_Q].storage == Storage::Wrap);
    CHECK(bp.buf[FA_BUF_Q].wrap_base == c.arena.base && bp.buf[FA_BUF_Q].wrap_bytes == 16384);
    CHECK(bp.buf[FA_BUF_Q].base_offset == 0);
    // k is smaller than kWrapMinBytes: copied, and never copied back (forward does not write k).
    CHECK(bp.buf[FA_BUF_K].storage == Storage::Copy && !bp.buf[FA_BUF_K].copy_back);
    CHECK(bp.buf[FA_BUF_V].storage == Storage::Wrap && !bp.buf[FA_BUF_V].written);
    // out is exactly kWrapMinBytes - 64 bytes: copied and copied back.
    CHECK(bp.buf[FA_BUF_OUT].storage == Storage::Copy && bp.buf[FA_BUF_OUT].copy_back);
    CHECK(bp.buf[FA_BUF_LSE].storage == Storage::Copy && bp.buf[FA_BUF_LSE].copy_back);
    CHECK(bp.buf[FA_BUF_LSE].host == c.lse_storage.data() && bp.buf[FA_BUF_LSE].bytes == 256);
    CHECK(bp.buf[FA_BUF_ALIBI].storage == Storage::Unused);

    // With a wrap threshold of one byte every host buffer is wrapped, each at its offset inside its first page.
    CHECK(plan_bindings(FA_PLAN_FORWARD, &c.p, nullptr, &c.plan, 16384, 1, &bp, err, sizeof err) == FA_OK);
    CHECK(bp.buf[FA_BUF_K].storage == Storage::Wrap && bp.buf[FA_BUF_K].base_offset == 256);
    CHECK(bp.buf[FA_BUF_K].wrap_base == c.arena.base + 16384 && bp.buf[FA_BUF_K].wrap_bytes == 16384);
    CHECK(bp.buf[FA_BUF_OUT].storage == Storage::Wrap && bp.buf[FA_BUF_OUT].base_offset == 64);
    CHECK(!bp.buf[FA_BUF_OUT].copy_back && bp.buf[FA_BUF_OUT].written);
    CHECK(metal_offset(bp.buf[FA_BUF_K], 128) == 256 + 128);

    // The caller's memory (malloc's family: NumPy arrays, ...) is never wrapped, whatever its size and alignment
    // (Apple forbids it): copied, and copied back when written.
    {
        ForwardCase m(false);
        BindingPlan mp;
        CHECK(plan_bindings(FA_PLAN_FORWARD, &m.p, nullptr, &m.plan, 16384, 1, &mp, err, sizeof err) == FA_OK);
        for (int id : {FA_BUF_Q, FA_BUF_K, FA_BUF_V, FA_BUF_OUT, FA_BUF_LSE})
            CHECK(mp.buf[id].storage == Storage::Copy && mp.buf[id].wrap_base == nullptr);
        CHECK(mp.buf[FA_BUF_OUT].copy_back && !mp.buf[FA_BUF_Q].copy_back);
    }

    // A refused wrap falls back to a copy that is copied back when written.
    BufferBinding out = bp.buf[FA_BUF_OUT];
    fallback_to_copy(&out);
    CHECK(out.storage == Storage::Copy && out.copy_back && out.base_offset == 0 && out.wrap_base == nullptr);
    CHECK(metal_offset(out, 40) == 40);
    BufferBinding kin = bp.buf[FA_BUF_K];
    fallback_to_copy(&kin);
    CHECK(kin.storage == Storage::Copy && !kin.copy_back);
}

static void test_device_buffers() {
    ForwardCase c;
    fa_device_buffers dev;
    std::memset(&dev, 0, sizeof dev);
    int fake_q = 0, fake_out = 0;
    dev.handle[FA_BUF_Q] = &fake_q;
    dev.byte_offset[FA_BUF_Q] = 4096;
    dev.byte_length[FA_BUF_Q] = 16384;
    dev.handle[FA_BUF_OUT] = &fake_out;
    dev.byte_offset[FA_BUF_OUT] = 0;
    dev.byte_length[FA_BUF_OUT] = 1 << 20;
    c.p.device_buffers = &dev;
    c.p.q.data = nullptr;  // not dereferenced when a device buffer is given
    BindingPlan bp;
    char err[512] = "";
    CHECK(plan_bindings(FA_PLAN_FORWARD, &c.p, nullptr, &c.plan, 16384, kWrapMinBytes, &bp, err, sizeof err) == FA_OK);
    CHECK(bp.buf[FA_BUF_Q].storage == Storage::Device && bp.buf[FA_BUF_Q].handle == &fake_q);
    CHECK(metal_offset(bp.buf[FA_BUF_Q], 32) == 4096 + 32);
    CHECK(bp.buf[FA_BUF_OUT].storage == Storage::Device && !bp.buf[FA_BUF_OUT].copy_back);
    CHECK(bp.buf[FA_BUF_K].storage == Storage::Copy);  // mixed: the rest still comes from host memory

    // A device buffer the plan does not bind is an error, not a silently unwritten output / ignored input.
    int fake_alibi = 0;
    dev.handle[FA_BUF_ALIBI] = &fake_alibi;
    dev.byte_length[FA_BUF_ALIBI] = 64;
    CHECK(plan_bindings(FA_PLAN_FORWARD, &c.p, nullptr, &c.plan, 16384, kWrapMinBytes, &bp, err, sizeof err) ==
          FA_ERR_RUNTIME);
    CHECK_CONTAINS(err, "alibi_slopes was given as a Metal buffer but the dispatch plan does not use it");
    CHECK_CONTAINS(err, "silently ignored");
    dev.handle[FA_BUF_ALIBI] = nullptr;
    int fake_probs = 0;
    dev.handle[FA_BUF_ATTN_PROBS] = &fake_probs;
    CHECK(plan_bindings(FA_PLAN_FORWARD, &c.p, nullptr, &c.plan, 16384, kWrapMinBytes, &bp, err, sizeof err) ==
          FA_ERR_RUNTIME);
    CHECK_CONTAINS(err, "left unwritten");
    dev.handle[FA_BUF_ATTN_PROBS] = nullptr;

    dev.byte_length[FA_BUF_Q] = 16383;  // one byte short of what the plan touches
    CHECK(plan_bindings(FA_PLAN_FORWARD, &c.p, nullptr, &c.plan, 16384, kWrapMinBytes, &bp, err, sizeof err) ==
          FA_ERR_VALUE);
    CHECK_CONTAINS(err, "device buffer for q is too small");
    CHECK_CONTAINS(err, "16384");
    dev.byte_length[FA_BUF_Q] = 16384;
    dev.byte_offset[FA_BUF_Q] = -1;
    CHECK(plan_bindings(FA_PLAN_FORWARD, &c.p, nullptr, &c.plan, 16384, kWrapMinBytes, &bp, err, sizeof err) ==
          FA_ERR_VALUE);
    // Metal wants a buffer offset aligned to the type the kernel reads: an fp32 tensor at byte 4098 is refused,
    // an fp16 one there is fine.
    dev.byte_offset[FA_BUF_Q] = 4098;
    dev.byte_length[FA_BUF_Q] = 1 << 20;
    CHECK(plan_bindings(FA_PLAN_FORWARD, &c.p, nullptr, &c.plan, 16384, kWrapMinBytes, &bp, err, sizeof err) ==
          FA_ERR_VALUE);
    CHECK_CONTAINS(err, "q starts at byte offset 4098 of its MTLBuffer, not a multiple of its 4-byte element");
    c.p.dtype = FA_F16;
    CHECK(plan_bindings(FA_PLAN_FORWARD, &c.p, nullptr, &c.plan, 16384, kWrapMinBytes, &bp, err, sizeof err) == FA_OK);
    CHECK(metal_offset(bp.buf[FA_BUF_Q], 0) == 4098);
}

// Host memory not aligned to its element type is copied (which realigns it), never wrapped at an unaligned offset;
// a plan binding at a byte offset that is not a whole element is a plan error.
static void test_alignment() {
    ForwardCase c;
    BindingPlan bp;
    char err[512] = "";
    c.p.v.data = c.arena.base + 2 * 16384 + 2;  // fp32 tensor at an address that is only 2-byte aligned
    c.plan.buffer_bytes[FA_BUF_V] = 16384 - 2;
    CHECK(plan_bindings(FA_PLAN_FORWARD, &c.p, nullptr, &c.plan, 16384, 1, &bp, err, sizeof err) == FA_OK);
    CHECK(bp.buf[FA_BUF_V].storage == Storage::Copy && bp.buf[FA_BUF_V].base_offset == 0);
    CHECK(bp.buf[FA_BUF_K].storage == Storage::Wrap && bp.buf[FA_BUF_K].base_offset == 256);  // aligned: wrapped
    c.p.dtype = FA_F16;  // the same address holds fp16 elements aligned: wrapped at byte 2 of its page
    CHECK(plan_bindings(FA_PLAN_FORWARD, &c.p, nullptr, &c.plan, 16384, 1, &bp, err, sizeof err) == FA_OK);
    CHECK(bp.buf[FA_BUF_V].storage == Storage::Wrap && bp.buf[FA_BUF_V].base_offset == 2);
    CHECK(element_bytes(&c.p, FA_BUF_LSE) == 4 && element_bytes(&c.p, FA_BUF_CU_SEQLENS_Q) == 4);
    c.p.dtype = FA_F32;
    c.plan.launches[0].bindings[1].byte_offset = 130;  // k at byte 130: not a whole fp32 element
    CHECK(plan_bindings(FA_PLAN_FORWARD, &c.p, nullptr, &c.plan, 16384, kWrapMinBytes, &bp, err, sizeof err) ==
          FA_ERR_RUNTIME);
    CHECK_CONTAINS(err, "binds k at byte 130, not a multiple of its 4-byte element");
}

static void test_plan_errors() {
    char err[512] = "";
    BindingPlan bp;
    {
        ForwardCase c;
        c.p.lse = nullptr;
        CHECK(plan_bindings(FA_PLAN_FORWARD, &c.p, nullptr, &c.plan, 16384, kWrapMinBytes, &bp, err, sizeof err) ==
              FA_ERR_VALUE);
        CHECK_CONTAINS(err, "lse");
    }
    {
        ForwardCase c;
        c.plan.buffer_bytes[FA_BUF_V] = 0;
        CHECK(plan_bindings(FA_PLAN_FORWARD, &c.p, nullptr, &c.plan, 16384, kWrapMinBytes, &bp, err, sizeof err) ==
              FA_ERR_RUNTIME);
        CHECK_CONTAINS(err, "binds v");
    }
    {
        ForwardCase c;  // binding offset at the end of the buffer
        c.plan.launches[0].bindings[4].byte_offset = 256;
        CHECK(plan_bindings(FA_PLAN_FORWARD, &c.p, nullptr, &c.plan, 16384, kWrapMinBytes, &bp, err, sizeof err) ==
              FA_ERR_RUNTIME);
        CHECK_CONTAINS(err, "binds lse at byte 256, outside its 256 bytes");
    }
    {
        ForwardCase c;
        c.plan.launches[0].grid[1] = 0;
        CHECK(plan_bindings(FA_PLAN_FORWARD, &c.p, nullptr, &c.plan, 16384, kWrapMinBytes, &bp, err, sizeof err) ==
              FA_ERR_RUNTIME);
        CHECK_CONTAINS(err, "empty grid");
    }
    {
        ForwardCase c;  // two arguments at one index (constants at 5, then a buffer at 5)
        add_binding(c.plan.launches[0], 5, FA_BUF_V, 0);
        CHECK(plan_bindings(FA_PLAN_FORWARD, &c.p, nullptr, &c.plan, 16384, kWrapMinBytes, &bp, err, sizeof err) ==
              FA_ERR_RUNTIME);
        CHECK_CONTAINS(err, "buffer index 5");
    }
    {
        ForwardCase c;
        c.plan.launches[0].bindings[0].buffer = FA_BUF_COUNT;
        CHECK(plan_bindings(FA_PLAN_FORWARD, &c.p, nullptr, &c.plan, 16384, kWrapMinBytes, &bp, err, sizeof err) ==
              FA_ERR_RUNTIME);
        c.plan.launches[0].bindings[0].buffer = FA_BUF_Q;
        c.plan.launches[0].bindings[0].index = 31;
        CHECK(plan_bindings(FA_PLAN_FORWARD, &c.p, nullptr, &c.plan, 16384, kWrapMinBytes, &bp, err, sizeof err) ==
              FA_ERR_RUNTIME);
    }
    {
        ForwardCase c;
        c.plan.launches[0].constants_size = FA_PLAN_MAX_CONSTANT_BYTES + 1;
        CHECK(plan_bindings(FA_PLAN_FORWARD, &c.p, nullptr, &c.plan, 16384, kWrapMinBytes, &bp, err, sizeof err) ==
              FA_ERR_RUNTIME);
        CHECK_CONTAINS(err, "constant block");
    }
    {
        ForwardCase c;
        c.plan.nlaunches = FA_PLAN_MAX_LAUNCHES + 1;
        CHECK(plan_bindings(FA_PLAN_FORWARD, &c.p, nullptr, &c.plan, 16384, kWrapMinBytes, &bp, err, sizeof err) ==
              FA_ERR_RUNTIME);
    }
    {
        ForwardCase c;  // unterminated kernel name
        std::memset(c.plan.launches[0].kernel, 'x', sizeof c.plan.launches[0].kernel);
        CHECK(plan_bindings(FA_PLAN_FORWARD, &c.p, nullptr, &c.plan, 16384, kWrapMinBytes, &bp, err, sizeof err) ==
              FA_ERR_RUNTIME);
        CHECK_CONTAINS(err, "kernel name");
    }
    // Messages are truncated, never overflowed.
    char tiny[8];
    ForwardCase c;
    c.p.lse = nullptr;
    CHECK(plan_bindings(FA_PLAN_FORWARD, &c.p, nullptr, &c.plan, 16384, kWrapMinBytes, &bp, tiny, sizeof tiny) ==
          FA_ERR_VALUE);
    CHECK(std::strlen(tiny) == 7);
}

static void test_kinds() {
    // Backward writes dq/dk/dv only; KV-cache append writes the cache and q in place; scratch is plan-owned.
    CHECK(buffer_written(FA_PLAN_BACKWARD, FA_BUF_DQ) && buffer_written(FA_PLAN_BACKWARD, FA_BUF_DV));
    CHECK(!buffer_written(FA_PLAN_BACKWARD, FA_BUF_OUT) && !buffer_written(FA_PLAN_BACKWARD, FA_BUF_DOUT));
    CHECK(!buffer_written(FA_PLAN_FORWARD, FA_BUF_K) && buffer_written(FA_PLAN_KVCACHE_APPEND, FA_BUF_K));
    CHECK(buffer_written(FA_PLAN_KVCACHE_APPEND, FA_BUF_Q) && !buffer_written(FA_PLAN_KVCACHE_APPEND, FA_BUF_KNEW));
    CHECK(buffer_written(FA_PLAN_FORWARD, FA_BUF_SCRATCH2));

    fa_params p;
    std::memset(&p, 0, sizeof p);
    fa_kvcache_update u;
    std::memset(&u, 0, sizeof u);
    int knew = 0, cosv = 0;
    u.knew.data = &knew;
    u.rotary_cos = &cosv;
    CHECK(host_pointer(FA_PLAN_KVCACHE_APPEND, &p, &u, FA_BUF_KNEW) == &knew);
    CHECK(host_pointer(FA_PLAN_KVCACHE_APPEND, &p, &u, FA_BUF_ROTARY_COS) == &cosv);
    CHECK(host_pointer(FA_PLAN_FORWARD, &p, &u, FA_BUF_KNEW) == nullptr);  // update ignored outside kv-cache plans
    CHECK(host_pointer(FA_PLAN_KVCACHE_APPEND, &p, nullptr, FA_BUF_KNEW) == nullptr);
    CHECK(host_pointer(FA_PLAN_FORWARD, &p, nullptr, FA_BUF_SCRATCH0) == nullptr);
    CHECK(std::strcmp(buffer_name(FA_BUF_ROTARY_SIN), "rotary_sin") == 0);
    CHECK(std::strcmp(buffer_name(FA_BUF_SCRATCH3), "scratch3") == 0);
    CHECK(std::strcmp(buffer_name(-1), "?") == 0 && std::strcmp(buffer_name(FA_BUF_COUNT), "?") == 0);

    // Scratch: sized by the plan, an unsized scratch binding is an error.
    fa_plan plan;
    std::memset(&plan, 0, sizeof plan);
    plan.nlaunches = 1;
    plan.launches[0] = make_launch("fa_merge");
    add_binding(plan.launches[0], 0, FA_BUF_SCRATCH1, 0);
    BindingPlan bp;
    char err[256];
    CHECK(plan_bindings(FA_PLAN_FORWARD, &p, nullptr, &plan, 16384, kWrapMinBytes, &bp, err, sizeof err) ==
          FA_ERR_RUNTIME);
    CHECK_CONTAINS(err, "scratch1");
    plan.scratch_bytes[1] = 1000;
    CHECK(plan_bindings(FA_PLAN_FORWARD, &p, nullptr, &plan, 16384, kWrapMinBytes, &bp, err, sizeof err) == FA_OK);
    CHECK(bp.buf[FA_BUF_SCRATCH1].storage == Storage::Scratch && bp.buf[FA_BUF_SCRATCH1].bytes == 1000);
    CHECK(!bp.buf[FA_BUF_SCRATCH1].copy_back);
}

// Records the encoder calls as text so the test can compare the whole sequence.
class Recorder : public Encoder {
public:
    std::string log;
    PipelineLimits limits{1024, {1024, 1024, 1024}, 32768, 0};
    std::string fail_kernel;
    int pipeline(const fa_launch &launch, PipelineLimits *lim, char *err, size_t errlen) override {
        const char *kernel = launch.kernel;
        if (fail_kernel == kernel) return fail(FA_ERR_RUNTIME, err, errlen, "no function %s", kernel);
        log += std::string("P:") + kernel + ";";
        *lim = limits;
        return FA_OK;
    }
    void buffer(int id, int64_t offset, int32_t index) override {
        log += "B" + std::to_string(index) + "=" + buffer_name(id) + "+" + std::to_string(offset) + ";";
    }
    void bytes(const void *data, uint32_t size, int32_t index) override {
        log += "C" + std::to_string(index) + "=" + std::string(static_cast<const char *>(data), size) + ";";
    }
    void dispatch(const uint32_t g[3], const uint32_t t[3]) override {
        log += "D" + std::to_string(g[0]) + "x" + std::to_string(g[1]) + "x" + std::to_string(g[2]) + "/" +
               std::to_string(t[0]) + "x" + std::to_string(t[1]) + "x" + std::to_string(t[2]) + ";";
    }
    void barrier() override { log += "|;"; }
    void placeholder(int32_t index) override { log += "N" + std::to_string(index) + ";"; }
};

static void test_encode() {
    ForwardCase c;
    // A second launch reading scratch written by the first, like a split-KV merge.
    c.plan.scratch_bytes[0] = 4096;
    add_binding(c.plan.launches[0], 6, FA_BUF_SCRATCH0, 0);
    fa_launch &m = c.plan.launches[1];
    m = make_launch("fa_merge");
    m.grid[1] = 3;
    m.threads[0] = 32;
    add_binding(m, 0, FA_BUF_SCRATCH0, 2048);
    add_binding(m, 1, FA_BUF_OUT, 0);
    c.plan.nlaunches = 2;
    BindingPlan bp;
    char err[512] = "";
    CHECK(plan_bindings(FA_PLAN_FORWARD, &c.p, nullptr, &c.plan, 16384, 1, &bp, err, sizeof err) == FA_OK);
    Recorder r;
    CHECK(encode_plan(c.plan, bp, r, err, sizeof err) == FA_OK);
    const std::string expected =
        "P:fa_fwd_f16_d64;B0=q+0;B1=k+384;B2=v+0;B3=out+64;B4=lse+16"  // lse: a std::vector's memory, copied
        ";B6=scratch0+0;C5=abcdefghijkl;N7;N8;N9;N10;N11;N12;N13;N14;N15;D7x1x1/128x1x1;|;P:fa_merge;"
        "B0=scratch0+2048;B1=out+64;D7x3x1/32x1x1;";  // placeholders only where nothing was bound yet
    CHECK(r.log == expected);
    if (r.log != expected) std::printf("  got      %s\n  expected %s\n", r.log.c_str(), expected.c_str());

    // Pipeline errors stop the walk before anything of that launch is encoded.
    Recorder r2;
    r2.fail_kernel = "fa_merge";
    CHECK(encode_plan(c.plan, bp, r2, err, sizeof err) == FA_ERR_RUNTIME);
    CHECK_CONTAINS(err, "no function fa_merge");
    CHECK(r2.log.find("fa_merge") == std::string::npos && r2.log.find("D7x1x1") != std::string::npos);

    // Threadgroup limits come from the pipeline and the device, and the message names both.
    Recorder r3;
    r3.limits.max_total_threads = 96;
    CHECK(encode_plan(c.plan, bp, r3, err, sizeof err) == FA_ERR_RUNTIME);
    CHECK_CONTAINS(err, "fa_fwd_f16_d64 wants threadgroups of (128, 1, 1) = 128 threads");
    CHECK_CONTAINS(err, "at most 96 threads");
    CHECK(r3.log.find("D") == std::string::npos);  // nothing dispatched

    fa_launch big = make_launch("big");
    big.threadgroup_memory_bytes = 40000;
    PipelineLimits lim{1024, {1024, 1024, 1024}, 32768, 0};
    CHECK(check_launch_limits(big, lim, err, sizeof err) == FA_ERR_RUNTIME);
    CHECK_CONTAINS(err, "40000 bytes of threadgroup memory; the device allows 32768");
    big.threadgroup_memory_bytes = 0;
    lim.static_threadgroup_memory = 32769;  // what the compiled pipeline reports wins when larger
    CHECK(check_launch_limits(big, lim, err, sizeof err) == FA_ERR_RUNTIME);
    lim.static_threadgroup_memory = 32768;
    CHECK(check_launch_limits(big, lim, err, sizeof err) == FA_OK);
    big.threads[0] = 16;
    big.threads[1] = 2048;  // total is fine for a 1M limit, but the per-axis device limit is not
    lim.max_total_threads = 1 << 20;
    CHECK(check_launch_limits(big, lim, err, sizeof err) == FA_ERR_RUNTIME);
}

// Pipelines are keyed by name and Metal function constants: the same function with other constant values is another
// pipeline; template constants are already in the name.
static void test_pipeline_key() {
    fa_launch l = make_launch("fa_x");
    CHECK(pipeline_key(l) == "fa_x");
    fa_spec_constant &t = l.desc.specs[l.desc.nspecs++];
    std::snprintf(t.name, sizeof t.name, "T");
    t.index = FA_SPEC_TEMPLATE;
    t.type = FA_SPEC_DTYPE;
    t.value.i = FA_F16;
    CHECK(pipeline_key(l) == "fa_x");
    fa_spec_constant &c = l.desc.specs[l.desc.nspecs++];
    std::snprintf(c.name, sizeof c.name, "CAUSAL");
    c.index = 2;
    c.type = FA_SPEC_BOOL;
    c.value.i = 1;
    const std::string on = pipeline_key(l);
    c.value.i = 0;
    CHECK(on != pipeline_key(l) && on.rfind("fa_x|", 0) == 0);
    CHECK(fa_kernel_function_constant_count(&l.desc) == 1);
}

int main() {
    test_pipeline_key();
    test_page_region();
    test_alignment();
    test_forward_storage();
    test_device_buffers();
    test_plan_errors();
    test_kinds();
    test_encode();
    const int failures = fa_checks_report();
    return failures > 100 ? 100 : failures;
}
