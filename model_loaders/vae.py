"""Wan VAE loading: file → kind and config from keys and shapes → module in the cache, behind a `VAEHandle`.

Layouts: official / ComfyUI names (`Wan2.1_VAE.pth`, `Wan2.2_VAE.pth` and their safetensors re-saves, optionally
under a prefix such as `vae.` or `first_stage_model.`; keys outside the prefix are ignored) and diffusers
`AutoencoderKLWan` names, which are mapped to the official ones.
"""
from __future__ import annotations

import re
from typing import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .. import runtime
from ..errors import DetectionError
from ..models.wan.vae import WAN21, WAN22, VAEConfig, WanVAE
from . import hunyuan, stepvideo, wan  # noqa: F401  (registered DiT families let a DiT given as a VAE be named)
from .build import COMPUTE_DTYPES, materialize
from .cache import MODULES
from .checkpoint import Checkpoint, open_checkpoint
from .families import FAMILIES, find_prefix

OFFICIAL_ANCHORS = ("decoder.middle.1.to_qkv.weight",)
DIFFUSERS_ANCHORS = ("decoder.mid_block.attentions.0.to_qkv.weight",)
NESTED_KEY = "decoder.upsamples.0.upsamples.0.residual.2.weight"  # only Wan2.2 nests its stages
NO_PARAMS = r"(?!x)x"  # a VAE has no fp8 weights, and computes in one dtype throughout (no float32 islands)
DTYPE_CHOICES = ("auto", "bf16", "fp16", "fp32")

# diffusers resnet part → official position in `residual` (applied to every key first: only resnets use these names)
_RESNET_PARTS = ((".norm1.", ".residual.0."), (".conv1.", ".residual.2."), (".norm2.", ".residual.3."),
                 (".conv2.", ".residual.6."), (".conv_shortcut.", ".shortcut."))
_COMMON_RULES = [(re.compile(a), b) for a, b in (
    (r"^(encoder|decoder)\.conv_in\.", r"\1.conv1."),
    (r"^(encoder|decoder)\.norm_out\.", r"\1.head.0."),
    (r"^(encoder|decoder)\.conv_out\.", r"\1.head.2."),
    (r"^quant_conv\.", "conv1."),
    (r"^post_quant_conv\.", "conv2."),
    (r"\.mid_block\.resnets\.0\.", ".middle.0."),
    (r"\.mid_block\.attentions\.0\.", ".middle.1."),
    (r"\.mid_block\.resnets\.1\.", ".middle.2."),
)]

_CLIP_TODO = "load it with OpenReel CLIP Vision Loader (put it in models/clip_vision)"
# Files that are something else, by a key only they have: (key fragment, what it is, what to do). First match wins:
# CLIP before T5, since the official CLIP file also holds a text tower with `textual.blocks.N.attn.*` keys.
_NOT_WAN_VAES = (
    ("decoder.conv_in.conv.weight", "a HunyuanVideo VAE", "OpenReel runs Wan VAEs only for now"),
    ("decoder.up.0.block.0.", "an image VAE (Stable Diffusion / Flux family)", "use a Wan2.1 or Wan2.2 VAE"),
    ("visual.", "a CLIP vision encoder", _CLIP_TODO),
    ("vision_model.", "a CLIP vision encoder", _CLIP_TODO),
    ("encoder.block.0.layer.0.SelfAttention.q.weight", "a text encoder (T5 family)",
     "load it with OpenReel Text Encoder Loader (put it in models/text_encoders)"),
    ("blocks.0.attn.q.weight", "a text encoder (T5 family)",
     "load it with OpenReel Text Encoder Loader (put it in models/text_encoders)"),
    ("lora_", "a LoRA", "apply it to a loaded model with a LoRA node"),
    ("decoder.", "a VAE OpenReel does not know", "use a Wan2.1 or Wan2.2 VAE"),
)
_WAN_VAE_TODO = "a Wan VAE is Wan2.1_VAE.pth / wan_2.1_vae.safetensors, or Wan2.2_VAE.pth for Wan2.2 TI2V-5B"


@dataclass(frozen=True)
class VAEHandle:
    """OPENREEL_VAE: a detected Wan VAE, its source files and compute dtype."""
    kind: str                                 # "wan21" or "wan22": the latent format it encodes to and decodes
    files: tuple[str, ...]
    file_stamp: tuple[tuple[int, int], ...]   # (size, mtime_ns) per file: a replaced file is reloaded
    dtype: str                                # "bf16", "fp16" or "fp32"

    @property
    def weights_key(self) -> tuple:
        return ("vae", self.files, self.file_stamp, self.dtype)


