"""Step-Video-T2V's video VAE, version 2 (`vae/vae_v2.safetensors`): 64 latent channels, 16×16 in space, and every
chunk of 17 frames coded on its own as 3 latent frames.

Written from the published architecture (StepFun `stepvideo/vae/vae.py` `AutoencoderKL(version=2)`, read for
facts); parameter names are the official ones, so the file loads as stored but for `decoder.conv_out.{weight,bias}`,
which the official loader (and models/stepvideo/latents.py) renames to `decoder.conv_out.conv.*`.

Encoder: a causal conv (zeros: 2 frames in front, 1 pixel around), four levels of resnets (widths 128, 256, 512,
512) halving height and width after the first three levels — per frame after the first, together with the frame
rate after the next two — a middle block of resnet, attention, resnet, then a "patchify" step that folds 2×2×2
cells into channels (a zero frame in front) with a channel-averaging shortcut: 17 frames → 3, 1/16 in space. The
decoder mirrors it (an unpatchify with a channel-duplicating shortcut, levels of three resnets, 3D then 2D nearest
up-sampling) and drops its first 3 of 20 frames. Every GroupNorm normalizes each frame on its own; every temporal
padding is zeros; the middle attention is one head as wide as the block, causal over the tokens in (frame, row,
column) order. The official code keeps activations channels-last but convolves them as [B, C, T, H, W] tensors,
which is what this file does with contiguous ones (the same sums).

Chunks are independent, so any number of them streams exactly; decoded neighbours are then blended as the official
`mix` does, in order: a chunk's first frame becomes 0.6·itself + 0.4·the previous chunk's last frame, and that last
frame 0.6·itself + 0.4·the new first frame (0.76 / 0.24 of the originals). Decoding does not clamp (the official
pipeline clamps when it writes the video). The official `encode()` returns a sample of the posterior; `encode`
here returns its mean, the deterministic part (a sample differs by std·ε, the video-to-video noise that sampling
adds anyway). The latent is the VAE's own (scale factor 1.0, no shift).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...errors import InputError
from ..common.tiling import gather, spread_tiles, stream, tile_by_tile

GROUPS = 32                  # GroupNorm groups, fixed in the official code
ATTENTION_SCORES = 1 << 28   # causal attention runs in query blocks of at most this many scores
KEEP, MIX = 0.6, 0.4         # the decoded chunk-boundary blend
SLAB = 1 << 28               # elements of a per-frame step's result computed at once


@dataclass(frozen=True)
class StepVideoVAEConfig:
    """Architecture of the Step-Video VAE v2; the defaults are the released one."""
    latent_channels: int = 64
    encoder_base: int = 32                                  # the encoder's first conv width
    encoder_widths: tuple[int, ...] = (128, 256, 512, 512)  # per level, from the pixels
    decoder_widths: tuple[int, ...] = (128, 256, 512, 512)  # per level, from the pixels (run from the last)
    layers: int = 2                                         # resnets per encoder level (decoder: one more)

    spatial_stride = 16
    chunk_frames = 17   # pixel frames of a chunk …
    chunk_latents = 3   # … and its latent frames

    @property
    def patch_channels(self) -> int:
        """Channels between the latent and the 2×2×2 (un)patchify: 4 per cell of 8 per latent channel."""
        return 32 * self.latent_channels


# ----------------------------------------------------------------------------------------- layers
def front_zeros(x: torch.Tensor, frames: int) -> torch.Tensor:
    """[B, C, T, H, W] with `frames` zero frames in front (the causal padding)."""
    return F.pad(x, (0, 0, 0, 0, frames, 0))


def frame_slabs(x: torch.Tensor, scale: int = 1) -> list[tuple[int, int]]:
    """Ranges of frames of [B, C, T, H, W] whose per-frame results (`scale` × a frame's elements) hold at most SLAB
    elements (at least one frame each): per-frame steps on large tensors run a slab at a time, so that their
    temporaries stay a slab's."""
    per = max(1, SLAB // max(1, scale * x[:, :, :1].numel()))
    return [(t, min(t + per, x.shape[2])) for t in range(0, x.shape[2], per)]


def frame_norm(norm: nn.GroupNorm, x: torch.Tensor, silu: bool, front: int = 0) -> torch.Tensor:
    """GroupNorm of each frame of [B, C, T, H, W] on its own, then SiLU (`silu`), with `front` zero frames in
    front of the result (the padding of the causal conv that follows)."""
    b, c, t, h, w = x.shape
    out = x.new_empty(b, c, t + front, h, w)
    out[:, :, :front] = 0
    for t0, t1 in frame_slabs(x):
        y = F.group_norm(x[:, :, t0:t1].transpose(1, 2).reshape(-1, c, h, w), norm.num_groups, norm.weight,
                         norm.bias, norm.eps)
        if silu:
            F.silu(y, inplace=True)
        out[:, :, front + t0:front + t1] = y.view(b, t1 - t0, c, h, w).transpose(1, 2)
    return out


class Conv(nn.Module):
    """A 3D convolution padded by zeros around each frame (kernel//2); causal padding in time is the caller's. Large
    results are computed in slabs of output frames (as the official code splits large convs in time), which bounds
    the convolution's own workspace."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, kernel, stride, padding=(0, kernel // 2, kernel // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (k, _, _), (st, s, _) = self.conv.kernel_size, self.conv.stride
        frames = (x.shape[2] - k) // st + 1
        per = max(1, SLAB * s * s // max(1, x[:, :1, :1].numel() * self.conv.out_channels))
        if per >= frames:
            return self.conv(x)
        out = None
        for o0 in range(0, frames, per):
            o1 = min(o0 + per, frames)
            y = self.conv(x[:, :, o0 * st:(o1 - 1) * st + k])
            if out is None:
                out = y.new_empty(*y.shape[:2], frames, *y.shape[3:])
            out[:, :, o0:o1] = y
        return out


class Patchify(nn.Module):
    """The official `ConvPixel…` layers: a causal 3×3×3 conv (`conv.conv`) and a 2×2×2 fold (`up`: unfold)."""

    def __init__(self, cin: int, cout: int, up: bool):
        super().__init__()
        self.up = up
        self.conv = Conv(cin, cout * 8 if up else cout // 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(front_zeros(x, 2))
        return unfold(y, 2) if self.up else fold(y, 2)


def fold(x: torch.Tensor, f: int) -> torch.Tensor:
    """f×f×f cells → channels (channel, then frame, row, column offset), after f − 1 zero frames in front."""
    x = front_zeros(x, f - 1)
    b, c, t, h, w = x.shape
    x = x.view(b, c, t // f, f, h // f, f, w // f, f).permute(0, 1, 3, 5, 7, 2, 4, 6)
    return x.reshape(b, c * f ** 3, t // f, h // f, w // f)


def unfold(x: torch.Tensor, f: int) -> torch.Tensor:
    """The inverse of `fold` without its zero frames: channels → f×f×f cells, first f − 1 frames dropped."""
    b, c, t, h, w = x.shape
    x = x.view(b, c // f ** 3, f, f, f, t, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
    return x.reshape(b, c // f ** 3, t * f, h * f, w * f)[:, :, f - 1:]


def averaged_fold(x: torch.Tensor, cout: int, f: int) -> torch.Tensor:
    """`fold`, then the mean of each run of consecutive channels down to `cout` (the encoder's shortcuts)."""
    y = fold(x, f)
    return y.view(y.shape[0], cout, -1, *y.shape[2:]).mean(2)


def duplicated_unfold(x: torch.Tensor, cout: int, f: int) -> torch.Tensor:
    """Each channel repeated up to `cout`·f³ channels, then `unfold` (the decoder's shortcuts)."""
    return unfold(x.repeat_interleave(cout * f ** 3 // x.shape[1], dim=1), f)


class ResnetBlock(nn.Module):
    """(per-frame GroupNorm, SiLU, causal 3×3×3 conv) twice, plus the input (a 1×1×1 conv where widths change)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(GROUPS, cin)
        self.conv1 = Conv(cin, cout, 3)
        self.norm2 = nn.GroupNorm(GROUPS, cout)
        self.conv2 = Conv(cout, cout, 3)
        self.nin_shortcut = Conv(cin, cout, 1) if cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(frame_norm(self.norm1, x, True, front=2))
        h = self.conv2(frame_norm(self.norm2, h, True, front=2))
        return h.add_(x if self.nin_shortcut is None else self.nin_shortcut(x))


class UpResnet(nn.Module):
    """The block after a 3D up-sampling: causal conv, GroupNorm, SiLU, causal conv, GroupNorm, then
    SiLU(· + input) + input."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv1, self.norm1 = Conv(dim, dim, 3), nn.GroupNorm(GROUPS, dim)
        self.conv2, self.norm2 = Conv(dim, dim, 3), nn.GroupNorm(GROUPS, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = frame_norm(self.norm1, self.conv1(front_zeros(x, 2)), True)
        h = frame_norm(self.norm2, self.conv2(front_zeros(h, 2)), False)
        return F.silu(h.add_(x), inplace=True).add_(x)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Single-head causal attention over [B, N, C] tokens (each sees itself and those before it), in blocks of
    queries whose score matrices stay below ATTENTION_SCORES (one call when they all fit)."""
    n = q.shape[1]
    block = max(1, ATTENTION_SCORES // n)
    if block >= n:
        return F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None], is_causal=True)[:, 0]
    out = torch.empty_like(q)
    for r0 in range(0, n, block):
        r1 = min(r0 + block, n)
        mask = torch.arange(r0, r1, device=q.device)[:, None] >= torch.arange(r1, device=q.device)[None]
        out[:, r0:r1] = F.scaled_dot_product_attention(q[:, None, r0:r1], k[:, None, :r1], v[:, None, :r1],
                                                       attn_mask=mask)[:, 0]
    return out


class Attention(nn.Module):
    """The middle block's attention: per-frame GroupNorm, 1×1×1 q/k/v convs, causal attention over the tokens in
    (frame, row, column) order, a 1×1×1 output conv, residual."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.GroupNorm(GROUPS, dim)
        self.q, self.k, self.v, self.proj_out = (Conv(dim, dim, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        tokens = frame_norm(self.norm, x, False).flatten(2).transpose(1, 2)  # [B, T·H·W, C]
        q, k, v = (F.linear(tokens, p.conv.weight.flatten(1), p.conv.bias) for p in (self.q, self.k, self.v))
        y = F.linear(causal_attention(q, k, v), self.proj_out.conv.weight.flatten(1), self.proj_out.conv.bias)
        return x + y.transpose(1, 2).view(b, c, t, h, w)


class MidBlock(nn.Module):
    """ResnetBlock, attention, ResnetBlock at the smallest scale (official names `block_1`, `attn_1`, `block_2`)."""

    def __init__(self, dim: int):
        super().__init__()
        self.block_1, self.attn_1, self.block_2 = ResnetBlock(dim, dim), Attention(dim), ResnetBlock(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class FrameResample(nn.Module):
    """Per frame: a 3×3 conv with stride 2 after a zero row and column at the bottom and right (down), or
    nearest ×2 then a 3×3 conv (up), in slabs of frames. The weight is the official 2D one."""

    def __init__(self, dim: int, up: bool):
        super().__init__()
        self.up = up
        self.conv = nn.Conv2d(dim, dim, 3, padding=int(up), stride=1 if up else 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = None
        for t0, t1 in frame_slabs(x, 4 if self.up else 1):
            y = x[:, :, t0:t1]
            y = F.interpolate(y, scale_factor=(1, 2, 2), mode="nearest") if self.up else F.pad(y, (0, 1, 0, 1))
            y = F.conv3d(y, self.conv.weight[:, :, None], self.conv.bias, (1, *self.conv.stride),
                         (0, *self.conv.padding))
            if out is None:
                out = y.new_empty(*y.shape[:2], x.shape[2], *y.shape[3:])
            out[:, :, t0:t1] = y
        return out


class Downsample3D(nn.Module):
    """A causal 3×3×3 conv with stride 2 in time, height and width."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv = Conv(dim, dim, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(front_zeros(x, 2))


class Upsample3D(nn.Module):
    """Nearest ×2 in time, height and width, then an `UpResnet` (official name `conv3d`)."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv3d = UpResnet(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3d(F.interpolate(x, scale_factor=2, mode="nearest"))


class Level(nn.Module):
    """One level: resnets (`block`), then its resampler (`downsample` / `upsample`) if it has one."""

    def __init__(self, cin: int, cout: int, layers: int, resample: nn.Module | None, up: bool):
        super().__init__()
        self.block = nn.ModuleList([ResnetBlock(cin if i == 0 else cout, cout) for i in range(layers)])
        self.resample = "upsample" if up else "downsample"
        setattr(self, self.resample, resample)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        resample = getattr(self, self.resample)
        return x if resample is None else resample(x)


class Encoder(nn.Module):
    """A chunk of 17 frames → 2·z channels (posterior mean and log-variance) × 3 frames at 1/16 the size."""

    def __init__(self, cfg: StepVideoVAEConfig):
        super().__init__()
        widths, z2 = cfg.encoder_widths, 2 * cfg.latent_channels
        self.conv_in = Conv(3, cfg.encoder_base, 3)
        self.down = nn.ModuleList([Level(
            widths[i - 1] if i else cfg.encoder_base, widths[i], cfg.layers,
            None if i == 3 else FrameResample(widths[i], up=False) if i == 0 else Downsample3D(widths[i]), up=False)
            for i in range(4)])
        self.mid = MidBlock(widths[-1])
        self.norm_out = nn.GroupNorm(GROUPS, widths[-1])
        self.conv_patchify = Patchify(widths[-1], cfg.patch_channels, up=False)
        self.conv_out = Conv(cfg.patch_channels, z2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(front_zeros(x, 2))
        for level in self.down:
            x = level(x)
        x = frame_norm(self.norm_out, self.mid(x), True)
        x = self.conv_patchify(x).add_(averaged_fold(x, self.conv_out.conv.in_channels, 2))
        return self.conv_out(front_zeros(x, 2)).add_(averaged_fold(x, self.conv_out.conv.out_channels, 1))


class Decoder(nn.Module):
    """z channels × 3 frames → 20 frames at 16× the size, of which the last 17 are the chunk."""

    def __init__(self, cfg: StepVideoVAEConfig):
        super().__init__()
        widths = cfg.decoder_widths
        self.conv_in = Conv(cfg.latent_channels, cfg.patch_channels, 3)
        self.conv_unpatchify = Patchify(cfg.patch_channels, widths[-1], up=True)
        self.mid = MidBlock(widths[-1])
        self.up = nn.ModuleList([Level(
            widths[min(i + 1, 3)], widths[i], cfg.layers + 1,
            None if i == 0 else FrameResample(widths[i], up=True) if i == 1 else Upsample3D(widths[i]), up=True)
            for i in range(4)])
        self.norm_out = nn.GroupNorm(GROUPS, widths[0])
        self.conv_out = Conv(widths[0], 3, 3)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(front_zeros(z, 2)).add_(duplicated_unfold(z, self.conv_in.conv.out_channels, 1))
        x = self.conv_unpatchify(x).add_(duplicated_unfold(x, self.mid.block_1.norm1.num_channels, 2))
        x = self.mid(x)
        for level in reversed(self.up):
            x = level(x)
        return self.conv_out(frame_norm(self.norm_out, x, True, front=2))[:, :, 3:]


# ----------------------------------------------------------------------------------------- the VAE
class StepVideoVAE(nn.Module):
    """The Step-Video VAE v2 working in its own latent space (scale 1.0), chunk by chunk.

    Computes in the dtype and on the device of its weights; inputs are moved there chunk by chunk and tile by tile,
    outputs are float32 on that device. `tile_size` / `tile_overlap` (pixels; None: whole frames, overlap a quarter
    tile) split frames into evenly spread overlapping tiles, blended with centred linear ramps (there is no official
    tiling: tiles see only their own pixels in GroupNorm and attention, so tiled results differ near seams).
    """

    # Peak working memory per pixel of a frame of decoding one chunk (what the auto tile choice needs), bf16, measured
    # on an H200 with random real-size weights (2026-11-29): 24.5 GiB at 992×544 (48,700 B/pixel; the same per pixel
    # at 1280×720) with whole-tensor per-frame steps; 21.7 GiB (43,100) with norms and resamplers in slabs, before
    # the convs ran in slabs too (so an upper bound now; the peak was a full-size resnet's conv). decode_iter adds a
    # chunk of output (+0.1 GiB); the allocator reserved up to 1.7× the peak. Tiled at 256 px: 3.2 GiB; encoding a
    # chunk peaks at 28,600 B/pixel.
    bytes_per_pixel = 45_000

    def __init__(self, cfg: StepVideoVAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    @torch.no_grad()
    def encode(self, video: torch.Tensor, tile_size: int | None = None,
               tile_overlap: int | None = None) -> torch.Tensor:
        """[B, 3, F, H, W] in [-1, 1] → the posterior mean [B, 64, 3F/17, H/16, W/16], float32.

        F must be a multiple of 17 and H, W multiples of 16."""
        cfg, (device, dtype) = self.cfg, self._placement()
        s, cf = cfg.spatial_stride, cfg.chunk_frames
        if video.dim() != 5 or video.shape[1] != 3:
            raise InputError(f"the video has shape {tuple(video.shape)}, not [batch, 3, frames, height, width]",
                             "pass RGB frames")
        frames, height, width = video.shape[2:]
        if frames < cf or frames % cf:
            lower = max(cf, frames // cf * cf)
            raise InputError(f"the video has {frames} frames, but the Step-Video VAE encodes chunks of {cf} frames",
                             f"trim or extend the video to a multiple of {cf} frames, e.g. {lower} or {lower + cf}")
        if height % s or width % s:
            raise InputError(f"the video is {width}×{height}, but the Step-Video VAE needs width and height that "
                             f"are multiples of {s}", f"resize or crop the video, e.g. to {width // s * s}×"
                             f"{height // s * s}")
        tiles, overlap = spread_tiles(height // s, width // s, tile_size, tile_overlap, self.cfg.spatial_stride)

        def step(x: torch.Tensor, cache: dict) -> torch.Tensor:
            return self.encoder(x.to(device, dtype))[:, :cfg.latent_channels]

        chunks = [(t, t + cf) for t in range(0, frames, cf)]
        return tile_by_tile(step, video, chunks, tiles, overlap, s, 1, device, len(chunks) * cfg.chunk_latents)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor, tile_size: int | None = None,
               tile_overlap: int | None = None) -> torch.Tensor:
        """A latent [B, 64, 3n, h, w] → video [B, 3, 17n, 16h, 16w], float32, nominally in [-1, 1] (unclamped)."""
        frames = latent.shape[2] // self.cfg.chunk_latents * self.cfg.chunk_frames
        return gather(self.decode_iter(latent, tile_size, tile_overlap), frames)

    @torch.no_grad()
    def decode_iter(self, latent: torch.Tensor, tile_size: int | None = None,
                    tile_overlap: int | None = None) -> Iterator[torch.Tensor]:
        """`decode`, streamed: yields each chunk's 17 frames [B, 3, 17, H, W] float32 once the next chunk is decoded
        (its last frame blends with the next chunk's first), so at most two chunks of frames are held."""
        cfg, (device, dtype) = self.cfg, self._placement()
        cl = cfg.chunk_latents
        if latent.dim() != 5 or latent.shape[1] != cfg.latent_channels or latent.shape[2] % cl or not latent.shape[2]:
            raise InputError(f"the latent has shape {tuple(latent.shape)}, but the Step-Video VAE decodes "
                             f"[batch, {cfg.latent_channels}, 3n frames, height, width] latents",
                             "decode with the VAE of the model that made the latent")
        tiles, overlap = spread_tiles(latent.shape[3], latent.shape[4], tile_size, tile_overlap,
                                      self.cfg.spatial_stride)

        def step(zc: torch.Tensor, cache: dict) -> torch.Tensor:
            return self.decoder(zc.to(device, dtype)).float()

        chunks = [(t, t + cl) for t in range(0, latent.shape[2], cl)]
        held = None
        for frames in stream(step, latent, chunks, tiles, overlap, 1, cfg.spatial_stride, device):
            if held is not None:
                first, last = frames[:, :, 0], held[:, :, -1]
                first.mul_(KEEP).add_(last, alpha=MIX)
                last.mul_(KEEP).add_(first, alpha=MIX)
                yield held
            held = frames
        yield held

    def _placement(self) -> tuple[torch.device, torch.dtype]:
        weight = self.decoder.conv_in.conv.weight
        return weight.device, weight.dtype

