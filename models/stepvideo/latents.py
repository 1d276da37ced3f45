"""The Step-Video latent space and the Step-Video VAE adapter: recognition of `vae_v2.safetensors`.

Format "stepvideo": 64 channels, 16×16 in space (the DiT's patch is 1, so sizes are multiples of 16), every 17
pixel frames ↔ 3 latent frames with no frame coded alone (frame counts 17n: the official default 204 → 36). The
DiT works on the VAE's own latent (the official scale factor is 1.0, no shift). No preview map: a latent → RGB
factor table is fitted on real encodings, which the published code and weights do not ship; previews are off
for this format until such a fit is made from the real VAE.

VAE layout: the official file (`vae/vae_v2.safetensors`), optionally under a prefix such as `vae.` or
`first_stage_model.` (keys outside it are ignored). It stores the decoder's last conv as `decoder.conv_out.weight`
/ `.bias`, which the official loader renames to `decoder.conv_out.conv.*` (a state_dict saved from the official
module has that name already; both load). The anchors are the 2×2×2 (un)patchify convs no other VAE has; version 1
(`vae.safetensors`, 16 channels, without them) is not supported. A file of the same design with another latent
channel count (the smallest a 64-channel one can be holds a 113M-parameter unpatchify conv, so small test models use
fewer channels) gets a format of the same rules with its own channel count.
"""
from __future__ import annotations

import re
from dataclasses import replace

from ...errors import DetectionError
from ...latents import LATENT_FORMATS, LatentFormat, register_latent_format
from ..common.family import Checkpoint, VAEFamily, find_prefix, keep_under, register_vae_family
from .vae import GROUPS, StepVideoVAE, StepVideoVAEConfig

STEPVIDEO_LATENT = register_latent_format(LatentFormat(
    "stepvideo", "64-channel (Step-Video VAE)", channels=64, temporal_stride=StepVideoVAEConfig.chunk_frames,
    spatial_stride=StepVideoVAEConfig.spatial_stride, size_multiple=StepVideoVAEConfig.spatial_stride,
    mean=(0.0,) * 64, std=(1.0,) * 64, lead_frame=False, temporal_latents=StepVideoVAEConfig.chunk_latents))

ANCHORS = ("encoder.conv_patchify.conv.conv.weight", "decoder.conv_unpatchify.conv.conv.weight")
_TODO = "the Step-Video VAE is stepfun-ai/stepvideo-t2v's vae/vae_v2.safetensors"


def _count(ckpt: Checkpoint, pattern: str) -> int:
    found = {int(m[1]) for k in ckpt.keys() if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


class StepVideoVAEFamily(VAEFamily):
    name = "stepvideo"
    title = "Step-Video"
    anchors = ANCHORS

    def normalize(self, ckpt: Checkpoint) -> Checkpoint:
        ckpt = keep_under(ckpt, find_prefix(ckpt, ANCHORS) or "")
        return ckpt.renamed(lambda k: re.sub(r"^decoder\.conv_out\.(weight|bias)$", r"decoder.conv_out.conv.\1", k))

    def describe(self, ckpt: Checkpoint) -> StepVideoVAEConfig:
        needed = ("encoder.conv_in.conv.weight", "encoder.conv_out.conv.weight", "decoder.conv_in.conv.weight",
                  "decoder.conv_out.conv.weight", *ANCHORS)
        missing = [k for k in needed if k not in ckpt]
        if missing:
            raise DetectionError(f"{ckpt.name} looks like a Step-Video VAE but lacks {', '.join(missing)}",
                                 "the file is incomplete (an encoder or decoder only?); download the full VAE")
        levels = (_count(ckpt, r"encoder\.down\.(\d+)\."), _count(ckpt, r"decoder\.up\.(\d+)\."))
        latent = ckpt.shape("decoder.conv_in.conv.weight")[1]
        if levels != (4, 4) or ckpt.shape("encoder.conv_out.conv.weight")[0] != 2 * latent:
            raise DetectionError(f"{ckpt.name} is a Step-Video-style VAE with {levels} levels and {latent} latent "
                                 "channels, which is not the VAE v2's layout (4 levels)", _TODO)
        cfg = StepVideoVAEConfig(
            latent_channels=latent, encoder_base=ckpt.shape("encoder.conv_in.conv.weight")[0],
            encoder_widths=tuple(ckpt.shape(f"encoder.down.{i}.block.0.conv1.conv.weight")[0] for i in range(4)),
            decoder_widths=tuple(ckpt.shape(f"decoder.up.{i}.block.0.conv1.conv.weight")[0] for i in range(4)),
            layers=_count(ckpt, r"encoder\.down\.0\.block\.(\d+)\."))
        widths = (cfg.encoder_base, *cfg.encoder_widths, *cfg.decoder_widths)
        # The (un)patchify shortcuts spread 8 cells of the innermost width over 32 channels per latent channel.
        if any(width % GROUPS for width in widths) or (cfg.encoder_widths[-1] % (4 * latent)) or \
                cfg.decoder_widths[-1] % (4 * latent):
            raise DetectionError(f"{ckpt.name} has block widths {widths} for {latent} latent channels, which the "
                                 f"Step-Video VAE's {GROUPS} norm groups and patchify shortcuts do not fit", _TODO)
        return cfg

    def build(self, config: StepVideoVAEConfig) -> StepVideoVAE:
        return StepVideoVAE(config)

    def latent_format(self, config: StepVideoVAEConfig) -> str:
        return latent_format_for(config.latent_channels)


def latent_format_for(channels: int) -> str:
    """"stepvideo" for the released models' 64 channels; a VAE or DiT of the same design with another channel count
    (a small test model) gets a format of the same rules and its own channels, registered when first seen."""
    if channels == STEPVIDEO_LATENT.channels:
        return STEPVIDEO_LATENT.name
    name = f"stepvideo_{channels}ch"
    if name not in LATENT_FORMATS:
        register_latent_format(replace(STEPVIDEO_LATENT, name=name, channels=channels, mean=(0.0,) * channels,
                                       std=(1.0,) * channels, title=f"{channels}-channel (Step-Video-style VAE)"))
    return name


STEPVIDEO_VAE = register_vae_family(StepVideoVAEFamily())
