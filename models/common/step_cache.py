"""What a family publishes for step caches (speed/step_cache): calibrations measured on its models by the caches'
authors. A family adapter returns a `StepCacheProfile` from `DiTFamily.step_cache_profile`; the numbers live in
the family's own folder (models/<family>/step_cache.py).

- TeaCache rescales the relative L1 change of one model input between steps with a polynomial fitted per model;
  the input is what the network's `step_cache_signal(kind, x, *args)` returns from its first block list's inputs
  ("teacache": the input used without retention steps, "teacache_ret": with them).
- MagCache's magnitude ratios: per step, the mean over tokens of |residual of this step| / |residual of the step
  before| (the residual: the block stack's output minus its input), measured once per model.
- EasyCache needs nothing calibrated: it measures its rate while sampling.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# TeaCache's convention for the two inputs (TeaCache4Wan2.1: with retention steps the first 5 steps are always
# computed and none at the end; without, the first and the last): (signal, first steps, last steps) by use_ret_steps.
TEACACHE_RETENTION = {True: ("teacache_ret", 5, 0), False: ("teacache", 1, 1)}


@dataclass(frozen=True)
class TeaCacheCalibration:
    coefficients: tuple[float, ...]   # the rescaling polynomial, highest order first (numpy.poly1d's order)
    signal: str                       # the `step_cache_signal` kind it was fitted on
    first: int                        # steps always computed at the start of a run …
    last: int                         # … and at its end
    source: str = ""

    @classmethod
    def custom(cls, coefficients: tuple[float, ...], use_ret_steps: bool) -> "TeaCacheCalibration":
        signal, first, last = TEACACHE_RETENTION[use_ret_steps]
        return cls(tuple(coefficients), signal, first, last, "coefficients given")


@dataclass(frozen=True)
class MagCacheCalibration:
    ratios: tuple[tuple[float, ...], ...]   # one column per branch (conditional, unconditional), one ratio per step
                                            # of the calibration run from step 0 (1.0); interpolated to other counts
    experts: tuple[int, ...] | None = None  # the models of a run that use the cache (None: all of them)
    source: str = ""


@dataclass(frozen=True)
class StepCacheProfile:
    """Calibrations for one model (`model` names what they were measured on). `teacache`: by use_ret_steps.
    `joint_branches`: the published caches of this family run classifier-free guidance batched and track the
    batch as one (HunyuanVideo); otherwise each branch has its own state (Wan: conditional and unconditional)."""
    model: str = ""
    teacache: dict[bool, TeaCacheCalibration] = field(default_factory=dict)
    magcache: MagCacheCalibration | None = None
    joint_branches: bool = False


def interleaved(values: tuple[float, ...], branches: int = 2) -> tuple[tuple[float, ...], ...]:
    """Columns of ratios published per model call (branches interleaved, from the second step), step 0 as 1.0."""
    return tuple((1.0,) + tuple(values[b::branches]) for b in range(branches))


def nearest(values: tuple[float, ...], count: int) -> tuple[float, ...]:
    """`values` resampled to `count` entries by nearest index, as MagCache maps a calibration to another step
    count (round half to even, numpy's rule: Python's round)."""
    if count == len(values):
        return tuple(values)
    if count == 1:
        return (values[-1],)
    scale = (len(values) - 1) / (count - 1)
    return tuple(values[round(i * scale)] for i in range(count))
