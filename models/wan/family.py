"""The Wan family adapter (Wan2.1, Wan2.2 A14B experts and TI2V-5B, SkyReels-V2): file layouts, variant detection
from shapes, official sampling defaults, checks, and how conditioning becomes `WanDiT` inputs.

Layouts: official / ComfyUI names (optionally prefixed, e.g. `model.diffusion_model.`) and diffusers
`WanTransformer3DModel` / `SkyReelsV2Transformer3DModel` names, which are renamed to the official ones.
"""
from __future__ import annotations

import re

import torch

from ...errors import DetectionError, InputError
from ...handles import DiTSpec, TextEmbeds
from ...latents import ImageConditioning, LatentFormat
from ..common.family import (Checkpoint, DiTFamily, LoraTarget, ModelInputs, SamplingDefaults, find_prefix,
                             register_family, require_keys)
from ..common.ops import Ops
from ..common.token_chunks import chunking
from . import latents as wan_latents
from .model import FP32_PARAMS, WanConfig, WanDiT
from .step_cache import wan_step_cache_profile

OFFICIAL_ANCHORS = ("head.modulation",)
DIFFUSERS_ANCHORS = ("condition_embedder.time_proj.weight",)

# diffusers name → official name; applied in order, each rule to the result of the previous ones.
_DIFFUSERS_RULES = [(re.compile(a), b) for a, b in (
    (r"^condition_embedder\.text_embedder\.linear_1\.", "text_embedding.0."),
    (r"^condition_embedder\.text_embedder\.linear_2\.", "text_embedding.2."),
    (r"^condition_embedder\.time_embedder\.linear_1\.", "time_embedding.0."),
    (r"^condition_embedder\.time_embedder\.linear_2\.", "time_embedding.2."),
    (r"^condition_embedder\.time_proj\.", "time_projection.1."),
    (r"^condition_embedder\.image_embedder\.norm1\.", "img_emb.proj.0."),
    (r"^condition_embedder\.image_embedder\.ff\.net\.0\.proj\.", "img_emb.proj.1."),
    (r"^condition_embedder\.image_embedder\.ff\.net\.2\.", "img_emb.proj.3."),
    (r"^condition_embedder\.image_embedder\.norm2\.", "img_emb.proj.4."),
    (r"^condition_embedder\.image_embedder\.pos_embed$", "img_emb.emb_pos"),
    (r"^blocks\.(\d+)\.scale_shift_table$", r"blocks.\1.modulation"),
    (r"^blocks\.(\d+)\.norm2\.", r"blocks.\1.norm3."),
    (r"^blocks\.(\d+)\.attn1\.", r"blocks.\1.self_attn."),
    (r"^blocks\.(\d+)\.attn2\.", r"blocks.\1.cross_attn."),
    (r"\.to_q\.", ".q."), (r"\.to_k\.", ".k."), (r"\.to_v\.", ".v."), (r"\.to_out\.0\.", ".o."),
    (r"\.add_k_proj\.", ".k_img."), (r"\.add_v_proj\.", ".v_img."), (r"\.norm_added_k\.", ".norm_k_img."),
    (r"^blocks\.(\d+)\.ffn\.net\.0\.proj\.", r"blocks.\1.ffn.0."),
    (r"^blocks\.(\d+)\.ffn\.net\.2\.", r"blocks.\1.ffn.2."),
    (r"^scale_shift_table$", "head.modulation"),
    (r"^proj_out\.", "head.head."),
    (r"^fps_projection\.net\.0\.proj\.", "fps_projection.0."),
    (r"^fps_projection\.net\.2\.", "fps_projection.2."),
)]

# Wan derivatives OpenReel does not run yet, by a key only they have.
_UNSUPPORTED = (
    ("vace_patch_embedding.weight", "a Wan VACE model"),
    ("casual_audio_encoder.", "a Wan2.2 S2V (speech-to-video) model"),
    ("face_adapter.", "a Wan2.2 Animate model"),
    ("control_adapter.", "a Wan camera-control model"),
    ("audio_proj.", "a Wan HuMo model"),
    ("ref_conv.", "a Wan Fun reference model"),
)

