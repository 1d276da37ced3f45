"""Tiled VAE work shared by the video VAEs: where tiles go, how overlapping outputs are blended, and the two ways of
running a per-tile step over a video (streamed chunk by chunk, or one tile at a time through every chunk).

Positions are in cells of the tiled grid (latent cells); a cell is `scale` elements of a step's input or output.
Overlapping outputs are blended with linear ramps across each overlap, as weights that sum to one everywhere, in
one of two styles:
- CENTRED (Wan): ramps sampled at element centres; a tile's weight is its row weight × its column weight.
- SEQUENTIAL (the official HunyuanVideo and diffusers tiling): ramps sampled at element starts, so a tile's first
  overlapping element has weight 0, and the weights the official loop produces by blending each tile in place
  with the (already blended) tile above, then with the one to its left: where four tiles meet, the upper pair is
  blended across with the later tile's column ramp squared.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator

import torch

from ...errors import InputError

Span = tuple[int, int]                 # [start, end)
Tiles = list[tuple[Span, Span]]        # (rows, columns) ranges in cells: a full grid, rows × columns
Step = Callable[[torch.Tensor, dict], torch.Tensor]  # (input crop, the tile's causal cache) → output
CENTRED, SEQUENTIAL = "centred", "sequential"


def check_video(video: torch.Tensor, temporal_stride: int, spatial_stride: int, vae: str) -> None:
    """Refuse frames a VAE cannot encode: not [B, 3, F, H, W], F not stride·n + 1, or a size not a multiple of the
    spatial stride (`vae` names the VAE in the message)."""
    ts, s = temporal_stride, spatial_stride
    if video.dim() != 5 or video.shape[1] != 3:
        raise InputError(f"the video has shape {tuple(video.shape)}, not [batch, 3, frames, height, width]",
                         "pass RGB frames")
    frames, height, width = video.shape[2:]
    if frames % ts != 1:
        raise InputError(f"the video has {frames} frames, but the {vae} VAE encodes {ts}n+1 frames "
                         f"(1, {ts + 1}, {2 * ts + 1}, …)",
                         f"trim or extend the video to {ts}n+1 frames, e.g. {max(1, frames - (frames - 1) % ts)}")
    if height % s or width % s:
        raise InputError(f"the video is {width}×{height}, but the {vae} VAE needs width and height that are "
                         f"multiples of {s}", f"resize or crop the video, e.g. to {width // s * s}×{height // s * s}")


def tile_cells(tile_size: int, tile_overlap: int | None, stride: int) -> tuple[int, int]:
    """A tile size and overlap in pixels (overlap None: a quarter of the tile) → (tile, overlap) in latent cells of
    `stride` pixels; a clear error for a tile that cannot tile a frame."""
    overlap = tile_size // 4 if tile_overlap is None else tile_overlap
    if tile_size < stride or not 0 <= overlap < tile_size:
        raise InputError(f"tile size {tile_size} with overlap {overlap} pixels cannot tile a frame",
                         f"use a tile size of at least {stride} pixels and an overlap smaller than the tile")
    return tile_size // stride, overlap // stride


def spread_spans(size: int, tile: int, overlap: int) -> list[Span]:
    """Evenly spread [start, end) ranges of length `tile` that cover [0, size), neighbours sharing ≥ `overlap`."""
    if tile >= size:
        return [(0, size)]
    n = math.ceil((size - overlap) / (tile - overlap))
    return [(s, s + tile) for s in (round(i * (size - tile) / (n - 1)) for i in range(n))]


def spread_tiles(h: int, w: int, tile_size: int | None, tile_overlap: int | None,
                 stride: int) -> tuple[Tiles, int]:
    """Evenly spread spatial tiles of a latent h×w as (rows, columns) ranges in latent cells, and their overlap in
    cells (one tile for the whole frame when `tile_size` is None)."""
    if tile_size is None:
        return [((0, h), (0, w))], 0
    tile, overlap = tile_cells(tile_size, tile_overlap, stride)
    overlap = min(overlap, tile - 1)
    rows, cols = spread_spans(h, tile, overlap), spread_spans(w, tile, overlap)
    return [(r, c) for r in rows for c in cols], overlap


def gather(chunks: Iterator[torch.Tensor], frames: int) -> torch.Tensor:
    """A streamed decode's pieces [B, C, f, H, W] joined on frames into one [B, C, frames, H, W] tensor, filled in
    place (never two copies of the video)."""
    out, at = None, 0
    for chunk in chunks:
        if out is None:
            out = torch.empty(*chunk.shape[:2], frames, *chunk.shape[3:], device=chunk.device)
        out[:, :, at:at + chunk.shape[2]] = chunk
        at += chunk.shape[2]
    return out


def strided_spans(size: int, tile: int, stride: int) -> list[Span]:
    """Ranges starting every `stride` cells, `tile` long and cut at `size` (the last ones may be short)."""
    return [(s, min(s + tile, size)) for s in range(0, size, stride)]


def ramp(start: int, end: int, width: int, rise: bool, fall: bool, centred: bool = True) -> torch.Tensor:
    """Weights over [start, end): rising linearly over `width` from the start (`rise`) and falling towards the
    end (`fall`), the sides where a neighbouring range overlaps."""
    p = torch.arange(start, end, dtype=torch.float32) + (0.5 if centred else 0.0)
    w = torch.ones(end - start)
    if rise:
        w = torch.minimum(w, (p - start) / width)
    if fall:
        w = torch.minimum(w, (end - p) / width)
    return w


def ramp_weights(spans: list[Span], size: int, width: int, centred: bool = True) -> list[torch.Tensor]:
    """Weights for ranges in increasing order that cover [0, size): each range's ramp (rising unless it is the
    first, falling unless it is the last) divided by the sum of all ramps, so that they sum to one everywhere."""
    last = len(spans) - 1
    ramps = [ramp(s, e, max(width, 1), i > 0, i < last, centred) for i, (s, e) in enumerate(spans)]
    total = torch.zeros(size)
    for (s, e), r in zip(spans, ramps):
        total[s:e] += r
    return [r / total[s:e] for (s, e), r in zip(spans, ramps)]


def _axis(spans: list[Span], scale: int, width: int, style: str) -> dict[Span, tuple]:
    """Per span of one axis: (its scaled range as a slice, its weight, and for SEQUENTIAL blending the part of that
    weight inside its overlap with the next span, and the weight with the later span's ramp squared in every
    overlap); None for what CENTRED blending does not use."""
    scaled = [(s * scale, e * scale) for s, e in spans]
    weights = ramp_weights(scaled, scaled[-1][1], width, centred=style == CENTRED)
    found = {}
    for k, (span, (s, e), w) in enumerate(zip(spans, scaled, weights)):
        inside = squared = None
        if style == SEQUENTIAL:
            cut = (scaled[k + 1][0] if k + 1 < len(spans) else e) - s  # where the next span's overlap begins
            inside, squared = torch.zeros_like(w), w * w
            inside[cut:] = w[cut:]
            if k + 1 < len(spans):
                squared[cut:] = 1 - weights[k + 1][:e - s - cut] ** 2
        found[span] = (slice(s, e), w, inside, squared)
    return found


def blend(tiles: Tiles, overlap: int, scale: int, device: torch.device, style: str = CENTRED):
    """Output regions of the tiles of a full grid (a cell is `scale` output elements) and their 2D blending
    weights, from ramps `overlap` cells wide in `style`."""
    rows = _axis(sorted({r for r, _ in tiles}), scale, overlap * scale, style)
    cols = _axis(sorted({c for _, c in tiles}), scale, overlap * scale, style)
    regions, weights = [], []
    for r, c in tiles:
        (rh, row, row_inside, _), (rw, col, _, col_squared) = rows[r], cols[c]
        regions.append((rh, rw))
        weight = row[:, None] * col[None]
        if style == SEQUENTIAL:  # inside the overlap with the tile below, columns blend with squared ramps
            weight += row_inside[:, None] * (col_squared - col)[None]
        weights.append(weight.to(device))
    return regions, weights


def crop(x: torch.Tensor, t0: int, t1: int, tile: tuple[Span, Span], scale: int) -> torch.Tensor:
    (h0, h1), (w0, w1) = tile
    return x[:, :, t0:t1, h0 * scale:h1 * scale, w0 * scale:w1 * scale]


def stream(step: Step, x: torch.Tensor, chunks: list[Span], tiles: Tiles, overlap: int, scale_in: int,
           scale_out: int, device: torch.device, style: str = CENTRED) -> Iterator[torch.Tensor]:
    """Run `step(x_chunk, cache)` over the temporal chunks of `x`, yielding one blended output per chunk.

    A cell of a tile is `scale_in` elements of `x` and `scale_out` of the output. Every tile keeps its own causal
    cache, and all of them stay alive until the last chunk: streaming bounds activations, not caches.
    """
    caches = [{} for _ in tiles]
    if len(tiles) == 1:
        for t0, t1 in chunks:
            yield step(x[:, :, t0:t1], caches[0])
        return
    regions, weights = blend(tiles, overlap, scale_out, device, style)
    for t0, t1 in chunks:
        out = None
        for tile, (rh, rw), weight, cache in zip(tiles, regions, weights, caches):
            y = step(crop(x, t0, t1, tile, scale_in), cache)
            if out is None:
                out = torch.zeros(*y.shape[:3], regions[-1][0].stop, regions[-1][1].stop, device=device)
            out[..., rh, rw] += y * weight
        yield out


def tile_by_tile(step: Step, x: torch.Tensor, chunks: list[Span], tiles: Tiles, overlap: int, scale_in: int,
                 scale_out: int, device: torch.device, frames_out: int, style: str = CENTRED) -> torch.Tensor:
    """What `stream` yields, as one float32 tensor of `frames_out` frames, computed one tile at a time through
    all chunks, so that only one tile's cache is alive. Equal to `stream` (same sums, in the same order)."""
    if len(tiles) == 1 and len(chunks) == 1:  # nothing to blend or join
        return step(x[:, :, chunks[0][0]:chunks[0][1]], {}).float()
    regions, weights = blend(tiles, overlap, scale_out, device, style)
    out = None
    for tile, (rh, rw), weight in zip(tiles, regions, weights):
        cache, at = {}, 0
        for t0, t1 in chunks:
            y = step(crop(x, t0, t1, tile, scale_in), cache)
            if out is None:
                out = torch.zeros(*y.shape[:2], frames_out, regions[-1][0].stop, regions[-1][1].stop, device=device)
            out[:, :, at:at + y.shape[2], rh, rw] += y * weight
            at += y.shape[2]
    return out
