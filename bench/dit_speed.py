"""Wan DiT forward: seconds and peak VRAM at full size, random weights, OpenReel vs diffusers on the same weights.

Run on a GPU machine from the repo root:  python bench/dit_speed.py --size 14b --res 480p 720p --variants all
Variants are OpenReel's memory/speed patches applied through the same mechanism as the nodes (memory.patches):
resident bf16, regional compile, fp8 storage with upcast or FP8 matmul, and full block swap.
Weights are random (none can be downloaded) but of the real size; they go through OpenReel's real loading path
(meta build + materialize) from a checkpoint whose tensors are generated on the GPU. diffusers 0.42.1
`WanTransformer3DModel` shares the big weight tensors (no second copy), so both fit on one card.
Prints a table and writes JSON (and an OpenReel kernel profile) to --out.
"""
from __future__ import annotations

import argparse
import json
import zlib
import sys
import types
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if "openreel" not in sys.modules:  # the library only: the package __init__ would import every node
    package = types.ModuleType("openreel")
    package.__path__ = [str(ROOT)]
    sys.modules["openreel"] = package

from openreel.memory import patches  # noqa: E402
from openreel.memory.block_swap import BlockSwap  # noqa: E402
from openreel.model_loaders.build import materialize  # noqa: E402
from openreel.model_loaders.checkpoint import Checkpoint, TensorInfo  # noqa: E402
from openreel.model_loaders.core import prepare  # noqa: E402,F401  (registers every run-time patch)
from openreel.models.wan.family import diffusers_to_official  # noqa: E402
from openreel.models.wan.model import FP32_PARAMS, WanConfig, WanDiT  # noqa: E402
from openreel.speed.compile import CompileSettings  # noqa: E402

SIZES = {"1.3b": WanConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30),
         "5b": WanConfig(dim=3072, ffn_dim=14336, num_heads=24, num_layers=30, in_dim=48, out_dim=48),
         "14b": WanConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)}
# (frames, height, width) in pixels; the latent is /4 in time (+1), /8 in space (Wan2.1 VAE)
RESOLUTIONS = {"480p": (81, 480, 832), "720p": (81, 720, 1280)}


# name → (weight storage, patches); every variant but "bf16" is compared with bf16's output on the same weights
VARIANTS = {
    "bf16": ("bf16", {}),
    "bf16 compiled": ("bf16", {"compile": CompileSettings()}),
    "fp8 upcast": ("fp8_e4m3fn_channel", {}),
    "fp8 matmul": ("fp8_e4m3fn_channel", {"fp8_matmul": "row"}),
    "fp8 matmul compiled": ("fp8_e4m3fn_channel", {"fp8_matmul": "row", "compile": CompileSettings()}),
    "swap all bf16": ("bf16", {"block_swap": "all"}),
    "swap all fp8 matmul": ("fp8_e4m3fn_channel", {"block_swap": "all", "fp8_matmul": "row"}),
    "swap all bf16 compiled": ("bf16", {"block_swap": "all", "compile": CompileSettings()}),
    "swap all fp8 matmul compiled": ("fp8_e4m3fn_channel", {"block_swap": "all", "fp8_matmul": "row",
                                                            "compile": CompileSettings()}),
}


def random_checkpoint(cfg: WanConfig, device: str) -> Checkpoint:
    """Random bf16 tensors made on the GPU, the same values at every read (seeded by name)."""
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in WanDiT(cfg).state_dict().items()}

    def reader(key, shape):
        def read():
            gen = torch.Generator(device=device).manual_seed(zlib.crc32(key.encode()))
            scale = 0.02 if len(shape) > 1 else 0.1
            return torch.randn(shape, generator=gen, device=device, dtype=torch.bfloat16) * scale
        return read

    return Checkpoint((Path("random.safetensors"),), {k: TensorInfo(s, torch.bfloat16) for k, s in shapes.items()},
                      {k: reader(k, s) for k, s in shapes.items()})


def build_ours(cfg: WanConfig, device: str, weight_dtype: str = "bf16") -> WanDiT:
    return materialize(lambda ops: WanDiT(cfg, ops), random_checkpoint(cfg, device), weight_dtype=weight_dtype,
                       compute_dtype="bf16", device=torch.device(device), fp32_params=FP32_PARAMS)


