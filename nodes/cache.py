"""OpenReel Step Cache: TeaCache, MagCache or EasyCache on a DiT (speed/step_cache), with the published calibration
of the detected model chosen automatically."""
from __future__ import annotations

from ..errors import InputError
from ..handles import DiTHandle
from ..model_loaders.core import module_of
from ..models.registry import family_of
from ..speed.step_cache import METHODS, StepCacheSettings
from ..speed.step_cache.wrapper import TITLES
from .common import OpenReelNode

_THRESHOLDS = ("Published settings: TeaCache Wan2.1 T2V-1.3B 0.05–0.08, 14B 0.14–0.2 (with use_ret_steps 0.1–0.2), "
               "I2V 0.13–0.3, HunyuanVideo 0.1 (1.6×) – 0.15 (2.1×); MagCache Wan2.1 0.12 (K 2–4) – 0.24 (K 6), "
               "Wan2.2 0.04–0.06 (K 2), HunyuanVideo 0.24 (K 6); EasyCache Wan2.1 0.05 (0.1 ≈ 2×, 0.2 ≈ 3×), "
               "HunyuanVideo 0.025 (ComfyUI's EasyCache node measures differently: its values do not carry over).")


def parse_coefficients(text: str, method: str) -> tuple[tuple[float, ...], ...]:
    """Rows separated by ';', numbers by ','. TeaCache: one row (its polynomial, highest order first); MagCache:
    one ratio per step from step 0, one row per branch (conditional; unconditional)."""
    if not text.strip():
        return ()
    try:
        rows = tuple(tuple(float(v) for v in row.split(",") if v.strip()) for row in text.split(";") if row.strip())
    except ValueError as err:
        raise InputError(f"coefficients {text[:60]!r} are not comma-separated numbers ({err})",
                         "write them as e.g. 1.2e3, -4.5, 0.1") from err
    if method == "easycache":
        raise InputError("EasyCache takes no coefficients (it measures its rate while sampling)",
                         "clear coefficients")
    if method == "teacache" and (len(rows) != 1 or len(rows[0]) < 2):
        raise InputError("TeaCache's coefficients are one polynomial (at least two numbers, highest order first)",
                         "give one comma-separated row")
    if method == "magcache" and (len(rows) > 2 or any(len(r) < 2 for r in rows)):
        raise InputError("MagCache's coefficients are its ratios per step, one row per guidance branch (at most "
                         "two, separated by ';')", "give one or two comma-separated rows")
    return rows


def describe(dit: DiTHandle, settings: StepCacheSettings) -> str:
    """The calibration the model will use, single or as one of a pair; an InputError when there is none."""
    method, title = settings.method, TITLES[settings.method]
    lines = [f"{title}, threshold {settings.threshold:g}" + (" (never skips)" if settings.threshold <= 0 else "")]
    if method == "easycache":
        return "\n".join(lines + ["EasyCache needs no calibration: it measures its rate while sampling."])
    if settings.coefficients:
        return "\n".join(lines + ["Coefficients given: the published ones are not used."])
    family = family_of(dit.spec)
    found = []
    for pair in (False, True):
        profile = family.step_cache_profile(dit.spec, None, pair)
        calibration = profile.teacache.get(settings.use_ret_steps) if method == "teacache" else profile.magcache
        where = "in a pair of experts" if pair else "as a single model"
        if calibration is not None:
            found.append(f"{where}: {profile.model} ({calibration.source})")
        elif profile.model:
            found.append(f"none {where} ({profile.model}: use EasyCache or give coefficients there)")
    if not any(line.startswith(("as a", "in a")) for line in found):
        other = ", or switch use_ret_steps" if method == "teacache" else ""
        raise InputError(f"{title} has no published calibration for {dit.spec.description}",
                         f"use EasyCache, which needs no calibration{other}; or give coefficients")
    return "\n".join(lines + ["Published calibration " + "; ".join(found) + "."])


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
        if method not in METHODS:
            raise InputError(f"unknown step cache method {method!r}", f"choose one of {', '.join(METHODS)}")
        if threshold < 0:
            raise InputError(f"threshold {threshold} is negative", "use 0 (never skip) or more")
        if 0 <= end_step <= start_step:
            raise InputError(f"end_step {end_step} is not after start_step {start_step}: nothing could be skipped",
                             "set end_step to -1 or past start_step")
        if method == "teacache" and not hasattr(module_of(dit), "step_cache_signal"):
            raise InputError(f"TeaCache compares one of the model's inputs from step to step, and "
                             f"{dit.spec.description} exposes none", "use EasyCache, which needs nothing from the "
                             "model, or MagCache with ratios")
        settings = StepCacheSettings(method, float(threshold), int(start_step), int(end_step), bool(use_ret_steps),
                                     int(magcache_K), float(retention), parse_coefficients(coefficients, method),
                                     dit.spec.family, dit.spec)
        text = describe(dit, settings) + "\nEach run's report (calls that reused the cache, estimated speedup) " \
                                         "goes to the log and the sampler's progress text."
        return {"ui": {"text": [text]}, "result": (dit.with_patch("step_cache", settings),)}
