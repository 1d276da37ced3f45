"""Batches of videos: one LATENT holds n videos [n, C, F, H, W], and what travels beside it (text embeddings, image
conditioning) holds either one row for all of them or one row per video.

Each video's noise comes from its own seed (seed + its index), so a video of a batch can be made again alone;
ComfyUI's `batch_index` (e.g. from RepeatLatentBatch or LatentFromBatch) names the indices.
"""
from __future__ import annotations

from dataclasses import fields, replace
from typing import Any, Sequence

import torch

from ..errors import InputError
from ..latents import ImageConditioning, LatentFormat
from ..models.common.family import ModelInputs


def batch_indices(latent: dict) -> list[int]:
    """The index of each video of `latent` in its batch: ComfyUI's "batch_index" where a native node set it."""
    count = latent["samples"].shape[0]
    indices = latent.get("batch_index")
    if isinstance(indices, (list, tuple)) and len(indices) == count:
        return [int(i) for i in indices]
    return list(range(count))


def _rows(value: Any, count: int, what: str) -> Any:
    """`value` with `count` rows: a tensor of one row repeated, of `count` rows as it is; anything else unchanged."""
    if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] == count:
        return value
    if value.shape[0] != 1:
        raise InputError(f"the {what} hold {value.shape[0]} rows but the latent holds {count} videos",
                         "give one for all videos or one per video")
    return value.expand(count, *value.shape[1:]).contiguous()


def broadcast_inputs(inputs: ModelInputs, count: int) -> ModelInputs:
    """The model inputs for a batch of `count` videos: inputs made once (a prompt, a start image) serve every one."""
    def each(branch: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if branch is None else {k: _rows(v, count, f"model inputs ({k})") for k, v in branch.items()}
    return ModelInputs(each(inputs.positive), each(inputs.negative), each(inputs.shared))


def stack_latents(latents: Sequence[dict]) -> dict:
    """One LATENT holding the videos of `latents` (each a batch of one, of one format and mode) one after another,
    their image conditioning stacked alike."""
    first = latents[0]
    stacked = {**first, "samples": torch.cat([latent["samples"] for latent in latents])}
    conds = [latent.get("openreel") for latent in latents]
    if conds[0] is not None:
        joined = {f.name: torch.cat([getattr(c, f.name) for c in conds]) for f in fields(ImageConditioning)
                  if isinstance(getattr(conds[0], f.name), torch.Tensor)}
        stacked["openreel"] = replace(conds[0], **joined)
    return stacked


def pair_images(start: torch.Tensor, end: torch.Tensor | None) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(start, end) image pairs, one per video: n start images make n videos; an end image batch pairs up with
    them one by one, or a single end image serves all."""
    ends = 1 if end is None else end.shape[0]
    count = max(start.shape[0], ends)
    if {start.shape[0], ends} - {1, count}:
        raise InputError(f"start_image holds {start.shape[0]} images and end_image {ends}",
                         "give as many end images as start images (one video each), or one for all")
    return [(_one(start, i), _one(end, i)) for i in range(count)]


def _one(images: torch.Tensor | None, index: int) -> torch.Tensor | None:
    """Image `index` of `images` as a batch of one (a single image serves every index)."""
    return None if images is None else images[min(index, images.shape[0] - 1)][None]


def check_conditioning_fits(latent: dict, fmt: LatentFormat) -> None:
    """Refuse image conditioning that no longer fits its latent (a native latent node, e.g. LatentUpscale, resized
    or cut the samples but not what Image To Video carried beside them), before any model runs."""
    cond = latent.get("openreel")
    if not isinstance(cond, ImageConditioning):
        return
    samples = latent["samples"]
    count, frames, size = samples.shape[0], samples.shape[2], tuple(samples.shape[3:])
    problems = []
    for name in ("concat", "given", "image_tokens"):
        made = getattr(cond, name)
        if made is None:
            continue
        if name != "image_tokens" and tuple(made.shape[3:]) != size:
            problems.append(f"is {_pixels(size, fmt)} but its image conditioning is {_pixels(made.shape[3:], fmt)}")
        if name == "concat" and made.shape[2] != frames:
            problems.append(f"has {fmt.pixel_frames(frames)} frames but its image conditioning was made for "
                            f"{fmt.pixel_frames(made.shape[2])}")
        if made.shape[0] not in (1, count):
            problems.append(f"holds {count} videos but its image conditioning is for {made.shape[0]}")
    if problems:
        raise InputError(f"the latent {problems[0]} (a latent node between OpenReel Image To Video and the "
                         f"sampler changed the latent, not the image conditioning beside it)",
                         "set the size, frames and batch on OpenReel Image To Video (resize or batch the images "
                         "before it) and connect its latent to the sampler directly")


def _pixels(size: Sequence[int], fmt: LatentFormat) -> str:
    return f"{size[1] * fmt.spatial_stride}×{size[0] * fmt.spatial_stride}"
