"""HunyuanCLIP, Step-Video's second text encoder: the BERT text tower of HunyuanDiT's bilingual CLIP, run through
transformers' `BertModel` (as the official `stepvideo/text_encoder/clip.py` does), thinly wrapped.

What Step-Video reads is `last_hidden_state` [B, 77, width] of the prompt padded to 77 tokens with the attention
mask applied (the padding rows are computed and kept; the DiT does not mask them out). The pooler is not built.
Parameter names are `BertModel`'s under `bert.` (the loader adds the prefix to files that lack it). Position and
token-type ids are passed explicitly (positions 0..L-1, token type 0), so the embedding's id buffers are not kept.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn

from ..common.ops import PLAIN, Ops

FP32_PARAMS = ""
TEXT_LENGTH = 77


@dataclass(frozen=True)
class BertSpec:
    """A BERT text encoder's shapes (read from a checkpoint and its config.json); defaults: HunyuanCLIP's width."""
    kind: ClassVar[str] = "hunyuan_clip"
    vocab_size: int = 47020
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_layers: int = 24
    num_heads: int = 16
    max_positions: int = 512
    type_vocab_size: int = 2
    eps: float = 1e-12
    hidden_act: str = "gelu"

    @property
    def description(self) -> str:
        return f"HunyuanCLIP (a BERT text encoder, {self.num_layers} layers, width {self.hidden_size})"

    def config(self):
        """The transformers `BertConfig` of this spec."""
        from transformers import BertConfig

        return BertConfig(vocab_size=self.vocab_size, hidden_size=self.hidden_size,
                          intermediate_size=self.intermediate_size, num_hidden_layers=self.num_layers,
                          num_attention_heads=self.num_heads, max_position_embeddings=self.max_positions,
                          type_vocab_size=self.type_vocab_size, layer_norm_eps=self.eps, hidden_act=self.hidden_act,
                          attn_implementation="sdpa")


class BertTextEncoder(nn.Module):
    """Token ids and attention mask → BertModel's `last_hidden_state`. `ops` is unused: transformers builds the
    linears (fp8 files are dequantized to the compute dtype at load)."""

    def __init__(self, spec: BertSpec, ops: Ops = PLAIN):
        super().__init__()
        from transformers import BertModel

        self.spec = spec
        self.bert = BertModel(spec.config(), add_pooling_layer=False)
        for name in ("position_ids", "token_type_ids"):
            self.bert.embeddings.register_buffer(name, None, persistent=False)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ids, mask [B, L] (mask 0: padding) → hidden states [B, L, width], padding rows included."""
        positions = torch.arange(ids.shape[1], device=ids.device)[None].expand_as(ids)
        return self.bert(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids),
                         position_ids=positions).last_hidden_state
