"""umT5 text-encoder loading: layouts, spec from shapes, tokenizer, behind a `TextEncoderHandle`.

Layouts read: the official `models_t5_umt5-xxl-enc-bf16.pth` (`token_embedding`, `blocks.N.attn.q`, ...), and
transformers / ComfyUI names (`shared.weight`, `encoder.block.N.layer.0.SelfAttention.q.weight`, ...; optionally
prefixed; bf16, fp8_e4m3fn, or fp8_e4m3fn_scaled with `scale_weight`), as single files, sharded sets or HF folders
(a full seq2seq umT5 loads its encoder). Anything else is a DetectionError that says what the file is and which
loader takes it (model_loaders/identify.py).
"""
from __future__ import annotations

import re
from pathlib import Path

import torch.nn as nn

from .. import runtime
from ..errors import CheckpointError, DetectionError
from ..handles import TextEncoderHandle
from ..models.common.family import find_prefix, keep_under
from ..models.text.tokenizer import find_tokenizer, load_tokenizer
from ..models.text.umt5 import FP32_PARAMS, UMT5Spec, UMT5TextEncoder
from .build import COMPUTE_DTYPES, materialize, resolve_compute_dtype
from .checkpoint import Checkpoint, config_value, layer_count, open_checkpoint
from .core import load, register_builder, stamps
from .identify import T5_HF_ANCHORS, UMT5_OFFICIAL_ANCHORS, expect

DTYPE_CHOICES = ("auto", "bf16", "fp16", "fp32", "fp8_e4m3fn", "fp8_e4m3fn_scaled")
SUPPORTED = ("supported: umT5-XXL (models_t5_umt5-xxl-enc-bf16.pth, ComfyUI's umt5_xxl_*.safetensors, or a "
             "transformers umT5 folder)")


def encoder_dtypes(dtype: str) -> tuple[str, str]:
    """The encoder loaders' single dtype choice → (weight dtype, compute dtype). auto: fp8 files stay fp8, computed
    in the one "auto" compute dtype; a 16/32-bit name stores and computes so; fp8 names store fp8."""
    if dtype not in DTYPE_CHOICES:
        raise ValueError(f"dtype must be one of {DTYPE_CHOICES}, not {dtype!r}")
    compute = dtype if dtype in COMPUTE_DTYPES else resolve_compute_dtype("auto", runtime.torch_device())
    return dtype, compute


_UMT5_OFFICIAL_RULES = [(re.compile(a), b) for a, b in (
    (r"^token_embedding\.", "shared."),
    (r"^blocks\.(\d+)\.norm1\.", r"encoder.block.\1.layer.0.layer_norm."),
    (r"^blocks\.(\d+)\.attn\.([qkvo])\.", r"encoder.block.\1.layer.0.SelfAttention.\2."),
    (r"^blocks\.(\d+)\.pos_embedding\.embedding\.", r"encoder.block.\1.layer.0.SelfAttention.relative_attention_bias."),
    (r"^blocks\.(\d+)\.norm2\.", r"encoder.block.\1.layer.1.layer_norm."),
    (r"^blocks\.(\d+)\.ffn\.gate\.0\.", r"encoder.block.\1.layer.1.DenseReluDense.wi_0."),
    (r"^blocks\.(\d+)\.ffn\.fc1\.", r"encoder.block.\1.layer.1.DenseReluDense.wi_1."),
    (r"^blocks\.(\d+)\.ffn\.fc2\.", r"encoder.block.\1.layer.1.DenseReluDense.wo."),
    (r"^norm\.", "encoder.final_layer_norm."),
)]


def official_umt5_to_hf(key: str) -> str:
    """Official Wan umT5 name → transformers name (unknown names pass through, to be reported as unexpected)."""
    for pattern, repl in _UMT5_OFFICIAL_RULES:
        new, count = pattern.subn(repl, key)
        if count:
            return new
    return key


def _normalize_umt5(ckpt: Checkpoint) -> tuple[Checkpoint, str]:
    """(the checkpoint under transformers' names, layout); a DetectionError for anything that is not umT5."""
    prefix = find_prefix(ckpt, UMT5_OFFICIAL_ANCHORS)
    if prefix is not None:
        return keep_under(ckpt, prefix).renamed(official_umt5_to_hf), "official"
    prefix = find_prefix(ckpt, T5_HF_ANCHORS)
    if prefix is not None:
        ckpt = keep_under(ckpt, prefix)
        tied_copy_only = "shared.weight" not in ckpt  # some exports keep only the encoder's copy of the embedding
        return ckpt.renamed(lambda k: _hf_encoder_key(k, tied_copy_only)), "hf"
    if "token_embedding.weight" in ckpt and "blocks.0.attn.q.weight" in ckpt:
        raise DetectionError(f"{ckpt.name} is a T5 encoder in the official layout with one position bias shared "
                             f"by all layers, not umT5", "Wan needs umT5-XXL: use models_t5_umt5-xxl-enc-bf16.pth "
                             "or ComfyUI's umt5_xxl_*.safetensors")
    raise DetectionError(f"{ckpt.name} is a T5-family file OpenReel cannot read as umT5", SUPPORTED)


