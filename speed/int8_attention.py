"""8-bit attention in Triton: Q·Kᵀ in INT8, P·V in FP8 (or 16-bit), both accumulated in 32 bits.

The method is SageAttention 2's (Zhang et al., 2024), implemented here from its description:
- K is smoothed: its mean over the tokens is subtracted. That shifts every score of a query by one constant, which
  softmax ignores, and removes the channel offsets that real models' keys carry (they would otherwise set the
  quantization step of every token).
- Q is quantized to INT8 with one scale per token (per head). K has one scale per block of 128 keys with FP8 P·V
  (then a score is s = (q8·k8) · scale_q · scale_k in one multiply-add on the way to exp2: 8% faster on an H200,
  as precise there), and one per key with 16-bit P·V, where the finer scale shows (2.1% vs 3.9% error on keys
  with outlier channels).
- P (each softmax tile, values in [0, 1]) is scaled to [0, 448] and rounded to FP8 e4m3; V is quantized to FP8 with
  one scale per channel (per head). P·V accumulates in float32 and the scales are divided out once at the end.
The softmax itself (online, base 2) and its normalizer stay in float32. With `pv="16bit"` P and V stay in q's
16-bit type instead (SageAttention 1's split): only Q·Kᵀ is 8-bit, about 3x more precise and slower.

Layout in: q [B, Lq, H, D], k/v [B, Lk, H, D] (float16 or bfloat16, any strides); out [B, Lq, H, D] in q's dtype.
`mask`, optional, is boolean, [Lq, Lk] or [B or 1, 1, Lq, Lk], True where a query may attend.
"""
from __future__ import annotations

import logging
import math
import os

import torch
import triton
import triton.language as tl

log = logging.getLogger(__name__)

FP8_MAX = 448.0                 # largest finite float8_e4m3fn
LOG2E = 1.4426950408889634
QUANT_ROWS = 64                 # tokens per program of the quantization kernels of Q and V
K_BLOCK = tl.constexpr(128)     # keys per INT8 scale, a multiple of every attention tile's BLOCK_N
PAD = 128                       # token counts are padded to a multiple of this (the largest attention tile)
LOG2_FP8_MAX = math.log2(FP8_MAX)


@triton.jit
def _quantize_rows(x_ptr, mean_ptr, out_ptr, scale_ptr, sx_b, sx_l, sx_h, heads, length, padded, factor,
                   SUBTRACT_MEAN: tl.constexpr, PER_ROW: tl.constexpr, ROWS: tl.constexpr, D: tl.constexpr):
    """INT8 with one scale per row (PER_ROW) or per block of ROWS rows: x [B, L, H, D] → out [B·H, padded, D],
    scale·factor [B·H, padded] or [B·H, padded / ROWS]."""
    block, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // heads, bh % heads
    rows = block * ROWS + tl.arange(0, ROWS)
    dims = tl.arange(0, D)
    inside = rows[:, None] < length
    x = tl.load(x_ptr + b * sx_b + rows[:, None] * sx_l + h * sx_h + dims[None, :], mask=inside, other=0.0)
    x = x.to(tl.float32)
    if SUBTRACT_MEAN:
        x = tl.where(inside, x - tl.load(mean_ptr + bh * D + dims)[None, :], 0.0)
    if PER_ROW:
        scale = tl.maximum(tl.max(tl.abs(x), axis=1), 1e-12) / 127.0
        y = x / scale[:, None]
        tl.store(scale_ptr + bh * padded + rows, scale * factor)
    else:
        scale = tl.maximum(tl.max(tl.abs(x)), 1e-12) / 127.0
        y = x / scale
        tl.store(scale_ptr + bh * (padded // ROWS) + block, scale * factor)
    y = tl.where(y >= 0, y + 0.5, y - 0.5).to(tl.int8)    # round half away from zero (the cast truncates)
    tl.store(out_ptr + (bh * padded + rows[:, None]) * D + dims[None, :], y)


@triton.jit
def _quantize_columns(x_ptr, scale_ptr, out_ptr, sx_b, sx_l, sx_h, heads, length, padded,
                      ROWS: tl.constexpr, D: tl.constexpr):
    """Values divided by one scale per channel in out's type (FP8, or 16-bit with scale 1), transposed:
    x [B, L, H, D] → out [B·H, D, padded]."""
    block, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // heads, bh % heads
    rows = block * ROWS + tl.arange(0, ROWS)
    dims = tl.arange(0, D)
    x = tl.load(x_ptr + b * sx_b + rows[:, None] * sx_l + h * sx_h + dims[None, :], mask=rows[:, None] < length,
                other=0.0)
    y = (x.to(tl.float32) / tl.load(scale_ptr + bh * D + dims)[None, :]).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + (bh * D + dims[None, :]) * padded + rows[:, None], y)


@triton.jit
def _scores(q, k_ptr, ks_ptr, start, D: tl.constexpr, BLOCK_N: tl.constexpr, K_PER_TOKEN: tl.constexpr):
    """Q·Kᵀ of one key tile in float32, times the keys' scales when they are per key."""
    cols = start + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, D)
    k = tl.load(k_ptr + cols[None, :] * D + dims[:, None])                      # [D, BLOCK_N]: Kᵀ
    s = tl.dot(q, k, out_dtype=tl.int32).to(tl.float32)
    if K_PER_TOKEN:
        s = s * tl.load(ks_ptr + cols)[None, :]
    return s


