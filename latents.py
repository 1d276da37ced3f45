"""The latent-format registry and what a LATENT carries between nodes.

A LATENT is ComfyUI's dict {"samples": [B, C, F, H, W]} plus "latent_format" (a registry key: the latent space
of one VAE) and, from image-to-video nodes, "openreel": an `ImageConditioning`. Every node and library step that
needs a latent space's facts (channels, strides, normalisation, preview colours, valid frame counts) reads them
here; model families register their formats (models/<family>/family.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import InputError


@dataclass(frozen=True)
class LatentFormat:
    """One VAE's latent space. The DiTs work on (latent − mean) / std when `mean`/`std` are given."""
    name: str                                   # the registry key and the LATENT's "latent_format" tag
    title: str                                  # for messages, e.g. "16-channel (Wan2.1 VAE)"
    channels: int
    temporal_stride: int                        # pixel frames per temporal step (after the lead frame)
    spatial_stride: int
    size_multiple: int                          # width and height must be multiples of this (stride × DiT patch)
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    preview_factors: tuple[tuple[float, float, float], ...] | None = None   # latent channel → RGB, per channel
    preview_bias: tuple[float, float, float] = (0.0, 0.0, 0.0)
    # Frame counts are lead + n·temporal_stride pixel frames ↔ lead + n·temporal_latents latent frames (n ≥ 0 with
    # a lead frame, else n ≥ 1): a causal VAE that codes its first frame alone has lead 1 (4n+1 ↔ n+1); one that
    # codes chunks independently has lead 0 and a chunk's latent frames here (17n ↔ 3n).
    lead_frame: bool = True
    temporal_latents: int = 1

    def _counts(self, frames: int) -> tuple[int, int] | None:
        """(lead, n) of a valid pixel frame count, else None."""
        lead, s = int(self.lead_frame), self.temporal_stride
        n, rest = divmod(frames - lead, s)
        return (lead, n) if rest == 0 and n >= 1 - lead else None

    def frame_rule(self) -> str:
        """The valid pixel frame counts in words, e.g. "of the form 4n+1" or "a multiple of 17"."""
        s = self.temporal_stride
        return f"of the form {s}n+1" if self.lead_frame else f"a multiple of {s}"

    def nearest_frames(self, frames: int) -> tuple[int, int]:
        """The valid pixel frame counts just below (or the smallest) and above `frames` (when it is invalid)."""
        lead, s = int(self.lead_frame), self.temporal_stride
        lower = max(lead + (1 - lead) * s, lead + (frames - lead) // s * s)
        return lower, lower + s

    def latent_frames(self, frames: int) -> int:
        """Latent frames for `frames` pixel frames, or a clear error when the count breaks the frame rule."""
        counts = self._counts(frames)
        if counts is None:
            lower, upper = self.nearest_frames(frames)
            raise InputError(f"{frames} frames is not {self.frame_rule()}", f"use {lower} or {upper} frames")
        lead, n = counts
        return lead + n * self.temporal_latents

    def valid_frames(self, frames: int) -> bool:
        return self._counts(frames) is not None

    def pixel_frames(self, latent_frames: int) -> int:
        lead = int(self.lead_frame)
        return lead + (latent_frames - lead) // self.temporal_latents * self.temporal_stride

    def latent_size(self, width: int, height: int, frames: int) -> tuple[int, int, int, int]:
        """(channels, latent frames, latent height, latent width), or a clear error for sizes that do not fit."""
        m = self.size_multiple
        if width % m or height % m:
            raise InputError(f"{width}×{height} is not a multiple of {m} (VAE stride {self.spatial_stride} × patch "
                             f"{m // self.spatial_stride})", f"use e.g. {width // m * m}×{height // m * m}")
        s = self.spatial_stride
        return self.channels, self.latent_frames(frames), height // s, width // s


LATENT_FORMATS: dict[str, LatentFormat] = {}


def register_latent_format(fmt: LatentFormat) -> LatentFormat:
    LATENT_FORMATS[fmt.name] = fmt
    return fmt


def video_size_problems(width: int, height: int, frames: int) -> list[str]:
    """What is wrong with a video size for every latent format (checked before anything runs; the format the VAE
    picks checks its own, stricter rules when the node runs)."""
    formats = sorted(LATENT_FORMATS.values(), key=lambda f: f.temporal_stride)
    problems = []
    if formats and not any(f.valid_frames(frames) for f in formats):
        rules = {f.frame_rule(): f.nearest_frames(frames) for f in formats}
        problems.append(f"frames = {frames} is not " + ", nor ".join(
            f"{rule}: use {lower} or {upper}" for rule, (lower, upper) in rules.items()))
    m = min((f.size_multiple for f in formats), default=1)
    if width % m or height % m:
        problems.append(f"{width}×{height} is not a multiple of {m}: use e.g. {width // m * m}×{height // m * m}")
    return problems


def latent_format(name: str) -> LatentFormat:
    """The registered format `name`; a clear error for a tag nothing registered."""
    if name not in LATENT_FORMATS:
        raise InputError(f"the latent format {name!r} is unknown (known: {', '.join(LATENT_FORMATS) or 'none'})",
                         "make the latent with an OpenReel latent node, or load the model family that uses it")
    return LATENT_FORMATS[name]


def format_of(latent: dict, expected: str | None = None) -> LatentFormat:
    """The format of a LATENT: its tag, or for an untagged latent (a native ComfyUI node's) the one registered
    format with its channel count; where several share it, `expected` (the consumer's format) if it is one."""
    samples = latent.get("samples")
    if not isinstance(samples, torch.Tensor) or samples.dim() != 5:
        shape = tuple(samples.shape) if isinstance(samples, torch.Tensor) else type(samples).__name__
        raise InputError(f"the latent has shape {shape}, not [batch, channels, frames, height, width]",
                         "use a video latent from OpenReel Empty Latent, Image To Video or VAE Encode")
    name = latent.get("latent_format")
    if name is not None:
        fmt = latent_format(name)
        if samples.shape[1] != fmt.channels:
            raise InputError(f"the latent is tagged {fmt.title} but has {samples.shape[1]} channels",
                             "make the latent with an OpenReel latent node")
        return fmt
    matches = [f for f in LATENT_FORMATS.values() if f.channels == samples.shape[1]]
    if len(matches) > 1:
        matches = [f for f in matches if f.name == expected] or matches
    if len(matches) != 1:
        raise InputError(f"an untagged {samples.shape[1]}-channel latent matches "
                         f"{len(matches)} known formats", "make the latent with an OpenReel latent node")
    return matches[0]


def empty_latent(fmt: LatentFormat, width: int, height: int, frames: int, batch: int = 1) -> dict:
    c, t, h, w = fmt.latent_size(width, height, frames)
    return {"samples": torch.zeros(batch, c, t, h, w), "latent_format": fmt.name}


@dataclass(frozen=True, eq=False)
class ImageConditioning:
    """LATENT["openreel"]: what image-to-video adds to a latent; the model family turns it into model inputs.

    `concat`: channels joined to the latent on the model's input (Wan I2V/FLF2V: 4 mask + 16 image-latent channels)
    [1, C, F, H, W]; `image_tokens`: vision-encoder tokens [1, n, width]; `given`: clean latent frames the video
    starts with [1, C, F_given, H, W] (kept fixed while sampling)."""
    mode: str                                   # "i2v", "flf2v" or "ti2v"
    concat: torch.Tensor | None = None
    image_tokens: torch.Tensor | None = None
    given: torch.Tensor | None = None


@dataclass(frozen=True, eq=False)
class DecodeWindows:
    """LATENT["windows"]: how a video made window by window decodes as its sampler did (SkyReels-V2 DF's original):
    each window's latent [1, C, f, H, W] decoded whole, and every window after the first without its first
    `overlap_frames` pixel frames (the frames it took over). The LATENT's "samples" hold the same video joined."""
    latents: tuple[torch.Tensor, ...]
    overlap_frames: int

    def fits(self, samples: torch.Tensor) -> bool:
        """Whether the windows still describe `samples` (a native latent node may have changed the latent)."""
        overlap = (self.overlap_frames - 1) // 4 + 1
        frames = sum(w.shape[2] for w in self.latents) - overlap * (len(self.latents) - 1)
        return samples.shape[0] == 1 and all(w.shape[3:] == samples.shape[3:] for w in self.latents) and \
            frames == samples.shape[2]


def conditioning_of(latent: dict) -> ImageConditioning | None:
    cond = latent.get("openreel")
    if cond is not None and not isinstance(cond, ImageConditioning):
        raise InputError("the latent carries image conditioning OpenReel cannot read", "make the latent with "
                         "OpenReel Image To Video")
    return cond


def preview(latent: torch.Tensor, fmt: LatentFormat, max_size: int = 512):
    """A PIL image of the middle frame of `latent` [B, C, F, H, W], or None when the format has no preview map."""
    if fmt.preview_factors is None:
        return None
    from PIL import Image

    frame = latent[0, :, latent.shape[2] // 2].float().cpu()              # [C, H, W]
    weights = torch.tensor(fmt.preview_factors, dtype=torch.float32)      # [C, 3]
    rgb = torch.einsum("chw,cr->hwr", frame, weights) + torch.tensor(fmt.preview_bias)
    image = Image.fromarray(((rgb.clamp(-1, 1) + 1) * 127.5).byte().numpy())
    scale = max_size / max(image.size)
    if scale < 1:
        image = image.resize((max(1, int(image.width * scale)), max(1, int(image.height * scale))))
    return image
