"""What a step-cache setting means for a model, in words, and coefficients typed by a person: checked before any
model runs (the OpenReel Step Cache node is a thin face on these)."""
from __future__ import annotations

import torch.nn as nn

from ...errors import InputError
from ...handles import DiTHandle
from ...models.registry import family_of
from .rules import METHODS, StepCacheSettings
from .wrapper import TITLES


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


def make_settings(dit: DiTHandle, module: nn.Module, method: str, threshold: float, start_step: int, end_step: int,
                  use_ret_steps: bool, magcache_K: int, retention: float, coefficients: str = "") -> StepCacheSettings:
    """The node's values as settings for `dit` (whose network is `module`), or an InputError saying what to change."""
    if method not in METHODS:
        raise InputError(f"unknown step cache method {method!r}", f"choose one of {', '.join(METHODS)}")
    if threshold < 0:
        raise InputError(f"threshold {threshold} is negative", "use 0 (never skip) or more")
    if 0 <= end_step <= start_step:
        raise InputError(f"end_step {end_step} is not after start_step {start_step}: nothing could be skipped",
                         "set end_step to -1 or past start_step")
    if method == "teacache" and not hasattr(module, "step_cache_signal"):
        raise InputError(f"TeaCache compares one of the model's inputs from step to step, and "
                         f"{dit.spec.description} exposes none", "use EasyCache, which needs nothing from the "
                         "model, or MagCache with ratios")
    return StepCacheSettings(method, float(threshold), int(start_step), int(end_step), bool(use_ret_steps),
                             int(magcache_K), float(retention), parse_coefficients(coefficients, method),
                             dit.spec.family, dit.spec)
