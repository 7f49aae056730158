// Matrix types (MSL §2.3) and packed vectors (§2.2.3), as llama.cpp's ggml-metal.metal uses them: dequantising
// packed_char4 blocks into half4x4/float4x4 registers, moving 16-element tiles as half4x4. Checked exactly in
// tests/sim/test_sim_real_world_lang.py against NumPy.
#include <metal_stdlib>
using namespace metal;

// out[0..15]: float4x4 from 16 scalars (column-major), out[16..31]: its columns doubled through m[i] = ...,
// out[32..47]: a * b (matrix product), out[48..51]: a * v, out[52..55]: v * a, out[56..71]: transpose(a),
// out[72..87]: float4x4(3) (diagonal), out[88..103]: (a + b) - 2 * a, out[104..111]: half2x4 from two half4
// columns converted to float2x4, out[112..]: sizes of float4x4, half4x4, half2x4, float3x3, packed_float3,
// packed_char4, alignof(packed_half4).
kernel void matrix_ops(device const float *in [[buffer(0)]], device float *out [[buffer(1)]],
                       uint tid [[thread_position_in_grid]]) {
    if (tid != 0) return;
    float4x4 a(in[0], in[1], in[2], in[3], in[4], in[5], in[6], in[7], in[8], in[9], in[10], in[11], in[12],
               in[13], in[14], in[15]);
    float4x4 b(float4(in[16], in[17], in[18], in[19]), float4(in[20], in[21], in[22], in[23]),
               float4(in[24], in[25], in[26], in[27]), float4(in[28], in[29], in[30], in[31]));
    float4 v = float4(in[32], in[33], in[34], in[35]);
    for (int c = 0; c < 4; c++)
        for (int r = 0; r < 4; r++) out[c * 4 + r] = a[c][r];
    float4x4 d = a;
    for (int c = 0; c < 4; c++) d[c] = a[c] * 2.0f;
    for (int c = 0; c < 4; c++)
        for (int r = 0; r < 4; r++) out[16 + c * 4 + r] = d[c][r];
    float4x4 p = a * b;
    float4 av = a * v;
    float4 va = v * a;
    float4x4 t = transpose(a);
    float4x4 diag(3.0f);
    float4x4 s = (a + b) - 2.0f * a;
    for (int c = 0; c < 4; c++)
        for (int r = 0; r < 4; r++) {
            out[32 + c * 4 + r] = p[c][r];
            out[56 + c * 4 + r] = t[c][r];
            out[72 + c * 4 + r] = diag[c][r];
            out[88 + c * 4 + r] = s[c][r];
        }
    for (int r = 0; r < 4; r++) {
        out[48 + r] = av[r];
        out[52 + r] = va[r];
    }
    half2x4 h(half4(in[0], in[1], in[2], in[3]), half4(in[4], in[5], in[6], in[7]));
    float2x4 hf = (float2x4)h;
    for (int c = 0; c < 2; c++)
        for (int r = 0; r < 4; r++) out[104 + c * 4 + r] = hf[c][r];
    out[112] = sizeof(float4x4);
    out[113] = sizeof(half4x4);
    out[114] = sizeof(half2x4);
    out[115] = sizeof(float3x3);
    out[116] = sizeof(packed_float3);
    out[117] = sizeof(packed_char4);
    out[118] = alignof(packed_half4);
}

// A block of 2 + 32 bytes as ggml's block_q8_0 (a half scale, then 32 signed bytes): each thread dequantises four
// bytes, read as a packed_char4 at a 2-byte aligned address, into a float4 of a float4x4 register, and converts
// the register to half4x4 (`(half4x4) reg_f`) before storing its first column. Also a packed_float3 round trip.
struct block_q8 {
    half d;
    char qs[32];
};
kernel void packed_dequant(device const block_q8 *blocks [[buffer(0)]], device half4 *out [[buffer(1)]],
                           device packed_float3 *p3 [[buffer(2)]], uint tid [[thread_position_in_grid]]) {
    device const block_q8 *b = blocks + tid / 8;
    device const packed_char4 *qs = (device const packed_char4 *)b->qs;
    float4x4 reg_f;
    for (int i = 0; i < 4; i++) reg_f[i] = float4(qs[(tid % 8 + i) % 8]) * float(b->d);
    half4x4 reg = (half4x4)reg_f;
    out[tid] = reg[0];
    if (tid < 4) {
        float3 x = p3[tid];  // packed -> aligned vector
        x = x * 2.0f + float3(p3[tid].x, p3[tid][1], p3[tid].z);
        p3[tid] = x;         // aligned -> packed
    }
}
