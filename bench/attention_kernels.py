"""Attention kernels at Wan2.1-14B's shapes (40 heads of 128; 480p×81 = 32,760 and 720p×81 = 75,600 tokens):
TFLOP/s and error against fp32 attention, side by side in one run.

Run on a GPU machine from the repo root:  python bench/attention_kernels.py --out $OUT
Kernels: PyTorch SDPA held to cuDNN and to flash, our INT8/FP8 kernel (speed/int8_attention.py, both P·V
variants; its quantization prologue also timed alone),
FlashAttention 4 (flash_attn.cute) when it imports, and SageAttention 2's Hopper kernel (INT8 Q·Kᵀ, FP8 P·V with
fp32 accumulation; not on PyPI, built from its sources) when it imports.
Errors are measured on the first --check-heads heads (fp32 attention of all 40 at 75,600 tokens is slow).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import subjects  # noqa: F401,E402  (registers the checkout as the package `openreel`)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from attention_inputs import errors, inputs, reference  # noqa: E402

from openreel.speed import int8_attention as ia  # noqa: E402


def sdpa_with(kernel):
    def run(q, k, v):
        with sdpa_kernel(kernel):
            return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
    return run


def flash4():
    try:
        from flash_attn.cute import flash_attn_func
    except Exception as exc:  # noqa: BLE001  (any import failure is a finding to print)
        print(f"flash_attn.cute (FlashAttention 4) does not import: {type(exc).__name__}: {exc}"[:400], flush=True)
        return None

    def run(q, k, v):
        out = flash_attn_func(q, k, v)
        return out[0] if isinstance(out, tuple) else out
    return run


def sage2():
    try:
        from sageattention import sageattn_qk_int8_pv_fp8_cuda_sm90
    except Exception as exc:  # noqa: BLE001
        print(f"SageAttention 2 (sm90) does not import: {type(exc).__name__}: {exc}"[:400], flush=True)
        return None
    return lambda q, k, v: sageattn_qk_int8_pv_fp8_cuda_sm90(q, k, v, tensor_layout="NHD", pv_accum_dtype="fp32+fp32")


def prologue(q, k, v):
    """The quantization passes of the fp8 variant alone."""
    ia._int8(q, 1.0, None, per_row=True)
    ia._int8(k, 1.0, k.mean(dim=1, dtype=torch.float32), per_row=False)
    return ia._columns(v, fp8=True)


def timed(fn, repeats: int) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / 1000)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, nargs="+", default=[32760, 75600])
    parser.add_argument("--heads", type=int, default=40)
    parser.add_argument("--kinds", nargs="+", default=["random", "real"])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--check-heads", type=int, default=4)
    parser.add_argument("--kernels", nargs="+", default=[], help="only the kernels whose names contain one of these")
    parser.add_argument("--out", default="bench-out")
    args = parser.parse_args()
    kernels = {"sdpa cudnn": sdpa_with(SDPBackend.CUDNN_ATTENTION), "sdpa flash": sdpa_with(SDPBackend.FLASH_ATTENTION),
               "int8 q·k + fp8 p·v (ours)": lambda q, k, v: ia.int8_attention(q, k, v, None, "fp8"),
               "int8 q·k + 16-bit p·v (ours)": lambda q, k, v: ia.int8_attention(q, k, v, None, "16bit")}
    fa4 = flash4()
    if fa4 is not None:
        kernels["flash-attn 4"] = fa4
    sage = sage2() if any("sage" in part for part in args.kernels) else None
    if sage is not None:
        kernels["sageattention 2 sm90"] = sage
    if args.kernels:
        kernels = {name: fn for name, fn in kernels.items() if any(part in name for part in args.kernels)}
    info = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
            "results": []}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"{info['gpu']} · torch {torch.__version__}", flush=True)
    for tokens in args.tokens:
        for kind in args.kinds:
            q, k, v = inputs(1, tokens, tokens, args.heads, 128, kind, torch.bfloat16, "cuda")
            part = slice(0, args.check_heads)
            ref = reference(q[:, :, part], k[:, :, part], v[:, :, part])
            flops = 4 * tokens * tokens * args.heads * 128
            for name, fn in kernels.items():
                try:
                    seconds = timed(lambda: fn(q, k, v), args.repeats)
                    e = errors(fn(q, k, v)[:, :, part], ref)
                except Exception as exc:  # noqa: BLE001  (a kernel that fails is a finding, not the end of the run)
                    print(f"{tokens} {kind} {name}: FAILED {type(exc).__name__}: {exc}"[:600], flush=True)
                    continue
                r = {"tokens": tokens, "kind": kind, "kernel": name, "ms": seconds * 1e3,
                     "tflops": flops / seconds / 1e12, **e}
                if name == "int8 q·k + fp8 p·v (ours)":
                    r["config"] = str(ia._attention_kernel.best_config)
                    r["prologue_ms"] = timed(lambda: prologue(q, k, v), args.repeats) * 1e3
                info["results"].append(r)
                print(f"{tokens} {kind:6} {name:30} {r['ms']:8.2f} ms {r['tflops']:7.1f} TFLOP/s  rel {e['rel']:.4f} "
                      f"cos {e['cos']:.6f}" + (f"  prologue {r['prologue_ms']:.2f} ms  {r['config']}"
                                                if "config" in r else ""), flush=True)
                (out_dir / "attention_kernels.json").write_text(json.dumps(info, indent=1))
            del q, k, v, ref
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
