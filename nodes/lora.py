"""The LoRA node: a LoRA file from models/loras added to a DiT handle (chainable), with its coverage report."""
from __future__ import annotations

from .. import runtime
from ..handles import DiTHandle
from ..model_loaders.lora import LORA_PATCH, MODES, check, lora_spec
from .common import OpenReelNode, mappings

_MODE_TEXT = {"auto": "auto: merged into the weights, unmerged where they are fp8 or block swap is on (decided when "
                      "sampling)",
              "merged": "merged into the weights", "unmerged": "unmerged (added at run time)"}


class OpenReelLoRA(OpenReelNode):
    """Adds a LoRA from models/loras to a diffusion transformer (Wan2.1 / Wan2.2 / SkyReels-V2, HunyuanVideo):
    style LoRAs and the 4-step distillation LoRAs (LightX2V, Wan2.2-Lightning, rCM). Chain several nodes to stack
    LoRAs; for a Wan2.2 pair, use one per expert (each expert has its own LoRA file). ComfyUI / kohya, diffusers /
    PEFT and official layouts are read, full-rank diff / diff_b / diff_m deltas included. The model in memory is
    shared: changing or removing a LoRA restores the exact base weights, with no second copy of the model."""

    MODEL_FOLDER = "loras"  # where lora_name is looked for
    NODE_ID = "OpenReelLoRA"
    DISPLAY_NAME = "OpenReel LoRA"
    CATEGORY = "OpenReel/loaders"
    FUNCTION = "apply"
    RETURN_TYPES = ("OPENREEL_DIT", "STRING")
    RETURN_NAMES = ("dit", "report")
    OUTPUT_TOOLTIPS = ("The same DiT with this LoRA added after any it already had.",
                       "What the LoRA changes: keys matched and not matched, layers touched, layout and rank.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "dit": ("OPENREEL_DIT", {"tooltip": "The diffusion transformer (or one expert of a Wan2.2 pair)."}),
            "lora_name": (runtime.list_models("loras"), {"tooltip": "A LoRA file in models/loras."}),
            "strength": ("FLOAT", {
                "default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01,
                "tooltip": "How much of the LoRA to add: the change to each weight is strength × α/rank × up·down. "
                           "0 leaves the model exactly as it is."}),
            "mode": (list(MODES), {
                "default": "auto",
                "tooltip": "merged: added into the weights before sampling (no run-time cost; fp8 weights are "
                           "re-quantized). unmerged: the LoRA's small factors run beside each layer (no merge, "
                           "exact with fp8, streams with block swap, a little slower per step). auto: unmerged "
                           "for fp8 weights or with block swap, merged otherwise."}),
        }}

    @classmethod
    def IS_CHANGED(cls, lora_name, **_):
        """The file's size and time: a LoRA file replaced on disk is read again."""
        try:
            stat = runtime.model_path("loras", lora_name).stat()
        except Exception:   # the node itself reports a missing file
            return ""
        return f"{stat.st_mtime_ns}:{stat.st_size}"

    def apply(self, dit: DiTHandle, lora_name: str, strength: float, mode: str):
        spec = lora_spec(runtime.model_path("loras", lora_name), strength, mode)
        report = check(dit.spec, spec).report(f"strength {strength:g}, {_MODE_TEXT[mode]}")
        out = dit.with_patch(LORA_PATCH, tuple(dit.patch(LORA_PATCH, ())) + (spec,))
        return {"ui": {"text": [report]}, "result": (out, report)}


NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = mappings(OpenReelLoRA)
