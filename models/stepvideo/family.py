"""The Step-Video family adapter: file layouts, the config from shapes, the official recipes, checks, the timestep
and output conventions, and how conditioning becomes `StepVideoDiT` inputs.

Layouts: the official `transformer/` folder (sharded `diffusion_pytorch_model-0000N-of-0000M.safetensors` with its
`diffusion_pytorch_model.safetensors.index.json` and the diffusers-style config.json) and single files with the
official names, bare or prefixed (e.g. ComfyUI's `model.diffusion_model.`), in 16 bits or ComfyUI's fp8_scaled
(read by the common checkpoint machinery).

Variants: Step-Video-T2V and Step-Video-T2V-Turbo (step-distilled) have the same shapes, so the weights cannot tell
them apart. `describe` names the model "stepvideo_t2v" with T2V's recipe; `with_variant(spec, "stepvideo_t2v_turbo")`
gives the same model with Turbo's recipe (`VARIANTS` lists both with their recipes, for a loader's choice).
Step-Video-TI2V (other input channels) is recognized and refused.
"""
from __future__ import annotations

import dataclasses
import re

import torch

from ...errors import DetectionError, InputError
from ...handles import DiTSpec, TextEmbeds
from ...latents import ImageConditioning, LatentFormat
from ..common.family import (Checkpoint, DiTFamily, LoraTarget, ModelInputs, SamplingDefaults, padded_text,
                             register_family, require_keys)
from ..common.ops import Ops
from ..common.token_chunks import chunking
from .latents import latent_format_for
from .model import FP32_PARAMS, StepVideoConfig, StepVideoDiT

SUPPORTED = "use a Step-Video-T2V (or -Turbo) model, official or ComfyUI layout"
TEXT_ENCODERS = "encode the prompt with Step-LLM and HunyuanCLIP (OpenReel Text Encode with both encoders)"

# The official recipes (README "Best-of-Practice Inference settings", the pipeline's defaults): Euler on
# shift(linspace(1, 0)), videos saved at 25 fps (stepvideo/utils/video_process.py).
VARIANTS = {
    "stepvideo_t2v": SamplingDefaults(50, 13.0, 9.0, 9.0, 0.0, 25, "Step-Video-T2V", solver="euler",
                                      schedule="linear"),
    "stepvideo_t2v_turbo": SamplingDefaults(15, 17.0, 5.0, 5.0, 0.0, 25, "Step-Video-T2V-Turbo", solver="euler",
                                            schedule="linear"),
}
_LORA_NAMES = re.compile(
    r"^(transformer_blocks\.\d+\.(attn1\.(wqkv|wo|q_norm|k_norm)|attn2\.(wq|wkv|wo|q_norm|k_norm)|ff\.net\.(0\.proj|2)"
    r"|norm[12])|adaln_single\.(linear|emb\.timestep_embedder\.linear_[12])|caption_projection\.linear_[12]"
    r"|clip_projection|pos_embed\.proj|proj_out)\.(weight|bias)$")


def _count(ckpt: Checkpoint) -> int:
    found = [int(m.group(1)) for k in ckpt.keys() if (m := re.match(r"transformer_blocks\.(\d+)\.", k))]
    return max(found) + 1 if found else 0



