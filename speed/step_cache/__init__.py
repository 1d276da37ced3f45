"""Step caches: TeaCache, MagCache and EasyCache, one mechanism for every family.

The "step_cache" run-time patch (value: `StepCacheSettings`, or None) installs a `StepCache` wrapper
(models/common/wrappers.py) in the DiT's wrapper chain, outside block swap: a call that reuses the cache runs no
block list (TeaCache, MagCache: each block list returns its input plus the residual it added at the last computed
call of the same guidance branch) or not even the model (EasyCache: the input plus the last computed output's
difference to its input, as published), so a skipped call streams no block and runs no compiled region. The
numbers a rule needs come from the model only through `step_cache_signal` (TeaCache's input, models/*/model.py)
and from the model call's own input and output (EasyCache); MagCache's come calibrated from the family's profile
(`DiTFamily.step_cache_profile`). Which step, branch and run a call belongs to comes from the sampling session
(models/common/calls.py): state starts afresh with each run (each diffusion-forcing window), each model of a Wan2.2
pair has its own, and the session logs and shows each wrapper's report (calls made, reused, estimated speedup).
"""
from __future__ import annotations

import torch.nn as nn

from ...errors import InputError
from ...memory.patches import register_patch
from .rules import METHODS, StepCacheSettings  # noqa: F401  (the patch's value and the method names)
from .wrapper import StepCache

NAME = "step_cache"


def _apply(module: nn.Module, settings: StepCacheSettings | None) -> None:
    wrappers = getattr(module, "wrappers", None)
    if wrappers is None:
        if settings is not None:
            raise InputError(f"step caches do not support {type(module).__name__} models",
                             "use them with OpenReel's diffusion transformers")
        return
    current = wrappers.get(NAME)
    if settings is None:
        if current is not None:
            wrappers.set(NAME, None)
        return
    if not (isinstance(current, StepCache) and current.settings == settings):
        wrappers.set(NAME, StepCache(settings))


register_patch(NAME, None, _apply)
