"""Whole-video sampling of a Wan2.2 T2V-A14B pair through the real node path, against diffusers' `WanPipeline`
(`transformer_2`, `boundary_ratio`) on the same weights (issue 12).

Configurations (480p × 81 frames, both experts, random weights of the real size):
  (a) 40 steps, CFG 4 / 3 (the official recipe);  (b) the same with MagCache at the published Wan2.2 setting;
  (c) 4 steps, CFG 1, an unmerged rank-64 LoRA on both experts (the distillation-LoRA recipe), against diffusers'
      LoRA as `load_lora_weights` leaves it (PEFT layers beside the weights: the same configuration);
  cm: (c) with the LoRA merged into the weights (OpenReel LoRA "merged", what "auto" picks for resident bf16
      experts), against diffusers' `fuse_lora` (its fastest mode). Merging and fusing happen before the timed runs.
  speed: 4 steps, CFG 1, exact bf16 against the fastest combination whose accuracy holds (OpenReel FP8 per channel
  with FP8 matmul, OpenReel Attention `speed`): seconds and the final latents' difference (issue 14). Ours only.
  a24: (a) as OpenReel VRAM Budget plans it for a 24 GB card (blocks swapped, sequential CFG), against diffusers'
      group offloading (one block at a time on a side stream); the peer's row runs alone (--skip-ours: a separate
      process, so that its page-locked copies of both experts fit in host memory).
Ours runs the nodes a user wires (OpenReel VRAM Budget for a 24 GB card or resident, OpenReel LoRA, OpenReel Step
Cache, OpenReel Sampler), with the experts' modules put in the module cache instead of read from 28 GB files.

What is timed and what is extrapolated (said in the output): after a warm-up run at the real size, each of (a)
is run for 3 and for 5 steps of a short schedule with the same CFG (shift 12: in both, the last step is the
low-noise expert's, so both runs switch experts once, as a whole video does); seconds per model call = the
difference / 4 calls, fixed seconds per video (the switch, the first step's set-up) = the 3-step run minus its 6
calls, and seconds per video = fixed + 80 calls. (b) counts the calls MagCache computes in a full
40-step run (its decisions depend only on the published calibration and the schedule, so a run at a small latent
gives the same count) and prices them the same way, with the bookkeeping measured at a threshold that skips
nothing. (c) and cm are timed whole (4 steps) after a warm-up run. The peer is timed the same way.

Run on the GPU machine from the repo root:  python bench/wan22_video.py --out $OUT [--tiny for a CPU smoke test]
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import sys
import time
import zlib
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if "openreel" not in sys.modules:
    spec = importlib.util.spec_from_file_location("openreel", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    sys.modules["openreel"] = module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

from safetensors.torch import save_file  # noqa: E402

from openreel import runtime  # noqa: E402
from openreel.handles import DiTHandle, TextEmbeds  # noqa: E402
from openreel.latents import empty_latent, latent_format  # noqa: E402
from openreel.model_loaders.build import materialize  # noqa: E402
from openreel.model_loaders.cache import MODULES  # noqa: E402
from openreel.model_loaders.checkpoint import Checkpoint, TensorInfo  # noqa: E402
from openreel.models.registry import family_of  # noqa: E402
from openreel.models.wan.family import WAN  # noqa: E402
from openreel.models.wan.model import WanConfig, WanDiT  # noqa: E402
from openreel.nodes.cache import OpenReelStepCache  # noqa: E402
from openreel.nodes.lora import OpenReelLoRA  # noqa: E402
from openreel.nodes.memory import OpenReelVRAMBudget  # noqa: E402
from openreel.nodes.sample import OpenReelSampler  # noqa: E402
from openreel.nodes.speed import OpenReelAttention, OpenReelCompile, OpenReelFP8  # noqa: E402

GIB = 1 << 30
A14B = WanConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)
TINY = WanConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=2)
LORA_LINEARS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
                "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")


def expert(cfg: WanConfig, salt: str, device: str, weight_dtype: str = "bf16") -> DiTHandle:
    """A random expert of `cfg` built on the host through the real materialize path, in the module cache; the same
    values for any `weight_dtype` (as a file quantized at load)."""
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in WanDiT(cfg).state_dict().items()}

    def reader(key, shape):
        def read():
            gen = torch.Generator(device=device).manual_seed(zlib.crc32((salt + key).encode()))
            return torch.randn(shape, generator=gen, device=device, dtype=torch.bfloat16) * (0.02 if len(shape) > 1
                                                                                             else 0.1)
        return read

    ckpt = Checkpoint((Path(f"random-{salt}.safetensors"),), {k: TensorInfo(s, torch.bfloat16) for k, s in shapes.items()},
                      {k: reader(k, s) for k, s in shapes.items()})
    spec = WAN.describe(ckpt)
    handle = DiTHandle(spec, (f"random-{salt}.safetensors",), ((0, 0),), weight_dtype, "bf16")
    MODULES.get_or_build(handle.weights_key, lambda: materialize(
        lambda ops: family_of(spec).build(spec, ops), ckpt, device=runtime.offload_device(), weight_dtype=weight_dtype,
        compute_dtype="bf16", fp32_params=family_of(spec).fp32_params))
    return handle


def write_lora(cfg: WanConfig, rank: int, path: Path, seed: int) -> None:
    """A rank-`rank` LoRA on every attention and FFN linear, in the layout of the distillation LoRAs
    (`diffusion_model.` names, lora_down / lora_up, α = rank)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for i in range(cfg.num_layers):
        for name in LORA_LINEARS:
            rows, cols = (cfg.ffn_dim, cfg.dim) if name == "ffn.0" else (cfg.dim, cfg.ffn_dim) if name == "ffn.2" \
                else (cfg.dim, cfg.dim)
            key = f"diffusion_model.blocks.{i}.{name}"
            out[f"{key}.lora_down.weight"] = (torch.randn(rank, cols, generator=gen) * 0.01).bfloat16()
            out[f"{key}.lora_up.weight"] = (torch.randn(rows, rank, generator=gen) * 0.01).bfloat16()
    save_file(out, str(path))


