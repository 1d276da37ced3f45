"""HunyuanVideo's causal 3D VAE (`884-16c-hy`): 16 latent channels, 4×8×8 compression.

Written from the published architecture (Tencent `hyvideo/vae/`, diffusers `AutoencoderKLHunyuanVideo`); parameter
names are the official ones, which diffusers shares, so `vae/pytorch_model.pt` and diffusers `vae/` folders load
without renaming (ComfyUI's single file is renamed in models/hunyuan/latents.py).

A GroupNorm U-Net-style encoder/decoder of causal 3D convolutions (replicate padding: 2 frames in front, none
behind), with self-attention in the middle block where a position sees its own and earlier frames. The first frame
stands alone in time: temporal down-sampling keeps it as the first output, temporal up-sampling doubles only the
frames after it. GroupNorm and attention see a whole clip, so nothing streams exactly; long videos run, as in the
official code, in overlapping temporal windows blended linearly (`temporal_tile` latent frames, `temporal_overlap`
shared), and large frames in overlapping spatial tiles blended the same way, one at a time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...errors import InputError
from ..common.tiling import (SEQUENTIAL, Span, check_video, gather, ramp_weights, strided_spans, tile_by_tile,
                             tile_cells)

SCALING_FACTOR = 0.476986   # latent = posterior mean × this (no shift), HunyuanVideo's DiT space
ATTENTION_SCORES = 1 << 28  # attention runs in query blocks of at most this many scores
# Elements one convolution may take or make at once. CUDA's replicate padding refuses larger tensors and PyTorch
# moves larger convolutions off cuDNN; a full-resolution window (65 frames × 256 channels) is that large from
# about 360×360 pixels on, so padding here is done by copies and larger convolutions run in slabs of rows.
LARGEST = 2**31 - 1


@dataclass(frozen=True)
class HunyuanVAEConfig:
    """Architecture of the HunyuanVideo VAE; the defaults are the released one."""
    latent_channels: int = 16
    block_out: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_groups: int = 32
    mid_attention: bool = True
    attention_kernels: bool = False  # attention projections stored as 1×1×1 conv kernels (ComfyUI's file)
    temporal_tile: int = 16          # latent frames a temporal window adds to its first one (official: 64 pixels)
    temporal_overlap: int = 4        # latent frames consecutive windows share (official: a quarter)
    # When frames are tiled in space (memory is short) the windows shrink to diffusers' default (16 pixel frames
    # every 12): a quarter of the working memory of the official windows (bench/RESULTS.md).
    tiled_temporal_tile: int = 4
    tiled_temporal_overlap: int = 1

    def windows(self, tiled: bool) -> tuple[int, int]:
        """(temporal tile, overlap) in latent frames: the official windows, or the short ones when tiled."""
        if not tiled:
            return self.temporal_tile, self.temporal_overlap
        return (min(self.temporal_tile, self.tiled_temporal_tile),
                min(self.temporal_overlap, self.tiled_temporal_overlap))

    spatial_stride = 8
    temporal_stride = 4

    def resamples(self, level: int) -> tuple[bool, bool]:
        """(space, time): whether level `level` of the encoder halves (of the decoder, counted from its input,
        doubles) height and width — the first three levels — and the frame rate — the two before the last."""
        n = len(self.block_out)
        return level < min(3, n - 1), n - 3 <= level < n - 1


# ----------------------------------------------------------------------------------------- layers
def replicate_pad(x: torch.Tensor, front: int, side: int) -> torch.Tensor:
    """[B, C, T, H, W] with its first frame repeated `front` times in front and its border rows and columns
    repeated `side` times outside, by copies (no 32-bit index limit)."""
    b, c, t, h, w = x.shape
    out = x.new_empty(b, c, t + front, h + 2 * side, w + 2 * side)
    inner = out[:, :, front:]
    inner[:, :, :, side:side + h, side:side + w] = x
    if side:
        inner[:, :, :, :side, side:side + w] = x[:, :, :, :1]
        inner[:, :, :, side + h:, side:side + w] = x[:, :, :, -1:]
        inner[..., :side] = inner[..., side:side + 1]
        inner[..., side + w:] = inner[..., side + w - 1:side + w]
    if front:
        out[:, :, :front] = out[:, :, front:front + 1]
    return out


def conv_in_slabs(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """`conv(x)` (no padding of its own), in slabs of output rows when x or the output is larger than LARGEST."""
    (kt, kh, kw), (st, sh, sw) = conv.kernel_size, conv.stride
    b, _, t, h, w = x.shape
    shape = (b, conv.out_channels, (t - kt) // st + 1, (h - kh) // sh + 1, (w - kw) // sw + 1)
    row_out, row_in = shape[0] * shape[1] * shape[2] * shape[4], x.numel() // h
    if x.numel() <= LARGEST and row_out * shape[3] <= LARGEST:
        return conv(x)
    rows = max(1, min(LARGEST // row_out, (LARGEST // row_in - kh) // sh + 1))
    out = x.new_empty(shape)
    for r0 in range(0, shape[3], rows):
        r1 = min(r0 + rows, shape[3])
        out[:, :, :, r0:r1] = conv(x[:, :, :, r0 * sh:(r1 - 1) * sh + kh])
    return out


class CausalConv3d(nn.Module):
    """A 3D convolution padded by replicating borders: kernel//2 on each side in space, kernel−1 frames in front."""

    def __init__(self, cin: int, cout: int, kernel: int, stride=1):
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, kernel, stride)
        self.pad = (kernel - 1, kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_in_slabs(self.conv, replicate_pad(x, *self.pad) if any(self.pad) else x)


def _norm(groups: int, channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """Two (GroupNorm, SiLU, causal 3×3×3 conv) steps plus a shortcut (a 1×1×1 conv where the width changes)."""

    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.norm1 = _norm(groups, cin)
        self.conv1 = CausalConv3d(cin, cout, 3)
        self.norm2 = _norm(groups, cout)
        self.conv2 = CausalConv3d(cout, cout, 3)
        self.conv_shortcut = CausalConv3d(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x), inplace=True))
        h = self.conv2(F.silu(self.norm2(h), inplace=True))
        return h + (x if self.conv_shortcut is None else self.conv_shortcut(x))


