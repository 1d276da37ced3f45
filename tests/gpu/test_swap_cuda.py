"""Block swap on a CUDA GPU: bitwise the resident output (bf16 and fp8 weights), a lower peak, and copies on the
side stream from page-locked memory overlapping the compute stream's kernels. Skipped without CUDA.

Run from the repository root with `python tests/gpu/test_swap_cuda.py` (needs only torch and safetensors) or
`python -m pytest tests/gpu -q -s` (tests/conftest.py imports the whole pack, nodes included, so the pack's
requirements must be there too). Both print the measured peaks, the planner's predictions and resident vs
swapped forward times (information, not asserted).
"""
from __future__ import annotations

import importlib.util
import json
import sys
import tempfile
import time
import unittest
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
if "openreel" not in sys.modules:  # runs without pytest: the package's modules, not its nodes (fewer dependencies)
    spec = importlib.util.spec_from_file_location("openreel", ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    sys.modules["openreel"] = importlib.util.module_from_spec(spec)

from openreel import runtime  # noqa: E402
from openreel.memory import patches  # noqa: E402
from openreel.memory.block_swap import OFF, BlockSwap  # noqa: E402
from openreel.models.wan.family import wan_activation_bytes  # noqa: E402
from openreel.memory.planner import GIB, predict, weight_bytes  # noqa: E402
from openreel.model_loaders.build import materialize  # noqa: E402
from openreel.model_loaders.checkpoint import Checkpoint, TensorInfo  # noqa: E402
from openreel.models.wan.model import FP32_PARAMS, WanConfig, WanDiT  # noqa: E402

CFG = WanConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=10)   # Wan 1.3B widths, 10 blocks
LATENT = (1, 16, 9, 30, 52)      # 3,510 tokens: fast, copy-bound (overlap is visible)
LATENT_LONG = (1, 16, 21, 60, 104)  # 32,760 tokens (480p 81 frames): compute-bound, for the timing report
CUDA = torch.cuda.is_available()


def build(weight_dtype: str) -> WanDiT:
    """Random weights through the real loading path, in host memory (where a loaded model waits)."""
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in WanDiT(CFG).state_dict().items()}
    gen = torch.Generator(device="cuda").manual_seed(0)

    def reader(shape):
        scale = 0.02 if len(shape) > 1 else 0.1
        return lambda: torch.randn(shape, generator=gen, device="cuda", dtype=torch.bfloat16) * scale

    ckpt = Checkpoint((Path("random.safetensors"),), {k: TensorInfo(s, torch.bfloat16) for k, s in shapes.items()},
                      {k: reader(s) for k, s in shapes.items()})
    model = materialize(lambda ops: WanDiT(CFG, ops), ckpt, weight_dtype=weight_dtype, compute_dtype="bf16",
                        device=torch.device("cpu"), fp32_params=FP32_PARAMS)
    return model


def inputs(latent):
    gen = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(latent, generator=gen, device="cuda")
    context = torch.randn(1, 512, CFG.text_dim, generator=gen, device="cuda")
    return x, torch.tensor([700.0], device="cuda"), context