def build_diffusers(ours: WanDiT, device: str):
    """diffusers' model on the very same weight tensors (cast copies only for small params whose dtype differs)."""
    from diffusers import WanTransformer3DModel

    cfg = ours.cfg
    with torch.device("meta"):
        ref = WanTransformer3DModel(patch_size=cfg.patch_size, num_attention_heads=cfg.num_heads,
                                    attention_head_dim=cfg.head_dim, in_channels=cfg.in_dim, out_channels=cfg.out_dim,
                                    text_dim=cfg.text_dim, freq_dim=cfg.freq_dim, ffn_dim=cfg.ffn_dim,
                                    num_layers=cfg.num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                                    eps=cfg.eps)
    keep_fp32 = set(WanTransformer3DModel._keep_in_fp32_modules)
    for name, _ in list(ref.named_parameters()):
        mod_name, _, attr = name.rpartition(".")
        mod = ref.get_submodule(mod_name) if mod_name else ref
        tensor = ours.get_parameter(diffusers_to_official(name))
        want = torch.float32 if keep_fp32 & set(name.split(".")) else torch.bfloat16
        mod._parameters[attr] = tensor if tensor.dtype == want else torch.nn.Parameter(tensor.to(want), False)
    ref.rope = type(ref.rope)(cfg.head_dim, cfg.patch_size, 1024).to(device)
    return ref.eval()


