"""The peer of bench/multi_gpu.py, run under torchrun: diffusers' WanTransformer3DModel on the same random weights,
with its own context parallelism over the ranks (Ulysses, `enable_parallelism`), optionally with its regional
compile. Rank 0 writes the median seconds (JSON) and the output (beside it, .pt)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from multi_gpu import TINY, inputs, timed  # noqa: E402
from random_weights import build, random_handle  # noqa: E402
from subjects import Wan  # noqa: E402

from openreel import runtime  # noqa: E402
from openreel.models.wan.family import WAN  # noqa: E402
from openreel.models.wan.model import WanDiT  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--res", default="480p")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = torch.device("cpu") if args.tiny else torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if not args.tiny:
        torch.cuda.set_device(device)
    runtime.set_device(device)
    if world > 1:
        dist.init_process_group("gloo" if args.tiny else "nccl")
    cfg = TINY if args.tiny else Wan.SIZES["14b"]
    handle = random_handle(WAN, lambda: WanDiT(cfg), "fp32" if args.tiny else "bf16", "fp32" if args.tiny else "bf16")
    peer = Wan.peer(build(handle).to(device), str(device))
    if world > 1:
        from diffusers import ContextParallelConfig

        peer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world))
    if args.compile:
        peer.compile_repeated_blocks(fullgraph=True)
    call, _ = inputs(cfg, args.res, args.tiny)
    x, t, ctx = (a.to(device, torch.bfloat16 if a.dim() > 1 else a.dtype) for a in call)  # Wan.peer is bf16
    with torch.no_grad():
        seconds, out = timed(lambda: peer(x, t, ctx, return_dict=False)[0], args.repeats)
    if rank == 0:
        Path(args.out).write_text(json.dumps({"seconds": seconds, "gpus": world, "res": args.res}))
        torch.save(out, Path(args.out).with_suffix(".pt"))
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
