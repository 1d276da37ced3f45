"""The Wan video VAEs: Wan2.1 (16 latent channels, stride 4×8×8) and Wan2.2 (48 channels, 4×16×16) in one network.

Written from the published architecture (Wan-Video `wan/modules/vae2_1.py`, `vae2_2.py`); parameter names follow
the official checkpoints (`Wan2.1_VAE.pth`, `Wan2.2_VAE.pth`), so they load without renaming. `VAEConfig` holds
every difference between the two:
- Wan2.2 folds 2×2 pixels into channels (3 → 12) before the encoder and unfolds them after the decoder;
- Wan2.2 wraps each stage in a weightless shortcut (channel-averaging down, channel-duplicating up), which nests
  its key names (`encoder.downsamples.N.downsamples.M`); Wan2.1's stages form one flat list;
- Wan2.1's upsampling convs halve the width, Wan2.2's keep it; Wan2.2's decoder is wider than its encoder.

Time is causal. The encoder takes the first frame alone, then 4 frames at a time; the decoder one latent frame at a
time. Each causal layer keeps the tail of the previous chunk in a per-stream `cache` dict keyed by the layer, so
any length runs in bounded memory; spatial tiling bounds the activations of a chunk as well.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...errors import InputError
from ..common.tiling import check_video, spread_tiles, stream, tile_by_tile

# Per-channel latent statistics: the DiTs work on (mu - mean) / std. Values from the official Wan2_1_VAE / Wan2_2_VAE.
WAN21_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
              0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
             3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)
WAN22_MEAN = (-0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813, 0.0891,
              0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
              -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313, -0.1649, 0.0117, 0.0723,
              -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667)
WAN22_STD = (0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
             0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
             0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
             0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744)


@dataclass(frozen=True)
class VAEConfig:
    """Architecture of a Wan VAE; `WAN21` and `WAN22` are the released ones."""
    z_dim: int
    dim: int                                  # encoder base width
    dec_dim: int                              # decoder base width
    latents_mean: tuple[float, ...]
    latents_std: tuple[float, ...]
    patch_size: int = 1                       # pixels folded into channels per side before the encoder
    residual: bool = False                    # Wan2.2's weightless stage shortcuts (and nested key names)
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_downsample: tuple[bool, ...] = (False, True, True)

    @property
    def kind(self) -> str:
        """The latent format: 'wan21' or 'wan22'."""
        return "wan22" if self.residual else "wan21"

    @property
    def spatial_stride(self) -> int:
        return self.patch_size * 2 ** (len(self.dim_mult) - 1)

    @property
    def temporal_stride(self) -> int:
        return 2 ** sum(self.temporal_downsample)


WAN21 = VAEConfig(z_dim=16, dim=96, dec_dim=96, latents_mean=WAN21_MEAN, latents_std=WAN21_STD)
WAN22 = VAEConfig(z_dim=48, dim=160, dec_dim=256, latents_mean=WAN22_MEAN, latents_std=WAN22_STD,
                  patch_size=2, residual=True)

Cache = dict  # one stream's temporal state: layer → what it keeps from the previous chunk


# ----------------------------------------------------------------------------------------- layers
class CausalConv3d(nn.Conv3d):
    """A 3D convolution that sees only the present and the past.

    Its 2·p_t frames of temporal context come from the tail of the previous chunk (kept in `cache`, which convs
    with temporal context need), or are zeros at the start of the video, so chunked and whole-video runs agree.
    """

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        pt, ph, pw = (padding,) * 3 if isinstance(padding, int) else padding
        super().__init__(cin, cout, kernel, stride, padding=(0, ph, pw))
        self.context = 2 * pt

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        if not self.context:
            return super().forward(x)
        prev = cache.get(self)
        if prev is not None:
            x = torch.cat([prev, x], 2)
        cache[self] = x[:, :, -self.context:].clone()  # a copy: a view would keep all of `x` alive
        missing = self.context - (0 if prev is None else prev.shape[2])
        return super().forward(F.pad(x, (0, 0, 0, 0, missing, 0)) if missing else x)


class FrameConv2d(nn.Conv2d):
    """A 2D convolution applied to every frame of [B, C, T, H, W]; the weights stay 2D, as in the checkpoints."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv3d(x, self.weight.unsqueeze(2), self.bias, (1, *self.stride), (0, *self.padding))


