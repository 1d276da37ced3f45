"""The skip rules of the three step caches, on plain numbers (one state per tracked branch), and their settings.

Each rule is given, per model call it tracks, whether the call is retained (must be computed: the method's own
retention steps, the user's window, an expert the calibration does not cover) and the one number the rule needs,
and says whether the call may reuse the cache. The wrapper (wrapper.py) measures the numbers, combines the wishes
of the branches in one batch (a call is skipped only when every branch may skip) and tells a rule that its wish was
overruled, which counts as a computed call.

- TeaCache (ali-vilab/TeaCache): the relative L1 change of a model input between consecutive calls of the branch,
  rescaled by the model's polynomial, is accumulated; the call is skipped while the sum stays under the threshold,
  and computed (sum back to 0) once it does not.
- MagCache (Zehong-Ma/MagCache): the calibrated magnitude ratio of each step multiplies an accumulated ratio; the
  error |1 - ratio| of each step is accumulated; skipped while that error is under the threshold and at most K
  calls in a row were skipped, else computed (ratio 1, error and count 0).
- EasyCache (H-EmbodVis/EasyCache, the paper's authors' code): with k, the rate of the model output's change to its
  input's change between the last two computed calls, each call adds
  k · mean|input change since the previous call| / mean|last computed output| to a sum; skipped while the sum stays
  under the threshold, else computed (sum back to 0). The positive branch decides; the other follows its step.
  ComfyUI's EasyCache node measures the input change since the last computed call, on every 8th pixel, so its
  thresholds are not these.
A threshold of 0 never skips (every number is still measured).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

METHODS = ("teacache", "magcache", "easycache")


@dataclass(frozen=True)
class StepCacheSettings:
    """Value of the "step_cache" patch. `start_step` / `end_step`: only steps start_step ≤ step < end_step may be
    skipped (end_step -1: to the end), on top of each method's own retention. `use_ret_steps`: TeaCache's variant.
    `magcache_k`: MagCache's most calls skipped in a row. `retention`: the first fraction of a run's steps that
    MagCache (of each expert's steps) and EasyCache always compute. `coefficients`: given instead of the published
    calibration: TeaCache's polynomial (one row), or MagCache's ratios per step (one row per branch column).
    `family` and `spec` find the published calibration (models/*/step_cache.py)."""
    method: str
    threshold: float
    start_step: int = 0
    end_step: int = -1
    use_ret_steps: bool = True
    magcache_k: int = 2
    retention: float = 0.2
    coefficients: tuple[tuple[float, ...], ...] = ()
    family: str = ""
    spec: Any = None

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"step cache method must be one of {METHODS}, not {self.method!r}")

    def in_window(self, step: int) -> bool:
        return step >= self.start_step and (self.end_step < 0 or step < self.end_step)

    @property
    def branches_decide_alone(self) -> bool:
        """Whether a call of one guidance branch decides from that branch's own history (TeaCache, MagCache), or
        follows its step's decision made by the conditional branch (EasyCache)."""
        return self.method != "easycache"


def polynomial(coefficients: tuple[float, ...], x: float) -> float:
    """numpy.poly1d(coefficients)(x): highest order first, by Horner's rule."""
    value = 0.0
    for c in coefficients:
        value = value * x + c
    return value


class TeaCacheRule:
    def __init__(self, coefficients: tuple[float, ...], threshold: float):
        self.coefficients, self.threshold = coefficients, threshold
        self.accumulated = 0.0

    def decide(self, retained: bool, distance: float | None) -> bool:
        """`distance`: the relative L1 change of the input since the branch's previous call (None: no previous
        call to compare with, which computes)."""
        if retained or distance is None:
            self.accumulated = 0.0
            return False
        self.accumulated += polynomial(self.coefficients, distance)
        if self.threshold > 0 and self.accumulated < self.threshold:
            return True
        self.accumulated = 0.0
        return False

    def overruled(self) -> None:
        self.accumulated = 0.0


class MagCacheRule:
    def __init__(self, threshold: float, k: int):
        self.threshold, self.k = threshold, k
        self.ratio, self.error, self.skipped = 1.0, 0.0, 0

    def decide(self, retained: bool, ratio: float) -> bool:
        """`ratio`: the calibrated magnitude ratio of this call's step and branch. Retained calls leave the
        accumulators as they are (as published)."""
        if retained:
            return False
        self.ratio *= ratio
        self.skipped += 1
        self.error += abs(1.0 - self.ratio)
        if self.threshold > 0 and self.error < self.threshold and self.skipped <= self.k:
            return True
        self.overruled()
        return False

    def overruled(self) -> None:
        self.ratio, self.error, self.skipped = 1.0, 0.0, 0


class EasyCacheRule:
    def __init__(self, threshold: float):
        self.threshold = threshold
        self.accumulated = 0.0

    def decide(self, retained: bool, change: float | None) -> bool:
        """`change`: k · input change / output norm (None: k or a previous call not known yet, which computes)."""
        if retained:
            self.accumulated = 0.0
            return False
        if change is None:
            return False
        self.accumulated += change
        if self.threshold > 0 and self.accumulated < self.threshold:
            return True
        self.accumulated = 0.0
        return False

    def overruled(self) -> None:
        self.accumulated = 0.0
