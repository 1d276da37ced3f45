"""Wan-14B forward on one and on several GPUs: OpenReel Multi-GPU (worker processes, Ulysses sequence parallel)
against diffusers 0.42.1's context parallelism (`enable_parallelism(ContextParallelConfig(ulysses_degree=n))`, its own
torchrun processes: bench/multi_gpu_peer.py), on the same random weights (generated per tensor name on each GPU).

Ours is timed as the sampler calls it: the latent and text go to the workers and the prediction comes back, each
call (the pipe's copies included). One more call runs under torch's profiler in every worker: the share of its GPU
time in NCCL's kernels (waiting for the other GPU included). One GPU is the module in this process. Outputs are
compared with one GPU's.
Run on a machine with n GPUs from the repo root:
  python bench/multi_gpu.py --gpus 2 --res 480p 720p [--compile] [--attention flash] --out $OUT
  python bench/multi_gpu.py --tiny --gpus 2 --out /tmp/x      (CPU processes over gloo: a smoke test)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ["OPENREEL_WORKER_SETUP"] = str(HERE / "random_weights.py")
from random_weights import build, random_handle  # noqa: E402
from subjects import Wan  # noqa: E402

from openreel import runtime  # noqa: E402
from openreel.memory import patches  # noqa: E402
from openreel.model_loaders import core  # noqa: E402, F401  (registers every run-time patch)
from openreel.models.wan.family import WAN  # noqa: E402
from openreel.models.wan.model import WanConfig, WanDiT  # noqa: E402
from openreel.parallel import pool as pools  # noqa: E402
from openreel.parallel.model import MULTI_GPU_PATCH, MultiGPU, ParallelDiT  # noqa: E402
from openreel.speed.compile import CompileSettings  # noqa: E402

TINY = WanConfig(dim=512, ffn_dim=256, num_heads=4, num_layers=2)


def timed(fn, repeats: int) -> tuple[float, torch.Tensor]:
    """Median seconds of `repeats` calls after a warm-up, and the last output."""
    out = fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2], out.float().cpu()


def inputs(cfg, res: str, tiny: bool):
    torch.manual_seed(0)
    if tiny:
        x, t, ctx = torch.randn(1, 16, 3, 8, 8), torch.tensor([500.0]), torch.randn(1, 512, cfg.text_dim)
        return (x, t, ctx), x.shape[2] * 16
    (args, _), _, tokens = Wan.inputs(cfg, res, "cpu")
    return args, tokens


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--gpus", type=int, nargs="+", default=[2], help="GPU counts to compare with one")
    parser.add_argument("--res", nargs="+", default=["480p"])
    parser.add_argument("--compile", action="store_true", help="regional compile on both sides")
    parser.add_argument("--attention", default="", help="an OpenReel attention backend for ours, e.g. flash "
                        "(the peer keeps diffusers' default: its FlashAttention 4 backend has no context parallelism)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="CPU processes over gloo, a tiny model")
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--out", default="bench-out")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = "cpu" if args.tiny else "cuda:0"
    runtime.set_device(device)
    cfg = TINY if args.tiny else Wan.SIZES["14b"]
    dtype = "fp32" if args.tiny else "bf16"
    handle = random_handle(WAN, lambda: WanDiT(cfg), dtype, dtype)
    if args.compile:
        handle = handle.with_patch("compile", CompileSettings())
    if args.attention:
        handle = handle.with_patch("attention", f"{args.attention}:error")
    report = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "compile": args.compile,
              "attention": args.attention or "sdpa",
              "device": "cpu" if args.tiny else torch.cuda.get_device_name(), "rows": []}

    def record(**row) -> None:
        report["rows"].append(row)
        print("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)
        (out / "multi_gpu.json").write_text(json.dumps(report, indent=1))

    for res in args.res:
        call, tokens = inputs(cfg, res, args.tiny)
        module = patches.configure(build(handle), dict(handle.patches)).to(device)  # its patches: compile
        if not args.tiny:
            torch.cuda.reset_peak_memory_stats()
        with torch.no_grad():
            one, reference = timed(lambda: module(*(a.to(device) for a in call)), args.repeats)
        peak = 0.0 if args.tiny else torch.cuda.max_memory_allocated() / 2**30
        del module
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
        record(res=res, tokens=tokens, side="OpenReel", gpus=1, seconds=one, peak_gib_per_gpu=[round(peak, 2)])
        for n in args.gpus:
            devices = ("cpu",) * n if args.tiny else tuple(f"cuda:{i}" for i in range(n))
            parallel = ParallelDiT(handle.with_patch(MULTI_GPU_PATCH, MultiGPU(devices, tuple(range(n)), False)))
            parallel.residency.load(parallel, 0)
            pool = pools.pool_for(devices)
            pool.memory()   # the peak from here on: the calls, the weights already loaded
            seconds, got = timed(lambda: parallel(*call), args.repeats)
            peaks = [peak / 2**30 for _, peak in pool.memory()]
            pool.profile_next_call()
            parallel(*call)
            profiled = pool.profiled()
            record(res=res, tokens=tokens, side="OpenReel", gpus=n, seconds=seconds, speedup=one / seconds,
                   rel_diff_vs_one_gpu=((got - reference).norm() / reference.norm()).item(),
                   peak_gib_per_gpu=[round(p, 2) for p in peaks],
                   overhead_share=(seconds - one / n) / seconds,   # above a perfect split: NCCL, pipes, imbalance
                   collective_share_per_gpu=[round(f["collective_ms"] / f["total_ms"], 4) for f in profiled],
                   collective_ms_per_gpu=[round(f["collective_ms"], 1) for f in profiled],
                   kernel_ms_per_gpu=[round(f["total_ms"], 1) for f in profiled],   # wall - kernels: GPU idle
                   profiled_wall_ms_per_gpu=[round(f["wall_ms"], 1) for f in profiled])
            pools.shutdown()
        if not args.skip_peer:
            for n in [1] if args.tiny else [1, *args.gpus]:  # diffusers' parallelism needs GPUs (its device mesh)
                peer_out = out / f"peer_{res}_{n}.json"
                command = ["torchrun", f"--nproc-per-node={n}", str(HERE / "multi_gpu_peer.py"), "--res", res,
                           "--repeats", str(args.repeats), "--out", str(peer_out)]
                command += ["--compile"] if args.compile else []
                command += ["--tiny"] if args.tiny else []
                env = {**os.environ, "NCCL_NVLS_ENABLE": "0"}
                subprocess.run(command, check=True, env=env)
                peer = json.loads(peer_out.read_text())
                peer_output = torch.load(peer_out.with_suffix(".pt"))
                record(res=res, tokens=tokens, side="diffusers context parallel", gpus=n, seconds=peer["seconds"],
                       rel_diff_vs_ours_one_gpu=((peer_output - reference).norm() / reference.norm()).item())


if __name__ == "__main__":
    main()
