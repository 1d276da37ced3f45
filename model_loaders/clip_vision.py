"""CLIP-vision loading: layouts, spec from shapes, behind a `ClipVisionHandle`.

Layouts read: the official open-clip `models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth` (`visual.*`; the text
tower is ignored) and transformers / ComfyUI `clip_vision_h.safetensors` (`vision_model.*`). Anything else is a
DetectionError that says what the file is and which loader takes it (model_loaders/identify.py).
"""
from __future__ import annotations

import re
from pathlib import Path

import torch.nn as nn

from .. import runtime
from ..errors import CheckpointError, DetectionError
from ..handles import ClipVisionHandle
from ..models.common.family import find_prefix
from ..models.vision.clip_vision import FP32_PARAMS, CLIPVisionEncoder, CLIPVisionSpec
from .build import materialize
from .checkpoint import Checkpoint, config_value, layer_count, open_checkpoint, remapped
from .core import load, register_builder, stamps
from .identify import CLIP_HF_ANCHORS, CLIP_OFFICIAL_ANCHORS, expect
from .text_encoder import DTYPE_CHOICES, encoder_dtypes  # noqa: F401  (one dtype choice for both encoders)

SUPPORTED = ("supported: CLIP ViT-H/14 (ComfyUI's clip_vision_h.safetensors or the official "
             "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth)")


def _normalize_clip(ckpt: Checkpoint) -> tuple[Checkpoint, str, int]:
    """(the vision tower under `CLIPVisionEncoder` names minus its last block, layout, blocks in the file)."""
    prefix = find_prefix(ckpt, CLIP_OFFICIAL_ANCHORS)
    if prefix is not None:
        root = prefix + "visual."
        layers = layer_count(ckpt.keys(), re.escape(root) + r"transformer\.(\d+)\.")
        return _official_clip_plan(ckpt, root, layers), "official", layers
    prefix = find_prefix(ckpt, CLIP_HF_ANCHORS)
    if prefix is not None and prefix + "embeddings.class_embedding" in ckpt:
        layers = layer_count(ckpt.keys(), re.escape(prefix) + r"encoder\.layers\.(\d+)\.")
        last = f"encoder.layers.{layers - 1}."

        def rename(key: str) -> str | None:
            if not key.startswith(prefix):
                return None  # text tower, projections, logit scale
            key = key[len(prefix):]
            return None if key.startswith(last) or key == "embeddings.position_ids" else "tower." + key
        return ckpt.renamed(rename), "hf", layers
    raise DetectionError(f"{ckpt.name} is a vision encoder file OpenReel cannot read as CLIP", SUPPORTED)


def _official_clip_plan(ckpt: Checkpoint, root: str, layers: int) -> Checkpoint:
    dim = ckpt.shape(root + "cls_embedding")[-1]
    plan = {
        "tower.embeddings.class_embedding": (root + "cls_embedding", lambda t: t.reshape(-1), (dim,)),
        "tower.embeddings.patch_embedding.weight": (root + "patch_embedding.weight", None, None),
        "tower.embeddings.position_embedding.weight": (root + "pos_embedding", lambda t: t.reshape(-1, dim),
                                                       ckpt.shape(root + "pos_embedding")[-2:]),
    }
    for ours, theirs in (("pre_layrnorm", "pre_norm"), ("post_layernorm", "post_norm")):
        for attr in ("weight", "bias"):
            plan[f"tower.{ours}.{attr}"] = (f"{root}{theirs}.{attr}", None, None)
    for n in range(layers - 1):
        src, dst = f"{root}transformer.{n}.", f"tower.encoder.layers.{n}."
        for ours, theirs in (("layer_norm1", "norm1"), ("layer_norm2", "norm2"), ("self_attn.out_proj", "attn.proj"),
                             ("mlp.fc1", "mlp.0"), ("mlp.fc2", "mlp.2")):
            for attr in ("weight", "bias"):
                plan[f"{dst}{ours}.{attr}"] = (f"{src}{theirs}.{attr}", None, None)
        for attr in ("weight", "bias"):
            qkv = f"{src}attn.to_qkv.{attr}"
            shape = (dim,) + tuple(ckpt.shape(qkv)[1:])
            for i, name in enumerate(("q", "k", "v")):
                plan[f"{dst}self_attn.{name}_proj.{attr}"] = (qkv, lambda t, i=i: t[i * dim:(i + 1) * dim], shape)
    missing = sorted({src for src, _, _ in plan.values() if src not in ckpt})
    if missing:
        raise CheckpointError(f"{ckpt.name} looks like an open-clip model but lacks {len(missing)} tensors "
                              f"(e.g. {', '.join(missing[:3])})", "the file is incomplete; download it again")
    return remapped(ckpt, plan)


