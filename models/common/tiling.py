"""Tiled VAE work shared by the video VAEs: where tiles go, how overlapping outputs are blended, and the two ways of
running a per-tile step over a video (streamed chunk by chunk, or one tile at a time through every chunk).

Positions are in cells of the tiled grid (latent cells); a cell is `scale` elements of a step's input or output.
Overlapping outputs are blended with linear ramps across each overlap, normalized so that the weights at every
position sum to one. Two ramp styles exist: `centred` samples the ramp at element centres (Wan), the other at
element starts, so a tile's first overlapping element has weight 0 (the official HunyuanVideo / diffusers tiling).
"""
from __future__ import annotations

import math
from typing import Callable, Iterator

import torch

Span = tuple[int, int]                 # [start, end)
Tiles = list[tuple[Span, Span]]        # (rows, columns) ranges in cells: a full grid, rows × columns
Step = Callable[[torch.Tensor, dict], torch.Tensor]  # (input crop, the tile's causal cache) → output


def spread_spans(size: int, tile: int, overlap: int) -> list[Span]:
    """Evenly spread [start, end) ranges of length `tile` that cover [0, size), neighbours sharing ≥ `overlap`."""
    if tile >= size:
        return [(0, size)]
    n = math.ceil((size - overlap) / (tile - overlap))
    return [(s, s + tile) for s in (round(i * (size - tile) / (n - 1)) for i in range(n))]


def strided_spans(size: int, tile: int, stride: int) -> list[Span]:
    """Ranges starting every `stride` cells, `tile` long and cut at `size` (the last ones may be short)."""
    return [(s, min(s + tile, size)) for s in range(0, size, stride)]


def ramp(start: int, end: int, size: int, width: int, centred: bool = True) -> torch.Tensor:
    """Weights over [start, end): rising linearly over `width` from each side that is not a border of [0, size)."""
    p = torch.arange(start, end, dtype=torch.float32) + (0.5 if centred else 0.0)
    w = torch.ones(end - start)
    if start > 0:
        w = torch.minimum(w, (p - start) / width)
    if end < size:
        w = torch.minimum(w, (end - p) / width)
    return w


def ramp_weights(spans: list[Span], size: int, width: int, centred: bool = True) -> list[torch.Tensor]:
    """Each span's ramp divided by the sum of all ramps at each position: weights that sum to one along [0, size)."""
    ramps = [ramp(s, e, size, max(width, 1), centred) for s, e in spans]
    total = torch.zeros(size)
    for (s, e), r in zip(spans, ramps):
        total[s:e] += r
    return [r / total[s:e] for (s, e), r in zip(spans, ramps)]


def blend(tiles: Tiles, overlap: int, scale: int, device: torch.device, centred: bool = True):
    """Output regions of the tiles (a cell is `scale` output elements) and their 2D blending weights (`overlap`
    cells wide ramps, normalized per axis, so the weights at every position sum to one)."""
    axes = []
    for axis in (0, 1):
        spans = sorted({tile[axis] for tile in tiles})
        size = max(e for _, e in spans) * scale
        scaled = [(s * scale, e * scale) for s, e in spans]
        axes.append(dict(zip(spans, zip(scaled, ramp_weights(scaled, size, overlap * scale, centred)))))
    regions, weights = [], []
    for rows, cols in tiles:
        (rh, wh), (rw, ww) = axes[0][rows], axes[1][cols]
        regions.append((slice(*rh), slice(*rw)))
        weights.append((wh[:, None] * ww[None]).to(device))
    return regions, weights


def crop(x: torch.Tensor, t0: int, t1: int, tile: tuple[Span, Span], scale: int) -> torch.Tensor:
    (h0, h1), (w0, w1) = tile
    return x[:, :, t0:t1, h0 * scale:h1 * scale, w0 * scale:w1 * scale]


def stream(step: Step, x: torch.Tensor, chunks: list[Span], tiles: Tiles, overlap: int, scale_in: int,
           scale_out: int, device: torch.device, centred: bool = True) -> Iterator[torch.Tensor]:
    """Run `step(x_chunk, cache)` over the temporal chunks of `x`, yielding one blended output per chunk.

    A cell of a tile is `scale_in` elements of `x` and `scale_out` of the output. Every tile keeps its own causal
    cache, and all of them stay alive until the last chunk: streaming bounds activations, not caches.
    """
    caches = [{} for _ in tiles]
    if len(tiles) == 1:
        for t0, t1 in chunks:
            yield step(x[:, :, t0:t1], caches[0])
        return
    regions, weights = blend(tiles, overlap, scale_out, device, centred)
    for t0, t1 in chunks:
        out = None
        for tile, (rh, rw), weight, cache in zip(tiles, regions, weights, caches):
            y = step(crop(x, t0, t1, tile, scale_in), cache)
            if out is None:
                out = torch.zeros(*y.shape[:3], regions[-1][0].stop, regions[-1][1].stop, device=device)
            out[..., rh, rw] += y * weight
        yield out


def tile_by_tile(step: Step, x: torch.Tensor, chunks: list[Span], tiles: Tiles, overlap: int, scale_in: int,
                 scale_out: int, device: torch.device, frames_out: int, centred: bool = True) -> torch.Tensor:
    """What `stream` yields, as one float32 tensor of `frames_out` frames, computed one tile at a time through
    all chunks, so that only one tile's cache is alive. Equal to `stream` (same sums, in the same order)."""
    if len(tiles) == 1 and len(chunks) == 1:  # nothing to blend or join
        return step(x[:, :, chunks[0][0]:chunks[0][1]], {}).float()
    regions, weights = blend(tiles, overlap, scale_out, device, centred)
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