def _hf_encoder_key(key: str, tied_copy_only: bool) -> str | None:
    """transformers name → our name; None for a seq2seq decoder and head, the tokenizer, the tied embedding copy."""
    if key == "encoder.embed_tokens.weight":
        return "shared.weight" if tied_copy_only else None
    if key.startswith(("decoder.", "lm_head.")) or key == "spiece_model":
        return None
    return key


def describe_umt5(ckpt: Checkpoint) -> UMT5Spec:
    """The spec of a normalized umT5 checkpoint, from its shapes (and config.json values shapes cannot give)."""
    block0 = "encoder.block.0.layer."
    needed = ("shared.weight", block0 + "0.SelfAttention.q.weight",
              block0 + "0.SelfAttention.relative_attention_bias.weight", "encoder.final_layer_norm.weight")
    missing = [k for k in needed if k not in ckpt]
    if missing:
        raise DetectionError(f"{ckpt.name} looks like a T5 encoder but lacks {', '.join(missing)}",
                             "the file is incomplete or not a full text encoder; download it again")
    layers = layer_count(ckpt.keys(), r"encoder\.block\.(\d+)\.")
    if layers > 1 and "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight" not in ckpt:
        raise DetectionError(f"{ckpt.name} is a T5 encoder with one position bias shared by all layers (T5 v1.1 / "
                             f"Flan-T5, e.g. t5xxl for Flux or SD3), not umT5",
                             "Wan needs umT5-XXL: use ComfyUI's umt5_xxl_*.safetensors or "
                             "models_t5_umt5-xxl-enc-bf16.pth")
    if block0 + "1.DenseReluDense.wi_0.weight" not in ckpt:
        raise DetectionError(f"{ckpt.name} is a T5 encoder without a gated FFN (T5 v1.0), not umT5",
                             "Wan needs umT5-XXL: use ComfyUI's umt5_xxl_*.safetensors")
    vocab, d_model = ckpt.shape("shared.weight")
    buckets, heads = ckpt.shape(block0 + "0.SelfAttention.relative_attention_bias.weight")
    return UMT5Spec(
        vocab_size=vocab, d_model=d_model, d_kv=ckpt.shape(block0 + "0.SelfAttention.q.weight")[0] // heads,
        d_ff=ckpt.shape(block0 + "1.DenseReluDense.wi_0.weight")[0], num_heads=heads, num_layers=layers,
        num_buckets=buckets, max_distance=config_value(ckpt, d_model, "relative_attention_max_distance") or 128,
        eps=config_value(ckpt, d_model, "layer_norm_epsilon") or 1e-6)

def inspect_text_encoder(path: str | Path) -> tuple[Checkpoint, Checkpoint, UMT5Spec, str]:
    """Read headers only: (the raw checkpoint, its normalized view, spec, layout)."""
    raw = open_checkpoint(path)
    expect(raw, "text_encoder", SUPPORTED)
    ckpt, layout = _normalize_umt5(raw)
    return raw, ckpt, describe_umt5(ckpt), layout


def load_text_encoder(path: str | Path, dtype: str = "auto") -> TextEncoderHandle:
    """Detect and load an umT5 encoder into the module cache, find its tokenizer; return the handle.

    `dtype`: how weights are stored and computed (see `encoder_dtypes`)."""
    raw, ckpt, spec, layout = inspect_text_encoder(path)
    source = find_tokenizer(raw.keys(), raw.files)
    tokenizer = load_tokenizer(source)
    if tokenizer.vocab_size > spec.vocab_size:
        raise CheckpointError(f"the tokenizer {source.path} has {tokenizer.vocab_size} tokens but {ckpt.name} "
                              f"embeds only {spec.vocab_size}", "use the tokenizer of google/umt5-xxl")
    weight_dtype, compute_dtype = encoder_dtypes(dtype)
    handle = TextEncoderHandle(spec, tuple(str(f) for f in raw.files), stamps(raw.files), weight_dtype,
                               compute_dtype, tokenizer=source, layout=layout)
    return load(handle, lambda: _build(ckpt, handle))


def _build(ckpt: Checkpoint, handle: TextEncoderHandle) -> nn.Module:
    return materialize(lambda ops: UMT5TextEncoder(handle.spec, ops), ckpt, weight_dtype=handle.weight_dtype,
                       compute_dtype=handle.compute_dtype, device=runtime.offload_device(), fp32_params=FP32_PARAMS)


register_builder(TextEncoderHandle.kind, lambda handle: _build(inspect_text_encoder(handle.files[0])[1], handle))
