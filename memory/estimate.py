"""Memory estimates the samplers and the VRAM planner share."""
from __future__ import annotations


def wan_activation_bytes(dim: int, ffn_dim: int, tokens: int, batch: int = 1, text_tokens: int = 512) -> int:
    """Upper estimate of a Wan DiT forward's working memory beyond its weights (16-bit compute).

    Per token: about four float32 copies of the residual stream alive at once (the stream, its normalized and
    modulated copy, the gated branch in float32 and the new sum: 16 × dim bytes) and the FFN hidden state twice in
    the compute dtype (the linear's output and the GELU's: 4 × ffn bytes); plus the padded text context.
    Calibrated on an H200 (bench/RESULTS.md, Wan 14B, dim 5120, batch 1): measured 4.1 GiB at 32,760 tokens and
    9.4 GiB at 75,600 tokens; this gives 4.2 and 9.7 GiB.
    """
    per_sample = tokens * (dim * 16 + ffn_dim * 4) + text_tokens * dim * 4 * 4
    return batch * per_sample
