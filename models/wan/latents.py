"""Wan latent spaces and the Wan VAE adapter: the two latent formats, recognition of Wan VAE files, and the
image conditioning Wan's image-to-video models take.

Formats: "wan21" (Wan2.1 VAE: 16 channels, 4×8×8; Wan2.1, Wan2.2 A14B, SkyReels-V2) and "wan22" (Wan2.2 VAE: 48
channels, 4×16×16; TI2V-5B). Preview factors are the published per-channel latent→RGB factors ComfyUI ships for
these spaces (comfy/latent_formats.py `Wan21`, `Wan22`: data, read for facts).

VAE layouts: official / ComfyUI names (`Wan2.1_VAE.pth`, `Wan2.2_VAE.pth` and their safetensors re-saves, optionally
under a prefix such as `vae.` or `first_stage_model.`; keys outside the prefix are ignored) and diffusers
`AutoencoderKLWan` names, which are mapped to the official ones.
"""
from __future__ import annotations

import re
from dataclasses import replace
from typing import Callable

import torch

from ...errors import DetectionError, InputError
from ...latents import ImageConditioning, LatentFormat, register_latent_format
from ..common.family import Checkpoint, VAEFamily, find_prefix, keep_under, register_vae_family
from ..common.images import fit_image
from .vae import WAN21, WAN22, VAEConfig, WanVAE

PATCH = 2  # the Wan DiTs' spatial patch: sizes must be multiples of the VAE stride × 2

WAN21_LATENT = register_latent_format(LatentFormat(
    "wan21", "16-channel (Wan2.1 VAE)", channels=16, temporal_stride=4, spatial_stride=8, size_multiple=8 * PATCH,
    mean=WAN21.latents_mean, std=WAN21.latents_std, preview_factors=(
    (-0.1299, -0.1692, 0.2932), (0.0671, 0.0406, 0.0442), (0.3568, 0.2548, 0.1747), (0.0372, 0.2344, 0.1420),
    (0.0313, 0.0189, -0.0328), (0.0296, -0.0956, -0.0665), (-0.3477, -0.4059, -0.2925), (0.0166, 0.1902, 0.1975),
    (-0.0412, 0.0267, -0.1364), (-0.1293, 0.0740, 0.1636), (0.0680, 0.3019, 0.1128), (0.0032, 0.0581, 0.0639),
    (-0.1251, 0.0927, 0.1699), (0.0060, -0.0633, 0.0005), (0.3477, 0.2275, 0.2950), (0.1984, 0.0913, 0.1861),
    ), preview_bias=(-0.1835, -0.0868, -0.3360)))
WAN22_LATENT = register_latent_format(LatentFormat(
    "wan22", "48-channel (Wan2.2 VAE)", channels=48, temporal_stride=4, spatial_stride=16, size_multiple=16 * PATCH,
    mean=WAN22.latents_mean, std=WAN22.latents_std, preview_factors=(
    (0.0119, 0.0103, 0.0046), (-0.1062, -0.0504, 0.0165), (0.0140, 0.0409, 0.0491), (-0.0813, -0.0677, 0.0607),
    (0.0656, 0.0851, 0.0808), (0.0264, 0.0463, 0.0912), (0.0295, 0.0326, 0.0590), (-0.0244, -0.0270, 0.0025),
    (0.0443, -0.0102, 0.0288), (-0.0465, -0.0090, -0.0205), (0.0359, 0.0236, 0.0082), (-0.0776, 0.0854, 0.1048),
    (0.0564, 0.0264, 0.0561), (0.0006, 0.0594, 0.0418), (-0.0319, -0.0542, -0.0637), (-0.0268, 0.0024, 0.0260),
    (0.0539, 0.0265, 0.0358), (-0.0359, -0.0312, -0.0287), (-0.0285, -0.1032, -0.1237), (0.1041, 0.0537, 0.0622),
    (-0.0086, -0.0374, -0.0051), (0.0390, 0.0670, 0.2863), (0.0069, 0.0144, 0.0082), (0.0006, -0.0167, 0.0079),
    (0.0313, -0.0574, -0.0232), (-0.1454, -0.0902, -0.0481), (0.0714, 0.0827, 0.0447), (-0.0304, -0.0574, -0.0196),
    (0.0401, 0.0384, 0.0204), (-0.0758, -0.0297, -0.0014), (0.0568, 0.1307, 0.1372), (-0.0055, -0.0310, -0.0380),
    (0.0239, -0.0305, 0.0325), (-0.0663, -0.0673, -0.0140), (-0.0416, -0.0047, -0.0023), (0.0166, 0.0112, -0.0093),
    (-0.0211, 0.0011, 0.0331), (0.1833, 0.1466, 0.2250), (-0.0368, 0.0370, 0.0295), (-0.3441, -0.3543, -0.2008),
    (-0.0479, -0.0489, -0.0420), (-0.0660, -0.0153, 0.0800), (-0.0101, 0.0068, 0.0156), (-0.0690, -0.0452, -0.0927),
    (-0.0145, 0.0041, 0.0015), (0.0421, 0.0451, 0.0373), (0.0504, -0.0483, -0.0356), (-0.0837, 0.0168, 0.0055),
    ), preview_bias=(0.0317, -0.0878, -0.1388)))

OFFICIAL_ANCHORS = ("decoder.middle.1.to_qkv.weight",)
DIFFUSERS_ANCHORS = ("decoder.mid_block.attentions.0.to_qkv.weight",)
NESTED_KEY = "decoder.upsamples.0.upsamples.0.residual.2.weight"  # only Wan2.2 nests its stages
_WAN_VAE_TODO = "a Wan VAE is Wan2.1_VAE.pth / wan_2.1_vae.safetensors, or Wan2.2_VAE.pth for Wan2.2 TI2V-5B"

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