def diffusers_to_official(key: str, residual: bool, res_blocks: int = 2) -> str:
    """An `AutoencoderKLWan` parameter name → the official one (`residual`: Wan2.2's nested layout)."""
    for old, new in _RESNET_PARTS:
        key = key.replace(old, new)
    for pattern, repl in _COMMON_RULES:
        key = pattern.sub(repl, key)
    if residual:
        key = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.downsamples.\1.downsamples.", key)
        key = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsampler\.",
                     rf"encoder.downsamples.\1.downsamples.{res_blocks}.", key)
        key = re.sub(r"^decoder\.up_blocks\.(\d+)\.resnets\.", r"decoder.upsamples.\1.upsamples.", key)
        return re.sub(r"^decoder\.up_blocks\.(\d+)\.upsampler\.",
                      rf"decoder.upsamples.\1.upsamples.{res_blocks + 1}.", key)
    # Wan2.1: the encoder list is already flat; decoder stages hold res_blocks + 1 resnets and one upsampler.
    per_stage = res_blocks + 2
    key = key.replace("encoder.down_blocks.", "encoder.downsamples.")
    key = re.sub(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
                 lambda m: f"decoder.upsamples.{int(m[1]) * per_stage + int(m[2])}.", key)
    return re.sub(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                  lambda m: f"decoder.upsamples.{int(m[1]) * per_stage + res_blocks + 1}.", key)


def _only_under(ckpt: Checkpoint, prefix: str) -> Checkpoint:
    return ckpt.renamed(lambda k: k[len(prefix):] if k.startswith(prefix) else None)


def normalize(ckpt: Checkpoint) -> Checkpoint:
    """Official names without prefix; raises DetectionError naming what the file is if it is not a Wan VAE."""
    prefix = find_prefix(ckpt, OFFICIAL_ANCHORS)
    if prefix is not None:
        return _only_under(ckpt, prefix)
    prefix = find_prefix(ckpt, DIFFUSERS_ANCHORS)
    if prefix is not None:
        ckpt = _only_under(ckpt, prefix)
        residual = "encoder.down_blocks.0.resnets.0.conv1.weight" in ckpt
        return ckpt.renamed(lambda k: diffusers_to_official(k, residual))
    for family in FAMILIES:
        if find_prefix(ckpt, family.anchors) is not None:
            raise DetectionError(f"{ckpt.name} is a {family.title} diffusion model, not a VAE",
                                 "load it with OpenReel DiT Loader (put it in models/diffusion_models)")
    for fragment, what, todo in _NOT_WAN_VAES:
        if any(fragment in k for k in ckpt.keys()):
            raise DetectionError(f"{ckpt.name} is {what}, not a Wan VAE", f"{todo}; {_WAN_VAE_TODO}")
    sample = ", ".join(sorted(ckpt.keys())[:5])
    raise DetectionError(f"{ckpt.name} is not a VAE OpenReel knows (first keys: {sample})", _WAN_VAE_TODO)


def describe(ckpt: Checkpoint) -> VAEConfig:
    """The config of a normalized Wan VAE checkpoint, from its shapes."""
    needed = ("encoder.conv1.weight", "decoder.head.2.weight", "conv2.weight")
    missing = [k for k in needed if k not in ckpt]
    if missing:
        raise DetectionError(f"{ckpt.name} looks like a Wan VAE but lacks {', '.join(missing)}",
                             "the file is incomplete (an encoder or decoder only?); download the full VAE")
    base = WAN22 if NESTED_KEY in ckpt else WAN21
    z_dim = ckpt.shape("conv2.weight")[0]
    in_channels = ckpt.shape("encoder.conv1.weight")[1]
    if z_dim != base.z_dim or in_channels != 3 * base.patch_size ** 2:
        raise DetectionError(f"{ckpt.name} is a {'Wan2.2' if base.residual else 'Wan2.1'}-layout VAE with {z_dim} "
                             f"latent channels and {in_channels} input channels, which matches no released Wan VAE",
                             _WAN_VAE_TODO)
    return replace(base, dim=ckpt.shape("encoder.conv1.weight")[0], dec_dim=ckpt.shape("decoder.head.2.weight")[1])


