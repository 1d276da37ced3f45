"""The HunyuanVideo family adapter: file layouts, variant detection from shapes, the official recipe, checks, and
how conditioning becomes `HunyuanDiT` inputs.

Layouts: official / ComfyUI names (`mp_rank_00_model_states.pt` under "module", its fp8 pair, ComfyUI's bf16 and
fp8_scaled files, optionally prefixed e.g. `model.diffusion_model.`) and diffusers `HunyuanVideoTransformer3DModel`
names, renamed to the official ones; diffusers' separate q / k / v (and the single blocks' MLP input) are joined
into the official fused linears, and its final-layer [scale, shift] halves are swapped back to [shift, scale].

Variants: text-to-video, guidance-distilled (HYVideo-T/2-cfgdistill, the released model: `guidance_in` present)
or not (HYVideo-T/2: classifier-free guidance). SkyReels-V1 T2V and the 16-channel "token replace" HunyuanVideo-I2V
have the same shapes as the distilled T2V model and cannot be told from it by their weights. The 33-channel
HunyuanVideo-I2V (image latent and mask concatenated) and SkyReels-V1 Hunyuan I2V (32 channels) are recognized
and refused: OpenReel does not run them yet, nor HunyuanVideo 1.5 and HunyuanImage 2.1 (named by their extra
embedders).
"""
from __future__ import annotations

import math
import re

import torch

from ...errors import DetectionError, InputError
from ...handles import DiTSpec, TextEmbeds
from ...latents import ImageConditioning, LatentFormat
from ..common.family import (Checkpoint, DiTFamily, LoraTarget, ModelInputs, SamplingDefaults, find_prefix,
                             padded_text, register_family, require_keys)
from ..common.ops import Ops
from ..common.token_chunks import chunking
from .model import FP32_PARAMS, HunyuanConfig, HunyuanDiT
from .step_cache import hunyuan_step_cache_profile

OFFICIAL_ANCHORS = ("txt_in.individual_token_refiner.blocks.0.norm1.weight",)
DIFFUSERS_ANCHORS = ("context_embedder.token_refiner.refiner_blocks.0.norm1.weight",)
LATENT_FORMAT = "hunyuan"   # registered by models/hunyuan/latents.py
SUPPORTED = "use a HunyuanVideo text-to-video model (official, ComfyUI or diffusers layout)"

