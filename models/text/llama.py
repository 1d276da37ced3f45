"""The Llama-3 decoder HunyuanVideo reads its text from, in plain PyTorch, with HunyuanVideo's output semantics.

Architecture (the language model of `xtuner/llava-llama-3-8b-v1_1-transformers`, i.e. Llama-3-8B; transformers'
`LlamaModel` is the same network): vocab 128320 rows (128256 Llama-3 tokens, LLaVA's `<unk>`, `<image>`, `<pad>`,
padded to a multiple of 64), width 4096, 32 pre-norm layers, grouped-query attention with 32 query and 8 key/value
heads of 128, rotary positions (half-split, θ 500000), RMSNorm (eps 1e-5), SwiGLU FFN 14336, no biases.

HunyuanVideo reads the hidden state after layer 30 of 32 (`hidden_state_skip_layer=2`: transformers'
`hidden_states[-3]`) without the final norm, so only the first `num_layers - skip_layers` layers are built, loaded
and run; the last two, the final norm and the LM head are never read from the file. Parameter names are
transformers' `LlamaModel` names; the attention and FFN projections are built with `ops.linear`.

Numerics (as transformers): every parameter takes the compute dtype and the activations run in it; the norms
compute their statistics in float32; the rotary tables are computed in float32 and cast to the compute dtype.
Attention is causal with padding keys masked; with right padding real tokens never see a padding key.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..common.ops import PLAIN, Ops
from .layers import RMSNorm

FP32_PARAMS = ""

# HunyuanVideo's `dit-llm-encode-video` prompt template (hyvideo/constants.py); `{}` takes the prompt.
VIDEO_TEMPLATE = (
    "<|start_header_id|>system<|end_header_id|>\n\nDescribe the video by detailing the following aspects: "
    "1. The main content and theme of the video."
    "2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects."
    "3. Actions, events, behaviors temporal relationships, physical movement changes of the objects."
    "4. background environment, light, style and atmosphere."
    "5. camera angles, movements, and transitions used in the video:<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
)
TEMPLATE_TOKENS = 95   # `crop_start`: <|begin_of_text|> and the template before the prompt, in Llama-3 tokens
PROMPT_TOKENS = 256    # `text_len`: the prompt's share of the sequence (the encoder sees 95 + 256 tokens)


@dataclass(frozen=True)
class LlamaSpec:
    """A Llama decoder's shapes (read from a checkpoint; `num_layers` counts every layer in the file); the
    defaults are LLaVA-Llama-3-8B's. `skip_layers`: the last layers HunyuanVideo does not read."""
    kind: ClassVar[str] = "llama"
    vocab_size: int = 128320
    hidden_size: int = 4096
    intermediate_size: int = 14336
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 8
    head_dim: int = 128
    rope_theta: float = 500000.0
    eps: float = 1e-5
    skip_layers: int = 2

    @property
    def description(self) -> str:
        if self == LlamaSpec():
            return "LLaVA-Llama-3-8B (its Llama-3 language model)"
        return f"a Llama decoder ({self.num_layers} layers, width {self.hidden_size})"

    @property
    def run_layers(self) -> int:
        return self.num_layers - self.skip_layers


def rotary_tables(length: int, head_dim: int, theta: float, device: torch.device | None,
                  dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) [length, head_dim] of positions 0..length-1, each frequency twice (once per half), in `dtype`."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.int64).float() / head_dim))
    angles = torch.arange(length, device=device).float()[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding, half-split pairs (dimension i rotates with i + head_dim/2)."""
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], dim=-1) * sin


class _Attention(nn.Module):
    def __init__(self, spec: LlamaSpec, ops: Ops):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = spec.num_heads, spec.num_kv_heads, spec.head_dim
        self.q_proj = ops.linear(spec.hidden_size, spec.num_heads * spec.head_dim, bias=False)
        self.k_proj = ops.linear(spec.hidden_size, spec.num_kv_heads * spec.head_dim, bias=False)
        self.v_proj = ops.linear(spec.hidden_size, spec.num_kv_heads * spec.head_dim, bias=False)
        self.o_proj = ops.linear(spec.num_heads * spec.head_dim, spec.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], keep: torch.Tensor) -> torch.Tensor:
        """x [B, L, width]; rope (cos, sin) [L, head_dim]; keep [B, 1, L, L] (True: the query sees the key)."""
        b, n, _ = x.shape
        q = self.q_proj(x).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, n, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = _rotate(q, *rope), _rotate(k, *rope)
        groups = self.heads // self.kv_heads  # each key/value head serves this many query heads
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)  # scores scaled by head_dim^-0.5
        return self.o_proj(out.transpose(1, 2).flatten(2))


class _SwiGLU(nn.Module):
    def __init__(self, spec: LlamaSpec, ops: Ops):
        super().__init__()
        self.gate_proj = ops.linear(spec.hidden_size, spec.intermediate_size, bias=False)
        self.up_proj = ops.linear(spec.hidden_size, spec.intermediate_size, bias=False)
        self.down_proj = ops.linear(spec.intermediate_size, spec.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class _Layer(nn.Module):
    def __init__(self, spec: LlamaSpec, ops: Ops):
        super().__init__()
        self.input_layernorm = RMSNorm(spec.hidden_size, spec.eps)
        self.self_attn = _Attention(spec, ops)
        self.post_attention_layernorm = RMSNorm(spec.hidden_size, spec.eps)
        self.mlp = _SwiGLU(spec, ops)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], keep: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope, keep)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaTextEncoder(nn.Module):
    """Token ids → the hidden state HunyuanVideo reads (after `spec.run_layers` layers, no final norm)."""

    def __init__(self, spec: LlamaSpec, ops: Ops = PLAIN):
        super().__init__()
        self.spec = spec
        self.embed_tokens = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.layers = nn.ModuleList(_Layer(spec, ops) for _ in range(spec.run_layers))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids, mask [B, L] (mask 0: a padding token) → hidden states [B, L, width], padding rows included."""
        x = self.embed_tokens(ids)
        n = ids.shape[1]
        causal = torch.ones(n, n, dtype=torch.bool, device=ids.device).tril()
        keep = causal[None, None] & mask.ne(0)[:, None, None, :]
        rope = rotary_tables(n, self.spec.head_dim, self.spec.rope_theta, ids.device, x.dtype)
        for layer in self.layers:
            x = layer(x, rope, keep)
        return x