_SIZES = {1536: "1.3B", 3072: "5B", 5120: "14B"}

# Official parameter names a LoRA may change (after the diffusers names are renamed): recognizes a Wan LoRA.
_LORA_NAMES = re.compile(
    r"^(blocks\.\d+\.((self_attn|cross_attn)\.\w+|ffn\.[02]|norm3)\.(weight|bias)|blocks\.\d+\.modulation|"
    r"head\.(head\.(weight|bias)|modulation)|img_emb\.emb_pos|(patch_embedding|text_embedding\.[02]|"
    r"time_embedding\.[02]|time_projection\.1|img_emb\.proj\.[0134]|fps_projection\.[02])\.(weight|bias))$")


def diffusers_to_official(key: str) -> str:
    for pattern, repl in _DIFFUSERS_RULES:
        key = pattern.sub(repl, key)
    return key


def _pad_to(t: torch.Tensor, length: int) -> torch.Tensor:
    return torch.cat([t, t.new_zeros(t.shape[0], length - t.shape[1], t.shape[2])], dim=1) if t.shape[1] < length else t


class WanFamily(DiTFamily):
    name = "wan"
    title = "Wan"
    anchors = OFFICIAL_ANCHORS + DIFFUSERS_ANCHORS
    fp32_params = FP32_PARAMS

    # ------------------------------------------------------------------ files
    def normalize(self, ckpt: Checkpoint) -> Checkpoint:
        prefix = find_prefix(ckpt, OFFICIAL_ANCHORS)
        if prefix is not None:
            return ckpt.strip_prefix(prefix)
        prefix = find_prefix(ckpt, DIFFUSERS_ANCHORS)
        return ckpt.strip_prefix(prefix).renamed(diffusers_to_official)

    def describe(self, ckpt: Checkpoint) -> DiTSpec:
        for marker, what in _UNSUPPORTED:
            if any(k.startswith(marker) for k in ckpt.keys()):
                raise DetectionError(f"{ckpt.name} is {what}, which OpenReel does not support yet",
                                     "use a Wan2.1 / Wan2.2 / SkyReels-V2 T2V, I2V, FLF2V, TI2V or DF model")
        needed = ("patch_embedding.weight", "head.head.weight", "blocks.0.ffn.0.weight", "text_embedding.0.weight")
        require_keys(ckpt, needed, "a Wan model")
        dim = ckpt.shape("head.modulation")[-1]
        in_dim = ckpt.shape("patch_embedding.weight")[1]
        patch = tuple(ckpt.shape("patch_embedding.weight")[2:])
        out_dim = ckpt.shape("head.head.weight")[0] // (patch[0] * patch[1] * patch[2])
        layers = 1 + max(int(m.group(1)) for k in ckpt.keys() if (m := re.match(r"blocks\.(\d+)\.", k)))
        head_dim = 128 if dim % 128 == 0 else 64 if dim % 64 == 0 else dim
        if ckpt.config:  # a config.json beside the weights may state the head count (tiny test models need it)
            heads = ckpt.config.get("num_heads") or ckpt.config.get("num_attention_heads")
            if heads:
                head_dim = dim // heads
        has_img = "img_emb.proj.1.weight" in ckpt
        image_tokens = 0
        if has_img:
            image_tokens = ckpt.shape("img_emb.emb_pos")[1] if "img_emb.emb_pos" in ckpt else 257
        config = WanConfig(
            dim=dim, ffn_dim=ckpt.shape("blocks.0.ffn.0.weight")[0], num_heads=dim // head_dim, num_layers=layers,
            in_dim=in_dim, out_dim=out_dim, text_dim=ckpt.shape("text_embedding.0.weight")[1], patch_size=patch,
            image_dim=ckpt.shape("img_emb.proj.0.weight")[0] if has_img else 1280, image_tokens=image_tokens,
            fps_embedding="fps_embedding.weight" in ckpt)
        return _classify(ckpt.name, config, _SIZES.get(dim, f"{dim}-wide"))

    def lora_target(self, name: str, spec: DiTSpec | None = None) -> LoraTarget | None:
        """Official / ComfyUI names as they are, diffusers names renamed; nothing of Wan's is fused."""
        official = diffusers_to_official(name)
        return LoraTarget(official) if _LORA_NAMES.match(official) else None

    def build(self, spec: DiTSpec, ops: Ops) -> WanDiT:
        return WanDiT(spec.config, ops)

    # ------------------------------------------------------------------ sampling
    def defaults(self, spec: DiTSpec, pair: bool, width: int, height: int) -> SamplingDefaults:
        """The official recipes (Wan's wan/configs/*.py and generate.py, SkyReels-V2's README). Size matters
        for Wan2.1 I2V."""
        v = spec.variant.rsplit("_", 1)[0]
        if pair and spec.task == "t2v":
            return SamplingDefaults(40, 12.0, 4.0, 3.0, 0.875, 16, "Wan2.2 T2V-A14B")
        if pair and spec.task == "i2v":
            return SamplingDefaults(40, 5.0, 3.5, 3.5, 0.900, 16, "Wan2.2 I2V-A14B")
        if v == "i2v":
            return SamplingDefaults(40, 5.0, 3.5, 3.5, 0.900, 16, "Wan2.2 I2V-A14B expert")
        if v == "ti2v":
            return SamplingDefaults(50, 5.0, 5.0, 5.0, 0.0, 24, "Wan2.2 TI2V-5B")
        if v == "flf2v":
            return SamplingDefaults(50, 16.0, 5.0, 5.0, 0.0, 16, "Wan2.1 FLF2V-14B")
        if v == "i2v_clip":  # the official generate.py uses shift 3.0 at 480p sizes, 5.0 otherwise
            shift = 3.0 if 0 < width * height <= 832 * 480 else 5.0
            return SamplingDefaults(40, shift, 5.0, 5.0, 0.0, 16, "Wan2.1 I2V-14B")
        if v == "df_fps":
            return SamplingDefaults(30, 8.0, 6.0, 6.0, 0.0, 24, "SkyReels-V2 DF")
        return SamplingDefaults(50, 5.0, 5.0, 5.0, 0.0, 16, "Wan2.1 T2V")

    def diffusion_forcing(self, spec: DiTSpec) -> SamplingDefaults:
        """SkyReels-V2 DF models (generate_video_df.py: 30 steps, shift 8, guidance 6, 24 fps). DF-14B has the shapes
        of a 14B text-to-video model, so any Wan text-to-video model is let through (DF-1.3B is told by its fps
        embedding); image-conditioned models are not diffusion-forcing models."""
        if spec.task != "t2v":
            raise InputError(f"{spec.description} is not a diffusion-forcing model (SkyReels-V2 DF models are "
                             f"text-to-video shaped)", "use OpenReel Sampler for it, or load a SkyReels-V2 DF model")
        return SamplingDefaults(30, 8.0, 6.0, 6.0, 0.0, 24, "SkyReels-V2 DF")

    def causal_attention(self, spec: DiTSpec, block_size: int) -> dict:
        return {"causal_block_size": block_size}

    def step_cache_profile(self, spec: DiTSpec, latent_shape=None, pair: bool = False):
        """The published TeaCache / MagCache calibrations (models/wan/step_cache.py)."""
        return wan_step_cache_profile(spec, latent_shape, pair)

    def check(self, spec: DiTSpec, fmt: LatentFormat, cond: ImageConditioning | None, embeds: TextEmbeds,
              pair: DiTSpec | None) -> None:
        if pair is not None and (pair.task, pair.config.in_dim) != (spec.task, spec.config.in_dim):
            raise InputError(f"the two experts do not match: {spec.description} and {pair.description}",
                             "connect the high- and low-noise experts of the same Wan2.2 model")
        text_width = embeds.positive.shape[-1]
        if spec.config.text_dim != text_width:
            raise InputError(f"the text embeddings are {text_width} wide but the model takes {spec.config.text_dim}",
                             "encode the prompt with the umT5-XXL text encoder")
        if embeds.positive_pooled is not None or embeds.positive_2 is not None:
            raise InputError(f"the text embeddings carry a second encoder's output (another model's encoders, e.g. "
                             f"HunyuanVideo's Llama + CLIP-L) but {spec.description} takes umT5-XXL's alone",
                             "encode the prompt with the umT5-XXL text encoder only")
        mode = cond.mode if cond is not None else "t2v"
        tokens = cond.image_tokens if cond is not None else None
        if spec.task == "t2v" and mode != "t2v":
            raise InputError(f"{spec.description} is a text-to-video model but the latent carries image "
                             f"conditioning", "use OpenReel Empty Latent, or an image-to-video model")
        if spec.task in ("i2v", "flf2v") and (cond is None or cond.concat is None):
            raise InputError(f"{spec.description} needs a start image", "make the latent with OpenReel Image To Video")
        if spec.needs_clip and tokens is None:
            raise InputError(f"{spec.description} needs CLIP vision features of the start image",
                             "connect a CLIP vision model (clip_vision_h) to OpenReel Image To Video")
        if not spec.needs_clip and tokens is not None:
            raise InputError(f"{spec.description} uses no CLIP vision features", "disconnect clip_vision from "
                             "OpenReel Image To Video")
        if spec.task == "flf2v" and mode != "flf2v":
            raise InputError(f"{spec.description} needs a first and a last frame", "connect end_image")
        if spec.task == "i2v" and mode == "flf2v":
            raise InputError(f"{spec.description} takes no last frame", "disconnect end_image, or use an FLF2V model")
        if spec.task == "ti2v" and mode not in ("t2v", "ti2v"):
            raise InputError("Wan2.2 TI2V-5B takes a start image only", "disconnect end_image")

    def model_inputs(self, spec: DiTSpec, embeds: TextEmbeds, cond: ImageConditioning | None,
                     defaults: SamplingDefaults) -> ModelInputs:
        """Both prompts padded to one length with zero rows (the DiT pads with zeros too), so CFG can batch them;
        the image latent and CLIP tokens go in as `y` and `clip_fea`; DF-1.3B gets its fps."""
        length = max(embeds.positive.shape[1], embeds.negative.shape[1])
        shared = {"y": cond.concat if cond is not None else None,
                  "clip_fea": cond.image_tokens if cond is not None else None,
                  "fps": int(defaults.fps) if spec.config.fps_embedding else None}
        return ModelInputs({"context": _pad_to(embeds.positive, length)},
                           {"context": _pad_to(embeds.negative, length)}, shared)

    # ------------------------------------------------------------------ memory
    def stream_bytes(self, spec: DiTSpec, tokens: int, batch: int = 1) -> int:
        """The float32 stream of `dim` per token."""
        return batch * tokens * spec.config.dim * 4

    def activation_bytes(self, spec: DiTSpec, tokens: int, batch: int = 1, token_chunk: int = 0) -> int:
        """Per token: about four float32 copies of the residual stream alive at once (the stream, its normalized
        and modulated copy, the gated branch in float32 and the new sum: 16 × dim bytes) and the FFN hidden state
        twice in the compute dtype (the linear's output and the GELU's: 4 × ffn bytes); plus the padded text
        context. Calibrated on an H200 (bench/RESULTS.md, Wan 14B, dim 5120, batch 1): measured 4.1 GiB at 32,760
        tokens and 9.4 GiB at 75,600 tokens; this gives 4.2 and 9.7 GiB. With token chunks, less what chunking
        the FFN frees (see `wan_activation_bytes`)."""
        cfg = spec.config
        return wan_activation_bytes(cfg.dim, cfg.ffn_dim, tokens, batch, token_chunk=token_chunk)