_REFINER = r"txt_in.individual_token_refiner.blocks.\1."
# diffusers name → official name: the first rule that matches applies; names no rule matches stay as they are.
_DIFFUSERS_RULES = [(re.compile(a), b) for a, b in (
    (r"^x_embedder\.proj\.", "img_in.proj."),
    (r"^context_embedder\.proj_in\.", "txt_in.input_embedder."),
    (r"^context_embedder\.time_text_embed\.timestep_embedder\.linear_1\.", "txt_in.t_embedder.mlp.0."),
    (r"^context_embedder\.time_text_embed\.timestep_embedder\.linear_2\.", "txt_in.t_embedder.mlp.2."),
    (r"^context_embedder\.time_text_embed\.text_embedder\.", "txt_in.c_embedder."),
    (r"^context_embedder\.token_refiner\.refiner_blocks\.(\d+)\.attn\.to_out\.0\.", _REFINER + "self_attn_proj."),
    (r"^context_embedder\.token_refiner\.refiner_blocks\.(\d+)\.ff\.net\.0\.proj\.", _REFINER + "mlp.fc1."),
    (r"^context_embedder\.token_refiner\.refiner_blocks\.(\d+)\.ff\.net\.2\.", _REFINER + "mlp.fc2."),
    (r"^context_embedder\.token_refiner\.refiner_blocks\.(\d+)\.norm_out\.linear\.", _REFINER + "adaLN_modulation.1."),
    (r"^context_embedder\.token_refiner\.refiner_blocks\.(\d+)\.(norm[12])\.", _REFINER + r"\2."),
    (r"^time_text_embed\.timestep_embedder\.linear_1\.", "time_in.mlp.0."),
    (r"^time_text_embed\.timestep_embedder\.linear_2\.", "time_in.mlp.2."),
    (r"^time_text_embed\.guidance_embedder\.linear_1\.", "guidance_in.mlp.0."),
    (r"^time_text_embed\.guidance_embedder\.linear_2\.", "guidance_in.mlp.2."),
    (r"^time_text_embed\.text_embedder\.linear_1\.", "vector_in.in_layer."),
    (r"^time_text_embed\.text_embedder\.linear_2\.", "vector_in.out_layer."),
    (r"^transformer_blocks\.(\d+)\.norm1\.linear\.", r"double_blocks.\1.img_mod.linear."),
    (r"^transformer_blocks\.(\d+)\.norm1_context\.linear\.", r"double_blocks.\1.txt_mod.linear."),
    (r"^transformer_blocks\.(\d+)\.attn\.norm_q\.", r"double_blocks.\1.img_attn_q_norm."),
    (r"^transformer_blocks\.(\d+)\.attn\.norm_k\.", r"double_blocks.\1.img_attn_k_norm."),
    (r"^transformer_blocks\.(\d+)\.attn\.norm_added_q\.", r"double_blocks.\1.txt_attn_q_norm."),
    (r"^transformer_blocks\.(\d+)\.attn\.norm_added_k\.", r"double_blocks.\1.txt_attn_k_norm."),
    (r"^transformer_blocks\.(\d+)\.attn\.to_out\.0\.", r"double_blocks.\1.img_attn_proj."),
    (r"^transformer_blocks\.(\d+)\.attn\.to_add_out\.", r"double_blocks.\1.txt_attn_proj."),
    (r"^transformer_blocks\.(\d+)\.ff\.net\.0\.proj\.", r"double_blocks.\1.img_mlp.fc1."),
    (r"^transformer_blocks\.(\d+)\.ff\.net\.2\.", r"double_blocks.\1.img_mlp.fc2."),
    (r"^transformer_blocks\.(\d+)\.ff_context\.net\.0\.proj\.", r"double_blocks.\1.txt_mlp.fc1."),
    (r"^transformer_blocks\.(\d+)\.ff_context\.net\.2\.", r"double_blocks.\1.txt_mlp.fc2."),
    (r"^single_transformer_blocks\.(\d+)\.attn\.norm_q\.", r"single_blocks.\1.q_norm."),
    (r"^single_transformer_blocks\.(\d+)\.attn\.norm_k\.", r"single_blocks.\1.k_norm."),
    (r"^single_transformer_blocks\.(\d+)\.norm\.linear\.", r"single_blocks.\1.modulation.linear."),
    (r"^single_transformer_blocks\.(\d+)\.proj_out\.", r"single_blocks.\1.linear2."),
    (r"^proj_out\.", "final_layer.linear."),
)]

_SIZES = {3072: "13B"}

# LoRAs: official parameter names a LoRA may change (recognizes a HunyuanVideo LoRA), and diffusers' separate
# layers that the network fuses: (pattern, fused layer, the part's group in the pattern). A fused layer's output
# rows are q, k, v (hidden wide each), then for single blocks the MLP input (mlp_width wide).
_LORA_NAMES = re.compile(
    r"^(double_blocks\.\d+\.(img|txt)_(mod\.linear|attn_qkv|attn_proj|attn_q_norm|attn_k_norm|mlp\.fc[12])|"
    r"single_blocks\.\d+\.(linear[12]|modulation\.linear|q_norm|k_norm)|img_in\.proj|txt_in\.[\w.]+|time_in\.mlp\.[02]|"
    r"vector_in\.(in|out)_layer|guidance_in\.mlp\.[02]|final_layer\.(linear|adaLN_modulation\.1))\.(weight|bias)$")
