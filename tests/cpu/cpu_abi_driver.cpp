// cpu_abi_driver.cpp - runs one attention forward through the C ABI (fa_forward, CPU backend) from a job file, for
// the tests that check CPU kernels of another architecture under user-mode emulation (tests/cpu/test_cpu_isa_neon.py
// cross-compiles the core and this file for AArch64 and runs it with qemu-aarch64).
//
// Job file (little-endian): "FAJOB1\0\0", then int32 dtype, batch, seqlen_q, seqlen_k, nheads_q, nheads_kv, headdim,
// window_left, window_right, num_threads; float64 softmax_scale, softcap; then q [b, sq, hq, d], k and v
// [b, sk, hkv, d], contiguous, in the dtype. Output file: out [b, sq, hq, d] in the dtype, then lse [b, hq, sq] fp32.
// Prints the CPU backend's description (its first words name the kernel set in use) on stdout; on an ABI error it
// prints the message on stderr and exits with the status.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "fa_abi.h"

namespace {

bool read_all(const char *path, std::vector<unsigned char> &buf) {
    FILE *f = std::fopen(path, "rb");
    if (!f) return false;
    unsigned char chunk[1 << 16];
    size_t n;
    while ((n = std::fread(chunk, 1, sizeof chunk, f)) > 0) buf.insert(buf.end(), chunk, chunk + n);
    std::fclose(f);
    return true;
}

size_t element_size(int32_t dtype) { return dtype == FA_F32 ? 4 : dtype == FA_F64 ? 8 : 2; }

}  // namespace

int main(int argc, char **argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: %s JOB OUT\n", argv[0]);
        return 2;
    }
    std::vector<unsigned char> job;
    if (!read_all(argv[1], job) || job.size() < 8 + 10 * 4 + 2 * 8 || std::memcmp(job.data(), "FAJOB1\0\0", 8) != 0) {
        std::fprintf(stderr, "%s: not a job file\n", argv[1]);
        return 2;
    }
    int32_t h[10];
    double f[2];
    std::memcpy(h, job.data() + 8, sizeof h);
    std::memcpy(f, job.data() + 8 + sizeof h, sizeof f);
    const int32_t dtype = h[0], b = h[1], sq = h[2], sk = h[3], hq = h[4], hkv = h[5], d = h[6];
    const size_t esz = element_size(dtype);
    const size_t nq = size_t(b) * sq * hq * d, nk = size_t(b) * sk * hkv * d;
    const size_t header = 8 + sizeof h + sizeof f;
    if (job.size() != header + (nq + 2 * nk) * esz) {
        std::fprintf(stderr, "%s: %zu bytes, expected %zu\n", argv[1], job.size(), header + (nq + 2 * nk) * esz);
        return 2;
    }
    unsigned char *q = job.data() + header, *k = q + nq * esz, *v = k + nk * esz;
    std::vector<unsigned char> out(nq * esz);
    std::vector<float> lse(size_t(b) * hq * sq);

    fa_params p;
    fa_params_init(&p);
    p.dtype = static_cast<fa_dtype>(dtype);
    p.batch = b;
    p.seqlen_q = sq;
    p.seqlen_k = sk;
    p.nheads_q = hq;
    p.nheads_kv = hkv;
    p.headdim = p.headdim_v = d;
    p.q = {q, int64_t(sq) * hq * d, int64_t(hq) * d, d};
    p.k = {k, int64_t(sk) * hkv * d, int64_t(hkv) * d, d};
    p.v = {v, int64_t(sk) * hkv * d, int64_t(hkv) * d, d};
    p.out = {out.data(), int64_t(sq) * hq * d, int64_t(hq) * d, d};
    p.lse = lse.data();
    p.lse_batch_stride = int64_t(hq) * sq;
    p.lse_head_stride = sq;
    p.lse_row_stride = 1;
    p.window_left = h[7];
    p.window_right = h[8];
    p.num_threads = h[9];
    p.softmax_scale = f[0];
    p.softcap = f[1];

    char err[512] = {0};
    const int rc = fa_forward(FA_BACKEND_CPU, &p, err, sizeof err);
    if (rc != FA_OK) {
        std::fprintf(stderr, "fa_forward: %s\n", err);
        return rc;
    }
    char desc[512] = {0};
    fa_backend_describe(FA_BACKEND_CPU, desc, sizeof desc);
    std::printf("%s\n", desc);
    FILE *o = std::fopen(argv[2], "wb");
    if (!o || std::fwrite(out.data(), 1, out.size(), o) != out.size() ||
        std::fwrite(lse.data(), sizeof(float), lse.size(), o) != lse.size()) {
        std::fprintf(stderr, "%s: cannot write\n", argv[2]);
        return 2;
    }
    std::fclose(o);
    return 0;
}
