"""Step-Video-T2V whole pipeline in one process on a 24 GB card, as workflows/api/stepvideo_t2v_24gb.json runs it
(issue 11): text encode (Step-LLM in fp8 + HunyuanCLIP), sampling at 992×544×204 (36 latent frames) with the plan
of OpenReel VRAM Budget at 22 GiB, and the VAE decode with automatic tiling. Random weights of the real size.

The card: an H200 made to look like a 24 GB card: torch's allocator is capped at `--card-gib` (default 23.5 GiB: 24 GB
less the CUDA context) and OpenReel is told the free memory of that card (the cap less what torch holds), so every
automatic choice (tiling, what to offload) is made as on that card. Peaks are torch's (allocated and reserved).

What is timed and what is extrapolated (said in the output): the sampler runs `--steps` steps (default 3) of the
official schedule; a hook on the first block stamps every model call, so a step's steady seconds are measured
between the starts of its second and last steps, and 50 steps are priced as the run's fixed part (loading, the
first step's set-up) plus 50 steady steps.

The modules come from random checkpoints through the real loading path (materialize), put in the module cache under
the handles the loader nodes would make; the tokenizers are the synthetic set's (tiny, in the real formats). The
Step-LLM shape is StepLLMSpec's defaults (6144 wide, 48 layers, FFN 16384): the real file's config decides at load.

Run on the GPU machine from the repo root:  python bench/stepvideo_pipeline.py --out $OUT
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from card import simulate_card
from subjects import meta_shapes, random_checkpoint

from openreel import runtime
from openreel.handles import DiTHandle, VAEHandle
from openreel.model_loaders.build import materialize
from openreel.model_loaders.cache import MODULES
from openreel.model_loaders.checkpoint import Checkpoint, TensorInfo
from openreel.model_loaders.text_encoder import load_text_encoder
from openreel.models.common.ops import PLAIN
from openreel.models.stepvideo.family import STEPVIDEO
from openreel.models.stepvideo.latents import STEPVIDEO_VAE
from openreel.models.stepvideo.model import StepVideoConfig, StepVideoDiT
from openreel.models.stepvideo.vae import StepVideoVAEConfig
from openreel.models.text.bert import FP32_PARAMS as BERT_FP32, BertSpec, BertTextEncoder
from openreel.models.text.stepllm import FP32_PARAMS as LLM_FP32, StepLLMSpec, StepLLMTextEncoder
from openreel.nodes.encode import OpenReelTextEncode, OpenReelVAEDecode
from openreel.nodes.memory import OpenReelVRAMBudget
from openreel.nodes.sample import OpenReelEmptyLatent, OpenReelSampler
from openreel.synthetic_stepvideo import write_hunyuan_clip, write_step_llm

GIB = 1 << 30
WORKFLOW = Path(__file__).resolve().parents[1] / "workflows" / "api" / "stepvideo_t2v_24gb.json"


def on_host(factory, fp32_params: str, weight_dtype: str, compute_dtype: str):
    """A random module of `factory(ops)`'s real size built through materialize, kept on the offload device."""
    ckpt = random_checkpoint(meta_shapes(lambda: factory(PLAIN)), "cuda")
    return materialize(factory, ckpt, weight_dtype=weight_dtype, compute_dtype=compute_dtype,
                       device=runtime.offload_device(), fp32_params=fp32_params)


def text_encoders(folder: Path, llm_dtype: str):
    """Handles of real-size Step-LLM and HunyuanCLIP modules, with the synthetic set's tokenizers."""
    handles = []
    for tiny, spec, network, fp32, dtype in (
            (write_step_llm(folder / "step_llm"), StepLLMSpec(), StepLLMTextEncoder, LLM_FP32, llm_dtype),
            (write_hunyuan_clip(folder / "hunyuan_clip"), BertSpec(), BertTextEncoder, BERT_FP32, "auto")):
        small = load_text_encoder(tiny, dtype)
        handle = replace(small, spec=spec, files=(f"random-{spec.kind}",), file_stamp=((0, 0),))
        MODULES.get_or_build(handle.weights_key, lambda: on_host(
            lambda ops: network(spec, ops), fp32, handle.weight_dtype, handle.compute_dtype))
        handles.append(handle)
    return handles


def dit_handle() -> DiTHandle:
    """The bf16 DiT handle the loader would make, its module on the meta device: the plan reads its shapes only."""
    cfg = StepVideoConfig()
    shapes = meta_shapes(lambda: StepVideoDiT(cfg))
    ckpt = Checkpoint((Path("random-stepvideo.safetensors"),),
                      {k: TensorInfo(s, torch.bfloat16) for k, s in shapes.items()}, {})
    handle = DiTHandle(STEPVIDEO.describe(ckpt), ("random-stepvideo.safetensors",), ((0, 0),), "bf16", "bf16")
    with torch.device("meta"):  # in bf16 as loaded (its few float32 norms and tables aside)
        MODULES.get_or_build(handle.weights_key, lambda: StepVideoDiT(cfg).to(torch.bfloat16))
    return handle


