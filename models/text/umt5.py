"""umT5-XXL, Wan's text encoder, on transformers' `UMT5EncoderModel`, with Wan's output semantics.

Architecture (official `wan/modules/t5.py` `umt5_xxl`): vocab 256384, d_model 4096, 64 heads of 64, gated-GELU (tanh)
FFN 10240, 24 layers, 32 relative-position buckets with a bias table in every layer, RMS norms (eps 1e-6), no
attention scaling. Parameter names are transformers' (= ComfyUI's text-encoder files); the loader maps the official
names onto them. Every parameter, norms included, takes the compute dtype, as in the official model.

Wan's encoding: prompts padded to 512 tokens, the encoder run with the padding mask, and the rows past each
prompt's length zeroed (the official code trims them and the DiT pads the trimmed context back with zeros).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import UMT5Config, UMT5EncoderModel
from transformers.models.umt5.modeling_umt5 import UMT5DenseGatedActDense

# Linear weights that may be stored in fp8 (attention and FFN projections).
WEIGHT_PARAMS = r"encoder\.block\.\d+\.layer\.(0\.SelfAttention\.[qkvo]|1\.DenseReluDense\.(wi_0|wi_1|wo))\.weight"
FP32_PARAMS = ""


@dataclass(frozen=True)
class UMT5Spec:
    """An umT5 encoder's shapes (read from a checkpoint); the defaults are umT5-XXL's."""
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

    def hf_config(self) -> UMT5Config:
        return UMT5Config(
            vocab_size=self.vocab_size, d_model=self.d_model, d_kv=self.d_kv, d_ff=self.d_ff,
            num_heads=self.num_heads, num_layers=self.num_layers, relative_attention_num_buckets=self.num_buckets,
            relative_attention_max_distance=self.max_distance, layer_norm_epsilon=self.eps,
            feed_forward_proj="gated-gelu", dropout_rate=0.0, is_encoder_decoder=False, use_cache=False)


class _GatedGeluFFN(UMT5DenseGatedActDense):
    """transformers' gated-GELU FFN minus its cast of the activations to `wo`'s storage dtype, which would feed
    fp8 activations to an fp8-stored `wo` (OpenReel's CastLinear computes in the activations' dtype)."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden = self.act(self.wi_0(hidden_states)) * self.wi_1(hidden_states)
        return self.wo(self.dropout(hidden))


class UMT5TextEncoder(UMT5EncoderModel):
    """`UMT5EncoderModel` with Wan's masked encoding (`encode`) and fp8-capable FFNs."""

    def __init__(self, spec: UMT5Spec):
        super().__init__(spec.hf_config())
        self.spec = spec
        # One embedding module for both names, so filling `shared.weight` fills the encoder's lookup too.
        self.encoder.embed_tokens = self.shared
        for block in self.encoder.block:
            block.layer[-1].DenseReluDense.__class__ = _GatedGeluFFN

    @torch.no_grad()
    def encode(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids, mask [B, L] → (context [B, L, d_model] with rows past each length zeroed, lengths [B])."""
        lengths = mask.gt(0).sum(dim=1)
        hidden = self(input_ids=ids, attention_mask=mask).last_hidden_state
        valid = torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths[:, None]
        return hidden.masked_fill(~valid[..., None], 0.0), lengths