def inspect_vae(path: str | Path) -> tuple[Checkpoint, VAEConfig]:
    """Read headers only: the normalized checkpoint and its config; a clear error for anything else."""
    ckpt = normalize(open_checkpoint(path))
    return ckpt, describe(ckpt)


def _resolve_dtype(dtype: str) -> str:
    if dtype not in DTYPE_CHOICES:
        raise ValueError(f"dtype must be one of {DTYPE_CHOICES}")
    if dtype != "auto":
        return dtype
    device = runtime.torch_device()
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def load_vae(path: str | Path, dtype: str = "auto") -> VAEHandle:
    """Detect and load a Wan VAE into the module cache (on the offload device); return its handle.

    dtype "auto" is bf16 on GPUs that support it, else fp32.
    """
    ckpt, cfg = inspect_vae(path)
    stamps = tuple((f.stat().st_size, f.stat().st_mtime_ns) for f in ckpt.files)
    handle = VAEHandle(cfg.kind, tuple(str(f) for f in ckpt.files), stamps, _resolve_dtype(dtype))
    MODULES.get_or_build(handle.weights_key, lambda: _build(ckpt, cfg, handle))
    return handle


def vae_module(handle: VAEHandle) -> WanVAE:
    """The module behind `handle`, rebuilt from its files if the cache let it go."""
    def rebuild():
        ckpt, cfg = inspect_vae(handle.files[0])
        return _build(ckpt, cfg, handle)
    return MODULES.get_or_build(handle.weights_key, rebuild)


def _build(ckpt: Checkpoint, cfg: VAEConfig, handle: VAEHandle) -> WanVAE:
    return materialize(lambda: WanVAE(cfg), ckpt, weight_dtype="auto", compute_dtype=COMPUTE_DTYPES[handle.dtype],
                       device=runtime.offload_device(), weight_params=NO_PARAMS, fp32_params=NO_PARAMS)


# ----------------------------------------------------------------------------------------- use
TILE_CHOICES = ("auto", "off", "512", "384", "256")
_BYTES_PER_PIXEL = 12_000  # measured untiled decode peak on an H200: 11.0 GiB at 1280×720 (bf16), chunk by chunk


def _tile_for(handle: VAEHandle, tiling: str, height: int, width: int, device: torch.device) -> int | None:
    """Tile size in pixels (None: whole frames). "auto" tiles only when the whole frame would not fit."""
    if tiling == "off":
        return None
    if tiling != "auto":
        return int(tiling)
    if device.type != "cuda":
        return None
    per_pixel = _BYTES_PER_PIXEL * (2 if handle.dtype == "fp32" else 1)
    free = runtime.free_vram(device)
    if height * width * per_pixel * 1.2 <= free:
        return None
    for tile in (512, 384, 256):
        if tile * tile * per_pixel * 1.5 <= free:
            return tile
    return 256


def encode_video(handle: VAEHandle, video: torch.Tensor, tiling: str = "auto") -> torch.Tensor:
    """[B, 3, F, H, W] in [-1, 1] → normalized latent (CPU, float32). The VAE is on the GPU only for the call."""
    module = vae_module(handle)
    device = runtime.load_model(module)
    try:
        tile = _tile_for(handle, tiling, video.shape[3], video.shape[4], device)
        return module.encode(video, tile_size=tile).cpu()
    finally:
        runtime.offload_model(module)


def decode_video(handle: VAEHandle, latent: torch.Tensor, tiling: str = "auto") -> Iterator[torch.Tensor]:
    """Normalized latent → IMAGE chunks [f, H, W, 3] in 0..1 on the CPU, batch item 0 then 1 …, streamed when
    untiled (a video writer can consume them as they come); the VAE is offloaded when the last chunk is out."""
    module = vae_module(handle)
    device = runtime.load_model(module)
    try:
        s = module.cfg.spatial_stride
        tile = _tile_for(handle, tiling, latent.shape[3] * s, latent.shape[4] * s, device)
        for b in range(latent.shape[0]):
            item = latent[b:b + 1]
            chunks = module.decode_iter(item) if tile is None else [module.decode(item, tile_size=tile)]
            for chunk in chunks:  # [1, 3, f, H, W] in [-1, 1]
                runtime.throw_if_interrupted()
                yield ((chunk[0].float() + 1) / 2).permute(1, 2, 3, 0).cpu()
    finally:
        runtime.offload_model(module)
