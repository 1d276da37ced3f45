"""VAE loading: file → identified VAE family and config → module in the cache, behind a `VAEHandle`."""
from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from .. import runtime
from ..handles import VAEHandle
from ..models.common.family import VAEFamily
from .build import materialize, resolve_compute_dtype
from .checkpoint import Checkpoint, open_checkpoint
from .core import load, register_builder, stamps
from .identify import expect

DTYPE_CHOICES = ("auto", "bf16", "fp16", "fp32")
SUPPORTED = ("supported: the Wan2.1 VAE (Wan2.1_VAE.pth / wan_2.1_vae.safetensors), the Wan2.2 VAE (Wan2.2_VAE.pth, "
             "for TI2V-5B), the HunyuanVideo VAE (vae/pytorch_model.pt / hunyuan_video_vae_bf16.safetensors) and "
             "the Step-Video VAE (vae/vae_v2.safetensors)")


def inspect_vae(path: str | Path) -> tuple[VAEFamily, Checkpoint, object]:
    """Read headers only: the family, the normalized checkpoint and its config; a clear error for anything else."""
    ckpt = open_checkpoint(path)
    family = expect(ckpt, "vae", SUPPORTED).family
    normalized = family.normalize(ckpt)
    return family, normalized, family.describe(normalized)


def load_vae(path: str | Path, dtype: str = "auto") -> VAEHandle:
    """Detect and load a VAE into the module cache (on the offload device); return its handle.

    dtype "auto" is bf16 on GPUs that support it, else fp32 (VAE activations overflow fp16)."""
    if dtype not in DTYPE_CHOICES:
        raise ValueError(f"dtype must be one of {DTYPE_CHOICES}")
    family, ckpt, config = inspect_vae(path)
    compute = resolve_compute_dtype(dtype, runtime.torch_device(), half_fallback=False)
    handle = VAEHandle(config, tuple(str(f) for f in ckpt.files), stamps(ckpt.files), "auto", compute,
                       family=family.name, latent_format=family.latent_format(config))
    return load(handle, lambda: _build(family, ckpt, handle))


def _build(family: VAEFamily, ckpt: Checkpoint, handle: VAEHandle) -> nn.Module:
    return materialize(lambda ops: family.build(handle.spec), ckpt, weight_dtype="auto",
                       compute_dtype=handle.compute_dtype, device=runtime.offload_device())


def _rebuild(handle: VAEHandle) -> nn.Module:
    family, ckpt, _ = inspect_vae(handle.files[0])
    return _build(family, ckpt, handle)


register_builder(VAEHandle.kind, _rebuild)
