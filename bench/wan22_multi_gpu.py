"""Whole-video Wan2.2 T2V-A14B (480p × 81, 40 steps, CFG 4 / 3) through the OpenReel Sampler on one GPU and on two
(issue 15), random weights of the real size, each expert its own values:
  1 GPU: the sampler's default: both experts stay on the GPU when they fit (an H200 holds both), otherwise only the
         active one (the pair swaps at the boundary);
  2 GPUs, experts apart: OpenReel Multi-GPU with one expert resident on each GPU (no swapping, no token sharing);
  2 GPUs, tokens shared: both experts on both GPUs, every call split by Ulysses sequence parallelism;
  1 GPU of --card-gib (default 48): the first GPU made to look like a card that holds one expert at a time, so the
         pair swaps at the boundary (what one expert per GPU saves).
--rows picks some of them (one, apart, shared, card).
Each is priced per video as bench/wan22_video.py does (after a 3-step warm-up at the real size, a 3-step and a
5-step run, each switching experts once: seconds per model call and fixed seconds per video), with the peak memory
of every GPU and the final latents' difference from one GPU's.

Run on a machine with two GPUs from the repo root:  python bench/wan22_multi_gpu.py --out $OUT [--compile]
CPU smoke test (worker processes over gloo, a tiny pair):  python bench/wan22_multi_gpu.py --tiny --out /tmp/x
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ["OPENREEL_WORKER_SETUP"] = str(HERE / "random_weights.py")
from wan22_video import COMPILE, GIB, run_ours, setting  # noqa: E402  (imports the nodes: the file loaders)
from random_weights import random_handle  # noqa: E402, I001  (after them: DiT handles build random weights here)
from card import simulate_card  # noqa: E402

from openreel.latents import empty_latent, latent_format  # noqa: E402
from openreel.model_loaders.cache import MODULES  # noqa: E402
from openreel.models.wan.family import WAN  # noqa: E402
from openreel.models.wan.model import WanDiT  # noqa: E402
from openreel.nodes.parallel import OpenReelMultiGPU, parse_devices  # noqa: E402
from openreel.nodes.speed import OpenReelCompile  # noqa: E402
from openreel.parallel import pool as pools  # noqa: E402

CALLS = 2 * 40   # 40 steps, two guidance branches each
ROWS = ("one", "apart", "shared", "card")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="bench-out")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--compile", action="store_true", help="regional compile (in every process)")
    parser.add_argument("--card-gib", type=float, default=48.0, help="the card of the row 'card'")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS,
                        help="one (1 GPU), apart (an expert per GPU), shared (tokens shared), card (1 GPU of "
                        "--card-gib); latents are compared with the first row run")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device, cfg, (frames, height, width), embeds = setting(args.tiny)
    latent = empty_latent(latent_format("wan21"), width, height, frames)
    dtype = "fp32" if args.tiny else "bf16"
    experts = [random_handle(WAN, lambda: WanDiT(cfg), dtype, dtype, name=f"random-{salt}.safetensors")
               for salt in ("high", "low")]
    if args.compile:
        experts = [OpenReelCompile().apply(h, **COMPILE)[0] for h in experts]
    gpus = "cpu,cpu" if args.tiny else "0,1"
    report = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "compile": args.compile,
              "device": "cpu" if args.tiny else torch.cuda.get_device_name(), "video": f"{width}x{height}x{frames}",
              "rows": {}}
    reference = None

    def row(name: str, dits, pool=None) -> None:
        nonlocal reference
        run_ours(dits, embeds, latent, 3, 4.0)   # warm-up: both experts, loads and compiles
        if pool is not None:
            pool.memory()   # peaks from here on
        three, peak3, got = run_ours(dits, embeds, latent, 3, 4.0)   # each switches experts once, as a video does
        five, peak5, _ = run_ours(dits, embeds, latent, 5, 4.0)
        per_call = (five - three) / 4
        fixed = three - 6 * per_call
        peaks = [p / GIB for _, p in pool.memory()] if pool is not None else [max(peak3, peak5)]
        got = got.float()
        reference = got if reference is None else reference
        r = report["rows"][name] = dict(per_call_s=per_call, fixed_s=fixed, video_s=fixed + CALLS * per_call,
                                        peak_gib_per_gpu=[round(p, 2) for p in peaks],
                                        latent_rel_diff_vs_one_gpu=((got - reference).norm() / reference.norm()).item())
        print(f"{name:45s} " + "  ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()),
              flush=True)
        (out / "wan22_multi_gpu.json").write_text(json.dumps(report, indent=1))

    if "one" in args.rows:
        row("1 GPU, the sampler's default", experts)
        for h in experts:
            MODULES.evict(h.weights_key)
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    for key, name, apart in (("apart", "2 GPUs, one expert resident on each", True),
                             ("shared", "2 GPUs, tokens shared by both", False)):
        if key in args.rows:
            dits = OpenReelMultiGPU().apply(experts[0], gpus, False, apart, experts[1])
            row(name, dits, pools.pool_for(parse_devices(gpus)))
            pools.shutdown()
    if "card" in args.rows and not args.tiny:
        simulate_card(args.card_gib)   # for the rest of this process: the last row
        row(f"1 GPU of {args.card_gib:g} GiB, the pair swapped at the boundary", experts)

if __name__ == "__main__":
    main()