def setting(tiny: bool) -> tuple[str, WanConfig, tuple[int, int, int], TextEmbeds]:
    """The device (set as the runtime's), the expert config, (frames, height, width) and random prompt embeddings of
    a run: the real 480p × 81 A14B case, or a tiny one for a CPU smoke test."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    runtime.set_device(device)
    cfg = TINY if tiny else A14B
    embeds = TextEmbeds(torch.randn(1, 90, cfg.text_dim) * 0.1, torch.randn(1, 120, cfg.text_dim) * 0.1)
    return device, cfg, (5, 64, 64) if tiny else (81, 480, 832), embeds


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_ours(dits, embeds, latent, steps: int, cfg: float) -> tuple[float, float, torch.Tensor]:
    """Seconds and peak GiB of one OpenReel Sampler run."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    sync()
    t0 = time.perf_counter()
    out = OpenReelSampler().run(dit=dits[0], dit_low_noise=dits[1], embeds=embeds, latent=latent, seed=1,
                                steps=steps, cfg=cfg, shift=12.0, solver="unipc", cfg_low_noise=min(cfg, 3.0),
                                boundary=0.875)[0]["samples"]
    sync()
    peak = torch.cuda.max_memory_allocated() / GIB if torch.cuda.is_available() else 0.0
    return time.perf_counter() - t0, peak, out


class Calls:
    """Counts the model calls the experts computed (not served from a step cache), one per guidance branch: the
    rows of the batch reaching the first block (batched CFG runs both branches in one pass)."""

    def __init__(self, modules):
        self.count = 0
        self.hooks = [m.blocks[0].register_forward_pre_hook(self._hit) for m in modules]

    def _hit(self, _module, args, *_):
        self.count += args[0].shape[0]

    def close(self):
        for h in self.hooks:
            h.remove()


