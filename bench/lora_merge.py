"""Host RAM and time of applying a LoRA to a 14B-shaped Wan model (random weights of the real size).

Run on the GPU machine from the repo root (merges compute on the GPU, the model waits in host memory as in use):
  python bench/lora_merge.py                        # rank 64, bf16 and fp8 (per-channel) weights
  python bench/lora_merge.py --restore /scratch     # the restore from a real file: writes the base model (bf16,
                                                    # 28.6 GB) as a safetensors file there once, loads it from it
  python bench/lora_merge.py --tiny                 # a CPU check of the script itself
For each weight storage it measures, through model_loaders/lora_apply.py as a sampler's `prepare` runs it:
unmerged (installing the factors; the small deltas are merged), taking it off, merged (W + ΔW per tensor on the
compute device, fp8 re-quantized), and taking the merge off again (each merged tensor read back: from the file with
--restore, else from the random source, made on the GPU: that time excludes reading the file).
Peak host RSS is the kernel's high-water mark (reset through /proc/self/clear_refs before each step), or a 2 ms
sampler where that reset is not allowed; the LoRA file is memory-mapped, so the pages of it that were read count
in RSS too (its size is printed). The LoRA is in LightX2V's layout: rank-r pairs on every block linear with
alpha, diff_b on their biases, diff on the norms.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import struct
import sys
import threading
import time
import types
import zlib
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if "openreel" not in sys.modules:  # the library only: the package __init__ would import every node
    package = types.ModuleType("openreel")
    package.__path__ = [str(ROOT)]
    sys.modules["openreel"] = package

from safetensors.torch import save_file  # noqa: E402

from openreel import runtime  # noqa: E402
from openreel.handles import DiTHandle  # noqa: E402
from openreel.model_loaders import lora_apply  # noqa: E402
from openreel.model_loaders.build import base_reader, materialize  # noqa: E402
from openreel.model_loaders.cache import MODULES  # noqa: E402
from openreel.model_loaders.checkpoint import Checkpoint, TensorInfo  # noqa: E402
from openreel.model_loaders.dit import load_dit  # noqa: E402
from openreel.model_loaders.core import module_of  # noqa: E402
from openreel.model_loaders.lora import lora_spec  # noqa: E402
from openreel.models.registry import family_of  # noqa: E402
from openreel.models.wan.family import WAN  # noqa: E402
from openreel.models.wan.model import WanConfig, WanDiT  # noqa: E402

GIB = 2**30
LINEARS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
           "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")


# ----------------------------------------------------------------------------------------- memory
def rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm() -> int | None:
    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None


class Peak:
    """Peak host RSS and GPU memory over a block, above their values when it started."""

    def __enter__(self):
        self.reset = False
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self.reset = True
        except OSError:
            pass
        self.start, self.sampled, self.stop = rss(), rss(), threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.gpu = torch.cuda.memory_allocated()
        self.t0 = time.perf_counter()
        return self

    def _sample(self):
        while not self.stop.wait(0.002):
            self.sampled = max(self.sampled, rss())

    def __exit__(self, *exc):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.t0
        self.stop.set()
        self.thread.join()
        hwm = _hwm() if self.reset else None
        self.host = max(self.sampled, hwm or 0) - self.start
        self.host_after = rss() - self.start
        self.gpu_peak = torch.cuda.max_memory_allocated() - self.gpu if torch.cuda.is_available() else 0

    def row(self) -> dict:
        return {"seconds": round(self.seconds, 3), "host_peak_gib": round(self.host / GIB, 3),
                "host_after_gib": round(self.host_after / GIB, 3), "gpu_peak_gib": round(self.gpu_peak / GIB, 3)}


# ----------------------------------------------------------------------------------------- the model and LoRA
def shapes_of(cfg: WanConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in WanDiT(cfg).state_dict().items()}


def random_tensor(key: str, shape, device) -> torch.Tensor:
    gen = torch.Generator(device=device).manual_seed(zlib.crc32(key.encode()))
    return torch.randn(shape, generator=gen, device=device, dtype=torch.bfloat16) * (0.02 if len(shape) > 1 else 0.1)


def random_checkpoint(cfg: WanConfig, device) -> Checkpoint:
    """Random bf16 weights made per tensor on `device` (the same values at every read)."""
    shapes = shapes_of(cfg)
    return Checkpoint((Path("random.safetensors"),), {k: TensorInfo(s, torch.bfloat16) for k, s in shapes.items()},
                      {k: (lambda k=k, s=s: random_tensor(k, s, device)) for k, s in shapes.items()})


def write_streamed(ckpt: Checkpoint, path: Path) -> None:
    """A safetensors file written one tensor at a time (safetensors' own writer would hold all of them at once)."""
    keys = sorted(ckpt.keys())
    header, offset = {}, 0
    for k in keys:
        size = ckpt.info(k).dtype.itemsize * int(torch.Size(ckpt.shape(k)).numel())
        header[k] = {"dtype": "BF16", "shape": list(ckpt.shape(k)), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        for k in keys:
            fh.write(ckpt.get(k).cpu().contiguous().view(torch.uint8).numpy().tobytes())


def write_lora(cfg: WanConfig, rank: int, path: Path) -> int:
    """A LightX2V-style LoRA on every block linear (alpha = rank), with bias and norm deltas; its size in bytes."""
    gen = torch.Generator().manual_seed(0)
    out = {}
    for i in range(cfg.num_layers):
        for name in LINEARS:
            out_f = cfg.ffn_dim if name == "ffn.0" else cfg.dim
            in_f = cfg.ffn_dim if name == "ffn.2" else cfg.dim
            key = f"diffusion_model.blocks.{i}.{name}"
            out[f"{key}.lora_down.weight"] = (torch.randn(rank, in_f, generator=gen) * 0.01).bfloat16()
            out[f"{key}.lora_up.weight"] = (torch.randn(out_f, rank, generator=gen) * 0.01).bfloat16()
            out[f"{key}.alpha"] = torch.tensor(float(rank))
            out[f"{key}.diff_b"] = (torch.randn(out_f, generator=gen) * 0.001).bfloat16()
        for norm in ("norm3", "self_attn.norm_q", "cross_attn.norm_k"):
            out[f"diffusion_model.blocks.{i}.{norm}.diff"] = torch.zeros(cfg.dim, dtype=torch.bfloat16)
    save_file(out, str(path))
    return path.stat().st_size


# ----------------------------------------------------------------------------------------- runs
def model_and_handle(cfg: WanConfig, weight_dtype: str, base_file: Path | None, device):
    if base_file is not None:
        handle = load_dit(base_file, weight_dtype, "bf16")
        return module_of(handle), handle
    ckpt = random_checkpoint(cfg, device)
    spec = WAN.describe(ckpt)
    settings = dict(weight_dtype=weight_dtype, compute_dtype="bf16", fp32_params=family_of(spec).fp32_params)
    module = materialize(lambda ops: family_of(spec).build(spec, ops), ckpt, device=runtime.offload_device(),
                         **settings)
    # No file: a restore reads the tensors back from the random source (made on the GPU, no disk read)
    lora_apply._reader = lambda handle, module: base_reader(ckpt, **settings)
    return module, DiTHandle(spec, ("random.safetensors",), ((0, 0),), weight_dtype, "bf16")


def bench(cfg: WanConfig, weight_dtype: str, lora: Path, base_file: Path | None, device) -> dict:
    module, handle = model_and_handle(cfg, weight_dtype, base_file, device)
    model_bytes = runtime.module_bytes(module)
    steps = [("unmerged: install factors", (lora_spec(lora, 1.0, "unmerged"),)), ("unmerged: take off", ()),
             ("merged: merge", (lora_spec(lora, 1.0, "merged"),)),
             ("merged: restore" + (" from the file" if base_file else " (random source)"), ())]
    rows = {}
    for name, stack in steps:
        with Peak() as peak:
            lora_apply.apply(handle, module, stack)
        rows[name] = peak.row()
        print(f"  {weight_dtype:20s} {name:32s} {peak.seconds:8.2f} s   host peak +{peak.host / GIB:6.2f} GiB   "
              f"after +{peak.host_after / GIB:6.2f} GiB   GPU peak +{peak.gpu_peak / GIB:5.2f} GiB", flush=True)
    del module
    MODULES.clear()
    return {"model_gib": round(model_bytes / GIB, 2), "steps": rows}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--weights", nargs="+", default=["bf16", "fp8_e4m3fn_channel"])
    parser.add_argument("--restore", type=Path, help="folder for the base model file (measures the restore)")
    parser.add_argument("--tiny", action="store_true", help="a small model on the CPU (checks the script)")
    parser.add_argument("--out", type=Path, default=Path("bench/out/lora_merge.json"))
    args = parser.parse_args()
    if args.tiny:
        cfg, device = WanConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_dim=64), "cpu"
        runtime.set_device("cpu")
    else:
        cfg = WanConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)
        device = "cuda" if torch.cuda.is_available() else "cpu"
    work = (args.restore or args.out.parent) / "lora_merge"
    work.mkdir(parents=True, exist_ok=True)
    lora = work / f"random_rank{args.rank}_lora.safetensors"
    lora_bytes = write_lora(cfg, args.rank, lora)
    base_file = None
    if args.restore is not None:
        base_file = work / ("base_tiny.safetensors" if args.tiny else "base_14b_bf16.safetensors")
        if not base_file.exists():
            start = time.perf_counter()
            write_streamed(random_checkpoint(cfg, device), base_file)
            print(f"wrote {base_file} ({base_file.stat().st_size / GIB:.1f} GiB) in {time.perf_counter() - start:.0f} s")
    print(f"Wan dim {cfg.dim}, {cfg.num_layers} blocks; LoRA rank {args.rank}: {lora_bytes / GIB:.2f} GiB; merges on "
          f"{runtime.torch_device()}; host RSS now {rss() / GIB:.2f} GiB")
    results = {"config": {"dim": cfg.dim, "ffn": cfg.ffn_dim, "layers": cfg.num_layers, "rank": args.rank,
                          "lora_gib": round(lora_bytes / GIB, 3), "device": str(runtime.torch_device()),
                          "max_rss_gib": None}, "runs": {}}
    for weight_dtype in args.weights:
        results["runs"][weight_dtype] = bench(cfg, weight_dtype, lora, base_file, device)
    results["config"]["max_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB, 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"process peak RSS {results['config']['max_rss_gib']} GiB; results in {args.out}")


if __name__ == "__main__":
    main()
