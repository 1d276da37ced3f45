"""The official sampling defaults for each detected model (MODEL_FACTS §1.2 and §4; the official configs)."""
from __future__ import annotations

from dataclasses import dataclass

from ..handles import DiTSpec


@dataclass(frozen=True)
class SamplingDefaults:
    steps: int
    shift: float
    cfg: float                  # single model, or the high-noise expert of a pair
    cfg_low_noise: float        # the low-noise expert of a pair
    boundary: float             # σ/1000 switch point for pairs (t >= boundary·1000 → high-noise expert)
    fps: float
    source: str                 # which official recipe these come from


def defaults_for(spec: DiTSpec, pair: bool, width: int = 0, height: int = 0) -> SamplingDefaults:
    """Defaults for `spec`; `pair` means a Wan2.2 A14B high/low-noise expert pair. Size matters for Wan2.1 I2V."""
    v = spec.variant.rsplit("_", 1)[0]
    if pair and spec.task == "t2v":
        return SamplingDefaults(40, 12.0, 4.0, 3.0, 0.875, 16, "Wan2.2 T2V-A14B")
    if pair and spec.task == "i2v":
        return SamplingDefaults(40, 5.0, 3.5, 3.5, 0.900, 16, "Wan2.2 I2V-A14B")
    if v == "i2v":
        return SamplingDefaults(40, 5.0, 3.5, 3.5, 0.900, 16, "Wan2.2 I2V-A14B expert")
    if v == "ti2v":
        return SamplingDefaults(50, 5.0, 5.0, 5.0, 0.0, 24, "Wan2.2 TI2V-5B")
    if v == "flf2v":
        return SamplingDefaults(50, 16.0, 5.0, 5.0, 0.0, 16, "Wan2.1 FLF2V-14B")
    if v == "i2v_clip":  # the official generate.py uses shift 3.0 at 480p sizes, 5.0 otherwise
        shift = 3.0 if 0 < width * height <= 832 * 480 else 5.0
        return SamplingDefaults(40, shift, 5.0, 5.0, 0.0, 16, "Wan2.1 I2V-14B")
    if v == "df_fps":
        return SamplingDefaults(30, 8.0, 6.0, 6.0, 0.0, 24, "SkyReels-V2 DF")
    return SamplingDefaults(50, 5.0, 5.0, 5.0, 0.0, 16, "Wan2.1 T2V")