class Projection(nn.Module):
    """A linear map over channels; its weight is [out, in], or [out, in, 1, 1, 1] as ComfyUI stores it."""

    def __init__(self, dim: int, kernel: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim, dim, *((1, 1, 1) if kernel else ())))
        self.bias = nn.Parameter(torch.empty(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.flatten(1), self.bias)


def frame_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, frame_tokens: int) -> torch.Tensor:
    """Single-head attention over [B, N, C] tokens in frame order where a token sees the tokens of its own and
    earlier frames: each frame's queries attend to the keys before the frame's end, in blocks of queries small
    enough that even a materialized score matrix stays bounded. No N×N mask is built."""
    out = torch.empty_like(q)
    for end in range(frame_tokens, q.shape[1] + 1, frame_tokens):
        block = max(1, ATTENTION_SCORES // end)
        for r0 in range(end - frame_tokens, end, block):
            r1 = min(r0 + block, end)
            out[:, r0:r1] = F.scaled_dot_product_attention(q[:, None, r0:r1], k[:, None, :end], v[:, None, :end])[:, 0]
    return out


class Attention(nn.Module):
    """The middle block's self-attention: GroupNorm, one head as wide as the block, frame-causal, residual."""

    def __init__(self, dim: int, groups: int, kernels: bool):
        super().__init__()
        self.group_norm = _norm(groups, dim)
        self.to_q, self.to_k, self.to_v = (Projection(dim, kernels) for _ in range(3))
        self.to_out = nn.ModuleList([Projection(dim, kernels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        tokens = self.group_norm(x).permute(0, 2, 3, 4, 1).reshape(b, t * h * w, c)
        y = frame_causal_attention(self.to_q(tokens), self.to_k(tokens), self.to_v(tokens), h * w)
        return x + self.to_out[0](y).view(b, t, h, w, c).permute(0, 4, 1, 2, 3)


class MidBlock(nn.Module):
    """ResnetBlock, attention, ResnetBlock at the smallest scale."""

    def __init__(self, dim: int, cfg: HunyuanVAEConfig):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(dim, dim, cfg.norm_groups) for _ in range(2)])
        self.attentions = nn.ModuleList([Attention(dim, cfg.norm_groups, cfg.attention_kernels)]
                                        if cfg.mid_attention else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        for attention in self.attentions:
            x = attention(x)
        return self.resnets[1](x)


class Downsample(nn.Module):
    """A strided causal 3×3×3 conv halving height and width (`space`) and the frame rate (`time`); with the two
    padding frames in front, the first frame stays the first output."""

    def __init__(self, dim: int, space: bool, time: bool):
        super().__init__()
        self.conv = CausalConv3d(dim, dim, 3, stride=(1 + time, 1 + space, 1 + space))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest ×2 in height and width (`space`) and for every frame after the first (`time`), then a causal
    3×3×3 conv."""

    def __init__(self, dim: int, space: bool, time: bool):
        super().__init__()
        self.space, self.time = space, time
        self.conv = CausalConv3d(dim, dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        ft, fs = 1 + self.time, 1 + self.space
        up = x.new_empty(b, c, 1 + ft * (t - 1), fs * h, fs * w)  # nearest, by broadcast copies
        up[:, :, :1].view(b, c, 1, 1, h, fs, w, fs).copy_(x[:, :, :1, None, :, None, :, None])
        if t > 1:
            up[:, :, 1:].view(b, c, t - 1, ft, h, fs, w, fs).copy_(x[:, :, 1:, None, :, None, :, None])
        return self.conv(up)


class Stage(nn.Module):
    """One level of the encoder (resampler in `downsamplers`) or decoder (`upsamplers`): resnets, then the
    resampler if the level has one."""

    def __init__(self, cin: int, cout: int, layers: int, groups: int, resample: nn.Module | None, up: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(cin if i == 0 else cout, cout, groups) for i in range(layers)])
        self.samplers = "upsamplers" if up else "downsamplers"
        setattr(self, self.samplers, nn.ModuleList([resample]) if resample is not None else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        for resample in getattr(self, self.samplers) or ():
            x = resample(x)
        return x


class Encoder(nn.Module):
    """Pixels → 2·z channels (posterior mean and log-variance) at 1/8 the size and 1/4 the frame rate."""

    def __init__(self, cfg: HunyuanVAEConfig):
        super().__init__()
        dims = cfg.block_out
        self.conv_in = CausalConv3d(3, dims[0], 3)
        self.down_blocks = nn.ModuleList()
        for i, cout in enumerate(dims):
            space, time = cfg.resamples(i)
            resample = Downsample(cout, space, time) if space or time else None
            self.down_blocks.append(Stage(dims[max(i - 1, 0)], cout, cfg.layers_per_block, cfg.norm_groups,
                                          resample, up=False))
        self.mid_block = MidBlock(dims[-1], cfg)
        self.conv_norm_out = _norm(cfg.norm_groups, dims[-1])
        self.conv_out = CausalConv3d(dims[-1], 2 * cfg.latent_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(self.mid_block(x)), inplace=True))


class Decoder(nn.Module):
    """z channels → pixels, mirroring the encoder (one more resnet per level)."""

    def __init__(self, cfg: HunyuanVAEConfig):
        super().__init__()
        dims = tuple(reversed(cfg.block_out))
        self.conv_in = CausalConv3d(cfg.latent_channels, dims[0], 3)
        self.mid_block = MidBlock(dims[0], cfg)
        self.up_blocks = nn.ModuleList()
        for i, cout in enumerate(dims):
            space, time = cfg.resamples(i)
            resample = Upsample(cout, space, time) if space or time else None
            self.up_blocks.append(Stage(dims[max(i - 1, 0)], cout, cfg.layers_per_block + 1, cfg.norm_groups,
                                        resample, up=True))
        self.conv_norm_out = _norm(cfg.norm_groups, dims[-1])
        self.conv_out = CausalConv3d(dims[-1], 3, 3)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x), inplace=True))


# ----------------------------------------------------------------------------------------- temporal windows
Window = tuple[Span, Span, torch.Tensor]  # input frames, output frames, blending weight per output frame


def temporal_windows(frames: int, tile: int, stride: int, to_out: Callable[[int], int], width: int) -> list[Window]:
    """The official temporal tiling of `frames` causal input frames: one window when they fit in `tile`, else
    windows of tile + 1 frames starting every `stride` frames. Each window is encoded or decoded as a clip of its
    own; after the first, a window's first output frame (its stand-alone first frame) is dropped. `to_out` maps
    an input frame to its output frame; neighbouring outputs are blended over `width` frames (weights from 0 at a
    window's first frame, as the official code blends)."""
    if frames <= tile:
        inputs = [(0, frames)]
    else:
        inputs = [(s, min(s + tile + 1, frames)) for s in range(0, frames, stride)]
    spans = [(to_out(s) + (1 if s else 0), to_out(e - 1) + 1) for s, e in inputs]
    kept = [(i, o) for i, o in zip(inputs, spans) if o[1] > o[0]]  # a window of only its first frame adds nothing
    weights = ramp_weights([o for _, o in kept], kept[-1][1][1], width, centred=False)
    return [(i, o, w) for (i, o), w in zip(kept, weights)]


# ----------------------------------------------------------------------------------------- the VAE
class HunyuanVAE(nn.Module):
    """The HunyuanVideo VAE working in the DiT's latent space, posterior mean × 0.476986.

    Computes in the dtype and on the device of its weights; inputs are moved there window by window and tile by
    tile, outputs are float32 on that device. `tile_size` / `tile_overlap` (pixels; None: whole frames, overlap a
    quarter tile) split frames into tiles placed as the official code places them (every tile − overlap pixels),
    run one at a time. Tiles and windows see only their own pixels in GroupNorm and attention, so tiled and
    windowed results differ from whole-clip ones; with the official 256-pixel tiles this equals the official
    tiled VAE.
    """

    # Working memory per pixel of a frame for a full window (65 frames, 16-bit compute), for the auto tile choice: an
    # measured untiled decode peak on an H200 (bench/RESULTS.md): 118.3 GiB at 1280×720 × 129 frames (bf16, the
    # official 65-frame windows), i.e. 137,856 bytes per pixel of a frame; tiled at 256 px it is 14.0 GiB
    bytes_per_pixel = 140_000

    def __init__(self, cfg: HunyuanVAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv3d(2 * cfg.latent_channels, 2 * cfg.latent_channels, 1)
        self.post_quant_conv = nn.Conv3d(cfg.latent_channels, cfg.latent_channels, 1)

    @torch.no_grad()
    def encode(self, video: torch.Tensor, tile_size: int | None = None,
               tile_overlap: int | None = None) -> torch.Tensor:
        """[B, 3, F, H, W] in [-1, 1] → the latent [B, 16, (F-1)/4 + 1, H/8, W/8] (mean × 0.476986), float32.

        F must be 4n+1 and H, W multiples of 8."""
        cfg, (device, dtype) = self.cfg, self._placement()
        s, ts = cfg.spatial_stride, cfg.temporal_stride
        check_video(video, ts, s, "HunyuanVideo")
        frames, height, width = video.shape[2:]
        tiles, overlap = self._tiles(height // s, width // s, tile_size, tile_overlap)

        def step(x: torch.Tensor, cache: dict) -> torch.Tensor:
            return self.quant_conv(self.encoder(x.to(device, dtype)))[:, :cfg.latent_channels]

        out = None
        tile, window_overlap = cfg.windows(len(tiles) > 1)
        windows = temporal_windows(frames, ts * tile, ts * (tile - window_overlap), lambda f: f // ts, window_overlap)
        for (f0, f1), (o0, o1), weight in windows:
            clip = video[:, :, f0:f1]
            mu = tile_by_tile(step, clip, [(0, f1 - f0)], tiles, overlap, s, 1, device, (f1 - f0 - 1) // ts + 1,
                              style=SEQUENTIAL)[:, :, (1 if f0 else 0):]
            if out is None:
                out = torch.zeros(*mu.shape[:2], windows[-1][1][1], *mu.shape[3:], device=device)
            out[:, :, o0:o1] += mu * weight.to(device).view(1, 1, -1, 1, 1)
        return out * SCALING_FACTOR

    @torch.no_grad()
    def decode(self, latent: torch.Tensor, tile_size: int | None = None,
               tile_overlap: int | None = None) -> torch.Tensor:
        """A latent [B, 16, T, h, w] → video [B, 3, 4(T-1)+1, 8h, 8w], float32 in [-1, 1]."""
        frames = self.cfg.temporal_stride * (latent.shape[2] - 1) + 1
        return gather(self.decode_iter(latent, tile_size, tile_overlap), frames)

    @torch.no_grad()
    def decode_iter(self, latent: torch.Tensor, tile_size: int | None = None,
                    tile_overlap: int | None = None) -> Iterator[torch.Tensor]:
        """`decode`, streamed: yields [B, 3, f, H, W] float32 in [-1, 1] as each temporal window is done (f = 49
        then 48 with the official windows; a short video comes in one piece)."""
        cfg, (device, dtype) = self.cfg, self._placement()
        if latent.dim() != 5 or latent.shape[1] != cfg.latent_channels:
            raise InputError(f"the latent has shape {tuple(latent.shape)}, but the HunyuanVideo VAE decodes "
                             f"[batch, {cfg.latent_channels}, frames, height, width] latents",
                             "decode with the VAE of the model that made the latent")
        z = latent / SCALING_FACTOR
        tiles, overlap = self._tiles(z.shape[3], z.shape[4], tile_size, tile_overlap)
        ts, s = cfg.temporal_stride, cfg.spatial_stride

        def step(zc: torch.Tensor, cache: dict) -> torch.Tensor:
            return self.decoder(self.post_quant_conv(zc.to(device, dtype)))

        tile, window_overlap = cfg.windows(len(tiles) > 1)
        windows = temporal_windows(z.shape[2], tile, tile - window_overlap, lambda t: ts * t, ts * window_overlap)
        pending = None  # the weighted frames of the last window that the next one overlaps
        for k, ((t0, t1), (o0, o1), weight) in enumerate(windows):
            y = tile_by_tile(step, z, [(t0, t1)], tiles, overlap, 1, s, device, ts * (t1 - t0 - 1) + 1,
                             style=SEQUENTIAL)[:, :, (1 if t0 else 0):]
            y.mul_(weight.to(device).view(1, 1, -1, 1, 1))
            if pending is not None:
                y[:, :, :pending.shape[2]] += pending
            done = windows[k + 1][1][0] - o0 if k + 1 < len(windows) else o1 - o0
            pending = y[:, :, done:].clone()
            yield y[:, :, :done].clamp_(-1.0, 1.0)

    def _placement(self) -> tuple[torch.device, torch.dtype]:
        return self.post_quant_conv.weight.device, self.post_quant_conv.weight.dtype

    def _tiles(self, h: int, w: int, tile_size: int | None, tile_overlap: int | None):
        """Spatial tiles as (rows, columns) ranges in latent cells, and their overlap in cells (at most half a tile:
        the official blending joins two tiles at a time): tiles start every tile − overlap cells in both directions
        once either side is longer than a tile, as in the official code."""
        if tile_size is None:
            return [((0, h), (0, w))], 0
        tile, overlap = tile_cells(tile_size, tile_overlap, self.cfg.spatial_stride)
        overlap = min(overlap, tile // 2)
        if h <= tile and w <= tile:
            return [((0, h), (0, w))], 0
        rows, cols = strided_spans(h, tile, tile - overlap), strided_spans(w, tile, tile - overlap)
        return [(r, c) for r in rows for c in cols], overlap
