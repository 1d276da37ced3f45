"""Step-LLM, Step-Video's first text encoder, in plain PyTorch: a causal decoder whose last hidden state is the text.

Architecture (stepfun-ai/Step-Video-T2V `stepvideo/text_encoder/stepllm.py`, `Step1Model`): a token embedding, pre-norm
layers of grouped-query attention and a SwiGLU FFN with RMSNorms, no biases, no final norm. Per layer one fused
`attention.wqkv` (all query heads, then per key/value group [k_g | v_g]), `attention.wo`, one fused
`feed_forward.w1` ([gate | up]) and `feed_forward.w2`. The FFN width is the config's `ffn_hidden_size` rounded up to
a multiple of 256; files store the rounded width, which is read from their shapes. Parameter names are the official
ones; the projections are built with `ops.linear`.

Positions: the Python code has none; they live in the closed CUDA kernel the attention calls
(`torch.ops.Optimus.fwd`). We run the attention StepFun's own Step1 modeling code falls back to when that kernel is
missing (`build_alibi_cache` in the `modeling_step1.py` StepFun ships with its Step-Audio models): causal, with a
square-root ALiBi bias −slope_h·√(i − j) on query i, key j ≤ i, the slopes of `alibi_slopes`.

The attention mask is ignored, as in the official code (right padding: real tokens never see padding); every row,
padding included, is returned. Numerics: every parameter takes the compute dtype; the norms compute in float32.
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
FFN_MULTIPLE = 256   # the FFN width is ffn_hidden_size rounded up to a multiple of this
TEXT_LENGTH = 320    # the caption server's max_length: BOS + 318 prompt tokens + EOS, padded


def ffn_width(ffn_hidden_size: int) -> int:
    """The FFN width a config's `ffn_hidden_size` builds (rounded up to a multiple of 256)."""
    return FFN_MULTIPLE * math.ceil(ffn_hidden_size / FFN_MULTIPLE)


@dataclass(frozen=True)
class StepLLMSpec:
    """Step-LLM's shapes (read from a checkpoint and its config.json). The defaults only shape stand-ins in tests."""
    kind: ClassVar[str] = "stepllm"
    vocab_size: int = 65536
    hidden_size: int = 6144
    ffn_size: int = 16384       # the built (rounded) FFN width
    num_layers: int = 48
    num_heads: int = 48
    num_groups: int = 4         # key/value groups
    eps: float = 1e-5

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def description(self) -> str:
        return f"Step-LLM ({self.num_layers} layers, width {self.hidden_size})"


def alibi_slopes(heads: int) -> torch.Tensor:
    """Per-head ALiBi slopes (float32): with n the largest power of two ≤ heads, 2^(−8k/n) for k = 1..n, then for
    the remaining heads 2^(−4k/n) for odd k = 1, 3, 5, …"""
    n = 2 ** math.floor(math.log2(heads))
    slopes = torch.pow(2.0 ** (-8.0 / n), torch.arange(1, n + 1, dtype=torch.float32))
    extra = torch.pow(2.0 ** (-4.0 / n), torch.arange(1, 1 + 2 * (heads - n), 2, dtype=torch.float32))
    return torch.cat([slopes, extra])


def sqrt_alibi_bias(length: int, heads: int, device: torch.device | None, dtype: torch.dtype) -> torch.Tensor:
    """[heads, L, L] additive attention bias: −slope_h·√(i − j) for key j ≤ query i, −inf above the diagonal; built
    in float32 and cast to `dtype`, as the fallback casts it to the queries' dtype."""
    pos = torch.arange(length, device=device)
    distance = (pos[:, None] - pos[None, :]).float()
    bias = -distance.clamp(min=0).sqrt() * alibi_slopes(heads).to(device)[:, None, None]
    return bias.masked_fill(distance < 0, float("-inf")).to(dtype)


class _Attention(nn.Module):
    def __init__(self, spec: StepLLMSpec, ops: Ops):
        super().__init__()
        self.heads, self.groups, self.head_dim = spec.num_heads, spec.num_groups, spec.head_dim
        self.wqkv = ops.linear(spec.hidden_size, spec.hidden_size + 2 * spec.num_groups * spec.head_dim, bias=False)
        self.wo = ops.linear(spec.hidden_size, spec.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x [B, L, width]; bias [heads, L, L] (causal square-root ALiBi)."""
        b, n, width = x.shape
        q, kv = self.wqkv(x).split([width, 2 * self.groups * self.head_dim], dim=-1)
        q = q.view(b, n, self.heads, self.head_dim).transpose(1, 2)
        k, v = kv.view(b, n, self.groups, 2 * self.head_dim).transpose(1, 2).chunk(2, dim=-1)
        per_group = self.heads // self.groups  # each key/value group serves this many consecutive query heads
        k, v = k.repeat_interleave(per_group, dim=1), v.repeat_interleave(per_group, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # scores scaled by head_dim^-0.5
        return self.wo(out.transpose(1, 2).flatten(2))


class _FeedForward(nn.Module):
    def __init__(self, spec: StepLLMSpec, ops: Ops):
        super().__init__()
        self.w1 = ops.linear(spec.hidden_size, 2 * spec.ffn_size, bias=False)
        self.w2 = ops.linear(spec.ffn_size, spec.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w1(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


class _Layer(nn.Module):
    def __init__(self, spec: StepLLMSpec, ops: Ops):
        super().__init__()
        self.attention_norm = RMSNorm(spec.hidden_size, spec.eps)
        self.attention = _Attention(spec, ops)
        self.ffn_norm = RMSNorm(spec.hidden_size, spec.eps)
        self.feed_forward = _FeedForward(spec, ops)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), bias)
        return x + self.feed_forward(self.ffn_norm(x))


class StepLLMTextEncoder(nn.Module):
    """Token ids → Step-LLM's last hidden state (what Step-Video's DiT reads)."""

    def __init__(self, spec: StepLLMSpec, ops: Ops = PLAIN):
        super().__init__()
        self.spec = spec
        self.tok_embeddings = nn.ModuleDict({"word_embeddings": nn.Embedding(spec.vocab_size, spec.hidden_size)})
        self.transformer = nn.ModuleDict({"layers": nn.ModuleList(_Layer(spec, ops) for _ in range(spec.num_layers))})

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """ids [B, L] → hidden states [B, L, width], padding rows included (`mask` is ignored, as officially)."""
        x = self.tok_embeddings.word_embeddings(ids)
        bias = sqrt_alibi_bias(ids.shape[1], self.spec.num_heads, ids.device, x.dtype)
        for layer in self.transformer.layers:
            x = layer(x, bias)
        return x
