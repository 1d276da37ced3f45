"""The CLIP text tower (CLIP-L, `openai/clip-vit-large-patch14`) in plain PyTorch: HunyuanVideo's pooled text vector.

Architecture (transformers' `CLIPTextModel`): vocab 49408, 77 learned positions, width 768, 12 pre-norm causal
layers of 12 heads (scores scaled by head_dim^-0.5), MLP 3072 with quick-GELU, LayerNorms (eps 1e-5) and a final
one. The blocks are the CLIP vision tower's (`models/vision/clip_vision.py`), run causally. Parameter names are
transformers' without `text_model.` (transformers 5 saves them so; the loader strips the prefix real files have).

Pooled output (transformers' `pooler_output`, what HunyuanVideo feeds its DiT): the final-normed hidden state at
the end-of-text token. Configs written before transformers fixed CLIP's `eos_token_id` say 2 (openai's files do, and
files without a config are read so): the end is then the position of the largest id, which is `<|endoftext|>`
(49407, the last id of the vocabulary); other configs name the id, and its first position is taken. For prompts
from CLIP's tokenizer both rules pick the same token.

Numerics: every parameter takes the compute dtype; the LayerNorms compute in float32 and cast back.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn

from ..common.ops import PLAIN, Ops
from ..vision.clip_vision import CLIPLayer, FloatLayerNorm

FP32_PARAMS = ""
LEGACY_EOS_ID = 2   # the `eos_token_id` of openai's configs: pool at the largest id


@dataclass(frozen=True)
class CLIPTextSpec:
    """A CLIP text tower's shapes (read from a checkpoint); the defaults are CLIP-L's."""
    kind: ClassVar[str] = "clip_text"
    vocab_size: int = 49408
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_layers: int = 12
    num_heads: int = 12
    max_positions: int = 77
    eps: float = 1e-5
    hidden_act: str = "quick_gelu"
    eos_token_id: int = LEGACY_EOS_ID

    @property
    def description(self) -> str:
        if self == CLIPTextSpec(eos_token_id=self.eos_token_id):  # either pooling rule
            return "CLIP-L (text)"
        return f"a CLIP text encoder ({self.num_layers} layers, width {self.hidden_size})"


def end_positions(ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """[B] position of each sequence's end-of-text token (see the module docstring for the two rules)."""
    if eos_token_id == LEGACY_EOS_ID:
        return ids.argmax(dim=-1)
    return ids.eq(eos_token_id).int().argmax(dim=-1)


class _Embeddings(nn.Module):
    def __init__(self, spec: CLIPTextSpec):
        super().__init__()
        self.token_embedding = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.position_embedding = nn.Embedding(spec.max_positions, spec.hidden_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.token_embedding(ids) + self.position_embedding.weight[: ids.shape[1]]


class CLIPTextEncoder(nn.Module):
    """Token ids → (final-normed hidden states, pooled vector), as transformers' `CLIPTextModel`."""

    def __init__(self, spec: CLIPTextSpec, ops: Ops = PLAIN):
        super().__init__()
        self.spec = spec
        self.embeddings = _Embeddings(spec)
        self.encoder = nn.ModuleDict({"layers": nn.ModuleList(CLIPLayer(spec, ops) for _ in range(spec.num_layers))})
        self.final_layer_norm = FloatLayerNorm(spec.hidden_size, eps=spec.eps)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids [B, L ≤ max_positions] → (hidden [B, L, width], pooled [B, width])."""
        x = self.embeddings(ids)
        for layer in self.encoder.layers:
            x = layer(x, causal=True)
        x = self.final_layer_norm(x)
        return x, x[torch.arange(x.shape[0], device=x.device), end_positions(ids, self.spec.eos_token_id)]