_LORA_FUSED = tuple((re.compile(a), b) for a, b in (
    (r"^transformer_blocks\.(\d+)\.attn\.to_([qkv])\.(weight|bias)$", r"double_blocks.\1.img_attn_qkv.\3"),
    (r"^transformer_blocks\.(\d+)\.attn\.add_([qkv])_proj\.(weight|bias)$", r"double_blocks.\1.txt_attn_qkv.\3"),
    (r"^single_transformer_blocks\.(\d+)\.attn\.to_([qkv])\.(weight|bias)$", r"single_blocks.\1.linear1.\3"),
    (r"^single_transformer_blocks\.(\d+)\.proj_(mlp)\.(weight|bias)$", r"single_blocks.\1.linear1.\3"),
    (r"^context_embedder\.token_refiner\.refiner_blocks\.(\d+)\.attn\.to_([qkv])\.(weight|bias)$",
     r"txt_in.individual_token_refiner.blocks.\1.self_attn_qkv.\3"),
))

# Later models built on this architecture, by keys only they have (official and diffusers names).
_UNSUPPORTED = (
    (("vision_in.", "image_embedder."), "a HunyuanVideo 1.5 model"),
    (("byt5_in.", "context_embedder_2."), "a HunyuanImage 2.1 model"),
)


def diffusers_to_official(key: str) -> str:
    for pattern, repl in _DIFFUSERS_RULES:
        new, found = pattern.subn(repl, key, count=1)
        if found:
            return new
    return key


def _join(*tensors: torch.Tensor) -> torch.Tensor:
    return torch.cat(tensors, dim=0)


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    scale, shift = t.chunk(2, dim=0)
    return torch.cat([shift, scale], dim=0)


def _indices(keys: list[str], pattern: str) -> list[int]:
    return sorted({int(m.group(1)) for k in keys if (m := re.match(pattern, k))})


def _count(ckpt: Checkpoint, pattern: str) -> int:
    found = _indices(ckpt.keys(), pattern)
    return found[-1] + 1 if found else 0


def _diffusers_joins(ckpt: Checkpoint) -> dict:
    """Official fused tensors from diffusers' separate ones (`Checkpoint.combined` plan)."""
    plan, keys = {}, ckpt.keys()

    def join(target: str, sources: list[str], how=_join):
        for part in ("weight", "bias"):
            names = tuple(f"{s}.{part}" for s in sources)
            if all(n in ckpt for n in names):
                plan[f"{target}.{part}"] = (names, how)

    for n in _indices(keys, r"transformer_blocks\.(\d+)\."):
        attn = f"transformer_blocks.{n}.attn"
        join(f"double_blocks.{n}.img_attn_qkv", [f"{attn}.to_{x}" for x in "qkv"])
        join(f"double_blocks.{n}.txt_attn_qkv", [f"{attn}.add_{x}_proj" for x in "qkv"])
    for n in _indices(keys, r"single_transformer_blocks\.(\d+)\."):
        block = f"single_transformer_blocks.{n}"
        join(f"single_blocks.{n}.linear1", [f"{block}.attn.to_{x}" for x in "qkv"] + [f"{block}.proj_mlp"])
    for n in _indices(keys, r"context_embedder\.token_refiner\.refiner_blocks\.(\d+)\."):
        attn = f"context_embedder.token_refiner.refiner_blocks.{n}.attn"
        join(f"txt_in.individual_token_refiner.blocks.{n}.self_attn_qkv", [f"{attn}.to_{x}" for x in "qkv"])
    join("final_layer.adaLN_modulation.1", ["norm_out.linear"], _swap_halves)
    return plan