def describe_clip(ckpt: Checkpoint, layers: int) -> CLIPVisionSpec:
    """The spec of a normalized CLIP vision checkpoint, from its shapes (heads from config.json or the width)."""
    needed = ("tower.embeddings.class_embedding", "tower.embeddings.position_embedding.weight",
              "tower.pre_layrnorm.weight", "tower.encoder.layers.0.mlp.fc1.weight")
    missing = [k.removeprefix("tower.") for k in needed if k not in ckpt]
    if missing or layers < 2:
        raise DetectionError(f"{ckpt.name} looks like a vision transformer but is not a CLIP ViT OpenReel can use "
                             f"(lacks {', '.join(missing) or 'a second block'})",
                             "use CLIP ViT-H/14: ComfyUI's clip_vision_h.safetensors")
    dim = ckpt.shape("tower.embeddings.class_embedding")[0]
    patch = ckpt.shape("tower.embeddings.patch_embedding.weight")[-1]
    grid = round((ckpt.shape("tower.embeddings.position_embedding.weight")[0] - 1) ** 0.5)
    heads = config_value(ckpt, dim, "num_attention_heads") or {768: 12, 1280: 16}.get(dim, max(1, dim // 64))
    return CLIPVisionSpec(
        hidden_size=dim, intermediate_size=ckpt.shape("tower.encoder.layers.0.mlp.fc1.weight")[0], num_layers=layers,
        num_heads=heads, patch_size=patch, image_size=grid * patch,
        eps=config_value(ckpt, dim, "layer_norm_eps") or 1e-5,
        hidden_act=config_value(ckpt, dim, "hidden_act") or "gelu")

def inspect_clip_vision(path: str | Path) -> tuple[Checkpoint, CLIPVisionSpec, str]:
    """Read headers only: (normalized checkpoint, spec, layout)."""
    raw = open_checkpoint(path)
    expect(raw, "clip_vision", SUPPORTED)
    ckpt, layout, layers = _normalize_clip(raw)
    return ckpt, describe_clip(ckpt, layers), layout


def load_clip_vision(path: str | Path, dtype: str = "auto") -> ClipVisionHandle:
    """Detect and load a CLIP vision tower into the module cache; return its handle (`dtype` as for text)."""
    ckpt, spec, layout = inspect_clip_vision(path)
    weight_dtype, compute_dtype = encoder_dtypes(dtype)
    handle = ClipVisionHandle(spec, tuple(str(f) for f in ckpt.files), stamps(ckpt.files), weight_dtype,
                              compute_dtype, layout=layout)
    return load(handle, lambda: _build(ckpt, handle))


def _build(ckpt: Checkpoint, handle: ClipVisionHandle) -> nn.Module:
    return materialize(lambda ops: CLIPVisionEncoder(handle.spec, ops), ckpt, weight_dtype=handle.weight_dtype,
                       compute_dtype=handle.compute_dtype, device=runtime.offload_device(), fp32_params=FP32_PARAMS)


register_builder(ClipVisionHandle.kind, lambda handle: _build(inspect_clip_vision(handle.files[0])[0], handle))
