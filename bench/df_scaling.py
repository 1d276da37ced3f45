"""SkyReels-V2 diffusion forcing at full size: peak VRAM and time against video length, block swap off and on, and
the host memory of streaming the finished latent into an mp4.

Run on a GPU machine from the repo root:  python bench/df_scaling.py --frames 97 257 737 --out $OUT
DF-14B-540P shapes (Wan 14B, 960×544), random bf16 weights through the real loading path (bench/dit_speed.py),
windows of 97 frames with an overlap of 17, joined by latent reuse (the VAE round trip's cost is the VAE's, measured
in bench/vae_speed.py); few steps and no guidance, since the per-window cost is what scales. The same library
calls as OpenReel Diffusion Forcing Sampler (samplers/diffusion_forcing.py). Prints a table, writes JSON to --out.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import types
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import torch

ROOT = Path(__file__).resolve().parents[1]
if "openreel" not in sys.modules:  # the library only: the package __init__ would import every node
    package = types.ModuleType("openreel")
    package.__path__ = [str(ROOT)]
    sys.modules["openreel"] = package
sys.path.insert(0, str(Path(__file__).resolve().parent))

from subjects import Wan  # noqa: E402
from openreel.memory.block_swap import OFF, BlockSwap  # noqa: E402
from openreel.memory.patches import configure  # noqa: E402
from openreel.model_loaders.core import prepare  # noqa: E402,F401  (registers every run-time patch)
from openreel.models.common.family import ModelInputs  # noqa: E402
from openreel.models.wan.family import WAN  # noqa: E402
from openreel.samplers.df_plan import plan_windows  # noqa: E402
from openreel.samplers.diffusion_forcing import sample_video  # noqa: E402
from openreel.samplers.schedules import wan_unipc_schedule  # noqa: E402
from openreel.samplers.session import Expert, SamplingSession  # noqa: E402

WIDTH, HEIGHT, BASE, OVERLAP = 960, 544, 97, 17


def run(module, cfg, frames: int, steps: int) -> dict:
    spec = SimpleNamespace(config=cfg)
    context = torch.randn(1, 512, cfg.text_dim, dtype=torch.bfloat16)
    expert = Expert(module, 1.0, ModelInputs({"context": context}), WAN, spec)
    windows = plan_windows(frames, BASE, OVERLAP)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    with SamplingSession([expert]) as session:
        latent, _ = sample_video(session, 0, wan_unipc_schedule(steps, 8.0), windows, (16, HEIGHT // 8, WIDTH // 8),
                              seed=0, overlap_history=OVERLAP)
    torch.cuda.synchronize()
    return {"frames": frames, "windows": len(windows), "seconds": time.perf_counter() - start,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30, "latent": latent}


def stream_to_mp4(latent: torch.Tensor, out: Path) -> dict:
    """Decode the latent chunk by chunk into an mp4 (Save Video's latent + VAE path), host RSS before and after."""
    from openreel.models.wan.vae import WAN21, WanVAE
    from openreel.video_io import save_mp4

    vae = WanVAE(replace(WAN21)).to("cuda", torch.bfloat16).eval()
    for p in vae.parameters():
        p.data.normal_(0, 0.02)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    start = time.perf_counter()
    chunks = (((c[0].float() + 1) / 2).permute(1, 2, 3, 0).cpu() for c in vae.decode_iter(latent.to("cuda")))
    path, _ = save_mp4(chunks, out, "df_scaling", 24.0)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"decode_write_seconds": time.perf_counter() - start, "host_peak_gib_before": before,
            "host_peak_gib_after": after, "mp4_mib": path.stat().st_size / 2**20,
            "latent_mib": latent.numel() * latent.element_size() / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", nargs="+", type=int, default=[97, 257, 737])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--out", default="bench-out")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = Wan.SIZES["14b"]
    module = Wan.build(cfg, "cuda", "bf16")
    info = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
            "size": f"{WIDTH}x{HEIGHT}", "base_num_frames": BASE, "overlap_history": OVERLAP, "steps": args.steps,
            "results": []}
    print(f"{info['gpu']} · torch {info['torch']} · Wan 14B DF, {WIDTH}×{HEIGHT}, windows of {BASE}", flush=True)
    with torch.no_grad():
        last = None
        for swap in (OFF, BlockSwap(40)):
            configure(module, {"block_swap": swap})
            for frames in args.frames:
                r = run(module, cfg, frames, args.steps)
                last = r.pop("latent")
                r["block_swap"] = swap.blocks
                info["results"].append(r)
                print(f"swap {swap.blocks:2d}  {frames:4d} frames  {r['windows']} windows  {r['seconds']:8.1f} s  "
                      f"{r['seconds'] / r['windows']:6.1f} s/window  peak {r['peak_gib']:5.1f} GiB", flush=True)
        configure(module, {})
        del module
        torch.cuda.empty_cache()
        info["stream"] = stream_to_mp4(last, out)
        print("streamed the last latent into an mp4:", json.dumps(info["stream"]), flush=True)
    (out / "df_scaling.json").write_text(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
