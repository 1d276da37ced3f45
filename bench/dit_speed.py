"""DiT forward: seconds and peak VRAM at full size, random weights, OpenReel vs diffusers on the same weights.

Run on a GPU machine from the repo root:
  python bench/dit_speed.py --family wan --size 14b --res 480p 720p --variants all
  python bench/dit_speed.py --family hunyuan --res 720p 544p --variants bf16 "bf16 compiled"
  STEPVIDEO_T2V_PATH=<official checkout> python bench/dit_speed.py --family stepvideo --variants bf16 "bf16 compiled"
Variants are OpenReel's memory/speed patches applied through the same mechanism as the nodes (memory.patches):
resident bf16, regional compile, fp8 storage with upcast or FP8 matmul, full block swap, and token chunks
(memory/token_chunks.py; the planner's chunk size). What differs per family
(configs, inputs, the diffusers peer, FLOPs) is in bench/subjects.py.
Prints a table and writes JSON (and an OpenReel kernel profile) to --out.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from subjects import SUBJECTS

from openreel.memory import patches
from openreel.memory.block_swap import BlockSwap
from openreel.memory.planner import predict, weight_bytes
from openreel.memory.token_chunks import TOKEN_CHUNK
from openreel.model_loaders.core import prepare  # noqa: F401  (registers every run-time patch)
from openreel.models.common import norms
from openreel.speed.compile import CompileSettings

# name → (weight storage, patches); every variant but "bf16" is compared with bf16's output on the same weights
VARIANTS = {
    "bf16": ("bf16", {}),
    "bf16 compiled": ("bf16", {"compile": CompileSettings()}),
    "fp8 upcast": ("fp8_e4m3fn_channel", {}),
    "fp8 matmul": ("fp8_e4m3fn_channel", {"fp8_matmul": "row"}),
    "fp8 matmul compiled": ("fp8_e4m3fn_channel", {"fp8_matmul": "row", "compile": CompileSettings()}),
    "int8 attention compiled": ("bf16", {"attention": "int8_fp8:error", "compile": CompileSettings()}),
    "int8 attention fp8 matmul compiled": ("fp8_e4m3fn_channel", {"attention": "int8_fp8:error", "fp8_matmul": "row",
                                                                  "compile": CompileSettings()}),
    # FlashAttention takes no mask: a family's masked text attention (Step-Video's LLM mask) stays on SDPA
    "flash compiled": ("bf16", {"attention": "flash:fallback", "compile": CompileSettings()}),
    # the residual updates, LayerNorms, q/k RMSNorms and RoPE left to inductor instead of the one-pass kernels
    # (speed/norm_kernel.py)
    "flash compiled unfused norms": ("bf16", {"attention": "flash:fallback", "compile": CompileSettings(),
                                              "fused_norms": False}),
    "bf16 compiled unfused norms": ("bf16", {"compile": CompileSettings(), "fused_norms": False}),
    "bf16 unfused norms": ("bf16", {"fused_norms": False}),
    # inductor settings tried before a compile mode adopts them: the blocks' LayerNorms over 5,120 channels are
    # looped reductions by default (two passes over the float32 stream); multi_kernel also makes a one-pass
    # (persistent) kernel and keeps the faster; coordinate descent tunes every fused kernel's block sizes
    "flash compiled multi-kernel": ("bf16", {"attention": "flash:fallback", "compile": CompileSettings(
        inductor=(("triton.multi_kernel", 1),))}),
    "flash compiled tuned": ("bf16", {"attention": "flash:fallback", "compile": CompileSettings(
        inductor=(("coordinate_descent_tuning", True),))}),
    "flash fp8 matmul compiled": ("fp8_e4m3fn_channel", {"attention": "flash:fallback", "fp8_matmul": "row",
                                                         "compile": CompileSettings()}),
    # one scale per weight and one per input: cuBLAS's tensor-wise FP8 GEMM instead of the row-wise recipe
    "flash fp8 matmul per-tensor compiled": ("fp8_e4m3fn_scaled", {"attention": "flash:fallback",
                                                                    "fp8_matmul": "tensor",
                                                                    "compile": CompileSettings()}),
    # SageAttention 2's Hopper kernel where it is installed (built from its sources: not on PyPI)
    "sage attention fp8 matmul compiled": ("fp8_e4m3fn_channel", {"attention": "sage:error", "fp8_matmul": "row",
                                                                  "compile": CompileSettings()}),
    "sage attention fp8 matmul per-tensor compiled": ("fp8_e4m3fn_scaled", {"attention": "sage:error",
                                                                             "fp8_matmul": "tensor",
                                                                             "compile": CompileSettings()}),
    "int8+16bit attention fp8 matmul compiled": ("fp8_e4m3fn_channel", {"attention": "int8_16bit:error",
                                                                        "fp8_matmul": "row",
                                                                        "compile": CompileSettings()}),
    "bf16 chunked": ("bf16", {"token_chunks": TOKEN_CHUNK}),
    "bf16 compiled chunked": ("bf16", {"compile": CompileSettings(), "token_chunks": TOKEN_CHUNK}),
    "swap all bf16": ("bf16", {"block_swap": "all"}),
    "swap all bf16 chunked": ("bf16", {"block_swap": "all", "token_chunks": TOKEN_CHUNK}),
    "swap all fp8 matmul chunked": ("fp8_e4m3fn_channel", {"block_swap": "all", "fp8_matmul": "row",
                                                           "token_chunks": TOKEN_CHUNK}),
    "swap all fp8 matmul": ("fp8_e4m3fn_channel", {"block_swap": "all", "fp8_matmul": "row"}),
    "swap all bf16 compiled": ("bf16", {"block_swap": "all", "compile": CompileSettings()}),
    "swap all fp8 matmul compiled": ("fp8_e4m3fn_channel", {"block_swap": "all", "fp8_matmul": "row",
                                                            "compile": CompileSettings()}),
}


def measure(fn, repeats: int) -> tuple[dict, torch.Tensor]:
    """Median seconds and peak memory of `repeats` calls after a warm-up; the last call's output."""
    torch.cuda.synchronize()
    fn()  # warm-up
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
        if len(times) < repeats:
            del out
    peak = torch.cuda.max_memory_allocated()
    return {"seconds": sorted(times)[len(times) // 2], "all_seconds": times, "peak_gib": peak / 2**30,
            "activation_gib": (peak - base) / 2**30}, out.float()


# first match wins: inductor names its Triton kernels after every op they fuse (an attention op's input layout too)
KERNEL_KINDS = (("fused elementwise (Triton)", ("triton",)),
                ("attention", ("flash", "fmha", "sdpa", "attention", "attn")),
                ("GEMM", ("gemm", "nvjet", "cublas", "xmma", "cutlass")))


def kernel_kind(name: str) -> str:
    lower = name.lower()
    return next((kind for kind, marks in KERNEL_KINDS if any(m in lower for m in marks)), "other")


def profile_forward(fn, path: Path) -> dict:
    """Kernel table of one call of `fn`, written to `path`, and its GPU time by kind of kernel (attention, GEMM,
    fused elementwise, other) next to the call's wall time: what two sides of one comparison spend differently."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    averages = prof.key_averages()
    kinds: dict[str, float] = {}
    for e in averages:
        if e.self_device_time_total:
            kinds[kernel_kind(e.key)] = kinds.get(kernel_kind(e.key), 0.0) + e.self_device_time_total / 1e3
    summary = {"wall_ms": wall * 1e3, "gpu_ms": sum(kinds.values()), "by_kind_ms": kinds}
    table = averages.table(sort_by="self_cuda_time_total", row_limit=40, max_name_column_width=90)
    path.write_text(json.dumps(summary, indent=1) + "\n" + table)
    print(json.dumps(summary), flush=True)
    print("\n".join(table.splitlines()[:16]), flush=True)
    return summary


def run_variant(subject, name: str, module, call: tuple, tokens: int, repeats: int, reference=None,
                growth_runs: int = 10, profile_to: Path | None = None) -> dict:
    storage, values = VARIANTS[name]
    values = dict(values)
    kernels = dict(norms._FUSED)
    if not values.pop("fused_norms", True):
        norms._FUSED.clear()
    try:
        r, out = _run_variant(subject, name, module, call, tokens, repeats, storage, values, reference, growth_runs)
        if profile_to is not None:
            r["profile"] = profile_forward(lambda: module(*call[0], **call[1]), profile_to)
        return r, out
    finally:
        norms._FUSED.update(kernels)


def _run_variant(subject, name, module, call, tokens, repeats, storage, values, reference, growth_runs):
    if values.get("block_swap") == "all":
        values["block_swap"] = BlockSwap(blocks=subject.blocks(module))
    chunk = values.get("token_chunks", 0)
    predicted = predict(weight_bytes(module), lambda n, b: b * subject.predicted_activation(module.cfg, n, chunk),
                        tokens, 1, swap=values["block_swap"].blocks if values.get("block_swap") else 0)
    patches.configure(module, values)
    patches.load(module, 0)
    fn = lambda: module(*call[0], **call[1])  # noqa: E731
    r, out = measure(fn, repeats)
    r.update(name=name, tokens=tokens, tflops=subject.flops(module.cfg, tokens) / r["seconds"] / 1e12,
             storage=storage, predicted_activation_gib=subject.predicted_activation(module.cfg, tokens, chunk) / 2**30,
             predicted_peak_gib=predicted.total / 2**30)
    if reference is not None:
        r["rel_diff_vs_bf16"] = ((out - reference).norm() / reference.norm()).item()
    if values.get("block_swap") and growth_runs:  # more runs: memory must not grow
        before = torch.cuda.memory_allocated()
        for _ in range(growth_runs):
            fn()
        torch.cuda.synchronize()
        r["growth_runs"] = growth_runs
        r["growth_mib"] = (torch.cuda.memory_allocated() - before) / 2**20
    return r, out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--family", default="wan", choices=SUBJECTS)
    parser.add_argument("--size", default="", help="a size of the family (default: its largest)")
    parser.add_argument("--res", nargs="+", default=[], help="resolutions of the family (default: its first)")
    parser.add_argument("--variants", nargs="+", default=["bf16"], help=f"'all' or some of {list(VARIANTS)}")
    parser.add_argument("--res-variants", nargs="*", default=None,
                        help="variants for resolutions after the first (default: the same)")
    parser.add_argument("--layers", type=int, default=0, help="fewer blocks for a quick run (0: the real count)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--growth-runs", type=int, default=10, help="runs after a block-swap variant's timing, "
                        "checking that memory does not grow")
    parser.add_argument("--peers", nargs="*", default=["diffusers", "official"],
                        help="diffusers (eager), diffusers-compiled (Wan, HunyuanVideo); official (Step-Video)")
    parser.add_argument("--profile", action="store_true", help="also write a kernel table of one forward of each variant and peer")
    parser.add_argument("--out", default="bench-out")
    args = parser.parse_args()
    device = "cuda"
    subject = SUBJECTS[args.family]
    args.size = args.size or subject.DEFAULT_SIZE
    args.res = args.res or [next(iter(subject.RESOLUTIONS))]
    cfg = subject.SIZES[args.size]
    if args.layers:
        cfg = subject.with_layers(cfg, args.layers)
    variants = list(VARIANTS) if args.variants == ["all"] else args.variants
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    info = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "family": args.family,
            "size": args.size, "config": repr(cfg), "date": time.strftime("%Y-%m-%d"), "results": []}
    print(f"{info['gpu']} · torch {torch.__version__} · {args.family} {args.size} · {cfg}", flush=True)

    def record(r: dict, line: str = "") -> None:
        """Print a result and rewrite the JSON, so a run cut at its time limit keeps what it measured."""
        info["results"].append(r)
        print(line or _line(r["res"], r), flush=True)
        (out_dir / f"dit_speed_{args.family}_{args.size}.json").write_text(json.dumps(info, indent=1))
    with torch.no_grad():
        for k, res in enumerate(args.res):
            wanted = variants if k == 0 or args.res_variants is None else args.res_variants
            call, peer_call, tokens = subject.inputs(cfg, res, device)
            reference = None
            resident = [v for v in wanted if "block_swap" not in VARIANTS[v][1]]
            swapped = [v for v in wanted if v not in resident]
            for storage in dict.fromkeys(VARIANTS[v][0] for v in resident):
                module = subject.build(cfg, device, storage)
                for name in (v for v in resident if VARIANTS[v][0] == storage):
                    profile_to = (out_dir / f"profile_{args.family}_{args.size}_{res}_{name.replace(' ', '_')}.txt"
                                  if args.profile else None)
                    r, out = run_variant(subject, name, module, call, tokens, args.repeats, reference,
                                         profile_to=profile_to)
                    reference = out if name == "bf16" else reference
                    r["res"] = res
                    record(r)
                for peer_name in (p for p in args.peers if storage == "bf16" and p in subject.PEERS):
                    peer = subject.peer(module, device)
                    if peer_name == "diffusers-compiled-fa4":
                        subject.use_flash4(peer)
                    if peer_name.startswith("diffusers-compiled"):  # diffusers' own regional compile
                        peer.compile_repeated_blocks(fullgraph=True)
                    fn = lambda: subject.peer_output(peer(*peer_call[0], **peer_call[1]))  # noqa: E731
                    try:
                        r, out = measure(fn, args.repeats)
                    except torch.cuda.OutOfMemoryError as exc:  # a finding, not a crash of the whole run
                        r = {"name": peer_name, "res": res, "tokens": tokens, "error": f"out of memory: {exc}"[:300]}
                        record(r, f"{res} {tokens} tokens  {peer_name}: OUT OF MEMORY")
                        del peer, fn
                        torch.cuda.empty_cache()
                        continue
                    r.update(name=peer_name, res=res, tokens=tokens,
                             tflops=subject.flops(cfg, tokens) / r["seconds"] / 1e12)
                    if reference is not None:
                        r["rel_diff_vs_bf16"] = ((out - reference).norm() / reference.norm()).item()
                    if args.profile:
                        r["profile"] = profile_forward(fn, out_dir / f"profile_{args.family}_{args.size}_{res}_"
                                                                     f"{peer_name}.txt")
                    record(r)
                    del peer, out
                patches.configure(module, {})
                del module
                torch.cuda.empty_cache()
            for name in swapped:  # alone on the GPU: the peak is the whole model's
                module = subject.build(cfg, device, VARIANTS[name][0])
                r, _ = run_variant(subject, name, module, call, tokens, args.repeats, reference, args.growth_runs)
                r["res"] = res
                record(r)
                patches.configure(module, {})
                del module
                torch.cuda.empty_cache()


def _line(res: str, r: dict) -> str:
    extra = f"  vs bf16 {r['rel_diff_vs_bf16']:.1e}" if "rel_diff_vs_bf16" in r else ""
    if "predicted_activation_gib" in r:
        extra += f"  predicted activations {r['predicted_activation_gib']:.1f}, peak {r['predicted_peak_gib']:.1f}"
    if "growth_mib" in r:
        extra += f"  growth over {r['growth_runs']} runs {r['growth_mib']:.0f} MiB"
    return (f"{res} {r['tokens']} tokens  {r['name']:22s} {r['seconds']:7.3f} s  {r['tflops']:4.0f} TFLOP/s  "
            f"peak {r['peak_gib']:5.1f} GiB (activations {r['activation_gib']:.1f}){extra}")


if __name__ == "__main__":
    main()