class RMSNorm(nn.Module):
    """Wan's norm over channels: F.normalize · √C · γ (γ stored as [C,1,1,1], or [C,1,1] in attention)."""

    def __init__(self, dim: int, spatial_dims: int = 3):
        super().__init__()
        self.scale = dim ** 0.5
        self.gamma = nn.Parameter(torch.ones(dim, *(1,) * spatial_dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) * self.scale * self.gamma.view(-1, 1, 1, 1)


class ResidualBlock(nn.Module):
    """Two (norm, SiLU, causal 3×3×3 conv) steps plus a shortcut (a 1×1×1 conv where the width changes)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        # Positions 1, 4 and 5 (SiLU, SiLU, training-time dropout) hold no weights; they keep the checkpoint indices.
        self.residual = nn.Sequential(RMSNorm(cin), nn.SiLU(), CausalConv3d(cin, cout, 3, padding=1),
                                      RMSNorm(cout), nn.SiLU(), nn.Identity(), CausalConv3d(cout, cout, 3, padding=1))
        self.shortcut = CausalConv3d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, cache: Cache) -> torch.Tensor:
        norm1, _, conv1, norm2, _, _, conv2 = self.residual
        h = conv1(F.silu(norm1(x)), cache)
        return conv2(F.silu(norm2(h)), cache) + self.shortcut(x)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMSNorm(dim, spatial_dims=2)
        self.to_qkv = FrameConv2d(dim, dim * 3, 1)
        self.proj = FrameConv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        b, c, t, h, w = x.shape
        qkv = self.to_qkv(self.norm(x)).permute(0, 2, 3, 4, 1).reshape(b * t, 1, h * w, 3 * c)
        y = F.scaled_dot_product_attention(*qkv.chunk(3, dim=-1))
        return x + self.proj(y.reshape(b, t, h, w, c).permute(0, 4, 1, 2, 3))


class Resample(nn.Module):
    """Halve or double the frame size (nearest ×2 then a 3×3 conv, or a strided 3×3 conv), and with '3d' modes
    also the frame rate, through a causal temporal conv."""

    def __init__(self, dim: int, mode: str, out_dim: int | None = None):
        super().__init__()
        self.mode = mode
        if mode.startswith("up"):
            self.resample = nn.Sequential(nn.Upsample(scale_factor=(1.0, 2.0, 2.0), mode="nearest-exact"),
                                          FrameConv2d(dim, out_dim or dim, 3, padding=1))
        else:
            self.resample = nn.Sequential(nn.ZeroPad3d((0, 1, 0, 1, 0, 0)), FrameConv2d(dim, dim, 3, stride=2))
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, x: torch.Tensor, cache: Cache) -> torch.Tensor:
        if self.mode == "upsample3d":
            if self in cache:  # the first chunk (the lone first frame) is not doubled in time
                b, c, t, h, w = x.shape
                x = self.time_conv(x, cache).view(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)
            cache[self] = True
        x = self.resample(x)
        if self.mode == "downsample3d":
            prev = cache.get(self)
            cache[self] = x[:, :, -1:].clone()
            if prev is not None:  # likewise, the first chunk passes through; later ones see one frame of the past
                x = self.time_conv(torch.cat([prev, x], 2))
        return x


# ----------------------------------------------------------------------------------------- Wan2.2 stage shortcuts
def _avg_down(x: torch.Tensor, cout: int, ft: int, fs: int) -> torch.Tensor:
    """Fold ft×fs×fs neighbours into channels and average consecutive groups of them down to `cout` channels."""
    x = F.pad(x, (0, 0, 0, 0, (-x.shape[2]) % ft, 0))
    b, c, t, h, w = x.shape
    x = x.view(b, c, t // ft, ft, h // fs, fs, w // fs, fs).permute(0, 1, 3, 5, 7, 2, 4, 6)
    return x.reshape(b, cout, -1, t // ft, h // fs, w // fs).mean(2)


def _dup_up(x: torch.Tensor, cout: int, ft: int, fs: int) -> torch.Tensor:
    """The converse of `_avg_down`: repeat channels, then unfold them into ft×fs×fs neighbours."""
    b, c, t, h, w = x.shape
    x = x.repeat_interleave(cout * ft * fs * fs // c, dim=1).view(b, cout, ft, fs, fs, t, h, w)
    return x.permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, cout, t * ft, h * fs, w * fs)


def _run(layers: nn.Sequential, x: torch.Tensor, cache: Cache) -> torch.Tensor:
    for layer in layers:
        x = layer(x, cache)
    return x


class DownStage(nn.Module):
    """A Wan2.2 encoder stage: its blocks plus an average-down shortcut around them."""

    def __init__(self, blocks: list[nn.Module], cout: int, ft: int, fs: int):
        super().__init__()
        self.downsamples = nn.Sequential(*blocks)
        self.factors = (cout, ft, fs)

    def forward(self, x: torch.Tensor, cache: Cache) -> torch.Tensor:
        return _run(self.downsamples, x, cache) + _avg_down(x, *self.factors)


class UpStage(nn.Module):
    """A Wan2.2 decoder stage: its blocks plus, on stages that upsample, a duplicate-up shortcut around them."""

    def __init__(self, blocks: list[nn.Module], cout: int, ft: int, up: bool):
        super().__init__()
        self.upsamples = nn.Sequential(*blocks)
        self.factors = (cout, ft, 2) if up else None

    def forward(self, x: torch.Tensor, cache: Cache) -> torch.Tensor:
        y = _run(self.upsamples, x, cache)
        if self.factors is None:
            return y
        shortcut = _dup_up(x, *self.factors)
        if self not in cache:  # first chunk: the blocks did not double time, so neither does the shortcut
            cache[self] = True
            shortcut = shortcut[:, :, self.factors[1] - 1:]
        return y + shortcut


# ----------------------------------------------------------------------------------------- encoder / decoder
def _head(dim: int, out: int) -> nn.Sequential:
    return nn.Sequential(RMSNorm(dim), nn.SiLU(), CausalConv3d(dim, out, 3, padding=1))


def _middle(dim: int) -> nn.Sequential:
    return nn.Sequential(ResidualBlock(dim, dim), AttentionBlock(dim), ResidualBlock(dim, dim))


class Encoder(nn.Module):
    """Pixels (patchified for Wan2.2) → 2·z channels (mean and log-variance) at 1/8 the size, 1/4 the frame rate."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        dims = [cfg.dim * m for m in (1, *cfg.dim_mult)]
        self.conv1 = CausalConv3d(3 * cfg.patch_size ** 2, dims[0], 3, padding=1)
        stages = []
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            down = i < len(cfg.dim_mult) - 1
            temporal = down and cfg.temporal_downsample[i]
            blocks = [ResidualBlock(cin if j == 0 else cout, cout) for j in range(cfg.num_res_blocks)]
            if down:
                blocks.append(Resample(cout, "downsample3d" if temporal else "downsample2d"))
            stages.append(DownStage(blocks, cout, 2 if temporal else 1, 2 if down else 1) if cfg.residual else blocks)
        self.downsamples = nn.Sequential(*stages) if cfg.residual else nn.Sequential(*sum(stages, []))
        self.middle = _middle(dims[-1])
        self.head = _head(dims[-1], 2 * cfg.z_dim)

    def forward(self, x: torch.Tensor, cache: Cache) -> torch.Tensor:
        x = _run(self.middle, _run(self.downsamples, self.conv1(x, cache), cache), cache)
        return self.head[2](F.silu(self.head[0](x)), cache)


class Decoder(nn.Module):
    """z channels → pixels (patchified for Wan2.2), mirroring the encoder."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        dims = [cfg.dec_dim * m for m in (cfg.dim_mult[-1], *reversed(cfg.dim_mult))]
        temporal_up = tuple(reversed(cfg.temporal_downsample))
        self.conv1 = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.middle = _middle(dims[0])
        stages = []
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0 and not cfg.residual:
                cin //= 2  # Wan2.1's upsampling conv halved the previous stage's width
            up = i < len(cfg.dim_mult) - 1
            temporal = up and temporal_up[i]
            blocks = [ResidualBlock(cin if j == 0 else cout, cout) for j in range(cfg.num_res_blocks + 1)]
            if up:
                blocks.append(Resample(cout, "upsample3d" if temporal else "upsample2d",
                                       cout if cfg.residual else cout // 2))
            stages.append(UpStage(blocks, cout, 2 if temporal else 1, up) if cfg.residual else blocks)
        self.upsamples = nn.Sequential(*stages) if cfg.residual else nn.Sequential(*sum(stages, []))
        self.head = _head(dims[-1], 3 * cfg.patch_size ** 2)

    def forward(self, z: torch.Tensor, cache: Cache) -> torch.Tensor:
        x = _run(self.upsamples, _run(self.middle, self.conv1(z, cache), cache), cache)
        return self.head[2](F.silu(self.head[0](x)), cache)


def _patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """[B, C, F, H·p, W·p] → [B, C·p·p, F, H, W], channels ordered (c, column, row) as in the official code."""
    if p == 1:
        return x
    b, c, f, h, w = x.shape
    x = x.view(b, c, f, h // p, p, w // p, p).permute(0, 1, 6, 4, 2, 3, 5)
    return x.reshape(b, c * p * p, f, h // p, w // p)


def _unpatchify(x: torch.Tensor, p: int) -> torch.Tensor:
    if p == 1:
        return x
    b, c, f, h, w = x.shape
    x = x.view(b, c // (p * p), p, p, f, h, w).permute(0, 1, 4, 5, 3, 6, 2)
    return x.reshape(b, c // (p * p), f, h * p, w * p)


# ----------------------------------------------------------------------------------------- the VAE
class WanVAE(nn.Module):
    """A Wan VAE whose `encode` / `decode` work in the DiT's normalized latent space, (mu - mean) / std.

    Computes in the dtype and on the device of its weights; inputs are moved there chunk by chunk, outputs are
    float32 on that device. `tile_size` / `tile_overlap` (pixels; None: whole frames, overlap a quarter tile)
    split frames into overlapping tiles, each with its own causal cache. `encode` and `decode` run one tile at a
    time through the whole video, so memory is one tile's caches and activations plus the output; `decode_iter`
    streams chunks instead and keeps every tile's caches alive. Tiles see only their own pixels in the mid-block
    attention and zeros past their borders, so tiled results differ from untiled ones, mostly near seams.
    """

    bytes_per_pixel = 12_000  # measured untiled decode peak on an H200: 11.0 GiB at 1280×720 (bf16), chunk by chunk

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.conv1 = CausalConv3d(2 * cfg.z_dim, 2 * cfg.z_dim, 1)
        self.conv2 = CausalConv3d(cfg.z_dim, cfg.z_dim, 1)
        self.decoder = Decoder(cfg)

    @torch.no_grad()
    def encode(self, video: torch.Tensor, tile_size: int | None = None,
               tile_overlap: int | None = None) -> torch.Tensor:
        """[B, 3, F, H, W] in [-1, 1] → the latent mean [B, z, (F-1)/4 + 1, H/s, W/s], normalized, float32.

        F must be 4n+1 and H, W multiples of the spatial stride s (8 for Wan2.1, 16 for Wan2.2).
        """
        cfg, (device, dtype) = self.cfg, self._placement()
        s, ts = cfg.spatial_stride, cfg.temporal_stride
        check_video(video, ts, s, cfg.kind)
        frames, height, width = video.shape[2:]
        tiles, overlap = spread_tiles(height // s, width // s, tile_size, tile_overlap, self.cfg.spatial_stride)
        chunks = [(0, 1)] + [(t, t + ts) for t in range(1, frames, ts)]

        def step(x: torch.Tensor, cache: Cache) -> torch.Tensor:
            x = _patchify(x.to(device, dtype), cfg.patch_size)
            return self.conv1(self.encoder(x, cache))[:, :cfg.z_dim]

        mu = tile_by_tile(step, video, chunks, tiles, overlap, s, 1, device, len(chunks))
        mean, std = self._moments(device)
        return (mu - mean) / std

    @torch.no_grad()
    def decode(self, latent: torch.Tensor, tile_size: int | None = None,
               tile_overlap: int | None = None) -> torch.Tensor:
        """A normalized latent [B, z, T, h, w] → video [B, 3, 4(T-1)+1, h·s, w·s], float32 in [-1, 1]."""
        step, z, chunks, tiles, overlap = self._decoding(latent, tile_size, tile_overlap)
        frames = self.cfg.temporal_stride * (z.shape[2] - 1) + 1
        out = tile_by_tile(step, z, chunks, tiles, overlap, 1, self.cfg.spatial_stride, self._placement()[0], frames)
        return out.clamp_(-1.0, 1.0)

    @torch.no_grad()
    def decode_iter(self, latent: torch.Tensor, tile_size: int | None = None,
                    tile_overlap: int | None = None) -> Iterator[torch.Tensor]:
        """`decode`, streamed: yields [B, 3, f, H, W] float32 in [-1, 1], f = 1 for the first latent frame and 4
        for each later one, equal to the matching frames of `decode`."""
        step, z, chunks, tiles, overlap = self._decoding(latent, tile_size, tile_overlap)
        for frames in stream(step, z, chunks, tiles, overlap, 1, self.cfg.spatial_stride, self._placement()[0]):
            yield frames.float().clamp_(-1.0, 1.0)

    def _decoding(self, latent: torch.Tensor, tile_size: int | None, tile_overlap: int | None):
        """A checked decode: its per-chunk step, the denormalized latent, its chunks, tiles and tile overlap."""
        cfg, (device, dtype) = self.cfg, self._placement()
        if latent.dim() != 5 or latent.shape[1] != cfg.z_dim:
            raise InputError(f"the latent has shape {tuple(latent.shape)}, but the {cfg.kind} VAE decodes "
                             f"[batch, {cfg.z_dim}, frames, height, width] latents",
                             "decode with the VAE of the model that made the latent (Wan2.2 TI2V-5B: Wan2.2 VAE; "
                             "other Wan and SkyReels models: Wan2.1 VAE)")
        mean, std = self._moments(latent.device)
        z = latent.float() * std + mean

        def step(zc: torch.Tensor, cache: Cache) -> torch.Tensor:
            return _unpatchify(self.decoder(self.conv2(zc.to(device, dtype)), cache), cfg.patch_size)

        tiles, overlap = spread_tiles(z.shape[3], z.shape[4], tile_size, tile_overlap, self.cfg.spatial_stride)
        return step, z, [(t, t + 1) for t in range(z.shape[2])], tiles, overlap

    def _placement(self) -> tuple[torch.device, torch.dtype]:
        return self.conv2.weight.device, self.conv2.weight.dtype

    def _moments(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(self.cfg.latents_mean, dtype=torch.float32, device=device).view(1, -1, 1, 1, 1)
        std = torch.tensor(self.cfg.latents_std, dtype=torch.float32, device=device).view(1, -1, 1, 1, 1)
        return mean, std