def inputs(cfg: WanConfig, res: str, device: str):
    frames, height, width = RESOLUTIONS[res]
    stride = 16 if cfg.in_dim == 48 else 8
    shape = (1, cfg.in_dim, (frames - 1) // 4 + 1, height // stride, width // stride)
    x = torch.randn(shape, device=device, dtype=torch.bfloat16)
    context = torch.randn(1, 512, cfg.text_dim, device=device, dtype=torch.bfloat16)
    tokens = shape[2] * (shape[3] // 2) * (shape[4] // 2)
    return x, torch.tensor([500.0], device=device), context, tokens


def measure(fn, repeats: int) -> dict:
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
        del out
    peak = torch.cuda.max_memory_allocated()
    return {"seconds": sorted(times)[len(times) // 2], "all_seconds": times, "peak_gib": peak / 2**30,
            "activation_gib": (peak - base) / 2**30}


def flops(cfg: WanConfig, tokens: int) -> float:
    """Forward FLOPs of the blocks: GEMMs (self q,k,v,o; cross q,o + k,v on 512 text rows; FFN) and attention."""
    d, f, L = cfg.dim, cfg.ffn_dim, tokens
    gemm = 2 * L * d * d * 6 + 2 * 512 * d * d * 2 + 2 * L * d * f * 2
    attn = 4 * L * L * d + 4 * L * 512 * d
    return cfg.num_layers * (gemm + attn)


def profile_forward(module: WanDiT, x, t, ctx, path: Path) -> None:
    """Kernel table of one forward as the module is configured now; the ten largest rows are printed."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        module(x, t, ctx)
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=70)
    path.write_text(table)
    print("\n".join(table.splitlines()[:14]), flush=True)


def run_variant(name: str, module: WanDiT, x, t, ctx, tokens: int, repeats: int, reference=None) -> dict:
    storage, values = VARIANTS[name]
    values = dict(values)
    if values.get("block_swap") == "all":
        values["block_swap"] = BlockSwap(blocks=len(module.blocks))
    patches.configure(module, values)
    patches.load(module, 0)
    fn = lambda: module(x, t, ctx)  # noqa: E731
    r = measure(fn, repeats)
    out = fn().float()
    r.update(name=name, tokens=tokens, tflops=flops(module.cfg, tokens) / r["seconds"] / 1e12, storage=storage)
    if reference is not None:
        r["rel_diff_vs_bf16"] = ((out - reference).norm() / reference.norm()).item()
    if values.get("block_swap"):  # ten more runs: memory must not grow
        before = torch.cuda.memory_allocated()
        for _ in range(10):
            fn()
        torch.cuda.synchronize()
        r["growth_over_10_runs_mib"] = (torch.cuda.memory_allocated() - before) / 2**20
    return r, out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="14b", choices=SIZES)
    parser.add_argument("--res", nargs="+", default=["480p"], choices=RESOLUTIONS)
    parser.add_argument("--variants", nargs="+", default=["bf16"], help=f"'all' or some of {list(VARIANTS)}")
    parser.add_argument("--res-variants", nargs="*", default=None,
                        help="variants for resolutions after the first (default: the same)")
    parser.add_argument("--layers", type=int, default=0, help="fewer blocks for a quick run (0: the real count)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peers", nargs="*", default=["diffusers"], help="diffusers (eager), diffusers-compiled")
    parser.add_argument("--profile", action="store_true", help="also write a kernel table of one OpenReel forward")
    parser.add_argument("--out", default="bench-out")
    args = parser.parse_args()
    device = "cuda"
    cfg = SIZES[args.size]
    if args.layers:
        cfg = WanConfig(**{**cfg.__dict__, "num_layers": args.layers})
    variants = list(VARIANTS) if args.variants == ["all"] else args.variants
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    info = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "size": args.size,
            "layers": cfg.num_layers, "date": time.strftime("%Y-%m-%d"), "results": []}
    print(f"{info['gpu']} · torch {torch.__version__} · Wan {args.size} ({cfg.num_layers} blocks)", flush=True)
    with torch.no_grad():
        for k, res in enumerate(args.res):
            wanted = variants if k == 0 or args.res_variants is None else args.res_variants
            x, t, ctx, tokens = inputs(cfg, res, device)
            reference = None
            resident = [v for v in wanted if "block_swap" not in VARIANTS[v][1]]
            swapped = [v for v in wanted if v not in resident]
            for storage in dict.fromkeys(VARIANTS[v][0] for v in resident):
                module = build_ours(cfg, device, storage)
                for name in (v for v in resident if VARIANTS[v][0] == storage):
                    r, out = run_variant(name, module, x, t, ctx, tokens, args.repeats, reference)
                    reference = out if name == "bf16" else reference
                    r["res"] = res
                    info["results"].append(r)
                    print(_line(res, r), flush=True)
                    if args.profile:
                        profile_forward(module, x, t, ctx, out_dir / f"profile_{args.size}_{res}_{name.replace(' ', '_')}.txt")
                for peer_name in (p for p in args.peers if storage == "bf16" and p.startswith("diffusers")):
                    peer = build_diffusers(module, device)
                    if peer_name == "diffusers-compiled":  # diffusers' own regional compile, its fastest setting
                        peer.compile_repeated_blocks(fullgraph=True)
                    fn = lambda: peer(x, t, ctx, return_dict=False)[0]  # noqa: E731
                    r = measure(fn, args.repeats)
                    r.update(name=peer_name, res=res, tokens=tokens, tflops=flops(cfg, tokens) / r["seconds"] / 1e12)
                    if reference is not None:
                        r["rel_diff_vs_bf16"] = ((fn().float() - reference).norm() / reference.norm()).item()
                    info["results"].append(r)
                    print(_line(res, r), flush=True)
                    del peer
                patches.configure(module, {})
                del module
                torch.cuda.empty_cache()
            for name in swapped:  # alone on the GPU: the peak is the whole model's
                module = build_ours(cfg, device, VARIANTS[name][0])
                r, _ = run_variant(name, module, x, t, ctx, tokens, args.repeats, reference)
                r["res"] = res
                info["results"].append(r)
                print(_line(res, r), flush=True)
                patches.configure(module, {})
                del module
                torch.cuda.empty_cache()
    (out_dir / f"dit_speed_{args.size}.json").write_text(json.dumps(info, indent=1))


def _line(res: str, r: dict) -> str:
    extra = f"  vs bf16 {r['rel_diff_vs_bf16']:.1e}" if "rel_diff_vs_bf16" in r else ""
    if "growth_over_10_runs_mib" in r:
        extra += f"  growth over 10 runs {r['growth_over_10_runs_mib']:.0f} MiB"
    return (f"{res} {r['tokens']} tokens  {r['name']:22s} {r['seconds']:7.3f} s  {r['tflops']:4.0f} TFLOP/s  "
            f"peak {r['peak_gib']:5.1f} GiB (activations {r['activation_gib']:.1f}){extra}")


if __name__ == "__main__":
    main()
