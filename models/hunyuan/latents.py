"""The HunyuanVideo latent space and the HunyuanVideo VAE adapter: recognition of its files in every layout.

Format "hunyuan": 16 channels, 4×8×8, the VAE's posterior mean × 0.476986 (no shift; `LatentFormat` states it as
mean 0, std 1 / 0.476986). Preview factors are the published per-channel latent→RGB factors ComfyUI ships for this
space (comfy/latent_formats.py `HunyuanVideo`: data, read for facts).

VAE layouts (optionally under a prefix such as `vae.` or `first_stage_model.`; keys outside it are ignored):
- official `hunyuan-video-t2v-720p/vae/pytorch_model.pt` (+ config.json) and diffusers `AutoencoderKLHunyuanVideo`
  folders share one set of names, ours;
- ComfyUI's `hunyuan_video_vae_bf16.safetensors` holds the same tensors under the LDM names ComfyUI converts
  diffusers VAEs to (`encoder.down.N.block.M`, `decoder.up.N` counted from the output side, `mid.attn_1.q`,
  `nin_shortcut`, `norm_out`), its attention projections as 1×1×1 conv kernels; they are renamed to ours.
Anchors are the shortcut convs of the resnets that change width: in the diffusers layout no other diffusers VAE
has them (HunyuanVideo 1.5, LTX, CogVideoX and the Wan VAE do not), and a 2D image VAE has no `.conv` inside.
"""
from __future__ import annotations

import re

from ...errors import DetectionError
from ...latents import LatentFormat, register_latent_format
from ..common.family import Checkpoint, VAEFamily, find_prefix, keep_under, register_vae_family
from .vae import SCALING_FACTOR, HunyuanVAE, HunyuanVAEConfig

PATCH = 2  # HunyuanVideo's DiT patch: sizes must be multiples of the VAE stride × 2

HUNYUAN_LATENT = register_latent_format(LatentFormat(
    "hunyuan", "16-channel (HunyuanVideo VAE)", channels=16, temporal_stride=4, spatial_stride=8,
    size_multiple=8 * PATCH, mean=(0.0,) * 16, std=(1 / SCALING_FACTOR,) * 16, preview_factors=(
    (-0.0395, -0.0331, 0.0445), (0.0696, 0.0795, 0.0518), (0.0135, -0.0945, -0.0282), (0.0108, -0.0250, -0.0765),
    (-0.0209, 0.0032, 0.0224), (-0.0804, -0.0254, -0.0639), (-0.0991, 0.0271, -0.0669), (-0.0646, -0.0422, -0.0400),
    (-0.0696, -0.0595, -0.0894), (-0.0799, -0.0208, -0.0375), (0.1166, 0.1627, 0.0962), (0.1165, 0.0432, 0.0407),
    (-0.2315, -0.1920, -0.1355), (-0.0270, 0.0401, -0.0821), (-0.0616, -0.0997, -0.0727), (0.0249, -0.0469, -0.1703),
    ), preview_bias=(0.0259, -0.0192, -0.0761)))

DIFFUSERS_ANCHORS = ("decoder.up_blocks.3.resnets.0.conv_shortcut.conv.weight",
                     "encoder.down_blocks.1.resnets.0.conv_shortcut.conv.weight")
COMFY_ANCHORS = ("decoder.up.0.block.0.nin_shortcut.conv.weight", "encoder.down.1.block.0.nin_shortcut.conv.weight")
_TODO = ("the HunyuanVideo VAE is hunyuan-video-t2v-720p/vae (pytorch_model.pt with its config.json), ComfyUI's "
         "hunyuan_video_vae_bf16.safetensors or a diffusers HunyuanVideo vae/ folder")

# ComfyUI (LDM) name → ours, for every part but the decoder's level numbers (reversed, see `comfy_to_diffusers`).
_COMFY_RULES = [(re.compile(a), b) for a, b in (
    (r"^encoder\.down\.(\d+)\.block\.(\d+)\.", r"encoder.down_blocks.\1.resnets.\2."),
    (r"^encoder\.down\.(\d+)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0."),
    (r"^(encoder|decoder)\.norm_out\.", r"\1.conv_norm_out."),
    (r"\.mid\.block_1\.", ".mid_block.resnets.0."),
    (r"\.mid\.block_2\.", ".mid_block.resnets.1."),
    (r"\.mid\.attn_1\.norm\.", ".mid_block.attentions.0.group_norm."),
    (r"\.mid\.attn_1\.(q|k|v)\.", r".mid_block.attentions.0.to_\1."),
    (r"\.mid\.attn_1\.proj_out\.", ".mid_block.attentions.0.to_out.0."),
    (r"\.nin_shortcut\.", ".conv_shortcut."),
)]


