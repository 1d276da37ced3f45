"""The published step-cache calibrations of Wan models (see models/common/step_cache.py), as numbers.

Sources (read for the numbers only):
- TeaCache: ali-vilab/TeaCache @7c10efc, TeaCache4Wan2.1/teacache_generate.py (the same coefficients are built into
  SkyReels-V2's transformer.py `initialize_teacache`, which uses the I2V ones for its I2V models of any size).
  Fitted on `e` (the time embedding) without retention steps and on `e0` (the time projection, the blocks'
  modulation input) with them.
- MagCache: Zehong-Ma/MagCache @df81cb1, MagCache4Wan2.1/magcache_generate.py (T2V 1.3B / 14B at 50 steps, I2V-14B
  480P / 720P at 40 steps) and MagCache4Wan2.2/magcache_generate.py (T2V-A14B and I2V-A14B at 40 steps over both
  experts; the I2V pair caches only the low-noise expert; TI2V-5B at 50 steps, its text-to-video calibration: the
  image-to-video one differs from it by under 0.5%). Published per model call, conditional and unconditional
  calls interleaved, from the second step (the first step's ratios are 1.0).
"""
from __future__ import annotations

import math

from ...handles import DiTSpec
from ...latents import latent_format
from ..common.step_cache import MagCacheCalibration, StepCacheProfile, TeaCacheCalibration, interleaved

_TEA = "ali-vilab/TeaCache TeaCache4Wan2.1"
_MAG21 = "Zehong-Ma/MagCache MagCache4Wan2.1"
_MAG22 = "Zehong-Ma/MagCache MagCache4Wan2.2"

# TeaCache polynomials, highest order first: (with retention steps, without).
_TEA_T2V_1_3B = ((-5.21862437e+04, 9.23041404e+03, -5.28275948e+02, 1.36987616e+01, -4.99875664e-02),
                 (2.39676752e+03, -1.31110545e+03, 2.01331979e+02, -8.29855975e+00, 1.37887774e-01))
_TEA_T2V_14B = ((-3.03318725e+05, 4.90537029e+04, -2.65530556e+03, 5.87365115e+01, -3.15583525e-01),
                (-5784.54975374, 5449.50911966, -1811.16591783, 256.27178429, -13.02252404))
_TEA_I2V_480P = ((2.57151496e+05, -3.54229917e+04, 1.40286849e+03, -1.35890334e+01, 1.32517977e-01),
                 (-3.02331670e+02, 2.23948934e+02, -5.25463970e+01, 5.87348440e+00, -2.01973289e-01))
_TEA_I2V_720P = ((8.10705460e+03, 2.13393892e+03, -3.72934672e+02, 1.66203073e+01, -4.17769401e-02),
                 (-114.36346466, 65.26524496, -18.82220707, 4.91518089, -0.23412683))