@triton.jit
def _update(acc, m_i, l_i, s, q_scale, ks_ptr, v_ptr, mask_ptr, sm_q, sm_k, start, rows, queries, keys, padded_k,
            D: tl.constexpr, BLOCK_N: tl.constexpr, TAIL: tl.constexpr, HAS_MASK: tl.constexpr,
            LOG2_P_SCALE: tl.constexpr, K_PER_TOKEN: tl.constexpr):
    """The online softmax and P·V of one key tile, given its scores `s`."""
    cols = start + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, D)
    if K_PER_TOKEN:
        row_scale = q_scale
    else:
        row_scale = q_scale * tl.load(ks_ptr + start // K_BLOCK)                # scores = s · row_scale (log2)
    if TAIL:
        s = tl.where(cols[None, :] < keys, s, float("-inf"))
    if HAS_MASK:
        allowed = tl.load(mask_ptr + rows[:, None] * sm_q + cols[None, :] * sm_k,
                          mask=(rows[:, None] < queries) & (cols[None, :] < keys), other=0)
        s = tl.where(allowed != 0, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1) * row_scale)
    if HAS_MASK:  # a row with no allowed key so far keeps -inf; exp2(-inf - -inf) would be NaN
        m_new = tl.where(m_new == float("-inf"), 0.0, m_new)
    # P·2^LOG2_P_SCALE in one multiply-add and exp2: FP8 P uses the format's range up to 448, and the same
    # factor in the normalizer l cancels it at the end.
    p = tl.math.exp2(s * row_scale[:, None] - (m_new - LOG2_P_SCALE)[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    v = tl.load(v_ptr + dims[None, :] * padded_k + cols[:, None])               # [BLOCK_N, D], keys contiguous
    if LOG2_P_SCALE == 0.0:   # 16-bit P·V: the tensor cores accumulate in full float32
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
    else:  # FP8 tensor cores accumulate with fewer bits: each tile's product is added to acc in float32
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return acc, m_new, l_i


def _configs():
    if os.environ.get("TRITON_INTERPRET") == "1":   # the CPU interpreter (tests): one small configuration
        return [triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=1)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
            for m, n, w, s in ((128, 128, 8, 3), (128, 64, 8, 3), (128, 128, 4, 3), (128, 64, 4, 4))]


# The tile choice is measured once per key count (about 10-20 s) and kept in Triton's cache on disk for later runs.
@triton.autotune(configs=_configs(), key=["keys", "D", "HAS_MASK", "LOG2_P_SCALE", "K_PER_TOKEN"],
                 cache_results=True)
@triton.jit
def _attention_kernel(q_ptr, qs_ptr, k_ptr, ks_ptr, v_ptr, vs_ptr, out_ptr, mask_ptr,
                      so_b, so_l, so_h, sm_b, sm_q, sm_k, heads, queries, keys, whole, padded_q, padded_k,
                      HAS_MASK: tl.constexpr, LOG2_P_SCALE: tl.constexpr, K_PER_TOKEN: tl.constexpr,
                      D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    block, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // heads, bh % heads
    rows = block * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, D)
    q = tl.load(q_ptr + (bh * padded_q + rows[:, None]) * D + dims[None, :])
    q_scale = tl.load(qs_ptr + bh * padded_q + rows)
    k_ptr += bh * padded_k * D
    ks_ptr += bh * (padded_k if K_PER_TOKEN else padded_k // K_BLOCK)
    v_ptr += bh * D * padded_k
    mask_ptr += b * sm_b

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    for start in range(0, whole, BLOCK_N):   # whole: a multiple of PAD, so of BLOCK_N
        s = _scores(q, k_ptr, ks_ptr, start, D, BLOCK_N, K_PER_TOKEN)
        acc, m_i, l_i = _update(acc, m_i, l_i, s, q_scale, ks_ptr, v_ptr, mask_ptr, sm_q, sm_k, start, rows,
                                queries, keys, padded_k, D, BLOCK_N, False, HAS_MASK, LOG2_P_SCALE, K_PER_TOKEN)
    for start in range(whole, keys, BLOCK_N):   # the last keys, fewer than PAD: masked tiles
        s = _scores(q, k_ptr, ks_ptr, start, D, BLOCK_N, K_PER_TOKEN)
        acc, m_i, l_i = _update(acc, m_i, l_i, s, q_scale, ks_ptr, v_ptr, mask_ptr, sm_q, sm_k, start, rows,
                                queries, keys, padded_k, D, BLOCK_N, True, HAS_MASK, LOG2_P_SCALE, K_PER_TOKEN)

    v_scale = tl.load(vs_ptr + bh * D + dims)
    out = acc * v_scale[None, :] / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(out_ptr + b * so_b + rows[:, None] * so_l + h * so_h + dims[None, :],
             out.to(out_ptr.dtype.element_ty), mask=rows[:, None] < queries)


def _padded(n: int) -> int:
    return -(-n // PAD) * PAD


def _int8(x: torch.Tensor, factor: float, mean: torch.Tensor | None, per_row: bool
          ) -> tuple[torch.Tensor, torch.Tensor]:
    b, length, heads, d = x.shape
    padded = _padded(length)
    rows = QUANT_ROWS if per_row else K_BLOCK.value
    out = torch.empty(b * heads, padded, d, dtype=torch.int8, device=x.device)
    scale = torch.empty(b * heads, padded if per_row else padded // rows, dtype=torch.float32, device=x.device)
    _quantize_rows[(padded // rows, b * heads)](x, mean if mean is not None else scale, out, scale, x.stride(0),
                                                x.stride(1), x.stride(2), heads, length, padded, factor,
                                                SUBTRACT_MEAN=mean is not None, PER_ROW=per_row, ROWS=rows, D=d)
    return out, scale


def _columns(v: torch.Tensor, fp8: bool) -> tuple[torch.Tensor, torch.Tensor]:
    b, length, heads, d = v.shape
    padded = _padded(length)
    if fp8:
        scale = torch.maximum(v.amax(dim=1), -v.amin(dim=1)).float().clamp_min(1e-12) / FP8_MAX   # [B, H, D]
    else:
        scale = torch.ones(b, heads, d, dtype=torch.float32, device=v.device)
    out = torch.empty(b * heads, d, padded, dtype=torch.float8_e4m3fn if fp8 else v.dtype, device=v.device)
    _quantize_columns[(padded // QUANT_ROWS, b * heads)](v, scale, out, v.stride(0), v.stride(1), v.stride(2),
                                                            heads, length, padded, ROWS=QUANT_ROWS, D=d)
    return out, scale


def _mask_strides(mask: torch.Tensor | None, batch: int, lq: int, lk: int
                  ) -> tuple[torch.Tensor | None, tuple[int, int, int]]:
    if mask is None:
        return None, (0, 0, 0)
    m = mask.to(torch.uint8)
    if m.dim() == 2:
        m = m[None, None]
    m = m.expand(batch, 1, lq, lk)   # a mask shared by the batch gets batch stride 0
    return m, (m.stride(0), m.stride(2), m.stride(3))


_TUNED: set[tuple] = set()


def int8_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                   pv: str = "fp8", config: dict | None = None) -> torch.Tensor:
    """softmax(q·kᵀ/√D)·v with INT8 Q·Kᵀ and `pv` ("fp8" or "16bit") P·V; [B, L, H, D] in and out. `config`: a
    fixed choice of BLOCK_M, BLOCK_N (and num_warps, num_stages) instead of the autotuned one."""
    with torch.cuda.device(q.device.index if q.is_cuda else -1):   # Triton launches on the current device
        b, lq, heads, d = q.shape
        lk = k.shape[1]
        k_per_token = pv == "16bit"
        q8, q_scale = _int8(q, LOG2E / math.sqrt(d), None, per_row=True)
        k8, k_scale = _int8(k, 1.0, k.mean(dim=1, dtype=torch.float32), per_row=k_per_token)
        v8, v_scale = _columns(v, fp8=pv == "fp8")
        out = torch.empty_like(q, memory_format=torch.contiguous_format)
        m, (sm_b, sm_q, sm_k) = _mask_strides(mask, b, lq, lk)
        tuning = (lk, d, m is not None, pv)
        kernel = _attention_kernel if config is None else _attention_kernel.fn
        if config is None and tuning not in _TUNED:
            _TUNED.add(tuning)
            log.info("OpenReel: 8-bit attention for %d keys: choosing its tiles (once per video size; cached on disk)",
                     lk)
        grid = lambda meta: (triton.cdiv(lq, meta["BLOCK_M"]), b * heads)  # noqa: E731
        kernel[grid](q8, q_scale, k8, k_scale, v8, v_scale, out, m if m is not None else q_scale,
                     out.stride(0), out.stride(1), out.stride(2), sm_b, sm_q, sm_k, heads, lq, lk, lk // PAD * PAD,
                     q8.shape[1], k8.shape[1], HAS_MASK=m is not None,
                     LOG2_P_SCALE=LOG2_FP8_MAX if pv == "fp8" else 0.0, K_PER_TOKEN=k_per_token, D=d, **(config or {}))
        return out
