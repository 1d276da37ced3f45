"""Latents and image conditioning for the Wan family, and the checks that they fit the model before any GPU work.

A LATENT here is ComfyUI's dict with two additions: "latent_format" ("wan21": 16 channels, 8× spatial;
"wan22": 48 channels, 16×) and, for image-to-video, "openreel": {"y", "clip_fea", "given", "mode"}:
- Wan2.1 I2V / FLF2V and Wan2.2 I2V-A14B: `y` = 4 mask channels + the VAE latent of [start, zeros…, (end)],
  built as the official image2video.py / first_last_frame2video.py do; Wan2.1 adds CLIP tokens (`clip_fea`).
- Wan2.2 TI2V-5B image mode: `given` = the VAE latent of the start image, kept clean as latent frame 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InputError
from ..handles import DiTSpec

LATENT_FORMATS = {"wan21": (16, 8), "wan22": (48, 16)}  # channels, spatial stride of its VAE
PATCH = 2  # the DiT's spatial patch: sizes must be multiples of stride × 2


def latent_size(latent_format: str, width: int, height: int, frames: int) -> tuple[int, int, int, int]:
    """(channels, latent frames, latent height, latent width), or a clear error for sizes that do not fit."""
    channels, stride = LATENT_FORMATS[latent_format]
    multiple = stride * PATCH
    if width % multiple or height % multiple:
        raise InputError(f"{width}×{height} is not a multiple of {multiple} (VAE stride {stride} × patch {PATCH})",
                         f"use e.g. {width // multiple * multiple}×{height // multiple * multiple}")
    if frames < 1 or (frames - 1) % 4:
        lower = max(1, (frames - 1) // 4 * 4 + 1)
        raise InputError(f"{frames} frames is not of the form 4n+1", f"use {lower} or {lower + 4} frames")
    return channels, (frames - 1) // 4 + 1, height // stride, width // stride


def empty_latent(latent_format: str, width: int, height: int, frames: int, batch: int = 1) -> dict:
    c, t, h, w = latent_size(latent_format, width, height, frames)
    return {"samples": torch.zeros(batch, c, t, h, w), "latent_format": latent_format}


def fit_image(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """IMAGE [B, H, W, C] 0..1 → [B, 3, height, width] in [-1, 1]: centre-cropped to the aspect, bicubic resize."""
    x = image[..., :3].permute(0, 3, 1, 2).float()
    h, w = x.shape[2:]
    if w * height > h * width:  # too wide: crop the sides
        new_w = round(h * width / height)
        x = x[:, :, :, (w - new_w) // 2:(w - new_w) // 2 + new_w]
    elif w * height < h * width:
        new_h = round(w * height / width)
        x = x[:, :, (h - new_h) // 2:(h - new_h) // 2 + new_h]
    x = F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False)
    return (x * 2 - 1).clamp(-1, 1)


def wan_i2v_mask(frames: int, h: int, w: int, first: bool = True, last: bool = False) -> torch.Tensor:
    """The 4-channel mask of Wan's I2V conditioning, [1, 4, latent frames, h, w]: pixel frames that are given are
    1; the first pixel frame is repeated 4× so that latent frame 0's four slots all say 'given'."""
    mask = torch.zeros(1, frames, h, w)
    mask[:, 0] = float(first)
    if last:
        mask[:, -1] = 1.0
    mask = torch.cat([mask[:, :1].repeat(1, 4, 1, 1), mask[:, 1:]], dim=1)
    return mask.view(1, mask.shape[1] // 4, 4, h, w).transpose(1, 2)


def image_to_video(vae_kind: str, encode_fn, start: torch.Tensor, width: int, height: int, frames: int,
                   end: torch.Tensor | None = None, clip_tokens=None) -> dict:
    """The conditioned LATENT for image-to-video. `encode_fn(video [1,3,F,H,W] in [-1,1]) → latent`;
    `vae_kind` is "wan21" or "wan22"; `clip_tokens(images) → [n, 257, 1280]` or None."""
    c, t, h, w = latent_size(vae_kind, width, height, frames)
    first = fit_image(start[:1], width, height)
    if vae_kind == "wan22":
        if end is not None:
            raise InputError("Wan2.2 TI2V-5B starts from an image but has no last-frame mode",
                             "disconnect end_image, or use a Wan2.1 FLF2V model with the Wan2.1 VAE")
        if clip_tokens is not None:
            raise InputError("Wan2.2 TI2V-5B uses no CLIP vision features", "disconnect clip_vision")
        given = encode_fn(first.unsqueeze(2))
        return {"samples": torch.zeros(1, c, t, h, w), "latent_format": vae_kind,
                "openreel": {"mode": "ti2v", "given": given, "y": None, "clip_fea": None}}
    video = torch.zeros(1, 3, frames, height, width)
    video[:, :, 0] = first[0]
    if end is not None:
        video[:, :, -1] = fit_image(end[:1], width, height)[0]
    y = torch.cat([wan_i2v_mask(frames, h, w, last=end is not None), encode_fn(video)], dim=1)
    clip = None
    if clip_tokens is not None:
        tokens = clip_tokens(start[:1] if end is None else torch.cat([start[:1], end[:1]]))  # [n, 257, width]
        clip = tokens.reshape(1, -1, tokens.shape[-1])  # FLF2V: first and last frame's tokens side by side
    return {"samples": torch.zeros(1, c, t, h, w), "latent_format": vae_kind,
            "openreel": {"mode": "flf2v" if end is not None else "i2v", "given": None, "y": y, "clip_fea": clip}}


def check_fits(spec: DiTSpec, latent: dict, text_width: int, pair_spec: DiTSpec | None = None) -> None:
    """Refuse a latent or conditioning that does not fit the model, before anything reaches the GPU."""
    fmt = latent.get("latent_format")
    if fmt is None:
        channels = latent["samples"].shape[1]
        fmt = {16: "wan21", 48: "wan22"}.get(channels)
    if fmt != spec.latent_format:
        want = {"wan21": "16-channel (Wan2.1 VAE)", "wan22": "48-channel (Wan2.2 VAE)"}[spec.latent_format]
        raise InputError(f"the latent is {latent['samples'].shape[1]}-channel ({fmt}) but {spec.description} "
                         f"takes {want} latents", "make the latent with the VAE this model was trained with")
    if latent["samples"].dim() != 5:
        raise InputError(f"the latent has shape {tuple(latent['samples'].shape)}, not [batch, channels, frames, "
                         f"height, width]", "use a video latent from OpenReel Empty Latent or Image To Video")
    if pair_spec is not None and (pair_spec.task, pair_spec.config.in_dim) != (spec.task, spec.config.in_dim):
        raise InputError(f"the two experts do not match: {spec.description} and {pair_spec.description}",
                         "connect the high- and low-noise experts of the same Wan2.2 model")
    if spec.config.text_dim != text_width:
        raise InputError(f"the text embeddings are {text_width} wide but the model takes {spec.config.text_dim}",
                         "encode the prompt with the umT5-XXL text encoder")
    cond = latent.get("openreel") or {}
    mode = cond.get("mode", "t2v")
    if spec.task == "t2v" and mode != "t2v":
        raise InputError(f"{spec.description} is a text-to-video model but the latent carries image conditioning",
                         "use OpenReel Empty Latent, or an image-to-video model")
    if spec.task in ("i2v", "flf2v") and cond.get("y") is None:
        raise InputError(f"{spec.description} needs a start image", "make the latent with OpenReel Image To Video")
    if spec.needs_clip and cond.get("clip_fea") is None:
        raise InputError(f"{spec.description} needs CLIP vision features of the start image",
                         "connect a CLIP vision model (clip_vision_h) to OpenReel Image To Video")
    if not spec.needs_clip and cond.get("clip_fea") is not None:
        raise InputError(f"{spec.description} uses no CLIP vision features", "disconnect clip_vision from "
                         "OpenReel Image To Video")
    if spec.task == "flf2v" and mode != "flf2v":
        raise InputError(f"{spec.description} needs a first and a last frame", "connect end_image")
    if spec.task == "i2v" and mode == "flf2v":
        raise InputError(f"{spec.description} takes no last frame", "disconnect end_image, or use an FLF2V model")
    if spec.task == "ti2v" and mode not in ("t2v", "ti2v"):
        raise InputError("Wan2.2 TI2V-5B takes a start image only", "disconnect end_image")
