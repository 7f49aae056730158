"""Type stubs of flash_attn_cy._core, the thin bridge to the C ABI (csrc/fa_abi.h).

Buffers
-------
`Buf` below is either a host buffer (NumPy array, or anything exporting the buffer protocol) or a `DeviceTensor`
(memory inside an MTLBuffer; backend "metal" only). Host element types by `dtype`:
    "float32" -> float32 buffer, "float64" -> float64, "float16" and "bfloat16" -> uint16 buffer (same bits).
Layouts (the head-dim axis must have stride 1; other strides any non-negative multiple of the element size):
    q, out, dout, dq         [batch, seqlen_q, nheads, headdim]       varlen: [1, total_q, nheads, headdim]
    k, v, dk, dv             [batch, seqlen_k, nheads_k, headdim]     varlen: [1, total_k, ...];
                             paged (block_table): [num_blocks, page_block_size, nheads_k, headdim];
                             cache with cache_batch_idx: [batch_cache, capacity, nheads_k, headdim]
    softmax_lse (float32)    [batch, nheads, seqlen_q]                varlen: [1, nheads, total_q]
    attn_probs (float32)     [batch, nheads, seqlen_q, seqlen_k] (host only)
    int32 vectors            cu_seqlens_q/k [batch+1], seqused_k, leftpad_k, cache_batch_idx [batch] (host only,
                             C-contiguous); block_table [batch, max_blocks] (last axis contiguous)
    alibi_slopes (float32)   [1, nheads] or [batch, nheads]
    rotary_cos/sin           [seqlen_ro, rotary_dim/2], C-contiguous, element type of `dtype`
Empty tensors never reach the ABI (the Python layer answers them itself): a zero-size q/k/v raises ValueError.

Keyword options shared by forward / backward / kvcache_append / describe_plan
-------------------------------------------------------------------------
    softmax_scale: float (required)           window_left, window_right: int (-1 = unbounded; causal = right 0)
    softcap: float (0 = off)                  alibi_slopes: Buf | None
    dropout_p: float                          seed, offset: int (uint64 Philox key and counter offset)
    cu_seqlens_q, cu_seqlens_k: Buf | None    max_seqlen_q, max_seqlen_k: int (required with cu_seqlens_q;
                                              max_seqlen_k is the cache capacity for KV-cache calls)
    seqused_k, leftpad_k, cache_batch_idx, block_table: Buf | None (seqused_k counts keys after leftpad_k)
    attn_probs: Buf | None (forward only)     deterministic: bool (backward)
    num_splits: int (0 = plan decides)        num_threads: int (CPU; 0 = pool setting)
    sim_schedules: int (sim backend: schedules to run and compare)

Errors: ValueError (FA_ERR_VALUE), TypeError (FA_ERR_TYPE), NotImplementedError (FA_ERR_UNSUPPORTED),
MemoryError (FA_ERR_MEMORY, naming the size), RuntimeError (unavailable backend, runtime failure, simulator fault)
-- with the C message. The GIL is released during every ABI call. On the main thread forward/backward run Python's
signal handlers about every 20 ms: Ctrl-C stops the call between tiles and raises KeyboardInterrupt once no worker
runs (kvcache_append is never interrupted: a started append writes every row). Sequence lengths above MAX_SEQLEN
(2**31 - 1) raise ValueError.
"""
from typing import Any, Dict, NamedTuple, Optional, Tuple, Union

BACKENDS: Tuple[str, str, str]
DTYPES: Tuple[str, str, str, str]
ABI_VERSION: int
MAX_SEQLEN: int

class DeviceTensor(NamedTuple):
    """A tensor inside an MTLBuffer (PyTorch MPS tensor, DLPack kDLMetal array).

    handle: the id<MTLBuffer> pointer as an int; byte_offset: byte offset of element [0, ..., 0] in the buffer;
    byte_length: bytes addressable from byte_offset (bounds-checked); shape, strides: same layout as the host
    buffers above, strides in ELEMENTS (4-d; 3-d for softmax_lse)."""
    handle: int
    byte_offset: int
    byte_length: int
    shape: Tuple[int, ...]
    strides: Tuple[int, ...]

Buf = Union[Any, DeviceTensor]

def forward(backend: str, dtype: str, q: Buf, k: Buf, v: Buf, out: Buf, softmax_lse: Optional[Buf] = None,
            **options: Any) -> None:
    """Attention forward; writes `out`, `softmax_lse` (if given) and `attn_probs` (if given, filled with
    probabilities, dropped entries negated)."""

def backward(backend: str, dtype: str, dout: Buf, q: Buf, k: Buf, v: Buf, out: Buf, softmax_lse: Buf, dq: Buf,
             dk: Buf, dv: Buf, **options: Any) -> None:
    """Attention backward: reads dout, q, k, v, out and the forward's softmax_lse; writes dq, dk, dv (shapes of
    q, k, v). Same options as forward (same dropout seed/offset as the forward)."""