class WanVAEFamily(VAEFamily):
    name = "wan"
    title = "Wan2.1 / Wan2.2"
    anchors = OFFICIAL_ANCHORS + DIFFUSERS_ANCHORS

    def normalize(self, ckpt: Checkpoint) -> Checkpoint:
        prefix = find_prefix(ckpt, OFFICIAL_ANCHORS)
        if prefix is not None:
            return keep_under(ckpt, prefix)
        ckpt = keep_under(ckpt, find_prefix(ckpt, DIFFUSERS_ANCHORS))
        residual = "encoder.down_blocks.0.resnets.0.conv1.weight" in ckpt
        return ckpt.renamed(lambda k: diffusers_to_official(k, residual))

    def describe(self, ckpt: Checkpoint) -> VAEConfig:
        needed = ("encoder.conv1.weight", "decoder.head.2.weight", "conv2.weight")
        missing = [k for k in needed if k not in ckpt]
        if missing:
            raise DetectionError(f"{ckpt.name} looks like a Wan VAE but lacks {', '.join(missing)}",
                                 "the file is incomplete (an encoder or decoder only?); download the full VAE")
        base = WAN22 if NESTED_KEY in ckpt else WAN21
        z_dim = ckpt.shape("conv2.weight")[0]
        in_channels = ckpt.shape("encoder.conv1.weight")[1]
        if z_dim != base.z_dim or in_channels != 3 * base.patch_size ** 2:
            raise DetectionError(f"{ckpt.name} is a {'Wan2.2' if base.residual else 'Wan2.1'}-layout VAE with "
                                 f"{z_dim} latent channels and {in_channels} input channels, which matches no "
                                 f"released Wan VAE", _WAN_VAE_TODO)
        return replace(base, dim=ckpt.shape("encoder.conv1.weight")[0],
                       dec_dim=ckpt.shape("decoder.head.2.weight")[1])

    def build(self, config: VAEConfig) -> WanVAE:
        return WanVAE(config)

    def latent_format(self, config: VAEConfig) -> str:
        return WAN22_LATENT.name if config.residual else WAN21_LATENT.name

    def image_to_video(self, config: VAEConfig, encode: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor,
                       width: int, height: int, frames: int, end: torch.Tensor | None = None,
                       clip_tokens: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict:
        """The conditioned LATENT for image-to-video. `encode(video [1,3,F,H,W] in [-1,1]) → latent`;
        `clip_tokens(images) → [n, 257, 1280]` or None.
        - Wan2.1 VAE (Wan2.1 I2V / FLF2V, Wan2.2 I2V-A14B, SkyReels I2V): `concat` = 4 mask channels + the VAE
          latent of [start, zeros…, (end)], as the official image2video.py / first_last_frame2video.py build it;
          Wan2.1 adds CLIP tokens of the start (and end) image.
        - Wan2.2 VAE (TI2V-5B image mode): `given` = the VAE latent of the start image, kept clean as frame 0."""
        fmt = WAN22_LATENT if config.residual else WAN21_LATENT
        c, t, h, w = fmt.latent_size(width, height, frames)
        first = fit_image(start[:1], width, height)
        empty = torch.zeros(1, c, t, h, w)
        if config.residual:
            if end is not None:
                raise InputError("Wan2.2 TI2V-5B starts from an image but has no last-frame mode",
                                 "disconnect end_image, or use a Wan2.1 FLF2V model with the Wan2.1 VAE")
            if clip_tokens is not None:
                raise InputError("Wan2.2 TI2V-5B uses no CLIP vision features", "disconnect clip_vision")
            return {"samples": empty, "latent_format": fmt.name,
                    "openreel": ImageConditioning("ti2v", given=encode(first.unsqueeze(2)))}
        video = torch.zeros(1, 3, frames, height, width)
        video[:, :, 0] = first[0]
        if end is not None:
            video[:, :, -1] = fit_image(end[:1], width, height)[0]
        concat = torch.cat([wan_i2v_mask(frames, h, w, last=end is not None), encode(video)], dim=1)
        tokens = None
        if clip_tokens is not None:
            same_size = end is None or start.shape[1:] == end.shape[1:]
            found = clip_tokens(start[:1] if end is None else torch.cat([start[:1], end[:1]])) if same_size else \
                torch.cat([clip_tokens(start[:1]), clip_tokens(end[:1])])  # [n, 257, width]; each image resized
            tokens = found.reshape(1, -1, found.shape[-1])  # FLF2V: first and last frame's tokens side by side
        return {"samples": empty, "latent_format": fmt.name,
                "openreel": ImageConditioning("flf2v" if end is not None else "i2v", concat=concat,
                                              image_tokens=tokens)}


def wan_i2v_mask(frames: int, h: int, w: int, first: bool = True, last: bool = False) -> torch.Tensor:
    """The 4-channel mask of Wan's I2V conditioning, [1, 4, latent frames, h, w]: pixel frames that are given are
    1; the first pixel frame is repeated 4× so that latent frame 0's four slots all say 'given'."""
    mask = torch.zeros(1, frames, h, w)
    mask[:, 0] = float(first)
    if last:
        mask[:, -1] = 1.0
    mask = torch.cat([mask[:, :1].repeat(1, 4, 1, 1), mask[:, 1:]], dim=1)
    return mask.view(1, mask.shape[1] // 4, 4, h, w).transpose(1, 2)


WAN_VAE = register_vae_family(WanVAEFamily())