def vae_handle() -> VAEHandle:
    cfg = StepVideoVAEConfig()
    handle = VAEHandle(cfg, ("random-vae_v2.safetensors",), ((0, 0),), "auto", "bf16", family=STEPVIDEO_VAE.name,
                       latent_format=STEPVIDEO_VAE.latent_format(cfg))
    MODULES.get_or_build(handle.weights_key, lambda: on_host(lambda ops: STEPVIDEO_VAE.build(cfg), "", "auto", "bf16"))
    return handle


class Stamps:
    """Wall-clock time at the start of every model call (a pre-hook on the first block, after a synchronize)."""

    def __init__(self, module):
        self.times: list[float] = []
        self.hook = module.transformer_blocks[0].register_forward_pre_hook(self._hit)

    def _hit(self, *_):
        torch.cuda.synchronize()
        self.times.append(time.perf_counter())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="bench-out")
    parser.add_argument("--card-gib", type=float, default=23.5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--full-steps", type=int, default=50, help="the recipe's steps the run is priced for")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runtime.set_device("cuda")
    workflow = {k: v["inputs"] for k, v in json.loads(WORKFLOW.read_text()).items()}
    encode, empty, budget, sampler = (next(v for v in workflow.values() if key in v) for key in
                                      ("negative_prompt", "frames", "budget_gb", "solver"))
    report = {"date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "card_gib": args.card_gib, "video": f"{empty['width']}x{empty['height']}x{empty['frames']}",
              "stages": {}}

    def record(stage: str, seconds: float, **extra) -> None:
        row = dict(seconds=seconds, peak_allocated_gib=torch.cuda.max_memory_allocated() / GIB,
                   peak_reserved_gib=torch.cuda.max_memory_reserved() / GIB, **extra)
        report["stages"][stage] = row
        print(f"\n{stage:34s} " + "  ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in row.items()), flush=True)
        (out / "stepvideo_pipeline.json").write_text(json.dumps(report, indent=1))

    t0 = time.perf_counter()
    llm_dtype = next(v["inputs"]["dtype"] for v in json.loads(WORKFLOW.read_text()).values()
                     if v["inputs"].get("model_name", "").startswith("step_llm"))
    with tempfile.TemporaryDirectory() as tmp:
        llm, clip = text_encoders(Path(tmp), llm_dtype)
    vae = vae_handle()
    print(f"random modules of the real size built in {time.perf_counter() - t0:.0f} s; Step-LLM stored as "
          f"{llm.weight_dtype}", flush=True)
    simulate_card(args.card_gib)

    def stage(name: str, fn, **extra):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        result = fn()
        torch.cuda.synchronize()
        record(name, time.perf_counter() - start, **extra)
        return result

    embeds = stage("text encode (2 prompts, 2 encoders)", lambda: OpenReelTextEncode().encode(
        llm, encode["prompt"], encode["negative_prompt"], clip)[0])
    dit = dit_handle()  # after encoding: its meta module counts 60 GB in the cache's budget of host memory
    latent = OpenReelEmptyLatent().make(vae, empty["width"], empty["height"], empty["frames"], 1)[0]
    plan = OpenReelVRAMBudget().apply(dit, latent, budget["budget_gb"], budget["allow_fp8"])["result"]
    planned = plan[0]
    report["plan"] = plan[2]
    print(plan[2], flush=True)
    MODULES.evict(dit.weights_key)
    t0 = time.perf_counter()
    module = MODULES.get_or_build(planned.weights_key, lambda: on_host(
        lambda ops: STEPVIDEO.build(planned.spec, ops), STEPVIDEO.fp32_params, planned.weight_dtype,
        planned.compute_dtype))
    print(f"the planned DiT ({planned.weight_dtype}) built on the host in {time.perf_counter() - t0:.0f} s",
          flush=True)
    stamps = Stamps(module)
    samples = stage(f"sampler, {args.steps} steps", lambda: OpenReelSampler().run(
        dit=planned, embeds=embeds, latent=latent, seed=sampler["seed"], steps=args.steps, cfg=sampler["cfg"],
        shift=sampler["shift"], solver=sampler["solver"])[0])
    sampled = report["stages"][f"sampler, {args.steps} steps"]
    per_call = len(stamps.times) // args.steps
    steady = (stamps.times[-per_call] - stamps.times[per_call]) / (args.steps - 2)
    fixed = sampled["seconds"] - args.steps * steady
    sampled.update(model_calls=len(stamps.times), steady_step_s=steady, fixed_s=fixed,
                   priced_full_s=fixed + args.full_steps * steady)
    print(f"steady {steady:.1f} s per step; {args.full_steps} steps priced at {fixed + args.full_steps * steady:.0f} s",
          flush=True)
    (out / "stepvideo_pipeline.json").write_text(json.dumps(report, indent=1))
    frames = stage("VAE decode (tiling auto)", lambda: OpenReelVAEDecode().decode(vae, samples, "auto")[0])
    report["frames_shape"] = list(frames.shape)
    stages = report["stages"].values()
    report["whole"] = {"peak_allocated_gib": max(s["peak_allocated_gib"] for s in stages),
                       "peak_reserved_gib": max(s["peak_reserved_gib"] for s in stages),
                       "priced_seconds": sum(s.get("priced_full_s", s["seconds"]) for s in stages)}
    (out / "stepvideo_pipeline.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report["whole"], indent=1))


if __name__ == "__main__":
    sys.exit(main())
