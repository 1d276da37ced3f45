"""umT5-XXL, Wan's text encoder, in plain PyTorch, with Wan's output semantics.

Architecture (official `wan/modules/t5.py` `umt5_xxl`; transformers' `UMT5EncoderModel` is the same network):
vocab 256384, d_model 4096, 64 heads of 64, gated-GELU (tanh) FFN 10240, 24 pre-norm layers, each with its own
relative-position bias table (32 bidirectional buckets, log-spaced up to 128 tokens), RMS norms (eps 1e-6) and a
final one, no attention scaling. Parameter names are transformers' (= ComfyUI's text-encoder files); the loader maps
the official names onto them. The attention and FFN projections are built with `ops.linear`.

Numerics (as the official model): every parameter, norms included, takes the compute dtype and the activations run
in it; norms compute their statistics in float32; attention is SDPA with the position bias (minimum value at padding
keys) as its additive mask, as transformers computes it (results bit-equal to its `UMT5EncoderModel`); fp16
activations that overflow are clamped back after each residual add.

Wan's encoding: prompts padded to 512 tokens, the encoder run with the padding mask, and the rows past each
prompt's length zeroed (the official code trims them and the DiT pads the trimmed context back with zeros).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..common.ops import PLAIN, Ops
from .layers import RMSNorm

FP32_PARAMS = ""


@dataclass(frozen=True)
class UMT5Spec:
    """An umT5 encoder's shapes (read from a checkpoint); the defaults are umT5-XXL's."""
    kind: ClassVar[str] = "umt5"   # which text encoder a handle holds (model_loaders/text_encoder.py)
    vocab_size: int = 256384
    d_model: int = 4096
    d_kv: int = 64
    d_ff: int = 10240
    num_heads: int = 64
    num_layers: int = 24
    num_buckets: int = 32
    max_distance: int = 128
    eps: float = 1e-6

    @property
    def description(self) -> str:
        if self == UMT5Spec():
            return "umT5-XXL"
        return f"an umT5 encoder ({self.num_layers} layers, width {self.d_model})"


def relative_position_buckets(length: int, num_buckets: int, max_distance: int,
                              device: torch.device | None = None) -> torch.Tensor:
    """[length, length] bucket of each (query, key) pair, bidirectional T5 style.

    Half the buckets per direction (keys after the query take the upper half). Within a half, the first quarter of
    the buckets holds one distance each; longer distances share buckets spaced logarithmically up to
    `max_distance`, and everything beyond falls in the last one.
    """
    pos = torch.arange(length, device=device)
    offset = pos[None, :] - pos[:, None]
    half = num_buckets // 2
    exact = half // 2
    distance = offset.abs()
    # Same operation order as the reference, so distances on a bucket boundary land in the same bucket.
    ratio = distance.clamp(min=exact).float() / exact
    far = exact + (torch.log(ratio) / math.log(max_distance / exact) * (half - exact)).long()
    near_or_far = torch.where(distance < exact, distance, far.clamp(max=half - 1))
    return (offset > 0).long() * half + near_or_far


def _clamp_fp16(x: torch.Tensor) -> torch.Tensor:
    """fp16 activations that overflowed brought back just inside the fp16 range (the reference's safeguard)."""
    if x.dtype == torch.float16 and torch.isinf(x).any():
        limit = torch.finfo(torch.float16).max - 1000
        x = x.clamp(-limit, limit)
    return x


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GELU, tanh approximation, written out in the reference's order of operations (bit-equal results)."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class _SelfAttention(nn.Module):
    def __init__(self, spec: UMT5Spec, ops: Ops):
        super().__init__()
        inner = spec.num_heads * spec.d_kv
        self.num_heads = spec.num_heads
        self.q, self.k, self.v = (ops.linear(spec.d_model, inner, bias=False) for _ in range(3))
        self.o = ops.linear(inner, spec.d_model, bias=False)
        self.relative_attention_bias = nn.Embedding(spec.num_buckets, spec.num_heads)

    def forward(self, x: torch.Tensor, buckets: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """x [B, L, d_model]; buckets [L, L]; keep [B, 1, 1, L] (False: a padding key)."""
        b, n, _ = x.shape
        q, k, v = (proj(x).view(b, n, self.num_heads, -1).transpose(1, 2) for proj in (self.q, self.k, self.v))
        bias = self.relative_attention_bias(buckets).permute(2, 0, 1).unsqueeze(0).to(q.dtype)
        mask = torch.where(keep, bias, torch.finfo(q.dtype).min).contiguous()
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)  # T5 does not scale the scores
        return self.o(out.transpose(1, 2).flatten(2))


class _GatedGeluFFN(nn.Module):
    def __init__(self, spec: UMT5Spec, ops: Ops):
        super().__init__()
        self.wi_0 = ops.linear(spec.d_model, spec.d_ff, bias=False)
        self.wi_1 = ops.linear(spec.d_model, spec.d_ff, bias=False)
        self.wo = ops.linear(spec.d_ff, spec.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The product goes to `wo` as is, in the activations' dtype (never cast to `wo`'s storage dtype, which may be
        # fp8: a CastLinear computes in its input's dtype).
        return self.wo(_gelu_tanh(self.wi_0(x)) * self.wi_1(x))


class _AttentionLayer(nn.Module):
    def __init__(self, spec: UMT5Spec, ops: Ops):
        super().__init__()
        self.layer_norm = RMSNorm(spec.d_model, spec.eps)
        self.SelfAttention = _SelfAttention(spec, ops)

    def forward(self, x: torch.Tensor, buckets: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return _clamp_fp16(x + self.SelfAttention(self.layer_norm(x), buckets, keep))


class _FeedForwardLayer(nn.Module):
    def __init__(self, spec: UMT5Spec, ops: Ops):
        super().__init__()
        self.layer_norm = RMSNorm(spec.d_model, spec.eps)
        self.DenseReluDense = _GatedGeluFFN(spec, ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _clamp_fp16(x + self.DenseReluDense(self.layer_norm(x)))


class _Block(nn.Module):
    def __init__(self, spec: UMT5Spec, ops: Ops):
        super().__init__()
        self.layer = nn.ModuleList([_AttentionLayer(spec, ops), _FeedForwardLayer(spec, ops)])

    def forward(self, x: torch.Tensor, buckets: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return self.layer[1](self.layer[0](x, buckets, keep))


class _Encoder(nn.Module):
    def __init__(self, spec: UMT5Spec, ops: Ops):
        super().__init__()
        self.spec = spec
        self.block = nn.ModuleList(_Block(spec, ops) for _ in range(spec.num_layers))
        self.final_layer_norm = RMSNorm(spec.d_model, spec.eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        buckets = relative_position_buckets(x.shape[1], self.spec.num_buckets, self.spec.max_distance, x.device)
        keep = mask.ne(0)[:, None, None, :]
        for block in self.block:
            x = block(x, buckets, keep)
        return self.final_layer_norm(x)


class UMT5TextEncoder(nn.Module):
    """The umT5 encoder (`shared` token embedding, `encoder` stack) with Wan's masked encoding (`encode`)."""

    def __init__(self, spec: UMT5Spec, ops: Ops = PLAIN):
        super().__init__()
        self.spec = spec
        self.shared = nn.Embedding(spec.vocab_size, spec.d_model)
        self.encoder = _Encoder(spec, ops)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids, mask [B, L] → hidden states [B, L, d_model] of every position, padding included."""
        return self.encoder(self.shared(ids), mask)

    @torch.no_grad()
    def encode(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids, mask [B, L] → (context [B, L, d_model] with rows past each length zeroed, lengths [B])."""
        lengths = mask.gt(0).sum(dim=1)
        hidden = self(ids, mask)
        valid = torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths[:, None]
        return hidden.masked_fill(~valid[..., None], 0.0), lengths
