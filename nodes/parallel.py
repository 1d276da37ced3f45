"""Multi-GPU node: a DiT (or a Wan2.2 expert pair) run by worker processes on several GPUs."""
from __future__ import annotations

import torch

from ..errors import InputError
from ..parallel.model import MULTI_GPU_PATCH, MultiGPU
from .common import OpenReelNode, mappings


def parse_devices(gpus: str, present: bool = True) -> tuple[str, ...]:
    """"0,1" → ("cuda:0", "cuda:1"); "cpu" entries run CPU processes (for tests, slow). `present`: also check that
    this machine has those GPUs (not when a workflow's form is checked: a template may come from a larger one)."""
    names = [g.strip() for g in gpus.split(",") if g.strip()]
    devices = tuple("cpu" if n == "cpu" else f"cuda:{n}" if n.isdigit() else n for n in names)
    if len(devices) < 2:
        raise InputError(f"gpus {gpus!r} names {len(devices)} device; this node needs two or more",
                         "list the GPUs to use, e.g. 0,1")
    bad = [d for d in devices if d != "cpu" and not (d.startswith("cuda:") and d[5:].isdigit())]
    if bad:
        raise InputError(f"gpus {gpus!r}: {', '.join(bad)} is not a GPU number", "list GPU numbers, e.g. 0,1")
    gpu = [d for d in devices if d != "cpu"]
    if len(set(gpu)) < len(gpu):
        raise InputError(f"gpus {gpus!r} names a GPU twice", "list each GPU once")
    missing = [d for d in gpu if present and int(d[5:]) >= torch.cuda.device_count()]
    if missing:
        raise InputError(f"gpus {gpus!r}: this machine has {torch.cuda.device_count()} GPUs, so "
                         f"{', '.join(missing)} {'does' if len(missing) == 1 else 'do'} not exist",
                         "list GPUs from 0 to the count − 1")
    return devices


class OpenReelMultiGPU(OpenReelNode):
    """Runs a DiT on several GPUs of this machine: one worker process per GPU loads the model once and keeps it
    across prompts. Every model call's video tokens are shared by the GPUs (sequence parallel: the same result as
    one GPU), and with classifier-free guidance the cond and uncond passes can go to different GPUs (CFG
    parallel). A Wan2.2 pair can keep one expert on each half of the GPUs, so nothing moves when the sampler
    switches. Put it last before the sampler (after LoRA, block swap, VRAM Budget or Step Cache, which then apply
    per GPU)."""

    NODE_ID = "OpenReelMultiGPU"
    DISPLAY_NAME = "OpenReel Multi-GPU"
    CATEGORY = "OpenReel/memory"
    FUNCTION = "apply"
    RETURN_TYPES = ("OPENREEL_DIT", "OPENREEL_DIT")
    RETURN_NAMES = ("dit", "dit_low_noise")
    OUTPUT_TOOLTIPS = ("The DiT, run by the GPUs' workers.", "The low-noise expert (empty when none was connected).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "dit": ("OPENREEL_DIT", {"tooltip": "The DiT to run on several GPUs (the high-noise expert of a pair)."}),
            "gpus": ("STRING", {"default": "0,1", "tooltip": "The GPUs to use, by number, comma separated. Any "
                                "count works; a count that divides the model's heads (Wan 14B: 40; HunyuanVideo: "
                                "24; Step-Video: 48) trades less between the GPUs than one that does not (then "
                                "each GPU gathers all keys and values)."}),
            "cfg_parallel": ("BOOLEAN", {"default": True, "tooltip": "With guidance, run the cond and uncond "
                                         "passes on different GPUs (each pass's tokens shared by half of them). "
                                         "Off: both passes share all GPUs, one after the other."}),
            "experts_apart": ("BOOLEAN", {"default": True, "tooltip": "Wan2.2 pairs: keep the high-noise expert "
                                          "on the first half of the GPUs and the low-noise one on the second half. "
                                          "Off: both on all GPUs (less memory per GPU, each switch reloads)."}),
        }, "optional": {
            "dit_low_noise": ("OPENREEL_DIT", {"tooltip": "The low-noise expert of a Wan2.2 pair."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, gpus: str = "0,1"):
        try:
            parse_devices(gpus, present=False)
        except InputError as err:  # before any model loads
            return f"{cls.DISPLAY_NAME}: {err}"
        return True

    def apply(self, dit, gpus: str, cfg_parallel: bool, experts_apart: bool, dit_low_noise=None):
        devices = parse_devices(gpus)
        ranks = tuple(range(len(devices)))
        if dit_low_noise is None:
            return (dit.with_patch(MULTI_GPU_PATCH, MultiGPU(devices, ranks, cfg_parallel)), None)
        if experts_apart and len(ranks) % 2:
            raise InputError(f"{len(ranks)} GPUs cannot be halved between two experts",
                             "use an even number of GPUs, or switch experts_apart off")
        half = len(ranks) // 2 if experts_apart else len(ranks)
        own = (ranks[:half], ranks[-half:])
        return tuple(h.with_patch(MULTI_GPU_PATCH, MultiGPU(devices, r, cfg_parallel))
                     for h, r in zip((dit, dit_low_noise), own))


NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = mappings(OpenReelMultiGPU)
