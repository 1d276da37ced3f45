"""Frames ↔ latents through a VAE, with spatial tiling chosen from free VRAM, streamed when decoding."""
from __future__ import annotations

from typing import Iterator

import torch

from .. import runtime
from ..errors import InputError
from ..handles import VAEHandle
from ..latents import DecodeWindows, LatentFormat, format_of, latent_format
from ..model_loaders.core import module_of

TILE_CHOICES = ("auto", "off", "512", "384", "256")


def _tile_for(handle: VAEHandle, module, tiling: str, height: int, width: int, device: torch.device) -> int | None:
    """Tile size in pixels (None: whole frames). "auto" tiles only when the whole frame would not fit, by the
    VAE module's `bytes_per_pixel` (its peak working memory per pixel of a frame, 16-bit compute)."""
    if tiling == "off":
        return None
    if tiling != "auto":
        return int(tiling)
    if device.type != "cuda":
        return None
    per_pixel = _per_pixel(handle, module)
    free = runtime.free_vram(device)
    if height * width * per_pixel * 1.2 <= free:
        return None
    for tile in (512, 384, 256):
        if tile * tile * per_pixel * 1.5 <= free:
            return tile
    return 256


def _per_pixel(handle: VAEHandle, module) -> int:
    return module.bytes_per_pixel * (2 if handle.compute_dtype == "fp32" else 1)


def _load_and_tile(handle: VAEHandle, module, tiling: str, height: int, width: int) -> tuple[torch.device, int | None]:
    """The VAE on the compute device and its tile size. With "auto", room for whole frames is asked of the memory
    manager first (a DiT still on the GPU from sampling is moved out if that makes room), then the tiles are chosen
    from what is free."""
    need = 0
    if tiling == "auto" and runtime.torch_device().type == "cuda":
        need = int(height * width * _per_pixel(handle, module) * 1.2)
    device = runtime.load_model(module, need)
    return device, _tile_for(handle, module, tiling, height, width, device)


def encode_video(handle: VAEHandle, video: torch.Tensor, tiling: str = "auto") -> torch.Tensor:
    """[B, 3, F, H, W] in [-1, 1] → normalized latent (CPU, float32). The VAE is on the GPU only for the call."""
    module = module_of(handle)
    _, tile = _load_and_tile(handle, module, tiling, video.shape[3], video.shape[4])
    try:
        return module.encode(video, tile_size=tile).cpu()
    finally:
        runtime.offload_model(module)


def decode_pixels(handle: VAEHandle, latent: torch.Tensor, tiling: str = "auto") -> torch.Tensor:
    """Normalized latent → frames [B, 3, F, H, W] in [-1, 1] (CPU, float32), for work that continues in pixels
    (e.g. diffusion forcing re-encoding the end of a window). The VAE is on the GPU only for the call."""
    module = module_of(handle)
    s = module.cfg.spatial_stride
    _, tile = _load_and_tile(handle, module, tiling, latent.shape[3] * s, latent.shape[4] * s)
    try:
        return module.decode(latent, tile_size=tile).clamp_(-1, 1).cpu()
    finally:
        runtime.offload_model(module)


def decode_video(handle: VAEHandle, latent: torch.Tensor, tiling: str = "auto") -> Iterator[torch.Tensor]:
    """Normalized latent → IMAGE chunks [f, H, W, 3] in 0..1 on the CPU, batch item 0 then 1 …, streamed when
    untiled (a video writer can consume them as they come); the VAE is offloaded when the last chunk is out.
    A progress bar counts the decoded frames; an interrupt stops the decode before the next chunk."""
    module = module_of(handle)
    s = module.cfg.spatial_stride
    _, tile = _load_and_tile(handle, module, tiling, latent.shape[3] * s, latent.shape[4] * s)
    frames = latent_format(handle.latent_format).pixel_frames(latent.shape[2])
    try:
        with runtime.Progress(latent.shape[0] * frames, "OpenReel VAE decode") as bar:
            for b in range(latent.shape[0]):
                runtime.throw_if_interrupted()
                item = latent[b:b + 1]
                chunks = module.decode_iter(item) if tile is None else [module.decode(item, tile_size=tile)]
                for chunk in chunks:  # [1, 3, f, H, W], nominally in [-1, 1] (not every VAE clamps)
                    bar.update(chunk.shape[2])
                    runtime.throw_if_interrupted()
                    yield ((chunk[0].float() + 1) / 2).clamp_(0, 1).permute(1, 2, 3, 0).cpu()
    finally:
        runtime.offload_model(module)


def decode_latent(handle: VAEHandle, latent: dict, tiling: str = "auto") -> Iterator[torch.Tensor]:
    """A LATENT → IMAGE chunks as `decode_video`; a video made window by window (LATENT["windows"]) decodes window
    by window, as its sampler's original does (see `latents.DecodeWindows`)."""
    windows = latent.get("windows")
    if not isinstance(windows, DecodeWindows) or not windows.fits(latent["samples"]):
        yield from decode_video(handle, latent["samples"], tiling)
        return
    for i, window in enumerate(windows.latents):
        skip = windows.overlap_frames if i else 0
        for chunk in decode_video(handle, window, tiling):
            chunk, skip = chunk[skip:], max(0, skip - chunk.shape[0])
            if chunk.shape[0]:
                yield chunk


def last_frames(handle: VAEHandle, latent: dict, count: int) -> torch.Tensor:
    """The last `count` frames of a LATENT's video, [1, 3, count, H, W] in [-1, 1], decoded chunk by chunk so that
    only those frames are kept (a long video never sits in memory whole)."""
    kept = None
    for chunk in decode_latent(handle, {**latent, "samples": latent["samples"][:1]}):
        kept = chunk if kept is None else torch.cat([kept, chunk])[-count:]
    return (kept[-count:] * 2 - 1).permute(3, 0, 1, 2).unsqueeze(0)


def check_latent_for(vae: VAEHandle, latent: dict) -> LatentFormat:
    """The latent's format, when it is the one `vae` decodes; else a clear error."""
    fmt, want = format_of(latent, vae.latent_format), latent_format(vae.latent_format)
    if fmt.name != want.name:
        raise InputError(f"the latent has {latent['samples'].shape[1]} channels ({fmt.title}) but this VAE decodes "
                         f"{want.title} latents", "decode with the VAE of the model that made the latent (Wan2.2 VAE "
                         "only for TI2V-5B)")
    return fmt
