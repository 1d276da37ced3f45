"""OpenReel Step Cache: TeaCache, MagCache or EasyCache on a DiT (speed/step_cache), with the published calibration
of the detected model chosen automatically."""
from __future__ import annotations

from ..handles import DiTHandle
from ..model_loaders.core import module_of
from ..speed.step_cache import METHODS
from ..speed.step_cache.settings_text import describe, make_settings
from .common import OpenReelNode

_THRESHOLDS = ("Published settings: TeaCache Wan2.1 T2V-1.3B 0.05–0.08, 14B 0.14–0.2 (with use_ret_steps 0.1–0.2), "
               "I2V 0.13–0.3, HunyuanVideo 0.1 (1.6×) – 0.15 (2.1×); MagCache Wan2.1 0.12 (K 2–4) – 0.24 (K 6), "
               "Wan2.2 0.04–0.06 (K 2), HunyuanVideo 0.24 (K 6); EasyCache Wan2.1 0.05 (0.1 ≈ 2×, 0.2 ≈ 3×), "
               "HunyuanVideo 0.025 (ComfyUI's EasyCache node measures differently: its values do not carry over).")


class OpenReelStepCache(OpenReelNode):
    """Skips model calls whose result is predictable from the last computed one: TeaCache, MagCache or EasyCache.
    A skipped call adds the residual its blocks added last time (TeaCache, MagCache) or reuses the model's last
    output-minus-input (EasyCache), so it costs almost nothing; quality drops as the threshold rises. The published
    calibration of the detected model is used (Wan2.1 T2V/I2V, Wan2.2 pairs and TI2V-5B for MagCache,
    HunyuanVideo); EasyCache works on any model. Each expert of a Wan2.2 pair and each guidance branch keep their
    own state; after each run the sampler logs and shows how many calls reused the cache."""

    NODE_ID = "OpenReelStepCache"
    DISPLAY_NAME = "OpenReel Step Cache"
    CATEGORY = "OpenReel/memory"
    FUNCTION = "apply"
    RETURN_TYPES = ("OPENREEL_DIT",)
    RETURN_NAMES = ("dit",)
    OUTPUT_TOOLTIPS = ("The same model with the step cache; connect it to the sampler (for a Wan2.2 pair, put "
                       "one on each expert).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "dit": ("OPENREEL_DIT", {"tooltip": "The diffusion transformer to speed up."}),
                "method": (list(METHODS), {
                    "default": "magcache",
                    "tooltip": "teacache: accumulates how much one model input changed, rescaled by a polynomial "
                               "fitted per model. magcache: accumulates the error of reusing the residual from "
                               "magnitude ratios calibrated per model. easycache: predicts the output's change from "
                               "its measured rate while sampling; needs no calibration, works on any model."}),
                "threshold": ("FLOAT", {
                    "default": 0.1, "min": 0.0, "max": 5.0, "step": 0.005,
                    "tooltip": "How much accumulated change (the method's measure) a reuse may hide; higher is "
                               "faster and less faithful. 0 never skips (output identical to no cache). "
                               + _THRESHOLDS}),
                "start_step": ("INT", {
                    "default": 0, "min": 0, "max": 10000,
                    "tooltip": "Steps before this one are always computed (on top of each method's own first "
                               "steps). For diffusion forcing: per window, in its iterations."}),
                "end_step": ("INT", {
                    "default": -1, "min": -1, "max": 10000,
                    "tooltip": "Steps from this one on are always computed; -1: none (each method's own end "
                               "retention still applies)."}),
                "use_ret_steps": ("BOOLEAN", {
                    "default": True,
                    "tooltip": "TeaCache only: the retention-steps variant (the first 5 steps always computed, its "
                               "own coefficients; better quality and speed except for Wan T2V-1.3B). Off: the "
                               "first and last steps computed. HunyuanVideo has only the latter."}),
                "magcache_K": ("INT", {
                    "default": 2, "min": 1, "max": 50,
                    "tooltip": "MagCache only: the most calls skipped in a row (published 2; 4–6 for the faster "
                               "settings)."}),
                "retention": ("FLOAT", {
                    "default": 0.2, "min": 0.0, "max": 1.0, "step": 0.05,
                    "tooltip": "MagCache and EasyCache: the first fraction of the steps always computed (MagCache: "
                               "of each expert's steps). Published 0.2 (EasyCache on HunyuanVideo 0.1)."}),
            },
            "optional": {
                "coefficients": ("STRING", {
                    "default": "", "multiline": False,
                    "tooltip": "Instead of the published calibration. TeaCache: the rescaling polynomial, "
                               "comma-separated, highest order first. MagCache: the magnitude ratio of each step "
                               "from step 0, a row per branch separated by ';' (MagCache at threshold 0 measures "
                               "and logs them). Empty: the published one for the detected model."}),
            },
        }

    def apply(self, dit: DiTHandle, method: str, threshold: float, start_step: int, end_step: int,
              use_ret_steps: bool, magcache_K: int, retention: float, coefficients: str = ""):
        settings = make_settings(dit, module_of(dit), method, threshold, start_step, end_step, use_ret_steps,
                                 magcache_K, retention, coefficients)
        text = describe(dit, settings) + "\nEach run's report (calls that reused the cache, estimated speedup) " \
                                         "goes to the log and the sampler's progress text."
        return {"ui": {"text": [text]}, "result": (dit.with_patch("step_cache", settings),)}
