"""The Wan family (Wan2.1, Wan2.2, SkyReels-V2): layouts, variant detection from shapes, and the module factory.

Layouts: official / ComfyUI names (optionally prefixed, e.g. `model.diffusion_model.`) and diffusers
`WanTransformer3DModel` / `SkyReelsV2Transformer3DModel` names, which are renamed to the official ones.
"""
from __future__ import annotations

import re

from ..errors import DetectionError
from ..handles import DiTSpec
from ..models.wan.model import FP32_PARAMS, WEIGHT_PARAMS, WanConfig, WanDiT
from .checkpoint import Checkpoint
from .families import Family, find_prefix, register_family

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


def diffusers_to_official(key: str) -> str:
    for pattern, repl in _DIFFUSERS_RULES:
        key = pattern.sub(repl, key)
    return key


def normalize(ckpt: Checkpoint) -> Checkpoint:
    prefix = find_prefix(ckpt, OFFICIAL_ANCHORS)
    if prefix is not None:
        return ckpt.strip_prefix(prefix)
    prefix = find_prefix(ckpt, DIFFUSERS_ANCHORS)
    return ckpt.strip_prefix(prefix).renamed(diffusers_to_official)


def describe(ckpt: Checkpoint) -> DiTSpec:
    for marker, what in _UNSUPPORTED:
        if any(k.startswith(marker) for k in ckpt.keys()):
            raise DetectionError(f"{ckpt.name} is {what}, which OpenReel does not support yet",
                                 "use a Wan2.1 / Wan2.2 / SkyReels-V2 T2V, I2V, FLF2V, TI2V or DF model")
    needed = ("patch_embedding.weight", "head.head.weight", "blocks.0.ffn.0.weight", "text_embedding.0.weight")
    missing = [k for k in needed if k not in ckpt]
    if missing:
        raise DetectionError(f"{ckpt.name} looks like a Wan model but lacks {', '.join(missing)}",
                             "the file is incomplete or not a full model; download it again")
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


def _classify(name: str, cfg: WanConfig, size: str) -> DiTSpec:
    def spec(variant, description, task, latent="wan21", clip=False):
        return DiTSpec("wan", f"{variant}_{size.lower()}", description, task, latent, cfg, clip)

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
        return spec("ti2v", f"Wan2.2 TI2V-{size} (48-channel latents)", "ti2v", latent="wan22")
    raise DetectionError(f"{name} is a Wan-architecture model with {cfg.in_dim} input and {cfg.out_dim} output "
                         f"channels, which matches no supported variant (Fun-Control/InP models are not supported)",
                         "use a Wan2.1 / Wan2.2 / SkyReels-V2 T2V, I2V, FLF2V, TI2V or DF model")


register_family(Family(
    name="wan", title="Wan", anchors=OFFICIAL_ANCHORS + DIFFUSERS_ANCHORS, normalize=normalize, describe=describe,
    build=lambda spec: WanDiT(spec.config), weight_params=WEIGHT_PARAMS, fp32_params=FP32_PARAMS))
