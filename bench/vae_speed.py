"""Video VAE decode: seconds and peak VRAM, untiled vs tiled, OpenReel vs diffusers (`AutoencoderKLWan`,
`AutoencoderKLHunyuanVideo`, each with its own tiling) on the same random weights of the real size.

Run on a GPU machine from the repo root:  python bench/vae_speed.py --cases wan21 wan22 hunyuan --out bench-out
Cases: Wan2.1 VAE, 81 frames at 1280×720; Wan2.2 VAE, 121 frames at 1280×704; HunyuanVideo VAE, 129 frames at
1280×720. bf16 for all. The peak per pixel of a frame is what the VAE's `bytes_per_pixel` (auto tiling) should be.
"""
from __future__ import annotations

import argparse
import json
import sys
import types
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if "openreel" not in sys.modules:  # the library only: the package __init__ would import every node
    package = types.ModuleType("openreel")
    package.__path__ = [str(ROOT)]
    sys.modules["openreel"] = package

from openreel.models.wan.latents import diffusers_to_official  # noqa: E402
from openreel.models.wan.vae import WAN21, WAN22, WanVAE  # noqa: E402


@dataclass(frozen=True)
class Case:
    name: str
    kind: str
    frames: int
    height: int
    width: int


CASES = (Case("wan21 81f 1280x720", "wan21", 81, 720, 1280), Case("wan22 121f 1280x704", "wan22", 121, 704, 1280),
         Case("hunyuan 129f 1280x720", "hunyuan", 129, 720, 1280))
DIFFUSERS_CONFIG = {"wan21": dict(), "wan22": dict(base_dim=160, decoder_base_dim=256, z_dim=48, is_residual=True,
                                                   in_channels=12, out_channels=12, patch_size=2,
                                                   scale_factor_spatial=16)}


def build_hunyuan(device: str, dtype: torch.dtype = torch.bfloat16):
    """HunyuanVideo: its official names are diffusers' names, so diffusers' model loads our random tensors."""
    from diffusers import AutoencoderKLHunyuanVideo

    from openreel.models.hunyuan.vae import HunyuanVAE, HunyuanVAEConfig

    ours = HunyuanVAE(HunyuanVAEConfig()).to(device, dtype).eval()
    gen = torch.Generator(device=device).manual_seed(0)
    for p in ours.parameters():
        p.data = torch.randn(p.shape, generator=gen, device=device, dtype=dtype) * (0.02 if p.dim() > 1 else 1)
    with torch.device("meta"):
        ref = AutoencoderKLHunyuanVideo()
    ref.load_state_dict(ours.state_dict(), assign=True)
    return ours, ref.eval()


def build(kind: str, device: str, dtype: torch.dtype = torch.bfloat16):
    """Our VAE with random weights, and diffusers' on the very same tensors."""
    from diffusers import AutoencoderKLWan

    if kind == "hunyuan":
        return build_hunyuan(device, dtype)
    cfg = WAN21 if kind == "wan21" else WAN22
    ours = WanVAE(cfg).to(device, dtype).eval()
    gen = torch.Generator(device=device).manual_seed(0)
    for p in ours.parameters():
        p.data = torch.randn(p.shape, generator=gen, device=device, dtype=dtype) * (0.02 if p.dim() > 1 else 1)
    with torch.device("meta"):
        ref = AutoencoderKLWan(**DIFFUSERS_CONFIG[kind])
    state = dict(ours.state_dict())
    for name, _ in list(ref.named_parameters()):
        mod_name, _, attr = name.rpartition(".")
        ref.get_submodule(mod_name)._parameters[attr] = torch.nn.Parameter(
            state[diffusers_to_official(name, kind == "wan22")], requires_grad=False)
    for name, buf in list(ref.named_buffers()):
        mod_name, _, attr = name.rpartition(".")
        ref.get_submodule(mod_name)._buffers[attr] = torch.zeros(buf.shape, device=device, dtype=dtype)
    return ours, ref.eval()


def measure(fn, repeats: int) -> dict:
    fn()
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        del out
    return {"seconds": sorted(times)[len(times) // 2], "all_seconds": times,
            "peak_gib": (torch.cuda.max_memory_allocated() - base) / 2**30}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tiles", nargs="*", type=int, default=[512, 256])
    parser.add_argument("--cases", nargs="*", default=["wan21", "wan22"], help="wan21, wan22, hunyuan")
    parser.add_argument("--out", default="bench-out")
    args = parser.parse_args()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = "cuda"
    info = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
            "results": []}
    print(f"{info['gpu']} · torch {torch.__version__} · bf16 · peak = max allocated above the weights", flush=True)
    with torch.no_grad():
        for case in (c for c in CASES if c.kind in args.cases):
            ours, ref = build(case.kind, device)
            cfg = ours.cfg
            s = cfg.spatial_stride
            channels = getattr(cfg, "z_dim", None) or cfg.latent_channels
            z = torch.randn(1, channels, (case.frames - 1) // 4 + 1, case.height // s, case.width // s, device=device)
            if case.kind == "hunyuan":  # diffusers decodes the raw latent; ours takes the DiT's (× scaling factor)
                from openreel.models.hunyuan.vae import SCALING_FACTOR

                raw = (z / SCALING_FACTOR).to(torch.bfloat16)
            else:
                mean, std = (torch.tensor(v, device=device).view(1, -1, 1, 1, 1)
                             for v in (cfg.latents_mean, cfg.latents_std))
                raw = (z * std + mean).to(torch.bfloat16)
            runs = {"openreel untiled": lambda: ours.decode(z)}
            for tile in args.tiles:
                runs[f"openreel tiles {tile}px"] = lambda tile=tile: ours.decode(z, tile_size=tile)
            runs["diffusers untiled"] = lambda: ref.decode(raw, return_dict=False)[0]

            def tiled():
                ref.enable_tiling()
                try:
                    return ref.decode(raw, return_dict=False)[0]
                finally:
                    ref.disable_tiling()
            runs["diffusers tiled (its defaults)"] = tiled
            outputs = {}
            for name, fn in runs.items():
                try:
                    r = measure(fn, args.repeats)
                except torch.cuda.OutOfMemoryError:
                    r = {"seconds": None, "peak_gib": None, "oom": True}
                    torch.cuda.empty_cache()
                r.update(case=case.name, name=name)
                info["results"].append(r)
                if name in ("openreel untiled", "diffusers untiled") and not r.get("oom"):
                    outputs[name] = fn().float()
                if not r.get("oom"):
                    r["bytes_per_pixel"] = r["peak_gib"] * 2**30 / (case.height * case.width)
                shown = "OOM" if r.get("oom") else (f"{r['seconds']:.2f} s  peak {r['peak_gib']:.2f} GiB "
                                                    f"({r['bytes_per_pixel']:,.0f} B per frame pixel)")
                print(f"{case.name:22s} {name:32s} {shown}", flush=True)
            if len(outputs) == 2:
                a, b = outputs.values()
                err = ((a - b).norm() / b.norm()).item()
                info.setdefault("agreement", {})[case.name] = err
                print(f"{case.name:22s} OpenReel vs diffusers untiled: relative difference {err:.2e}", flush=True)
            del ours, ref, outputs
            torch.cuda.empty_cache()
    (out_dir / "vae_speed.json").write_text(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