# MagCache magnitude ratios per model call (conditional, unconditional, …) from the second step on.
_MAG_T2V_14B = (  # 98 values
    1.02504, 1.03017, 1.00025, 1.00251, 0.9985, 0.99962, 0.99779, 0.99771, 0.9966, 0.99658, 0.99482, 0.99476,
    0.99467, 0.99451, 0.99664, 0.99656, 0.99434, 0.99431, 0.99533, 0.99545, 0.99468, 0.99465, 0.99438, 0.99434,
    0.99516, 0.99517, 0.99384, 0.9938, 0.99404, 0.99401, 0.99517, 0.99516, 0.99409, 0.99408, 0.99428, 0.99426,
    0.99347, 0.99343, 0.99418, 0.99416, 0.99271, 0.99269, 0.99313, 0.99311, 0.99215, 0.99215, 0.99218, 0.99215,
    0.99216, 0.99217, 0.99163, 0.99161, 0.99138, 0.99135, 0.98982, 0.9898, 0.98996, 0.98995, 0.9887, 0.98866,
    0.98772, 0.9877, 0.98767, 0.98765, 0.98573, 0.9857, 0.98501, 0.98498, 0.9838, 0.98376, 0.98177, 0.98173,
    0.98037, 0.98035, 0.97678, 0.97677, 0.97546, 0.97543, 0.97184, 0.97183, 0.96711, 0.96708, 0.96349, 0.96345,
    0.95629, 0.95625, 0.94926, 0.94929, 0.93964, 0.93961, 0.92511, 0.92504, 0.90693, 0.90678, 0.8796, 0.87945,
    0.86111, 0.86189,
)
_MAG_T2V_1_3B = (  # 98 values
    1.0124, 1.02213, 1.00166, 1.0041, 0.99791, 1.00061, 0.99682, 0.99762, 0.99634, 0.99685, 0.99567, 0.99586,
    0.99416, 0.99422, 0.99578, 0.99575, 0.9957, 0.99563, 0.99511, 0.99506, 0.99535, 0.99531, 0.99552, 0.99549,
    0.99541, 0.99539, 0.9954, 0.99536, 0.99489, 0.99485, 0.99518, 0.99514, 0.99484, 0.99478, 0.99481, 0.99479,
    0.99415, 0.99413, 0.99419, 0.99416, 0.99396, 0.99393, 0.99388, 0.99386, 0.99349, 0.99349, 0.99309, 0.99304,
    0.9927, 0.9927, 0.99228, 0.99226, 0.99171, 0.9917, 0.99137, 0.99135, 0.99068, 0.99063, 0.99005, 0.99003,
    0.98944, 0.98942, 0.98849, 0.98849, 0.98758, 0.98757, 0.98644, 0.98643, 0.98504, 0.98503, 0.9836, 0.98359,
    0.98202, 0.98201, 0.97977, 0.97978, 0.97717, 0.97718, 0.9741, 0.97411, 0.97003, 0.97002, 0.96538, 0.96541,
    0.9593, 0.95933, 0.95086, 0.95089, 0.94013, 0.94019, 0.92402, 0.92414, 0.90241, 0.9026, 0.86821, 0.86868,
    0.81838, 0.81939,
)
_MAG_I2V_480P = (  # 78 values
    0.98783, 0.98993, 0.97559, 0.97593, 0.98311, 0.98319, 0.98202, 0.98225, 0.9888, 0.98878, 0.98762, 0.98759,
    0.98957, 0.98971, 0.99052, 0.99043, 0.99383, 0.99384, 0.98857, 0.9886, 0.99065, 0.99068, 0.98845, 0.98847,
    0.99057, 0.99057, 0.98957, 0.98961, 0.98601, 0.9861, 0.98823, 0.98823, 0.98756, 0.98759, 0.98808, 0.98814,
    0.98721, 0.98724, 0.98571, 0.98572, 0.98543, 0.98544, 0.98157, 0.98165, 0.98411, 0.98413, 0.97952, 0.97953,
    0.98149, 0.9815, 0.9774, 0.97742, 0.97825, 0.97826, 0.97355, 0.97361, 0.97085, 0.97087, 0.97056, 0.97055,
    0.96588, 0.96587, 0.96113, 0.96124, 0.9567, 0.95681, 0.94961, 0.94969, 0.93973, 0.93988, 0.93217, 0.93224,
    0.91878, 0.91896, 0.90955, 0.90954, 0.92617, 0.92616,
)
_MAG_I2V_720P = (  # 78 values
    0.99428, 0.99498, 0.98588, 0.98621, 0.98273, 0.98281, 0.99018, 0.99023, 0.98911, 0.98917, 0.98646, 0.98652,
    0.99454, 0.99456, 0.9891, 0.98909, 0.99124, 0.99127, 0.99102, 0.99103, 0.99215, 0.99212, 0.99515, 0.99515,
    0.99576, 0.99572, 0.99068, 0.99072, 0.99097, 0.99097, 0.99166, 0.99169, 0.99041, 0.99042, 0.99201, 0.99198,
    0.99101, 0.99101, 0.98599, 0.98603, 0.98845, 0.98844, 0.98848, 0.98851, 0.98862, 0.98857, 0.98718, 0.98719,
    0.98497, 0.98497, 0.98264, 0.98263, 0.98389, 0.98393, 0.97938, 0.9794, 0.97535, 0.97536, 0.97498, 0.97499,
    0.973, 0.97301, 0.96827, 0.96828, 0.96261, 0.96263, 0.95335, 0.9534, 0.94649, 0.94655, 0.93397, 0.93414,
    0.91636, 0.9165, 0.89088, 0.89109, 0.8679, 0.86768,
)
_MAG_A14B_T2V = (  # 78 values
    1.00124, 1.00155, 0.99822, 0.99851, 0.99696, 0.99687, 0.99703, 0.99732, 0.9966, 0.99679, 0.99602, 0.99658,
    0.99578, 0.99664, 0.99484, 0.9949, 0.99633, 0.996, 0.99659, 0.99683, 0.99534, 0.99549, 0.99584, 0.99577,
    0.99681, 0.99694, 0.99563, 0.99554, 0.9944, 0.99473, 0.99594, 0.9964, 0.99466, 0.99461, 0.99453, 0.99481,
    0.99389, 0.99365, 0.99391, 0.99406, 0.99354, 0.99361, 0.99283, 0.99278, 0.99268, 0.99263, 0.99057, 0.99091,
    0.99125, 0.99126, 0.65523, 0.65252, 0.98808, 0.98852, 0.98765, 0.98736, 0.9851, 0.98535, 0.98311, 0.98339,
    0.9805, 0.9806, 0.97776, 0.97771, 0.97278, 0.97286, 0.96731, 0.96728, 0.95857, 0.95855, 0.94385, 0.94385,
    0.92118, 0.921, 0.88108, 0.88076, 0.80263, 0.80181,
)
_MAG_TI2V_5B = (  # 98 values
    0.99505, 0.99389, 0.99441, 0.9957, 0.99558, 0.99551, 0.99499, 0.9945, 0.99534, 0.99548, 0.99468, 0.9946,
    0.99463, 0.99458, 0.9946, 0.99453, 0.99408, 0.99404, 0.9945, 0.99441, 0.99409, 0.99398, 0.99403, 0.99397,
    0.99382, 0.99377, 0.99349, 0.99343, 0.99377, 0.99378, 0.9933, 0.99328, 0.99303, 0.99301, 0.99217, 0.99216,
    0.992, 0.99201, 0.99201, 0.99202, 0.99133, 0.99132, 0.99112, 0.9911, 0.99155, 0.99155, 0.98958, 0.98957,
    0.98959, 0.98958, 0.98838, 0.98835, 0.98826, 0.98825, 0.9883, 0.98828, 0.98711, 0.98709, 0.98562, 0.98561,
    0.98511, 0.9851, 0.98414, 0.98412, 0.98284, 0.98282, 0.98104, 0.98101, 0.97981, 0.97979, 0.97849, 0.97849,
    0.97557, 0.97554, 0.97398, 0.97395, 0.97171, 0.97166, 0.96917, 0.96913, 0.96511, 0.96507, 0.96263, 0.96257,
    0.95839, 0.95835, 0.95483, 0.95475, 0.94942, 0.94936, 0.9468, 0.94678, 0.94583, 0.94594, 0.94843, 0.94872,
    0.96949, 0.97015,
)
_MAG_A14B_I2V = (  # 78 values
    0.99191, 0.99144, 0.99356, 0.99337, 0.99326, 0.99285, 0.99251, 0.99264, 0.99393, 0.99366, 0.9943, 0.9943,
    0.99276, 0.99288, 0.99389, 0.99393, 0.99274, 0.99289, 0.99316, 0.9931, 0.99379, 0.99377, 0.99268, 0.99271,
    0.99222, 0.99227, 0.99175, 0.9916, 0.91076, 0.91046, 0.98931, 0.98933, 0.99087, 0.99088, 0.98852, 0.98855,
    0.98895, 0.98896, 0.98806, 0.98808, 0.9871, 0.98711, 0.98613, 0.98618, 0.98434, 0.98435, 0.983, 0.98307,
    0.98185, 0.98187, 0.98131, 0.98131, 0.9783, 0.97835, 0.97619, 0.9762, 0.97264, 0.9727, 0.97088, 0.97098,
    0.96568, 0.9658, 0.96045, 0.96055, 0.95322, 0.95335, 0.94579, 0.94594, 0.93297, 0.93311, 0.91699, 0.9172,
    0.89174, 0.89202, 0.8541, 0.85446, 0.79823, 0.79902,
)