def _rope_axes(head_dim: int) -> tuple[int, int, int]:
    """(16, 56, 56) at the real head width 128; for other widths (tiny test models) the same split, scaled, with
    every axis even."""
    t = 2 * max(1, round(head_dim / 16))
    h = 2 * ((head_dim - t) // 4)
    return t, h, head_dim - t - h



class HunyuanFamily(DiTFamily):
    name = "hunyuan"
    title = "HunyuanVideo"
    anchors = OFFICIAL_ANCHORS + DIFFUSERS_ANCHORS
    fp32_params = FP32_PARAMS

    # ------------------------------------------------------------------ files
    def normalize(self, ckpt: Checkpoint) -> Checkpoint:
        prefix = find_prefix(ckpt, OFFICIAL_ANCHORS)
        if prefix is not None:
            return ckpt.strip_prefix(prefix)
        ckpt = ckpt.strip_prefix(find_prefix(ckpt, DIFFUSERS_ANCHORS) or "")
        return ckpt.combined(_diffusers_joins(ckpt)).renamed(diffusers_to_official)

    def describe(self, ckpt: Checkpoint) -> DiTSpec:
        for markers, what in _UNSUPPORTED:
            if any(k.startswith(markers) for k in ckpt.keys()):
                raise DetectionError(f"{ckpt.name} is {what}, which OpenReel does not support yet", SUPPORTED)
        needed = ("img_in.proj.weight", "txt_in.input_embedder.weight", "vector_in.in_layer.weight",
                  "time_in.mlp.0.weight", "final_layer.linear.weight", "double_blocks.0.img_mlp.fc1.weight",
                  "txt_in.individual_token_refiner.blocks.0.mlp.fc1.weight")
        require_keys(ckpt, needed, "a HunyuanVideo model")
        config = ckpt.config or {}
        if config.get("image_condition_type"):
            raise DetectionError(f"{ckpt.name} is HunyuanVideo-I2V ({config['image_condition_type']} image "
                                 f"conditioning), which OpenReel does not support yet", SUPPORTED)
        embed = ckpt.shape("img_in.proj.weight")
        hidden, in_channels, patch = embed[0], embed[1], tuple(embed[2:])
        heads = config.get("num_attention_heads") or config.get("heads_num")
        if not heads:
            heads = hidden // (128 if hidden % 128 == 0 else 64 if hidden % 64 == 0 else hidden)
        axes = config.get("rope_axes_dim") or config.get("rope_dim_list") or _rope_axes(hidden // heads)
        try:
            cfg = HunyuanConfig(
                hidden=hidden, heads=heads, mlp_width=ckpt.shape("double_blocks.0.img_mlp.fc1.weight")[0],
                double_blocks=_count(ckpt, r"double_blocks\.(\d+)\."),
                single_blocks=_count(ckpt, r"single_blocks\.(\d+)\."),
                in_channels=in_channels,
                out_channels=ckpt.shape("final_layer.linear.weight")[0] // math.prod(patch), patch_size=patch,
                text_dim=ckpt.shape("txt_in.input_embedder.weight")[1],
                pooled_dim=ckpt.shape("vector_in.in_layer.weight")[1],
                refiner_blocks=_count(ckpt, r"txt_in\.individual_token_refiner\.blocks\.(\d+)\."),
                refiner_heads=heads,
                refiner_mlp_width=ckpt.shape("txt_in.individual_token_refiner.blocks.0.mlp.fc1.weight")[0],
                guidance_embed="guidance_in.mlp.0.weight" in ckpt, rope_axes=tuple(axes),
                rope_theta=float(config.get("rope_theta", 256.0)), freq_dim=ckpt.shape("time_in.mlp.0.weight")[1])
        except ValueError as err:
            raise DetectionError(f"{ckpt.name}: {err}", "add a config.json stating num_attention_heads and "
                                 "rope_axes_dim beside the weights") from err
        return _classify(ckpt.name, cfg)

    def lora_target(self, name: str, spec: DiTSpec | None = None) -> LoraTarget | None:
        """Official / ComfyUI names as they are; diffusers names renamed, diffusers' q, k, v (and the single
        blocks' MLP input) to their rows of the fused layer, its final modulation with [scale, shift] swapped."""
        for pattern, fused in _LORA_FUSED:
            match = pattern.match(name)
            if match:
                if spec is None:
                    return LoraTarget(match.expand(fused))
                d = spec.config.hidden
                start = "qkvm".index(match.group(2)[0]) * d
                width = spec.config.mlp_width if start == 3 * d else d
                return LoraTarget(match.expand(fused), (start, start + width))
        if re.match(r"^norm_out\.linear\.(weight|bias)$", name):
            return LoraTarget("final_layer.adaLN_modulation.1." + name.rpartition(".")[2], reorder=_swap_halves)
        official = diffusers_to_official(name)
        return LoraTarget(official) if _LORA_NAMES.match(official) else None

    def build(self, spec: DiTSpec, ops: Ops) -> HunyuanDiT:
        return HunyuanDiT(spec.config, ops)

    # ------------------------------------------------------------------ sampling
    def defaults(self, spec: DiTSpec, pair: bool, width: int, height: int) -> SamplingDefaults:
        """The official recipe (HunyuanVideo scripts/run_sample_video.sh, hyvideo/config.py): 50 Euler steps on
        linspace(1, 0) shifted by 7, 24 fps; the distilled model takes guidance 6.0 as an input and runs without
        classifier-free guidance; a non-distilled model runs classifier-free guidance 6.0 instead."""
        if spec.config.guidance_embed:
            return SamplingDefaults(50, 7.0, 1.0, 1.0, 0.0, 24, "HunyuanVideo T2V", embedded_guidance=6.0,
                                    solver="euler", schedule="linear")
        return SamplingDefaults(50, 7.0, 6.0, 6.0, 0.0, 24, "HunyuanVideo T2V (not guidance-distilled)",
                                solver="euler", schedule="linear")

    def check(self, spec: DiTSpec, fmt: LatentFormat, cond: ImageConditioning | None, embeds: TextEmbeds,
              pair: DiTSpec | None) -> None:
        cfg = spec.config
        if pair is not None:
            raise InputError(f"{spec.description} is a single model, not a pair of experts",
                             "disconnect the low-noise model")
        width = embeds.positive.shape[-1]
        if width != cfg.text_dim:
            raise InputError(f"the text embeddings are {width} wide but {spec.description} takes {cfg.text_dim}",
                             "encode with the LLaVA-Llama-3 text encoder")
        pooled = (embeds.positive_pooled, embeds.negative_pooled)
        if any(p is None for p in pooled):
            raise InputError(f"{spec.description} needs the CLIP-L pooled text vector, and the embeddings have none",
                             "connect CLIP-L (clip_l.safetensors) as text_encoder_2 of OpenReel Text Encode (from "
                             "native nodes: DualCLIPLoader type hunyuan_video → CLIPTextEncode → OpenReel From "
                             "Conditioning with encoder Llama + CLIP-L)")
        if any(p.shape[-1] != cfg.pooled_dim for p in pooled):
            raise InputError(f"the pooled text vectors are {pooled[0].shape[-1]} wide but {spec.description} "
                             f"takes {cfg.pooled_dim}", "connect CLIP-L (clip_l.safetensors) as text_encoder_2 of "
                             "OpenReel Text Encode")
        if cond is not None:
            raise InputError(f"{spec.description} is a text-to-video model but the latent carries image "
                             f"conditioning ({cond.mode})", "use OpenReel Empty Latent")

    def model_inputs(self, spec: DiTSpec, embeds: TextEmbeds, cond: ImageConditioning | None,
                     defaults: SamplingDefaults) -> ModelInputs:
        """Both prompts zero-padded to one length with their masks (so CFG can batch them; the network drops the
        padding again), the CLIP-L pooled vectors, and the embedded guidance scale of a distilled model."""
        length = max(embeds.positive.shape[1], embeds.negative.shape[1])

        def branch(text: torch.Tensor, mask: torch.Tensor | None, pooled: torch.Tensor) -> dict:
            context, context_mask = padded_text(text, mask, length)
            return {"context": context, "context_mask": context_mask, "pooled": pooled}

        shared = {"guidance": self.embedded_scale(embeds, defaults)} if spec.config.guidance_embed else {}
        return ModelInputs(branch(embeds.positive, embeds.positive_mask, embeds.positive_pooled),
                           branch(embeds.negative, embeds.negative_mask, embeds.negative_pooled), shared)

    def model_timestep(self, t: torch.Tensor) -> torch.Tensor:
        return t[:, 0]

    def step_cache_profile(self, spec: DiTSpec, latent_shape=None, pair: bool = False):
        """The published TeaCache / MagCache calibrations (models/hunyuan/step_cache.py)."""
        return hunyuan_step_cache_profile(spec, latent_shape, pair)

    # ------------------------------------------------------------------ memory
    def stream_bytes(self, spec: DiTSpec, tokens: int, batch: int = 1) -> int:
        """The float32 stream of the image tokens and the (at most 256) text tokens the single-stream blocks join."""
        return batch * (tokens + 256) * spec.config.hidden * 4

    def activation_bytes(self, spec: DiTSpec, tokens: int, batch: int = 1, token_chunk: int = 0) -> int:
        """Peak working memory of one forward, counted from the tensors alive at its largest moment. Per token of
        L = image tokens + the 256 LLaVA tokens at most (D = hidden, W = MLP width, 16-bit compute), plus the
        float32 RoPE tables (4·head_dim):

        Default: at the single-stream block's join for `linear2`, the stream the block list started from (4·D),
        the block's input stream (4·D), its modulated input (2·D), `linear1`'s output (6·D + 2·W), the attention
        output (2·D), the activated MLP state (2·W) and the join (2·D + 2·W): 20·D + 6·W. The same count with the
        image embedding still held (+4·D, as before it was released ahead of the blocks) gives 9.28 and 16.38 GiB
        at 544p and 720p × 129 frames with 40 text tokens (67,360 and 118,840 tokens); an H200 measured 9.29 and
        16.40 (bench/RESULTS.md, eager, batch 1).

        Token chunks of c tokens (models/hunyuan/model.py): the blocks update one stream in place, so the peak is
        the single-stream block's attention, with the stream (4·D), q, k, v (6·D), the activated MLP state (2·W)
        and the attention output (2·D) alive: 12·D + 2·W. Before attention the output's 2·D is not there yet, but
        one chunk's temporaries are, per chunk token max(22·D + 2·W: modulated input, `linear1`'s output, q or k
        normalized and under RoPE in float32; 8·D + 4·W: modulated input, `linear1`'s output, the activated MLP
        chunk). The final layer's 16·D over the image tokens stays below where W ≥ 2·D (13B: W = 4·D).
        Both figures equal a count of the tensors alive in a bfloat16 CPU forward within 0.5%
        (tests/test_token_chunks.py)."""
        cfg = spec.config
        d, w, length = cfg.hidden, cfg.mlp_width, tokens + 256
        tables = 4 * cfg.head_dim
        if not chunking(token_chunk, tokens):
            return batch * length * (20 * d + 6 * w + tables)
        before_attention = token_chunk * max(22 * d + 2 * w, 8 * d + 4 * w) - 2 * d * length
        return batch * (length * (12 * d + 2 * w + tables) + max(0, before_attention))


def _classify(name: str, cfg: HunyuanConfig) -> DiTSpec:
    size = _SIZES.get(cfg.hidden, f"{cfg.hidden}-wide")
    if cfg.in_channels == 16 and cfg.out_channels == 16:
        if cfg.guidance_embed:
            return DiTSpec("hunyuan", "t2v_cfgdistill", f"HunyuanVideo T2V {size} (guidance-distilled)", "t2v",
                           LATENT_FORMAT, cfg)
        return DiTSpec("hunyuan", "t2v", f"HunyuanVideo T2V {size} (not guidance-distilled)", "t2v",
                       LATENT_FORMAT, cfg)
    if cfg.in_channels == 33 and cfg.out_channels == 16:
        raise DetectionError(f"{name} is HunyuanVideo-I2V (33 input channels: the image latent and a mask joined "
                             f"to the latent), which OpenReel does not support yet", SUPPORTED)
    if cfg.in_channels == 32 and cfg.out_channels == 16:
        raise DetectionError(f"{name} is SkyReels-V1 Hunyuan I2V (32 input channels: the image latent joined to "
                             f"the latent), which OpenReel does not support yet", SUPPORTED)
    raise DetectionError(f"{name} is a HunyuanVideo-architecture model with {cfg.in_channels} input and "
                         f"{cfg.out_channels} output channels, which matches no supported variant", SUPPORTED)


HUNYUAN = register_family(HunyuanFamily())