def comfy_to_diffusers(key: str, levels: int) -> str:
    """A ComfyUI-layout HunyuanVideo VAE name → ours (`levels`: the number of encoder / decoder levels)."""
    for pattern, repl in _COMFY_RULES:
        key = pattern.sub(repl, key)
    key = re.sub(r"^decoder\.up\.(\d+)\.block\.",
                 lambda m: f"decoder.up_blocks.{levels - 1 - int(m[1])}.resnets.", key)
    return re.sub(r"^decoder\.up\.(\d+)\.upsample\.",
                  lambda m: f"decoder.up_blocks.{levels - 1 - int(m[1])}.upsamplers.0.", key)


def _count(ckpt: Checkpoint, pattern: str) -> int:
    found = {int(m[1]) for k in ckpt.keys() if (m := re.match(pattern, k))}
    return max(found) + 1 if found else 0


class HunyuanVAEFamily(VAEFamily):
    name = "hunyuan"
    title = "HunyuanVideo"
    anchors = DIFFUSERS_ANCHORS + COMFY_ANCHORS

    def normalize(self, ckpt: Checkpoint) -> Checkpoint:
        prefix = find_prefix(ckpt, DIFFUSERS_ANCHORS)
        if prefix is not None:
            return keep_under(ckpt, prefix)
        ckpt = keep_under(ckpt, find_prefix(ckpt, COMFY_ANCHORS) or "")
        levels = _count(ckpt, r"encoder\.down\.(\d+)\.")
        return ckpt.renamed(lambda k: comfy_to_diffusers(k, levels))

    def describe(self, ckpt: Checkpoint) -> HunyuanVAEConfig:
        needed = ("encoder.conv_in.conv.weight", "quant_conv.weight", "post_quant_conv.weight",
                  "decoder.conv_in.conv.weight", "decoder.conv_out.conv.weight")
        missing = [k for k in needed if k not in ckpt]
        if missing:
            raise DetectionError(f"{ckpt.name} looks like a HunyuanVideo VAE but lacks {', '.join(missing)}",
                                 "the file is incomplete (an encoder or decoder only?); download the full VAE")
        levels = _count(ckpt, r"encoder\.down_blocks\.(\d+)\.")
        block_out = tuple(ckpt.shape(f"encoder.down_blocks.{i}.resnets.0.conv1.conv.weight")[0]
                          for i in range(levels))
        latent = ckpt.shape("decoder.conv_in.conv.weight")[1]
        if latent != 16 or levels != 4 or ckpt.shape("encoder.conv_in.conv.weight")[1] != 3:
            raise DetectionError(f"{ckpt.name} is a causal video VAE with {latent} latent channels and {levels} "
                                 f"levels, which is not HunyuanVideo's (16 channels, 4 levels)", _TODO)
        config = ckpt.config or {}
        fits = tuple(config.get("block_out_channels", ())) == block_out  # a config.json of this very VAE
        groups = int(config.get("norm_num_groups", 32)) if fits else 32  # GroupNorm groups are not in the weights
        if any(width % groups for width in block_out):
            raise DetectionError(f"{ckpt.name} has block widths {block_out}, which {groups} norm groups do not "
                                 f"divide: it is not HunyuanVideo's VAE", _TODO)
        attention = "encoder.mid_block.attentions.0.to_q.weight"
        return HunyuanVAEConfig(
            latent_channels=latent, block_out=block_out,
            layers_per_block=_count(ckpt, r"encoder\.down_blocks\.0\.resnets\.(\d+)\."), norm_groups=groups,
            mid_attention=attention in ckpt, attention_kernels=attention in ckpt and len(ckpt.shape(attention)) == 5)

    def build(self, config: HunyuanVAEConfig) -> HunyuanVAE:
        return HunyuanVAE(config)

    def latent_format(self, config: HunyuanVAEConfig) -> str:
        return HUNYUAN_LATENT.name


HUNYUAN_VAE = register_vae_family(HunyuanVAEFamily())