# ----------------------------------------------------------------------------------------- the peer
def peer_pipeline(modules, device: str, offload: bool = False):
    """diffusers' WanPipeline with both experts (bench/subjects.py's peer: our tensors in diffusers' names, moved to
    the GPU with it) and the official boundary. `offload`: the experts stay on the host under diffusers' group
    offloading (one block at a time, copies on a side stream from page-locked memory: its fastest low-VRAM mode)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler, WanPipeline

    from subjects import Wan

    experts = [Wan.peer(ours, "cpu") for ours in modules]
    for e in experts:
        if offload:
            e.enable_group_offload(torch.device(device), torch.device("cpu"), "block_level", num_blocks_per_group=1,
                                   use_stream=device == "cuda")
        else:
            e.to(device)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=12.0)
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=scheduler, transformer=experts[0],
                       transformer_2=experts[1], boundary_ratio=0.875)
    pipe.set_progress_bar_config(disable=True)
    return pipe, FlowMatchEulerDiscreteScheduler


def run_peer(pipe, embeds, frames: int, height: int, width: int, steps: int, cfg: float) -> tuple[float, float]:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    sync()
    t0 = time.perf_counter()
    dev = pipe.transformer.device
    # as diffusers' own prompt encoding gives them (and OpenReel's model pads them): zero rows up to 512 tokens
    padded = [torch.nn.functional.pad(e, (0, 0, 0, 512 - e.shape[1])).to(dev, torch.bfloat16)
              for e in (embeds.positive, embeds.negative)]
    pipe(prompt_embeds=padded[0], negative_prompt_embeds=padded[1], height=height, width=width,
         num_frames=frames, num_inference_steps=steps, guidance_scale=cfg, guidance_scale_2=min(cfg, 3.0),
         output_type="latent", generator=torch.Generator(dev).manual_seed(1))
    sync()
    peak = torch.cuda.max_memory_allocated() / GIB if torch.cuda.is_available() else 0.0
    return time.perf_counter() - t0, peak


# ----------------------------------------------------------------------------------------- main
def main() -> None:
    from dit_speed import profile_forward

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="bench-out")
    parser.add_argument("--tiny", action="store_true", help="a CPU smoke test at tiny size")
    parser.add_argument("--compile", action="store_true", help="regional compile for ours and the peer")
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--skip-ours", action="store_true", help="the peer's rows only (a24: host memory for its "
                        "pinned copies is then free)")
    parser.add_argument("--layers", type=int, default=0, help="experts of fewer blocks, for a quick run (0: 40)")
    parser.add_argument("--profile", action="store_true", help="with (a): kernel time by kind against wall time of "
                        "one step (both guidance calls) of ours and of the peer")
    parser.add_argument("--attention", default="", help="an OpenReel attention backend for ours in (a), (b), (c), "
                        "e.g. flash4; with flash4 the peer runs diffusers' own FlashAttention 4 backend too")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS,
                        help="which configurations: a (resident), cache (MagCache (a) at 0 and (b)), a24 (the 24 GB "
                        "plan), c (the 4-step LoRA run), speed (4 steps exact vs the speed combination, on "
                        "FP8 copies of the experts built beside the bf16 ones); the peer runs (a) and (c) where asked")
    args = parser.parse_args()
    if "a24" in args.rows and len(args.rows) > 1 and not args.skip_peer:
        parser.error("the peer of a24 runs under group offloading: give a24 alone, or --skip-peer")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device, cfg, (frames, height, width), embeds = setting(args.tiny)
    if args.layers:
        cfg = dataclasses.replace(cfg, num_layers=args.layers)
    latent = empty_latent(latent_format("wan21"), width, height, frames)
    small = empty_latent(latent_format("wan21"), 64, 64, 5)
    report = {"date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name() if device == "cuda" else
              "cpu", "torch": torch.__version__, "size": "tiny" if args.tiny else "14B experts", "video":
              f"{width}x{height}x{frames}", "compile": args.compile, "layers": cfg.num_layers, "rows": {}}

    def record(name, **row):
        report["rows"][name] = row
        print(f"{name:58s} " + "  ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in row.items()), flush=True)
        (out / "wan22_video.json").write_text(json.dumps(report, indent=1))

    t0 = time.perf_counter()
    experts = [expert(cfg, salt, device) for salt in ("high", "low")]
    modules = [MODULES.get_or_build(h.weights_key, None) for h in experts]
    print(f"built two experts on the host in {time.perf_counter() - t0:.0f} s", flush=True)
    lora = out / "lora_rank64.safetensors"
    runtime.set_models_dir(out / "models")
    (out / "models" / "loras").mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(("distill_high.safetensors", "distill_low.safetensors")):
        write_lora(cfg, 64 if not args.tiny else 4, out / "models" / "loras" / name, seed=i)

    def compiled(h):
        return OpenReelCompile().apply(h, **COMPILE)[0] if args.compile else h

    def tuned(h):  # ours as rows (a) to (c) run: the attention backend asked for, then compiled if asked
        return compiled(OpenReelAttention().apply(h, args.attention, "fallback")[0] if args.attention else h)

    resident = [tuned(h) for h in experts]
    plan = OpenReelVRAMBudget().apply(experts[0], latent, 24.0 if not args.tiny else 0.01, False, experts[1])
    swapped = [tuned(plan["result"][0]), tuned(plan["result"][1])]
    report["plan_24gb"] = plan["result"][2]
    print(plan["result"][2], flush=True)
    lora_dits = [tuned(OpenReelLoRA().apply(h, name, 1.0, "unmerged")["result"][0])
                 for h, name in zip(experts, ("distill_high.safetensors", "distill_low.safetensors"))]
    coefficients = "1, 0" if args.tiny else ""  # a tiny model has no published calibration
    # The bookkeeping alone: a threshold no accumulated error stays under (the ratios are not exactly 1), so
    # nothing is skipped and, unlike threshold 0, no ratios are measured (that calibration costs norms per call).
    mag, mag_zero = ([OpenReelStepCache().apply(h, "magcache", threshold, 0, -1, True, 2, 0.2, coefficients)
                      ["result"][0] for h in resident] for threshold in (0.05, NEVER_SKIPS))

    calls_a = 2 * 40

    def per_video(run, dits) -> dict:
        """(a) priced from a 3-step and a 5-step run, each switching experts once (see the module docstring)."""
        three, _ = run(dits, 3)
        five, peak = run(dits, 5)
        per_call = (five - three) / 4
        fixed = three - 6 * per_call
        return dict(per_call_s=per_call, fixed_s=fixed, peak_gib=peak, video_s=fixed + calls_a * per_call)

    def ours(dits, steps):
        seconds, peak, _ = run_ours(dits, embeds, latent, steps, 4.0)
        return seconds, peak

    mine = set() if args.skip_ours else set(args.rows)
    # Warm-ups run at the real size and reach both experts (with shift 12 the third of 3 steps is below the
    # boundary), so compiling happens there and never inside a timed run.
    if "a" in mine or "cache" in mine:
        run_ours(resident, embeds, latent, 3, 4.0)
        a = per_video(ours, resident)
        record("ours (a) resident", **a)
        if args.profile:
            report["rows"]["ours (a) one step, profiled"] = profile_forward(
                lambda: run_ours(resident, embeds, latent, 1, 4.0), out / "profile_ours_a_step.txt")
    if "cache" in mine:
        zero = per_video(ours, mag_zero)
        record(f"ours (a) resident + MagCache at threshold {NEVER_SKIPS:g}: no skips (bookkeeping)", **zero,
               overhead_pct=100 * (zero["per_call_s"] / a["per_call_s"] - 1))
        counter = Calls(modules)
        run_ours(mag, embeds, small, 40, 4.0)
        counter.close()
        record("ours (b) MagCache 0.05 K2 (calls computed of 80 in a 40-step run)", calls=counter.count,
               video_s=zero["fixed_s"] + counter.count * zero["per_call_s"])
    if "a24" in mine:
        run_ours(swapped, embeds, latent, 3, 4.0)  # also makes the swapped blocks' page-locked copies, once
        record("ours (a) 24 GB plan", **per_video(ours, swapped))
    if "c" in mine:
        run_ours(lora_dits, embeds, latent, 4 if args.compile else 1, 1.0)
        seconds, peak, _ = run_ours(lora_dits, embeds, latent, 4, 1.0)
        record("ours (c) 4 steps CFG 1, unmerged rank-64 LoRA both experts (timed whole)", seconds=seconds,
               peak_gib=peak)
        if "a" in mine:
            report["rows"]["ratio (c)/(a) ours"] = seconds / a["video_s"]
    if "cm" in mine:
        merged = [tuned(OpenReelLoRA().apply(h, name, 1.0, "merged")["result"][0])
                  for h, name in zip(experts, ("distill_high.safetensors", "distill_low.safetensors"))]
        t0 = time.perf_counter()
        run_ours(merged, embeds, latent, 4 if args.compile else 1, 1.0)  # merges both experts, compiles
        warm = time.perf_counter() - t0
        seconds, peak, _ = run_ours(merged, embeds, latent, 4, 1.0)
        record("ours (cm) 4 steps CFG 1, rank-64 LoRA merged both experts (timed whole)", seconds=seconds,
               peak_gib=peak, warm_up_with_merge_s=warm)

    if "speed" in mine:
        run_ours(resident, embeds, latent, 4, 1.0)  # warm-up (compiles)
        exact_s, exact_peak, exact = run_ours(resident, embeds, latent, 4, 1.0)
        record("ours speed: 4 steps CFG 1, exact bf16", seconds=exact_s, peak_gib=exact_peak)
        fp8 = [expert(cfg, salt, device, "fp8_e4m3fn_channel") for salt in ("high", "low")]
        fast = [compiled(OpenReelAttention().apply(OpenReelFP8().apply(h, "as_loaded", "fp8_matmul", "per_row")[0],
                                                   "speed", "error")[0]) for h in fp8]
        run_ours(fast, embeds, latent, 4, 1.0)
        fast_s, fast_peak, got = run_ours(fast, embeds, latent, 4, 1.0)
        record("ours speed: 4 steps CFG 1, FP8 matmul + attention speed", seconds=fast_s, peak_gib=fast_peak,
               ratio_to_exact=fast_s / exact_s,
               latent_rel_diff=((got.float() - exact.float()).norm() / exact.float().norm()).item())

    if not args.skip_peer:
        for m in modules:
            m.to("cpu")
        torch.cuda.empty_cache() if device == "cuda" else None
        from subjects import use_flash4

        offload = "a24" in args.rows
        pipe, _ = peer_pipeline(modules, device, offload)
        for t in (pipe.transformer, pipe.transformer_2):
            if args.attention == "flash4":
                use_flash4(t)
            if args.compile:
                t.compile_repeated_blocks(fullgraph=True)
        if offload:
            try:
                run_peer(pipe, embeds, frames, height, width, 3, 4.0)  # warm-up, both experts
                compiled_note = "compiled" if args.compile else "eager"
            except Exception as err:  # fullgraph compile through the offload hooks: say so, compile what it can
                compiled_note = f"fullgraph compile failed ({type(err).__name__}), compiled with graph breaks"
                torch._dynamo.reset()
                for t in (pipe.transformer, pipe.transformer_2):
                    t.compile_repeated_blocks(fullgraph=False)
                run_peer(pipe, embeds, frames, height, width, 3, 4.0)
            record("diffusers (a) group offload (block level, streams)", note=compiled_note, **per_video(
                lambda _, steps: run_peer(pipe, embeds, frames, height, width, steps, 4.0), None))
        if "a" in args.rows:
            run_peer(pipe, embeds, frames, height, width, 3, 4.0)  # warm-up at the real size, both experts
            record("diffusers (a) both experts resident", **per_video(
                lambda _, steps: run_peer(pipe, embeds, frames, height, width, steps, 4.0), None))
            if args.profile:
                report["rows"]["diffusers (a) one step, profiled"] = profile_forward(
                    lambda: run_peer(pipe, embeds, frames, height, width, 1, 4.0), out / "profile_peer_a_step.txt")
    if not args.skip_peer and {"c", "cm"} & set(args.rows):
        def timed_peer(name, note):
            run_peer(pipe, embeds, frames, height, width, 4 if args.compile else 1, 1.0)
            seconds, peak = run_peer(pipe, embeds, frames, height, width, 4, 1.0)
            record(name, seconds=seconds, peak_gib=peak, note=note)

        try:
            t0 = time.perf_counter()
            for i, name in enumerate(("distill_high.safetensors", "distill_low.safetensors")):
                pipe.load_lora_weights(str(out / "models" / "loras" / name), adapter_name=f"d{i}",
                                       load_into_transformer_2=i == 1)
            loaded = f"LoRAs loaded in {time.perf_counter() - t0:.1f} s"
        except Exception as err:  # the peer's loader: say what failed, time its base speed instead
            loaded = f"diffusers could not load the LoRA pair ({type(err).__name__}: {err}); timed without it"
        if "c" in args.rows:
            timed_peer("diffusers (c) 4 steps CFG 1, LoRA unfused (timed whole)", loaded + ", unfused (PEFT layers)")
        if "cm" in args.rows:
            t0 = time.perf_counter()
            pipe.fuse_lora(components=["transformer", "transformer_2"], lora_scale=1.0)
            timed_peer("diffusers (cm) 4 steps CFG 1, LoRA fused (timed whole)",
                       f"{loaded}, fused in {time.perf_counter() - t0:.1f} s (its fastest mode)")
    print(json.dumps(report["rows"], indent=1))


ROWS = ("a", "cache", "a24", "c", "cm", "speed")
NEVER_SKIPS = 1e-9
COMPILE = {}  # filled from the compile node's defaults below

if __name__ == "__main__":
    spec = OpenReelCompile.INPUT_TYPES()
    COMPILE.update({k: v[1]["default"] for k, v in spec["required"].items() if k != "dit"})
    main()
