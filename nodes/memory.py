"""Memory nodes: block swap (and token chunks) by hand, or a VRAM budget the planner turns into swap + precision +
token chunks + CFG batching."""
from __future__ import annotations

from ..errors import InputError
from ..memory.block_swap import BlockSwap
from ..memory.planner import GIB, auto_budget, plan
from ..memory.token_chunks import TOKEN_CHUNK, check_token_chunk, supports_token_chunks
from ..model_loaders.core import module_of
from .common import OpenReelNode, mappings

MAX_BLOCKS = 128  # above every supported model (Wan 14B: 40); each model refuses more than it has, saying how many
MAX_TOKEN_CHUNK = 1 << 20


class OpenReelBlockSwap(OpenReelNode):
    """Keeps the last transformer blocks of a DiT in host (CPU) memory and streams each to the GPU while the
    block before it computes, so a model larger than your VRAM still runs, with bitwise the same result. Set it
    per expert for Wan2.2 A14B pairs. Optionally runs the blocks' token-wise layers in chunks of tokens, which
    lowers the activations (HunyuanVideo at 544p × 129 frames: predicted 3.9 instead of 8.5 GiB). The OpenReel VRAM
    Budget node can choose both for you."""

    NODE_ID = "OpenReelBlockSwap"
    DISPLAY_NAME = "OpenReel Block Swap"
    CATEGORY = "OpenReel/memory"
    FUNCTION = "apply"
    RETURN_TYPES = ("OPENREEL_DIT",)
    RETURN_NAMES = ("dit",)
    OUTPUT_TOOLTIPS = ("The same DiT, running with this block swap.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "dit": ("OPENREEL_DIT", {"tooltip": "The diffusion transformer to run with block swap."}),
            "blocks_to_swap": ("INT", {
                "default": 20, "min": 0, "max": MAX_BLOCKS,
                "tooltip": "How many of the last blocks live in host RAM instead of VRAM (Wan 14B has 40 blocks "
                           "of 0.7 GB in bf16, 0.35 GB in fp8; 1.3B and 5B have 30). Swapping N blocks saves N−2 "
                           "blocks of VRAM (two are always on the GPU in turn) and needs their size in host RAM. "
                           "Copies overlap compute, so the cost is small at high resolution or many frames and "
                           "grows at low resolution or on slow PCIe. 0 = off. The VRAM Budget node picks this "
                           "number from a budget."}),
            "offload_embeddings": ("BOOLEAN", {
                "default": False,
                "tooltip": "Also keep the text and image embedders in host RAM (about 0.1 GB for 14B), copied to "
                           "the GPU for their one use per model call."}),
        }, "optional": {
            "token_chunks": ("INT", {
                "default": 0, "min": 0, "max": MAX_TOKEN_CHUNK, "step": 256,
                "tooltip": "Run the blocks' token-wise layers (projections, norms, MLPs) over chunks of this many "
                           "tokens: fewer activations in VRAM for a few percent more time, the same values up to "
                           "rounding. HunyuanVideo at 544p × 129 frames (67,320 tokens) is predicted to need 3.9 "
                           "instead of 8.5 GiB; Wan 1.3B and 5B save 20–30%, Wan 14B nothing (its attention "
                           f"peaks higher). 0 = off; {TOKEN_CHUNK} is what the VRAM Budget node uses."}),
        }}

    def apply(self, dit, blocks_to_swap: int, offload_embeddings: bool, token_chunks: int = 0):
        module = module_of(dit)
        count = len(module.all_blocks())
        if blocks_to_swap > count:
            raise InputError(f"blocks_to_swap is {blocks_to_swap} but this model has {count} blocks",
                             f"choose 0 to {count}")
        if check_token_chunk(token_chunks) and not supports_token_chunks(module):
            raise InputError(f"{dit.spec.description} cannot run in token chunks", "set token_chunks to 0")
        dit = dit.with_patch("block_swap", BlockSwap(blocks_to_swap, offload_embeddings))
        return (dit.with_patch("token_chunks", token_chunks),)


class OpenReelVRAMBudget(OpenReelNode):
    """Fits a DiT (or a Wan2.2 expert pair) into a VRAM budget for this latent: keeps everything resident if it
    fits, else runs the token-wise layers in chunks of tokens (where that lowers the activations), else stores
    weights in fp8 (if allowed), else swaps the fewest blocks to host memory; CFG runs batched where that fits and
    the calls are small enough to gain from it (under 8,192 tokens; larger calls fill the GPU alone).
    Shows the plan and the predicted peak before sampling, and says so plainly when nothing fits. A Step Cache
    (TeaCache, MagCache) connected before it has its residuals counted in."""

    NODE_ID = "OpenReelVRAMBudget"
    DISPLAY_NAME = "OpenReel VRAM Budget"
    CATEGORY = "OpenReel/memory"
    FUNCTION = "apply"
    RETURN_TYPES = ("OPENREEL_DIT", "OPENREEL_DIT", "STRING")
    RETURN_NAMES = ("dit", "dit_low_noise", "plan")
    OUTPUT_TOOLTIPS = ("The DiT with the plan applied.",
                       "The low-noise expert with its own plan (empty when none was connected).",
                       "The plan and the predicted peak VRAM, as text.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "dit": ("OPENREEL_DIT", {"tooltip": "The DiT to fit (the high-noise expert of a Wan2.2 pair)."}),
                "latent": ("LATENT", {"tooltip": "The latent you will sample: its size sets the activations."}),
                "budget_gb": ("FLOAT", {
                    "default": 0.0, "min": 0.0, "max": 1024.0, "step": 0.5,
                    "tooltip": "VRAM the sampler may use, in GiB. 0 = auto: what is free now (plus what these "
                               "models already hold) minus a safety margin."}),
                "allow_fp8": ("BOOLEAN", {
                    "default": False,
                    "tooltip": "Allow storing the weights in fp8 (scaled) when they do not fit: half the memory "
                               "and half the bytes to swap, at a small cost in precision. Off: only block swap "
                               "is used, which changes nothing in the result."}),
            },
            "optional": {
                "dit_low_noise": ("OPENREEL_DIT", {
                    "tooltip": "The low-noise expert of a Wan2.2 pair; planned on its own, since only one expert "
                               "is on the GPU at a time."}),
            },
        }

    def apply(self, dit, latent: dict, budget_gb: float, allow_fp8: bool, dit_low_noise=None):
        handles = [dit] + ([dit_low_noise] if dit_low_noise is not None else [])
        modules = [module_of(h) for h in handles]
        budget = int(budget_gb * GIB) if budget_gb > 0 else auto_budget(modules)
        shape = tuple(latent["samples"].shape)
        plans = [plan(h, m, shape, budget, allow_fp8=allow_fp8) for h, m in zip(handles, modules)]
        text = plans[0].explanation
        if len(plans) == 2:
            text = f"High-noise expert — {text}\n\nLow-noise expert — {plans[1].explanation}"
        outputs = [p.apply(h) for p, h in zip(plans, handles)]
        low = outputs[1] if len(outputs) == 2 else None
        return {"ui": {"text": [text]}, "result": (outputs[0], low, text)}


NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = mappings(OpenReelBlockSwap, OpenReelVRAMBudget)
