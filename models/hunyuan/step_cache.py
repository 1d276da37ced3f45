"""The published step-cache calibrations of HunyuanVideo (see models/common/step_cache.py), as numbers.

Sources (read for the numbers only):
- TeaCache: ali-vilab/TeaCache @7c10efc, TeaCache4HunyuanVideo/teacache_sample_video.py: fitted on the first double
  block's modulated image input; the first and the last step always computed; no retention-steps variant.
- MagCache: Zehong-Ma/MagCache @df81cb1, MagCache4HunyuanVideo/magcache_sample_video.py: ratios per step of a
  50-step run at 720p and at 544p (chosen by the video's height there; here by the nearer pixel count).
The official sampler runs classifier-free guidance (when used at all) as one batch, which both caches track as one.
"""
from __future__ import annotations

import math

from ...handles import DiTSpec
from ..common.step_cache import MagCacheCalibration, StepCacheProfile, TeaCacheCalibration
from .latents import HUNYUAN_LATENT

_TEA = TeaCacheCalibration((7.33226126e+02, -4.01131952e+02, 6.75869174e+01, -3.14987800e+00, 9.61237896e-02),
                           "teacache", 1, 1, "ali-vilab/TeaCache TeaCache4HunyuanVideo")

# MagCache magnitude ratios per step from the second step on.
_MAG_720P = (  # 49 values
    1.0754, 1.27807, 1.11596, 1.09504, 1.05188, 1.00844, 1.05779, 1.00657, 1.04142, 1.03101, 1.00679, 1.02556,
    1.00908, 1.06949, 1.05438, 1.02214, 1.02321, 1.03019, 1.00779, 1.03381, 1.01886, 1.01161, 1.02968, 1.00544,
    1.02822, 1.00689, 1.02119, 1.0105, 1.01044, 1.01572, 1.02972, 1.0094, 1.02368, 1.0226, 0.98965, 1.01588,
    1.02146, 1.0018, 1.01687, 0.99436, 1.00283, 1.01139, 0.97122, 0.98251, 0.94513, 0.97656, 0.90943, 0.85703,
    0.75456,
)
_MAG_544P = (  # 49 values
    1.06971, 1.29073, 1.11245, 1.09596, 1.05233, 1.01415, 1.05672, 1.00848, 1.03632, 1.02974, 1.00984, 1.03028,
    1.00681, 1.06614, 1.05022, 1.02592, 1.01776, 1.02985, 1.00726, 1.03727, 1.01502, 1.00992, 1.03371, 0.9976,
    1.02742, 1.0093, 1.01869, 1.00815, 1.01461, 1.01152, 1.03082, 1.0061, 1.02162, 1.01999, 0.99063, 1.01186,
    1.0217, 0.99947, 1.01711, 0.9904, 1.00258, 1.00878, 0.97039, 0.97686, 0.94315, 0.97728, 0.91154, 0.86139,
    0.76592,
)

_AREA_544P, _AREA_720P = 960 * 544, 1280 * 720
_MAG = "Zehong-Ma/MagCache MagCache4HunyuanVideo"


def hunyuan_step_cache_profile(spec: DiTSpec, latent_shape: tuple[int, ...] | None, pair: bool) -> StepCacheProfile:
    """TeaCache's coefficients and MagCache's ratios (720p, or 544p for videos nearer 960×544) of HunyuanVideo T2V."""
    if pair:
        return StepCacheProfile()
    large = True
    if latent_shape is not None:
        area = latent_shape[-1] * latent_shape[-2] * HUNYUAN_LATENT.spatial_stride ** 2
        large = math.log(area) > (math.log(_AREA_544P) + math.log(_AREA_720P)) / 2
    res = "720p" if large else "544p"
    name = f"HunyuanVideo T2V {res}" if latent_shape is not None else "HunyuanVideo T2V (MagCache: 720p, or 544p " \
                                                                      "for videos nearer 960×544)"
    magcache = MagCacheCalibration(((1.0,) + (_MAG_720P if large else _MAG_544P),), None, f"{_MAG} ({res}, 50 steps)")
    return StepCacheProfile(name, {False: _TEA}, magcache, joint_branches=True)