def wan_activation_bytes(dim: int, ffn_dim: int, tokens: int, batch: int = 1, text_tokens: int = 512, *,
                         token_chunk: int = 0) -> int:
    """See `WanFamily.activation_bytes`.

    What token chunks free, counted from the tensors alive at the largest moments of a block (D = dim, F = ffn,
    16-bit compute, per token): beside the stream the block list started from, the block's input and the stream
    after cross-attention (3 × 4·D), the FFN holds its modulated input and two hidden states: 14·D + 4·F. In
    chunks only the 14·D stays full length, plus one chunk's temporaries (max(12·D, 2·D + 4·F) per chunk token).
    But self- and cross-attention peak at 26·D whatever the chunks (two streams, q, k and a float32 k under RoPE,
    or q under its float32 RMS norm), so chunks lower the peak only where the FFN's is the larger: Wan 1.3B
    (F = 5.8·D) and 5B (F = 4.7·D), not 14B (F = 2.7·D)."""
    per_sample = tokens * (dim * 16 + ffn_dim * 4) + text_tokens * dim * 4 * 4
    if chunking(token_chunk, tokens):
        chunked = max(26 * dim * tokens, 14 * dim * tokens + token_chunk * max(12 * dim, 2 * dim + 4 * ffn_dim))
        per_sample -= max(0, (14 * dim + 4 * ffn_dim) * tokens - chunked)
    return batch * per_sample


