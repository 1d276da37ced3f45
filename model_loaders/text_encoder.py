"""Text-encoder loading, one loader for every kind: umT5-XXL (Wan, SkyReels-V2), HunyuanVideo's Llama-3
(LLaVA-Llama-3-8B) and CLIP-L text tower, and Step-Video's Step-LLM and HunyuanCLIP (BERT), behind a
`TextEncoderHandle` whose `spec.kind` says which it is.

`identify` says the file is a text encoder; the table below says which, reads its layout (model_loaders/
text_layouts.py), finds its tokenizer (models/text/tokenizer.py) and builds its network with the ops the weights
need (16-bit, fp8, ComfyUI fp8_scaled). Single files, sharded sets and HF folders all load (Step-Video's
hunyuan_clip/ folder: its clip_text_encoder/ subfolder). Anything else is a DetectionError that says what the file
is and which loader takes it (model_loaders/identify.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch.nn as nn

from .. import runtime
from ..errors import CheckpointError
from ..handles import TextEncoderHandle
from ..models.common.ops import Ops
from ..models.text import bert, clip_text, llama, stepllm, umt5
from ..models.text.tokenizer import KINDS, find_tokenizer, load_tokenizer
from .build import COMPUTE_DTYPES, materialize, resolve_compute_dtype
from .checkpoint import PICKLE_SUFFIXES, SAFETENSORS_SUFFIXES, Checkpoint, open_checkpoint
from .core import load, register_builder, stamps
from .identify import expect, is_bert, is_clip_text, is_llama, is_stepllm, is_t5
from .text_layouts import (BERT_FILES, CLIP_FILES, LLAMA_FILES, STEPLLM_FILES, UMT5_FILES, read_bert, read_clip_text,
                           read_llama, read_stepllm, read_umt5)

DTYPE_CHOICES = ("auto", "bf16", "fp16", "fp32", "fp8_e4m3fn", "fp8_e4m3fn_scaled")
SUPPORTED = f"supported: {UMT5_FILES}; {LLAMA_FILES}; {CLIP_FILES}; {STEPLLM_FILES}; {BERT_FILES}"
WEIGHTS_SUBFOLDERS = ("clip_text_encoder",)   # a model folder whose weights are in one of these (hunyuan_clip/)


@dataclass(frozen=True)
class EncoderKind:
    """How one kind of text encoder is recognized, read and built."""
    matches: Callable[[Checkpoint], bool]
    read: Callable[[Checkpoint], tuple[Checkpoint, Any, str]]   # raw file → (our names, spec, layout)
    network: Callable[[Any, Ops], nn.Module]
    fp32_params: str
    auto_compute: str = ""   # the compute dtype "auto" means, where the official code fixes one ('' : the rule)


# Keyed by the spec's `kind`; tried in this order (the matchers exclude each other on real files).
ENCODERS = {
    llama.LlamaSpec.kind: EncoderKind(is_llama, read_llama, llama.LlamaTextEncoder, llama.FP32_PARAMS),
    clip_text.CLIPTextSpec.kind: EncoderKind(is_clip_text, read_clip_text, clip_text.CLIPTextEncoder,
                                             clip_text.FP32_PARAMS),
    umt5.UMT5Spec.kind: EncoderKind(is_t5, read_umt5, umt5.UMT5TextEncoder, umt5.FP32_PARAMS),
    stepllm.StepLLMSpec.kind: EncoderKind(is_stepllm, read_stepllm, stepllm.StepLLMTextEncoder, stepllm.FP32_PARAMS),
    # The official caption server runs HunyuanCLIP in float32 (it is small) and Step-LLM in bf16.
    bert.BertSpec.kind: EncoderKind(is_bert, read_bert, bert.BertTextEncoder, bert.FP32_PARAMS, auto_compute="fp32"),
}


def encoder_dtypes(dtype: str, auto_compute: str = "") -> tuple[str, str]:
    """The encoder loaders' single dtype choice → (weight dtype, compute dtype). auto: fp8 files stay fp8, computed
    in `auto_compute` if given, else the one "auto" compute dtype; a 16/32-bit name stores and computes so; fp8
    names store fp8."""
    if dtype not in DTYPE_CHOICES:
        raise ValueError(f"dtype must be one of {DTYPE_CHOICES}, not {dtype!r}")
    if dtype in COMPUTE_DTYPES:
        return dtype, dtype
    return dtype, auto_compute or resolve_compute_dtype("auto", runtime.torch_device())


def _weights(path: Path) -> Path:
    """The folder or file holding the weights `path` names (a model folder with them in a known subfolder)."""
    if path.is_dir():
        inner = next((path / name for name in WEIGHTS_SUBFOLDERS if (path / name).is_dir()), None)
        if inner is not None and not any(p.suffix in SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES for p in path.iterdir()):
            return inner
    return path


def inspect_text_encoder(path: str | Path) -> tuple[Checkpoint, Checkpoint, Any, str]:
    """Read headers only: (the raw checkpoint, the view the network loads, spec, layout)."""
    raw = open_checkpoint(_weights(Path(path)))
    expect(raw, "text_encoder", SUPPORTED)
    kind = next(k for k in ENCODERS.values() if k.matches(raw))
    ckpt, spec, layout = kind.read(raw)
    return raw, ckpt, spec, layout


def load_text_encoder(path: str | Path, dtype: str = "auto") -> TextEncoderHandle:
    """Detect and load any supported text encoder into the module cache, find its tokenizer; return the handle.

    `dtype`: how weights are stored and computed (see `encoder_dtypes`)."""
    raw, ckpt, spec, layout = inspect_text_encoder(path)
    source = find_tokenizer(spec.kind, raw.keys(), raw.files)
    tokenizer = load_tokenizer(source)
    if tokenizer.vocab_size > spec.vocab_size:
        raise CheckpointError(f"the tokenizer {source.path} has {tokenizer.vocab_size} tokens but {ckpt.name} "
                              f"embeds only {spec.vocab_size}", f"use the tokenizer of {KINDS[spec.kind].origin}")
    weight_dtype, compute_dtype = encoder_dtypes(dtype, ENCODERS[spec.kind].auto_compute)
    handle = TextEncoderHandle(spec, tuple(str(f) for f in raw.files), stamps(raw.files), weight_dtype,
                               compute_dtype, tokenizer=source, layout=layout)
    return load(handle, lambda: _build(ckpt, handle))


def _build(ckpt: Checkpoint, handle: TextEncoderHandle) -> nn.Module:
    kind = ENCODERS[handle.spec.kind]
    return materialize(lambda ops: kind.network(handle.spec, ops), ckpt, weight_dtype=handle.weight_dtype,
                       compute_dtype=handle.compute_dtype, device=runtime.offload_device(),
                       fp32_params=kind.fp32_params)


register_builder(TextEncoderHandle.kind, lambda handle: _build(inspect_text_encoder(handle.files[0])[1], handle))
