"""Tell what a checkpoint is from its keys and shapes (never its file name), and refuse what it is not.

Each DiT family registers a `Family`: anchor keys that prove it, a normalizer (prefix stripping, other
layouts' names → our names), a describer (config from shapes) and a module factory. Checkpoints of other
kinds (VAE, text encoder, CLIP vision, LoRA) are recognized only to say where they belong.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch.nn as nn

from ..errors import DetectionError
from ..handles import DiTSpec
from .checkpoint import Checkpoint

# Markers and per-layer quantization tensors that are not module parameters.
QUANT_SUFFIXES = (".scale_weight", ".scale_input", ".weight_scale", ".input_scale", ".comfy_quant")
MARKER_KEYS = ("scaled_fp8",)


@dataclass(frozen=True)
class Family:
    name: str
    title: str
    anchors: tuple[str, ...]                          # any one of these keys (after prefix) proves the family
    normalize: Callable[[Checkpoint], Checkpoint]     # → our parameter names, prefix removed
    describe: Callable[[Checkpoint], DiTSpec]         # → spec from shapes (raises DetectionError)
    build: Callable[[DiTSpec], nn.Module] | None      # None: recognized, not yet runnable
    weight_params: str = ""                           # regex of parameters that may be stored as fp8
    fp32_params: str = ""                             # regex of parameters kept in float32


FAMILIES: list[Family] = []


def register_family(family: Family) -> None:
    FAMILIES.append(family)


# Other model kinds, recognized by a key fragment, so the error can say which loader they belong to. CLIP comes
# before T5: the official open-clip file also holds a text tower whose keys look like T5's.
_OTHER_KINDS = (
    (("decoder.upsamples.0.", "decoder.up_blocks.0.", "decoder.conv_in.weight", "post_quant_conv.weight"),
     "a video VAE", "load it with OpenReel VAE Loader (put it in models/vae)"),
    (("visual.transformer.", "vision_model.encoder.", "visual.patch_embedding.weight"),
     "a CLIP vision encoder", "load it with OpenReel CLIP Vision Loader (put it in models/clip_vision)"),
    (("encoder.block.0.layer.0.SelfAttention.q.weight", "blocks.0.attn.q.weight", "shared.weight"),
     "a text encoder (T5 family)", "load it with OpenReel Text Encoder Loader (put it in models/text_encoders)"),
    (("lora_A.weight", "lora_down.weight", "lora_B.weight", "lora_up.weight", ".lora.down.weight"),
     "a LoRA", "apply it to a loaded model with a LoRA node instead of loading it as a model"),
)


def find_prefix(ckpt: Checkpoint, anchors: tuple[str, ...]) -> str | None:
    """The prefix in front of an anchor key ('' when bare), or None if no anchor is present."""
    for anchor in anchors:
        for key in ckpt.keys():
            if key.endswith(anchor) and (len(key) == len(anchor) or key[-len(anchor) - 1] == "."):
                return key[: len(key) - len(anchor)]
    return None


def other_kind(ckpt: Checkpoint) -> tuple[str, str] | None:
    keys = ckpt.keys()
    for suffixes, what, todo in _OTHER_KINDS:
        if any(s in k for k in keys for s in suffixes):
            return what, todo
    return None


def identify(ckpt: Checkpoint) -> tuple[Family, Checkpoint, DiTSpec]:
    """Find the DiT family of `ckpt`; return it with the normalized checkpoint and the detected spec."""
    for family in FAMILIES:
        if find_prefix(ckpt, family.anchors) is None:
            continue
        normalized = family.normalize(ckpt)
        spec = family.describe(normalized)
        if family.build is None:
            raise DetectionError(f"{ckpt.name} is {spec.description}, which this version of OpenReel recognizes "
                                 f"but cannot run yet", "use a Wan2.1 / Wan2.2 / SkyReels-V2 model for now")
        return family, normalized, spec
    other = other_kind(ckpt)
    if other is not None:
        what, todo = other
        raise DetectionError(f"{ckpt.name} is {what}, not a diffusion transformer", todo)
    sample = ", ".join(sorted(ckpt.keys())[:5])
    raise DetectionError(f"{ckpt.name} is not a diffusion model OpenReel knows (first keys: {sample})",
                         "supported: Wan2.1, Wan2.2, SkyReels-V2 (official, ComfyUI or diffusers layouts)")