def kvcache_append(backend: str, dtype: str, q: Buf, k_cache: Buf, v_cache: Buf, k_new: Optional[Buf] = None,
                   v_new: Optional[Buf] = None, *, rotary_cos: Optional[Buf] = None,
                   rotary_sin: Optional[Buf] = None, rotary_interleaved: bool = True,
                   rotate_q_causal: bool = False, **options: Any) -> None:
    """KV-cache update: rotates `q` IN PLACE (pass a private copy) and the new keys, and writes k_new/v_new into
    k_cache/v_cache at rows leftpad_k[b] + seqused_k[b] (seqused_k required when k_new is given). Rotary
    positions: new key i of sequence b at leftpad+seqused+i; q row i at the same when rotate_q_causal, else all q
    rows at leftpad+seqused."""

def describe_plan(kind: str, *args: Any, **options: Any) -> Any:
    """The sim/metal dispatch plan for a call, parsed from JSON. kind: "forward", "backward" or "kvcache";
    `args`/`options` exactly as for the matching entry point (backend name included but unused)."""

def backend_available(name: str) -> Tuple[bool, str]:
    """(available, reason-if-not) for "cpu", "sim" or "metal"."""

def backend_describe(name: str) -> str:
    """Short description of the backend as built (or "unavailable: reason")."""

def set_num_threads(n: int) -> None:
    """CPU thread count for later calls (0 = one per CPU available). ValueError if n < 0."""

def get_num_threads() -> int:
    """CPU thread count setting: the most threads a call uses (fewer when its work or the CPUs available are fewer)."""

def _take_cpu_pool_activity() -> dict[str, int]:
    """This thread's CPU thread-pool activity since the previous call (calls, max_threads, workers_posted,
    workers_woken, workers_taken_back); resets the counters."""

def _signal_poll_address() -> int:
    """Address of the C function that runs Python's signal handlers for a cancellation token (flash_attn_cy.sim)."""

def _raise_pending_signal() -> None:
    """Raise the exception a signal handler raised during such a poll, if any."""

def _sim_set_launch_hook(address: int) -> None:
    """Install (a C function's address, csrc/sim_profile_hook.h) or remove (0) the sim backend's launch hook."""

# ---- the plan cache (_core_plans.pxi) ----------------------------------------------------------------------------
# A public call of a form validated and run once before (same array kind, dtype, shapes and option types/values)
# runs from the plan stored for that form: straight from the caller's NumPy arrays / CPU torch tensors to the ABI.

class PlanKey:
    """The key of a call form no plan covers yet (what planned_attention / planned_kvcache return on a miss)."""
    def store_attention(self, args: Dict[str, Any], return_tuple: bool) -> None:
        """Store `_validate.attention`'s normalised arguments under this key."""
    def store_kvcache(self, call: Any) -> None:
        """Store a `_validate_kvcache.KvcacheCall` under this key, if a plan describes the call."""

# The attention functions' call forms: "dense", "qkvpacked", "kvpacked", "varlen", "varlen_qkvpacked",
# "varlen_kvpacked", "varlen_paged" -> the code planned_attention takes.
PLAN_FORMS: Dict[str, int]

def set_plan_sources(probs_rule: Any, philox_state: Any) -> None:
    """_validate.FLASH_ATTN_PROBS and _dropout.philox_state, given by _dispatch (this layer imports neither)."""

def planned_attention(form: int, q: Any, k: Any, v: Any, cu_seqlens_q: Any, cu_seqlens_k: Any, max_seqlen_q: Any,
                      max_seqlen_k: Any, dropout_p: Any, softmax_scale: Any, causal: Any, window_size: Any,
                      softcap: Any, alibi_slopes: Any, deterministic: Any, return_attn_probs: Any, block_table: Any,
                      backend: Any, seed: Any, host_buffer_outputs: bool) -> Any:
    """An attention function's raw arguments (the packed tensor as q for the qkv forms, as k for the kv forms): its
    result when a stored plan covers the call, a PlanKey when none does yet, None when no plan can describe the call
    (the general path runs it)."""

def planned_kvcache(q: Any, k_cache: Any, v_cache: Any, k: Any, v: Any, rotary_cos: Any, rotary_sin: Any,
                    cache_seqlens: Any, cache_batch_idx: Any, cache_leftpad: Any, block_table: Any, softmax_scale: Any,
                    causal: Any, window_size: Any, softcap: Any, rotary_interleaved: Any, alibi_slopes: Any,
                    num_splits: Any, return_softmax_lse: Any, backend: Any, host_buffer_outputs: bool) -> Any:
    """flash_attn_with_kvcache's raw arguments, as planned_attention."""

def plan_cache_info() -> Dict[str, int]:
    """{"slots", "used", "hits"}: capacity, stored plans, calls run from a plan since start or clear_plans()."""

def clear_plans() -> None:
    """Forget every stored plan."""