def tokens(latent) -> int:
    return latent[2] * (latent[3] // 2) * (latent[4] // 2)


def run(model, settings: BlockSwap, latent=LATENT):
    """(output, peak bytes allocated during the forward, seconds per forward) with `settings`."""
    patches.PATCHES["block_swap"].apply(model, settings)
    patches.load(model, wan_activation_bytes(CFG.dim, CFG.ffn_dim, tokens(latent)))
    x, t, context = inputs(latent)
    with torch.no_grad():
        model(x, t, context)  # warm-up
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        out = model(x, t, context)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated()
    patches.offload(model)
    return out, peak, seconds


@unittest.skipUnless(CUDA, "needs a CUDA GPU")
class SwapOnCuda(unittest.TestCase):
    def setUp(self):
        runtime.set_device("cuda")

    def tearDown(self):
        runtime.set_device(None)

    def check_bitwise_and_peak(self, weight_dtype: str):
        model = build(weight_dtype)
        reference, resident_peak, _ = run(model, OFF)
        wb = weight_bytes(model)
        count = CFG.num_layers
        for settings in (BlockSwap(count), BlockSwap(count // 2), BlockSwap(3, offload_embeddings=True)):
            out, peak, _ = run(model, settings)
            self.assertTrue(torch.equal(out, reference), f"{weight_dtype} {settings}")
            predicted = predict(wb, lambda n, b: wan_activation_bytes(CFG.dim, CFG.ffn_dim, n, b), tokens(LATENT), 1, swap=settings.blocks,
                                offload_embeddings=settings.offload_embeddings).total
            print(f"\n{weight_dtype} {settings}: peak {peak / GIB:.3f} GiB, planner {predicted / GIB:.3f} GiB "
                  f"(resident peak {resident_peak / GIB:.3f} GiB)")
            self.assertLessEqual(peak, predicted, "the planner's prediction must not be below the measured peak")
            if settings.blocks == count:
                saved = resident_peak - peak
                self.assertGreaterEqual(saved, (count - 2) * wb.blocks[0] * 0.99, "full swap saves all but 2 blocks")
        patches.PATCHES["block_swap"].apply(model, OFF)

    def test_bf16_swap_is_bitwise_resident_with_lower_peak(self):
        self.check_bitwise_and_peak("bf16")

    def test_fp8_swap_is_bitwise_resident_with_lower_peak(self):
        self.check_bitwise_and_peak("fp8_e4m3fn_scaled")

    def test_copies_run_on_a_side_stream_from_page_locked_memory_and_overlap_compute(self):
        model = build("bf16")
        patches.PATCHES["block_swap"].apply(model, BlockSwap(CFG.num_layers))
        patches.load(model, wan_activation_bytes(CFG.dim, CFG.ffn_dim, tokens(LATENT_LONG)))
        residency = model.residency
        self.assertTrue(all(residency.host[i].pinned and residency.host[i].buffer.is_pinned()
                            for i in residency.swapped))
        x, t, context = inputs(LATENT_LONG)
        with torch.no_grad():
            model(x, t, context)
            torch.cuda.synchronize()
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                model(x, t, context)
                torch.cuda.synchronize()
        patches.PATCHES["block_swap"].apply(model, OFF)
        with tempfile.TemporaryDirectory() as folder:
            trace = Path(folder) / "trace.json"
            prof.export_chrome_trace(str(trace))
            events = json.loads(trace.read_text())["traceEvents"]
        copies = [e for e in events if e.get("cat") == "gpu_memcpy" and "HtoD" in e.get("name", "")]
        kernels = [e for e in events if e.get("cat") == "kernel"]
        self.assertGreaterEqual(len(copies), CFG.num_layers)
        self.assertTrue(all("Pinned" in e["name"] for e in copies), {e["name"] for e in copies})
        copy_streams = {e["args"]["stream"] for e in copies}
        compute_streams = {e["args"]["stream"] for e in kernels}
        self.assertTrue(copy_streams.isdisjoint(compute_streams), (copy_streams, compute_streams))

        def overlaps(a, b):
            return a["ts"] < b["ts"] + b["dur"] and b["ts"] < a["ts"] + a["dur"]

        total = sum(c["dur"] for c in copies)
        hidden = sum(c["dur"] for c in copies if any(overlaps(c, k) for k in kernels))
        print(f"\n{hidden / total:.0%} of the host-to-device copy time ran beside a compute kernel")
        self.assertGreater(hidden / total, 0.5)

    def test_report_swap_cost_at_480p(self):
        """Information only: resident vs fully swapped forward time where compute per block exceeds its copy."""
        model = build("bf16")
        _, resident_peak, resident_s = run(model, OFF, LATENT_LONG)
        _, swap_peak, swap_s = run(model, BlockSwap(CFG.num_layers), LATENT_LONG)
        patches.PATCHES["block_swap"].apply(model, OFF)
        estimate = wan_activation_bytes(CFG.dim, CFG.ffn_dim, tokens(LATENT_LONG))
        weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        print(f"\n{tokens(LATENT_LONG):,} tokens: resident {resident_s * 1e3:.1f} ms, peak {resident_peak / GIB:.2f} "
              f"GiB; all {CFG.num_layers} blocks swapped {swap_s * 1e3:.1f} ms ({swap_s / resident_s - 1:+.1%}), "
              f"peak {swap_peak / GIB:.2f} GiB; activations measured {(resident_peak - weights) / GIB:.2f} GiB, "
              f"estimated {estimate / GIB:.2f} GiB")


if __name__ == "__main__":
    unittest.main(verbosity=2)