def _classify(name: str, cfg: WanConfig, size: str) -> DiTSpec:
    def spec(variant, description, task, latent=wan_latents.WAN21_LATENT, clip=False):
        return DiTSpec("wan", f"{variant}_{size.lower()}", description, task, latent.name, cfg, clip)

    if cfg.in_dim == 16 and cfg.out_dim == 16 and not cfg.image_tokens:
        if cfg.fps_embedding:
            return spec("df_fps", f"SkyReels-V2 DF-{size} (diffusion forcing, fps embedding)", "t2v")
        if size == "14B":
            return spec("t2v", "a 14B Wan text-to-video model (Wan2.1 T2V-14B, a Wan2.2 T2V-A14B expert, "
                               "or SkyReels-V2 T2V/DF-14B)", "t2v")
        if size == "1.3B":
            return spec("t2v", "a 1.3B Wan text-to-video model (Wan2.1 T2V-1.3B or SkyReels-V2 T2V/DF-1.3B)", "t2v")
        return spec("t2v", f"a custom {size} Wan text-to-video model", "t2v")
    if cfg.in_dim == 36 and cfg.out_dim == 16:
        if cfg.image_tokens == 514:
            return spec("flf2v", f"Wan2.1 FLF2V-{size} (first-last-frame-to-video)", "flf2v", clip=True)
        if cfg.image_tokens == 257:
            return spec("i2v_clip", f"a {size} Wan image-to-video model with CLIP (Wan2.1 I2V or SkyReels-V2 I2V)",
                        "i2v", clip=True)
        return spec("i2v", f"a Wan2.2 I2V-A14B expert ({size}, no CLIP)", "i2v")
    if cfg.in_dim == 48 and cfg.out_dim == 48:
        return spec("ti2v", f"Wan2.2 TI2V-{size} (48-channel latents)", "ti2v", latent=wan_latents.WAN22_LATENT)
    raise DetectionError(f"{name} is a Wan-architecture model with {cfg.in_dim} input and {cfg.out_dim} output "
                         f"channels, which matches no supported variant (Fun-Control/InP models are not supported)",
                         "use a Wan2.1 / Wan2.2 / SkyReels-V2 T2V, I2V, FLF2V, TI2V or DF model")


WAN = register_family(WanFamily())
