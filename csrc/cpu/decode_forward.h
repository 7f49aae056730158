// decode_forward.h - the decode forward (one or a few query rows per KV head against a long K/V cache).
#pragma once

#include <vector>

#include "fa_abi.h"
#include "seq_geometry.h"

namespace fa_cpu {

// True when the decode path serves this call: fp32/fp16/bf16, every sequence has at most DECODE_MAX_ROWS query
// rows per KV head (seqlen_q * nheads_q / nheads_kv), no dropout and no attn_probs (those rare cases take the
// general forward, which handles them at any shape).
bool decode_path_applies(const fa_params *p, const std::vector<SeqGeometry> &seqs);

// Runs it; false when a worker failed (out of memory).
bool run_decode(const fa_params *p, const std::vector<SeqGeometry> &seqs);

}  // namespace fa_cpu
