"""Where a model call through the node path loses time against the plain forward (issue 12's bench found the
sampler's call at 480p slower than bench/dit_speed.py's forward): one random 14B Wan expert, timed and profiled
as (1) the module called directly as bench/dit_speed.py does, (2) one OpenReel Sampler step with CFG 1, (3) the
same with an unmerged rank-64 LoRA, (4) the same under the 24 GB plan. Prints each one's seconds per call and the
top CUDA kernels of (1) and (2).

Run on the GPU machine from the repo root:  python bench/node_path_profile.py --out $OUT
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from wan22_video import expert, run_ours, setting, sync, write_lora  # noqa: E402

from openreel import runtime  # noqa: E402
from openreel.latents import empty_latent, latent_format  # noqa: E402
from openreel.model_loaders.core import prepare  # noqa: E402
from openreel.nodes.lora import OpenReelLoRA  # noqa: E402
from openreel.nodes.memory import OpenReelVRAMBudget  # noqa: E402


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

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        sync()
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows, max_name_column_width=70)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="bench-out")
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device, cfg, (frames, height, width), embeds = setting(args.tiny)
    handle = expert(cfg, "high", device)
    runtime.set_models_dir(out / "models")
    (out / "models" / "loras").mkdir(parents=True, exist_ok=True)
    write_lora(cfg, 64 if not args.tiny else 4, out / "models" / "loras" / "r64.safetensors", seed=0)
    latent = empty_latent(latent_format("wan21"), width, height, frames)
    report, texts = {}, []

    def note(name: str, seconds: float) -> None:  # written at once: a run cut short still reports what it measured
        report[name] = seconds
        print(f"{name:55s} {seconds:8.3f} s", flush=True)
        (out / "node_path_profile.json").write_text(json.dumps(report, indent=1))

    def node(dit):
        return lambda: run_ours((dit, None), embeds, latent, 1, 1.0)

    module = prepare(handle)
    module.to(device)
    f, h, w = latent["samples"].shape[2:]
    x = torch.randn(1, 16, f, h, w, device=device, dtype=torch.bfloat16)
    ctx = torch.randn(1, 512, cfg.text_dim, device=device, dtype=torch.bfloat16)
    t = torch.tensor([500.0], device=device)
    with torch.inference_mode():
        direct = lambda: module(x, t, ctx)  # noqa: E731
        note("direct forward (as bench/dit_speed.py)", timed(direct))
        texts.append("direct forward\n" + kernels(direct))
        (out / "node_path_profile.txt").write_text("\n\n".join(texts))
        t_frames = torch.full((1, f), 500.0, device=device)
        note("direct forward, per-frame timesteps [1, F]", timed(lambda: module(x, t_frames, ctx)))
        note("direct forward, float32 latent in", timed(lambda: module(x.float(), t, ctx)))
    module.to("cpu")
    note("load + offload of the expert alone", timed(lambda: (runtime.load_model(module), runtime.offload_model(module))))
    note("node path: 1 step CFG 1 (incl. load + offload)", timed(node(handle)))
    texts.append("node path\n" + kernels(node(handle)))
    lora = OpenReelLoRA().apply(handle, "r64.safetensors", 1.0, "unmerged")["result"][0]
    note("node path + unmerged rank-64 LoRA", timed(node(lora)))
    plan = OpenReelVRAMBudget().apply(handle, latent, 24.0 if not args.tiny else 0.01, False)["result"][0]
    note("node path, 24 GB plan", timed(node(plan)))
    (out / "node_path_profile.txt").write_text("\n\n".join(texts))
    print("\n\n".join(texts))


if __name__ == "__main__":
    main()
