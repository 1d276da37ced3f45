"""Wan DiT forward: seconds and peak VRAM at full size, random weights, OpenReel vs diffusers on the same weights.

Run on a GPU machine from the repo root:  python bench/dit_speed.py --size 14b --res 480p 720p
Weights are random (none can be downloaded) but of the real size; they go through OpenReel's real loading path
(meta build + materialize) from a checkpoint whose tensors are generated on the GPU. diffusers 0.42.1
`WanTransformer3DModel` shares the big weight tensors (no second copy), so both fit on one card.
Prints a table and writes JSON (and an OpenReel kernel profile) to --out.
"""
from __future__ import annotations

import argparse
import json
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

from openreel.model_loaders.build import materialize  # noqa: E402
from openreel.model_loaders.checkpoint import Checkpoint, TensorInfo  # noqa: E402
from openreel.model_loaders.wan import diffusers_to_official  # noqa: E402
from openreel.models.wan.model import FP32_PARAMS, WEIGHT_PARAMS, WanConfig, WanDiT  # noqa: E402

SIZES = {"1.3b": WanConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30),
         "5b": WanConfig(dim=3072, ffn_dim=14336, num_heads=24, num_layers=30, in_dim=48, out_dim=48),
         "14b": WanConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)}
# (frames, height, width) in pixels; the latent is /4 in time (+1), /8 in space (Wan2.1 VAE)
RESOLUTIONS = {"480p": (81, 480, 832), "720p": (81, 720, 1280)}


def random_checkpoint(cfg: WanConfig, device: str) -> Checkpoint:
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in WanDiT(cfg).state_dict().items()}

    def reader(shape):
        return lambda: torch.randn(shape, device=device, dtype=torch.bfloat16) * (0.02 if len(shape) > 1 else 0.1)

    return Checkpoint((Path("random.safetensors"),), {k: TensorInfo(s, torch.bfloat16) for k, s in shapes.items()},
                      {k: reader(s) for k, s in shapes.items()})


def build_ours(cfg: WanConfig, device: str, weight_dtype: str = "bf16") -> WanDiT:
    model = materialize(lambda: WanDiT(cfg), random_checkpoint(cfg, device), weight_dtype=weight_dtype,
                        compute_dtype=torch.bfloat16, device=torch.device(device), weight_params=WEIGHT_PARAMS,
                        fp32_params=FP32_PARAMS)
    model.compute_dtype = torch.bfloat16
    return model


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="14b", choices=SIZES)
    parser.add_argument("--res", nargs="+", default=["480p"], choices=RESOLUTIONS)
    parser.add_argument("--layers", type=int, default=0, help="fewer blocks for a quick run (0: the real count)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peers", nargs="*", default=["diffusers"])
    parser.add_argument("--profile", action="store_true", help="also write a kernel table of one OpenReel forward")
    parser.add_argument("--out", default="bench-out")
    args = parser.parse_args()
    device = "cuda"
    cfg = SIZES[args.size]
    if args.layers:
        cfg = WanConfig(**{**cfg.__dict__, "num_layers": args.layers})
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    info = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "size": args.size,
            "layers": cfg.num_layers, "date": time.strftime("%Y-%m-%d"), "results": []}
    print(f"{info['gpu']} · torch {torch.__version__} · Wan {args.size} ({cfg.num_layers} blocks)", flush=True)
    t0 = time.time()
    ours = build_ours(cfg, device)
    print(f"built OpenReel model in {time.time() - t0:.1f}s, weights {torch.cuda.memory_allocated() / 2**30:.1f} GiB")
    peers = {"diffusers": build_diffusers(ours, device)} if "diffusers" in args.peers else {}
    with torch.no_grad():
        for res in args.res:
            x, t, ctx, tokens = inputs(cfg, res, device)
            runs = {"openreel": lambda: ours(x, t, ctx)}
            if "diffusers" in peers:
                runs["diffusers"] = lambda: peers["diffusers"](x, t, ctx, return_dict=False)[0]
            outputs = {}
            for name, fn in runs.items():
                outputs[name] = fn().float()
                r = measure(fn, args.repeats)
                r.update(name=name, res=res, tokens=tokens, tflops=flops(cfg, tokens) / r["seconds"] / 1e12)
                info["results"].append(r)
                print(f"{res} {tokens} tokens  {name:10s} {r['seconds']:.3f} s  {r['tflops']:.0f} TFLOP/s  "
                      f"peak {r['peak_gib']:.1f} GiB (activations {r['activation_gib']:.1f})", flush=True)
            if "diffusers" in outputs:
                a, b = outputs["openreel"], outputs["diffusers"]
                err = ((a - b).norm() / b.norm()).item()
                info.setdefault("agreement", {})[res] = err
                print(f"{res} OpenReel vs diffusers (bf16) relative difference {err:.2e}")
            del outputs
            if args.profile:
                from torch.profiler import ProfilerActivity, profile

                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    ours(x, t, ctx)
                    torch.cuda.synchronize()
                table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25)
                (out_dir / f"profile_{args.size}_{res}.txt").write_text(table)
                print(table[:4000])
    (out_dir / f"dit_speed_{args.size}.json").write_text(json.dumps(info, indent=1))


if __name__ == "__main__":
    main()
