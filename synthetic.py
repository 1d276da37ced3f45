"""Tiny random checkpoints written in the real file layouts, for tests and the headless runner's demo model set.

Nothing here is a real model: the weights are random. The layouts are real: official single files and shard
sets (with index json and config.json), ComfyUI's `model.diffusion_model.`-prefixed files, plain fp8 files and
ComfyUI `fp8_scaled` files (`scaled_fp8` marker + per-linear `scale_weight`).
"""
from __future__ import annotations

import json
import re
import tempfile
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


# ----------------------------------------------------------------------------------------- the demo model set
SYNTHETIC_NOTE = "SYNTHETIC model set: tiny random weights in the real file layouts; outputs are noise, not videos"
SET_VERSION = "3"  # bump when the set's files change: a set written by another version is written anew
TINY_TEXT_DIM = 64
TINY_CLIP_DIM = 64

# File names as ComfyUI's repackaged releases name them (SkyReels-V2: the official 1.3B folders).
DIFFUSION_MODELS = {
    "wan2.1_t2v_1.3B_fp16.safetensors": dict(),
    "wan2.1_i2v_480p_14B_fp16.safetensors": dict(in_dim=36, image_tokens=257),
    "wan2.1_flf2v_720p_14B_fp16.safetensors": dict(in_dim=36, image_tokens=514),
    "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors": dict(),
    "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors": dict(),
    "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors": dict(in_dim=36),
    "wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors": dict(in_dim=36),
    "wan2.2_ti2v_5B_fp16.safetensors": dict(in_dim=48, out_dim=48),
    "SkyReels-V2-DF-1.3B-540P/model.safetensors": dict(fps_embedding=True),
    "SkyReels-V2-I2V-1.3B-540P/model.safetensors": dict(in_dim=36, image_tokens=257),
}
TEXT_ENCODER = "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
CLIP_VISION = "clip_vision_h.safetensors"
VAES = {"wan_2.1_vae.safetensors": "wan21", "wan2.2_vae.safetensors": "wan22"}  # file → its latent format
INPUT_IMAGES = ("openreel_start.png", "openreel_end.png")
INPUT_VIDEO = "openreel_clip.mp4"   # 33 frames at 24 fps, for the video-extension workflow


def _random(shapes: dict, seed: int, scale: float = 0.1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=gen) * (scale if len(s) > 1 else 0.5) for k, s in shapes.items()}


def tiny_spiece(folder: Path) -> bytes:
    """A tiny SentencePiece model with umT5's special ids (pad 0, eos 1, bos 2, unk 3), trained on the spot."""
    import random

    import sentencepiece

    rng = random.Random(0)
    syllables = ["ka", "to", "ri", "mu", "se", "na", "po", "li", "ve", "da", "zo", "ba", "ne", "hi", "ku"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(300)]
    words += "a cat dog the red video sea ship sunset city street walks runs".split()
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(2000)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corpus.txt").write_text("\n".join(lines), encoding="utf-8")
    sentencepiece.SentencePieceTrainer.train(
        input=str(folder / "corpus.txt"), model_prefix=str(folder / "spiece"), vocab_size=250, model_type="unigram",
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, character_coverage=1.0, minloglevel=2)
    return (folder / "spiece.model").read_bytes()


def write_model_set(models: Path, inputs: Path | None = None) -> None:
    """Every model kind the workflows use, tiny and random, under the file names the workflows name."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from .models.text.umt5 import UMT5Spec, UMT5TextEncoder
    from .models.wan.vae import WAN21, WAN22, WanVAE

    for i, (name, extra) in enumerate(DIFFUSION_MODELS.items()):
        image = {"image_dim": TINY_CLIP_DIM} if extra.get("image_tokens") else {}
        cfg = WanConfig(**{**TINY_WAN.__dict__, "text_dim": TINY_TEXT_DIM, **extra, **image})
        path = models / "diffusion_models" / name
        state = wan_state_dict(cfg, seed=i)
        if "fp8_scaled" in name:
            save_fp8(state, path, scaled=True)
        else:
            save_single(state, path, prefix="" if name.startswith("SkyReels") else COMFY_PREFIX)

    spec = UMT5Spec(vocab_size=640, d_model=TINY_TEXT_DIM, d_kv=32, d_ff=128, num_heads=2, num_layers=2)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in UMT5TextEncoder(spec).state_dict().items()}
    text = _random(shapes, seed=100)
    text = {k: v.to(torch.float8_e4m3fn) if v.dim() == 2 and "embed" not in k and "shared" not in k
            and "relative_attention_bias" not in k else v for k, v in text.items()}
    text.update({k.removesuffix("weight") + "scale_weight": torch.ones(1) for k, v in text.items()
                 if v.dtype == torch.float8_e4m3fn})
    text["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    with tempfile.TemporaryDirectory() as scratch:
        text["spiece_model"] = torch.frombuffer(bytearray(tiny_spiece(Path(scratch))), dtype=torch.uint8)
    (models / "text_encoders").mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in text.items()}, str(models / "text_encoders" / TEXT_ENCODER))

    clip = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=TINY_CLIP_DIM, intermediate_size=128, num_hidden_layers=3, num_attention_heads=1,
        image_size=224, patch_size=14, projection_dim=32))
    clip_state = {("" if k.startswith(("vision_model.", "visual_projection")) else "vision_model.") + k: v
                  for k, v in clip.state_dict().items()}
    clip_state = {k: (v if "position_ids" in k else _random({k: v.shape}, seed=200)[k]) for k, v in clip_state.items()}
    (models / "clip_vision").mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in clip_state.items()}, str(models / "clip_vision" / CLIP_VISION))

    from dataclasses import replace

    tiny_vaes = {"wan_2.1_vae.safetensors": replace(WAN21, dim=8, dec_dim=8),
                 "wan2.2_vae.safetensors": replace(WAN22, dim=8, dec_dim=12)}
    for name, cfg in tiny_vaes.items():
        with torch.device("meta"):
            shapes = {k: v.shape for k, v in WanVAE(cfg).state_dict().items()}
        (models / "vae").mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in _random(shapes, seed=300, scale=0.05).items()},
                  str(models / "vae" / name))

    if inputs is not None:
        from PIL import Image

        inputs.mkdir(parents=True, exist_ok=True)
        for seed, name in enumerate(INPUT_IMAGES):
            pixels = torch.rand(96, 128, 3, generator=torch.Generator().manual_seed(seed))
            Image.fromarray((pixels * 255).byte().numpy()).save(inputs / name)
        from .video_io import save_mp4

        clip = torch.rand(33, 96, 128, 3, generator=torch.Generator().manual_seed(7))
        path, _ = save_mp4([clip], inputs, "openreel_clip", 24.0)
        path.replace(inputs / INPUT_VIDEO)
