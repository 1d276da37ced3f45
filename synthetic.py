"""Tiny random checkpoints written in the real file layouts, for tests and the headless runner's demo model set.

Nothing here is a real model: the weights are random. The layouts are real: official single files and shard
sets (with index json and config.json), ComfyUI's `model.diffusion_model.`-prefixed files, plain fp8 files and
ComfyUI `fp8_scaled` files (`scaled_fp8` marker + per-linear `scale_weight`).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from .models.wan.model import WanConfig, WanDiT

COMFY_PREFIX = "model.diffusion_model."
TINY_WAN = WanConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_dim=64)


def wan_state_dict(cfg: WanConfig = TINY_WAN, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights with the official Wan names and shapes for `cfg` (float32)."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in WanDiT(cfg).state_dict().items()}
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=gen) * (0.1 if len(shape) > 1 else 0.5) for k, shape in shapes.items()}


def official_config(cfg: WanConfig) -> dict:
    """config.json as the official repos ship it beside `WanModel` weights."""
    model_type = {48: "ti2v", 36: "i2v"}.get(cfg.in_dim, "t2v")
    return {"_class_name": "WanModel", "model_type": model_type, "dim": cfg.dim, "ffn_dim": cfg.ffn_dim,
            "num_heads": cfg.num_heads, "num_layers": cfg.num_layers, "in_dim": cfg.in_dim, "out_dim": cfg.out_dim,
            "text_len": cfg.text_len, "freq_dim": cfg.freq_dim, "eps": cfg.eps, "patch_size": list(cfg.patch_size)}


def _cast(state: dict, dtype: torch.dtype) -> dict:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


def save_single(state: dict, path: Path, *, prefix: str = "", dtype: torch.dtype = torch.bfloat16) -> Path:
    """One safetensors file; `prefix=COMFY_PREFIX` gives the ComfyUI-repackaged layout."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({prefix + k: v.contiguous() for k, v in _cast(state, dtype).items()}, str(path))
    return path


def save_sharded(state: dict, folder: Path, cfg: WanConfig, *, shards: int = 3,
                 dtype: torch.dtype = torch.bfloat16, stem: str = "diffusion_pytorch_model") -> Path:
    """The official layout: `<stem>-0000i-of-0000n.safetensors`, `<stem>.safetensors.index.json`, config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = sorted(state)
    weight_map = {}
    for i in range(shards):
        name = f"{stem}-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: state[k] for k in keys[i::shards]}
        save_file({k: v.contiguous() for k, v in _cast(part, dtype).items()}, str(folder / name))
        weight_map.update({k: name for k in part})
    (folder / f"{stem}.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(official_config(cfg)))
    return folder / f"{stem}-00001-of-{shards:05d}.safetensors"


_FP8_LINEAR = re.compile(r".*\.(q|k|v|o|k_img|v_img|ffn\.0|ffn\.2|text_embedding\.[02]|head\.head)\.weight")


def save_fp8(state: dict, path: Path, *, scaled: bool, prefix: str = COMFY_PREFIX) -> Path:
    """Linear weights as float8_e4m3fn. `scaled=True` writes ComfyUI's fp8_scaled layout (per-tensor
    `scale_weight` and the `scaled_fp8` marker); otherwise a plain cast (as other packs' fp8 files)."""
    out = {}
    for key, value in _cast(state, torch.bfloat16).items():
        if _FP8_LINEAR.fullmatch(key):
            w = value.float()
            scale = (w.abs().amax() / 448.0) if scaled else torch.tensor(1.0)
            out[prefix + key] = (w / scale).clamp(-448, 448).to(torch.float8_e4m3fn)
            if scaled:
                out[prefix + key.removesuffix("weight") + "scale_weight"] = scale.reshape(1).float()
        else:
            out[prefix + key] = value
    if scaled:
        out[prefix + "scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, str(path))
    return path


def dequantized(path: Path, prefix: str = COMFY_PREFIX) -> dict[str, torch.Tensor]:
    """What an fp8 file written by `save_fp8` holds, back in float32 with the official names."""
    from safetensors.torch import load_file

    raw = {k.removeprefix(prefix): v for k, v in load_file(str(path)).items()}
    out = {}
    for key, value in raw.items():
        if key == "scaled_fp8" or key.endswith(".scale_weight"):
            continue
        scale = raw.get(key.removesuffix("weight") + "scale_weight")
        out[key] = value.float() * (scale if scale is not None else 1.0)
    return out
