"""Where a model call through the node path loses time against the plain forward (issue 12's bench found the
sampler's call at 480p slower than bench/dit_speed.py's forward): one random 14B Wan expert kept on the GPU, timed
(and with --compile regionally compiled, as the OpenReel Compile node does) as
  (1) the module called directly as bench/dit_speed.py does, batch 1 and batch 2 (both guidance branches);
  (2) OpenReel Sampler steps with CFG 1 and with CFG 4 (batched, and sequential), per model call = the difference between a 3-step
      and a 1-step run over the calls between them, so loading and set-up are not in it;
  (3) optionally (--more) the same with an unmerged rank-64 LoRA, and under the 24 GB plan.
Prints the seconds per call and the top CUDA kernels of a direct forward and of a sampler step (CFG 1), with the
profiles' total CUDA time: equal GPU time and unequal wall time means the loss is on the host.

Run on the GPU machine from the repo root:  python bench/node_path_profile.py [--compile] [--attention flash4] --out $OUT
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from wan22_video import COMPILE, expert, run_ours, setting, sync, write_lora  # noqa: E402

from openreel import runtime  # noqa: E402
from openreel.latents import empty_latent, latent_format  # noqa: E402
from openreel.model_loaders.core import prepare  # noqa: E402
from openreel.nodes.lora import OpenReelLoRA  # noqa: E402
from openreel.nodes.memory import OpenReelVRAMBudget  # noqa: E402
from openreel.nodes.speed import OpenReelAttention, OpenReelCompile  # noqa: E402


def timed(fn, repeats: int = 2) -> float:
    fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync()
    return (time.perf_counter() - t0) / repeats


def kernels(fn, rows: int = 15) -> str:
    from torch.profiler import ProfilerActivity, profile

    sync()
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        sync()
    wall = time.perf_counter() - start
    averages = prof.key_averages()
    total = sum(e.self_device_time_total for e in averages) / 1e6
    return f"total CUDA time {total:.3f} s, wall {wall:.3f} s (profiled)\n" + averages.table(sort_by="cuda_time_total", row_limit=rows,
                                                                max_name_column_width=70)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="bench-out")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--compile", action="store_true", help="regional compile through the OpenReel Compile node")
    parser.add_argument("--more", action="store_true", help="also the unmerged LoRA and the 24 GB plan")
    parser.add_argument("--attention", default="", help="an OpenReel attention backend, e.g. flash4")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device, cfg, (frames, height, width), embeds = setting(args.tiny)
    handle = expert(cfg, "high", device)
    if args.attention:
        handle = OpenReelAttention().apply(handle, args.attention, "fallback")[0]
    if args.compile:
        handle = OpenReelCompile().apply(handle, **COMPILE)[0]
    latent = empty_latent(latent_format("wan21"), width, height, frames)
    report, texts = {}, []

    def note(name: str, seconds: float) -> None:  # written at once: a run cut short still reports what it measured
        report[name] = seconds
        print(f"{name:55s} {seconds:8.3f} s", flush=True)
        (out / "node_path_profile.json").write_text(json.dumps(report, indent=1))

    def node(dit, steps: int, guidance: float):
        return lambda: run_ours((dit, None), embeds, latent, steps, guidance)

    def per_call(dit, guidance: float) -> float:
        """Seconds per guidance branch between a 1-step and a 3-step run (after a warm-up run)."""
        node(dit, 1, guidance)()
        one, three = timed(node(dit, 1, guidance), 1), timed(node(dit, 3, guidance), 1)
        return (three - one) / (2 * (1 if guidance == 1.0 else 2))

    note("node path, CFG 1: seconds per call", per_call(handle, 1.0))
    texts.append("node path, one step CFG 1\n" + kernels(node(handle, 1, 1.0)))
    note("node path, CFG 4 batched: seconds per branch", per_call(handle, 4.0))
    texts.append("node path, one step CFG 4 batched\n" + kernels(node(handle, 1, 4.0)))
    note("node path, CFG 4 sequential: seconds per branch", per_call(handle.with_patch("cfg_batching", False), 4.0))
    module = prepare(handle)  # the same module and patches the sampler ran, still on the GPU
    f, h, w = latent["samples"].shape[2:]
    x = torch.randn(1, 16, f, h, w, device=device, dtype=torch.bfloat16)
    ctx = torch.randn(1, 512, cfg.text_dim, device=device, dtype=torch.bfloat16)
    t = torch.tensor([500.0], device=device)
    with torch.no_grad():
        direct = lambda: module(x, t, ctx)  # noqa: E731
        note("direct forward, batch 1", timed(direct))
        texts.append("direct forward\n" + kernels(direct))
        (out / "node_path_profile.txt").write_text("\n\n".join(texts))
        x2, t2, ctx2 = torch.cat([x, x]), torch.cat([t, t]), torch.cat([ctx, ctx])
        note("direct forward, batch 2: seconds per branch", timed(lambda: module(x2, t2, ctx2)) / 2)
    if args.more:
        runtime.set_models_dir(out / "models")
        (out / "models" / "loras").mkdir(parents=True, exist_ok=True)
        write_lora(cfg, 64 if not args.tiny else 4, out / "models" / "loras" / "r64.safetensors", seed=0)
        lora = OpenReelLoRA().apply(handle, "r64.safetensors", 1.0, "unmerged")["result"][0]
        note("node path + unmerged rank-64 LoRA, CFG 1: seconds per call", per_call(lora, 1.0))
        plan = OpenReelVRAMBudget().apply(handle, latent, 24.0 if not args.tiny else 0.01, False)["result"][0]
        note("node path, 24 GB plan, CFG 1: seconds per call", per_call(plan, 1.0))
    (out / "node_path_profile.txt").write_text("\n\n".join(texts))
    print("\n\n".join(texts))


if __name__ == "__main__":
    COMPILE.update({k: v[1]["default"] for k, v in OpenReelCompile.INPUT_TYPES()["required"].items() if k != "dit"})
    main()