_AREA_480P, _AREA_720P = 832 * 480, 1280 * 720


def _larger(spec: DiTSpec, latent_shape: tuple[int, ...] | None) -> bool | None:
    """Whether a video of `latent_shape` is nearer 720P than 480P in pixel count (None: no size given)."""
    if latent_shape is None:
        return None
    stride = latent_format(spec.latent_format).spatial_stride
    area = latent_shape[-1] * latent_shape[-2] * stride * stride
    return math.log(area) > (math.log(_AREA_480P) + math.log(_AREA_720P)) / 2


def _tea(pair: tuple[tuple[float, ...], tuple[float, ...]], what: str) -> dict[bool, TeaCacheCalibration]:
    return {True: TeaCacheCalibration(pair[0], "teacache_ret", 5, 0, f"{_TEA} ({what}, use_ret_steps)"),
            False: TeaCacheCalibration(pair[1], "teacache", 1, 1, f"{_TEA} ({what})")}


def _mag(values: tuple[float, ...], source: str, experts: tuple[int, ...] | None = None) -> MagCacheCalibration:
    return MagCacheCalibration(interleaved(values), experts, source)


def wan_step_cache_profile(spec: DiTSpec, latent_shape: tuple[int, ...] | None, pair: bool) -> StepCacheProfile:
    """Wan2.1 T2V 1.3B / 14B and I2V-14B (480P or 720P by the video's size) for TeaCache and MagCache; SkyReels-V2
    models of those shapes take them too (its I2V models the I2V TeaCache ones, as its own code does); a Wan2.2
    T2V-A14B or I2V-A14B pair and TI2V-5B for MagCache. Nothing for FLF2V, a Wan2.2 expert alone, SkyReels DF-1.3B's
    MagCache or custom sizes."""
    kind, size = spec.variant.rsplit("_", 1)
    if kind == "t2v" and size == "14b" and pair:
        return StepCacheProfile("Wan2.2 T2V-A14B", magcache=_mag(_MAG_A14B_T2V, f"{_MAG22} (T2V-A14B, 40 steps)"))
    if kind == "i2v" and size == "14b" and pair:
        return StepCacheProfile("Wan2.2 I2V-A14B", magcache=_mag(_MAG_A14B_I2V, f"{_MAG22} (I2V-A14B, 40 steps; "
                                                                               f"the low-noise expert only)", (1,)))
    if pair:
        return StepCacheProfile()
    if kind == "t2v" and size == "14b":
        return StepCacheProfile("Wan2.1 T2V-14B", _tea(_TEA_T2V_14B, "T2V-14B"),
                                _mag(_MAG_T2V_14B, f"{_MAG21} (T2V-14B, 50 steps)"))
    if kind == "t2v" and size == "1.3b":
        return StepCacheProfile("Wan2.1 T2V-1.3B", _tea(_TEA_T2V_1_3B, "T2V-1.3B"),
                                _mag(_MAG_T2V_1_3B, f"{_MAG21} (T2V-1.3B, 50 steps)"))
    if kind == "df_fps":
        return StepCacheProfile("SkyReels-V2 DF-1.3B (Wan2.1 T2V-1.3B's TeaCache coefficients, as SkyReels-V2 "
                                "uses them)", _tea(_TEA_T2V_1_3B, "T2V-1.3B"))
    if kind == "i2v_clip":
        large = _larger(spec, latent_shape)
        res = "720P" if large else "480P"
        name = f"Wan2.1 I2V {res}" if large is not None else "Wan2.1 I2V 480P (720P for videos nearer 1280×720)"
        tea = _tea(_TEA_I2V_720P if large else _TEA_I2V_480P, f"I2V {res}")
        mag = None
        if size == "14b":
            mag = _mag(_MAG_I2V_720P if large else _MAG_I2V_480P, f"{_MAG21} (I2V-14B {res}, 40 steps)")
        return StepCacheProfile(name, tea, mag)
    if kind == "ti2v":
        return StepCacheProfile("Wan2.2 TI2V-5B", magcache=_mag(_MAG_TI2V_5B, f"{_MAG22} (TI2V-5B, 50 steps)"))
    return StepCacheProfile()