class StepVideoFamily(DiTFamily):
    name = "stepvideo"
    title = "Step-Video"
    anchors = ("adaln_single.linear.weight",)
    fp32_params = FP32_PARAMS

    # ------------------------------------------------------------------ files (normalize: the default, prefix removed)
    def describe(self, ckpt: Checkpoint) -> DiTSpec:
        needed = ("pos_embed.proj.weight", "proj_out.weight", "caption_projection.linear_1.weight",
                  "clip_projection.weight", "transformer_blocks.0.ff.net.0.proj.weight",
                  "transformer_blocks.0.attn1.wqkv.weight")
        require_keys(ckpt, needed, "a Step-Video-T2V model")
        config = ckpt.config or {}
        embed = ckpt.shape("pos_embed.proj.weight")
        hidden, in_channels, patch = embed[0], embed[1], embed[2]
        head_dim = config.get("attention_head_dim") or 128
        heads = config.get("num_attention_heads") or hidden // head_dim
        out_channels = ckpt.shape("proj_out.weight")[0] // (patch * patch)
        if in_channels != out_channels:
            raise DetectionError(f"{ckpt.name} is a Step-Video model with {in_channels} input and {out_channels} "
                                 f"output channels (Step-Video-TI2V joins the image latent to the input), which "
                                 f"OpenReel does not support yet", SUPPORTED)
        try:
            cfg = StepVideoConfig(hidden=hidden, heads=heads, layers=_count(ckpt),
                                  ffn_width=ckpt.shape("transformer_blocks.0.ff.net.0.proj.weight")[0],
                                  in_channels=in_channels, out_channels=out_channels, patch=patch,
                                  caption_dim=ckpt.shape("caption_projection.linear_1.weight")[1],
                                  clip_dim=ckpt.shape("clip_projection.weight")[1])
        except ValueError as err:  # the official RoPE splits every head 64/32/32: heads are 128 wide
            raise DetectionError(f"{ckpt.name}: {err}", "check the config.json beside the weights; Step-Video's "
                                 "heads are 128 channels wide") from err
        return self.with_variant(DiTSpec(self.name, "", "", "t2v", latent_format_for(in_channels), cfg), "stepvideo_t2v")

    def recipes(self) -> dict[str, str]:
        return {defaults.source: variant for variant, defaults in VARIANTS.items()}

    def with_variant(self, spec: DiTSpec, variant: str) -> DiTSpec:
        """The same model under the recipe of `variant` (a key of VARIANTS): T2V and Turbo share their shapes."""
        if variant not in VARIANTS:
            raise InputError(f"unknown Step-Video variant {variant!r}", f"use one of {tuple(VARIANTS)}")
        cfg = spec.config
        size = "30B" if cfg.hidden == 6144 and cfg.layers == 48 else f"{cfg.hidden} wide, {cfg.layers} layers"
        return dataclasses.replace(spec, variant=variant, description=f"{VARIANTS[variant].source} ({size})")

    def lora_target(self, name: str, spec: DiTSpec | None = None) -> LoraTarget | None:
        """The official names as they are (the network uses them)."""
        return LoraTarget(name) if _LORA_NAMES.match(name) else None

    def build(self, spec: DiTSpec, ops: Ops) -> StepVideoDiT:
        return StepVideoDiT(spec.config, ops)

    # ------------------------------------------------------------------ sampling
    def defaults(self, spec: DiTSpec, pair: bool, width: int, height: int) -> SamplingDefaults:
        """The official recipe of the spec's variant: T2V 50 Euler steps, shift 13, CFG 9; Turbo 15 steps, shift
        17, CFG 5 (the README's upper step counts); both 25 fps."""
        return VARIANTS.get(spec.variant, VARIANTS["stepvideo_t2v"])

    def check(self, spec: DiTSpec, fmt: LatentFormat, cond: ImageConditioning | None, embeds: TextEmbeds,
              pair: DiTSpec | None) -> None:
        cfg = spec.config
        if pair is not None:
            raise InputError(f"{spec.description} is a single model, not a pair of experts",
                             "disconnect the low-noise model")
        if cond is not None:
            raise InputError(f"{spec.description} is a text-to-video model but the latent carries image "
                             f"conditioning ({cond.mode})", "use OpenReel Empty Latent")
        width = embeds.positive.shape[-1]
        if width != cfg.caption_dim:
            raise InputError(f"the text embeddings are {width} wide but {spec.description} takes Step-LLM states "
                             f"{cfg.caption_dim} wide", TEXT_ENCODERS)
        second = (embeds.positive_2, embeds.negative_2)
        if any(s is None for s in second):
            raise InputError(f"{spec.description} needs the HunyuanCLIP token states as well, and the embeddings "
                             f"have none", TEXT_ENCODERS)
        if any(s.shape[-1] != cfg.clip_dim for s in second):
            raise InputError(f"the second text encoder's states are {second[0].shape[-1]} wide but "
                             f"{spec.description} takes HunyuanCLIP states {cfg.clip_dim} wide", TEXT_ENCODERS)
        if second[0].shape[1] != second[1].shape[1]:
            raise InputError(f"the HunyuanCLIP states of the two prompts have {second[0].shape[1]} and "
                             f"{second[1].shape[1]} tokens; Step-Video attends to every CLIP row, so both must be "
                             f"padded alike (77 tokens)", TEXT_ENCODERS)

    def model_inputs(self, spec: DiTSpec, embeds: TextEmbeds, cond: ImageConditioning | None,
                     defaults: SamplingDefaults) -> ModelInputs:
        """Both prompts' Step-LLM states zero-padded to one length with their masks (so CFG can batch them; the
        network trims the padding again) and their HunyuanCLIP token states (every row attended, as the official
        pipeline does: a CLIP mask, if the encoder gives one, is not used)."""
        length = max(embeds.positive.shape[1], embeds.negative.shape[1])

        def branch(text: torch.Tensor, mask: torch.Tensor | None, clip: torch.Tensor) -> dict:
            context, context_mask = padded_text(text, mask, length)
            return {"context": context, "context_mask": context_mask, "clip": clip}

        return ModelInputs(branch(embeds.positive, embeds.positive_mask, embeds.positive_2),
                           branch(embeds.negative, embeds.negative_mask, embeds.negative_2))

    def model_timestep(self, t: torch.Tensor) -> torch.Tensor:
        """The official scheduler runs σ_step = 1 − σ (0 = noise) and the network embeds σ_step·1000."""
        return 1000.0 - t[:, 0]

    def model_output(self, output: torch.Tensor) -> torch.Tensor:
        """The network predicts x0 − noise, the samplers integrate noise − x0."""
        return -output

    # ------------------------------------------------------------------ memory
    def activation_bytes(self, spec: DiTSpec, tokens: int, batch: int = 1, token_chunk: int = 0) -> int:
        """Peak working memory of one forward, counted from the tensors alive at its largest moment. Per video token
        (D = hidden, W = MLP width, H = heads, 16-bit compute): the float32 stream (4·D) and RoPE tables
        (4·head_dim) throughout, plus per text token (397 at most: 77 CLIP + 320 Step-LLM) the projected text and one
        block's keys and values (8·D).

        Default: the largest of the self-attention's projection, with the block's modulated input (2·D), the fused
        q/k/v output (6·D), q done (2·D) and k being rotated (normalized 2·D, float32 copy 4·D, rotated halves 4·D,
        joined 4·D, cast 2·D): 26·D; and the MLP's modulated input (2·D), hidden and activated state (4·W).

        Token chunks of c tokens (models/stepvideo/model.py): q, k, v buffers (6·D) beside the stream, plus the
        largest of one chunk's projection (the same 26·D per chunk token), the
        attention output (2·D, with the kernel's float32 log-sum-exp, 4·H), and the MLP (after the buffers are
        freed: 2·D + 4·W per chunk token). The cross-attention and output projection chunks stay below these.
        The figures are within 2% above a count of the tensors alive in a bfloat16 CPU forward
        (tests/test_stepvideo_dit.py)."""
        cfg = spec.config
        d, w, tables = cfg.hidden, cfg.ffn_width, 4 * cfg.head_dim
        text = 397 * 8 * d
        if not chunking(token_chunk, tokens):
            return batch * (tokens * (4 * d + tables + max(26 * d, 2 * d + 4 * w)) + text)
        c = token_chunk
        peak = max(tokens * (10 * d + tables) + 26 * d * c, tokens * (12 * d + tables + 4 * cfg.heads),
                   tokens * (4 * d + tables) + c * (2 * d + 4 * w))
        return batch * (peak + text)


STEPVIDEO = register_family(StepVideoFamily())
