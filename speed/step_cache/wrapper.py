"""The step-cache wrapper: decides per model call whether to reuse the cache, keeps the cached residuals of each
call layout, and reports.

State: one `_RunState` per run (models/common/calls.py `Run`: a sampling loop, or one diffusion-forcing window),
inside it one rule state per tracked branch key — each guidance branch on its own (Wan, as published: conditional
and unconditional calls), or the whole batch of a batched call as one where the family's published cache tracks it
so (HunyuanVideo). A batched call is skipped only when every branch may skip; a branch overruled so counts its call
as computed. Residuals are kept per call layout (the branch keys of the batch, in order), and per *segment*: a run
of block lists each fed the previous one's output (HunyuanVideo's double- then single-stream lists make one segment;
lists with other work between them, e.g. a join, make several).

Cost per call (counted in tests/test_step_cache.py, `test_device_reads_per_call`): TeaCache makes one read from the
device per call outside its retention steps (a `.tolist()` of the branches' relative L1 distances, both branches of
a batched call at once); MagCache none; EasyCache one `.item()` per deciding call once its rate is known. A computed
call adds one subtraction over the stream per segment; the residual kept costs one stream per call layout (a
computed call frees its own before its blocks run). The segment's input is kept by reference and watched (its
version counter): blocks seen adding into their input in place (HunyuanVideo's token chunks) make the next calls
keep a copy instead, and the call that showed it keeps no residual (once in a model's life, where a copy at every
first call would add a stream to the activations, some 15% for Wan 14B).
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import torch
import torch.nn as nn

from ...errors import InputError
from ...models.common import calls
from ...models.common.family import DIT_FAMILIES
from ...models.common.step_cache import StepCacheProfile, TeaCacheCalibration, nearest
from ...models.common.wrappers import Wrapper
from .rules import EasyCacheRule, MagCacheRule, StepCacheSettings, TeaCacheRule

log = logging.getLogger(__name__)

TITLES = {"teacache": "TeaCache", "magcache": "MagCache", "easycache": "EasyCache"}


# ----------------------------------------------------------------------------------------- streams as trees
def _map(fn: Callable, *trees):
    """`fn` over the tensors of equally shaped trees (a tensor, or tuples / lists of them)."""
    if isinstance(trees[0], torch.Tensor):
        return fn(*trees)
    return type(trees[0])(_map(fn, *parts) for parts in zip(*trees))


def _leaves(tree) -> list[torch.Tensor]:
    return [tree] if isinstance(tree, torch.Tensor) else [t for part in tree for t in _leaves(part)]


def _shapes(tree) -> list[tuple[int, ...]]:
    return [tuple(t.shape) for t in _leaves(tree)]


def _versions(tree) -> list[int | None]:
    """In-place modification counters (shared by views of one storage); None for a tensor made under
    `torch.inference_mode` (ComfyUI runs nodes so), which keeps none."""
    return [None if t.is_inference() else t._version for t in _leaves(tree)]


def _rows(t: torch.Tensor, i: int, parts: int) -> torch.Tensor:
    share = t.shape[0] // parts
    return t[i * share:(i + 1) * share]


# ----------------------------------------------------------------------------------------- per run
class _Setup:
    """A run's method, resolved from the settings and the family's profile at its first call."""

    def __init__(self, settings: StepCacheSettings, model: nn.Module, call: calls.Call, shape: tuple[int, ...]):
        s = settings
        family = DIT_FAMILIES.get(s.family)
        profile = StepCacheProfile()
        if family is not None and s.spec is not None:
            profile = family.step_cache_profile(s.spec, shape, call.experts == 2)
        name = profile.model or (s.spec.description if s.spec is not None else type(model).__name__)
        self.joint = profile.joint_branches
        self.tea: TeaCacheCalibration | None = None
        self.columns: tuple[tuple[float, ...], ...] = ()
        self.experts: tuple[int, ...] | None = None
        self.source = "measured while sampling"
        if s.method == "teacache":
            if not hasattr(model, "step_cache_signal"):
                raise InputError(f"TeaCache compares one of the model's inputs from step to step, and "
                                 f"{type(model).__name__} exposes none (it has no step_cache_signal)",
                                 "use EasyCache, which needs nothing from the model, or MagCache with ratios")
            if s.coefficients:
                self.tea = TeaCacheCalibration.custom(s.coefficients[0], s.use_ret_steps)
            else:
                self.tea = profile.teacache.get(s.use_ret_steps)
                if self.tea is None and profile.teacache:
                    raise InputError(f"TeaCache has no published coefficients for {name} with use_ret_steps "
                                     f"{'on' if s.use_ret_steps else 'off'}",
                                     f"switch use_ret_steps {'off' if s.use_ret_steps else 'on'}, or give coefficients")
                if self.tea is None:
                    raise InputError(f"TeaCache has no published coefficients for {name}", _todo(profile, "teacache"))
            self.source = f"{self.tea.source}, polynomial {list(self.tea.coefficients)}"
        elif s.method == "magcache":
            if s.coefficients:
                columns, self.source = s.coefficients, "ratios given"
            elif profile.magcache is not None:
                columns, self.experts, self.source = (profile.magcache.ratios, profile.magcache.experts,
                                                      profile.magcache.source)
            else:
                raise InputError(f"MagCache has no published magnitude ratios for {name}", _todo(profile, "magcache"))
            self.columns = tuple(nearest(tuple(c), call.run.steps) for c in columns)
        self.text = f"{TITLES[s.method]} for {name} ({self.source}), threshold {s.threshold:g}"


def _todo(profile: StepCacheProfile, method: str) -> str:
    other = [m for m, ok in (("MagCache", profile.magcache is not None), ("TeaCache", bool(profile.teacache)))
             if ok and m.lower() != method]
    also = f", or {other[0]}, published for it" if other else ""
    what = "TeaCache's rescaling polynomial" if method == "teacache" else "MagCache's ratios (run MagCache at " \
                                                                          "threshold 0 once to measure them)"
    return f"use EasyCache, which needs no calibration{also}; or give {what} as coefficients"


class _RunState:
    def __init__(self, setup: _Setup, settings: StepCacheSettings):
        self.setup, self.settings = setup, settings
        self.rules: dict[Any, Any] = {}
        self.signals: dict[Any, torch.Tensor] = {}       # TeaCache: each key's input at its previous call
        self.residuals: dict[tuple, list] = {}           # per call layout: each segment's residual (a tree)
        self.measured: dict[Any, dict[int, torch.Tensor]] = {}   # MagCache at threshold 0: ratios per key, step
        self.decided: dict[int, bool] = {}               # EasyCache: each step's decision, for followers
        self.diffs: dict[tuple, torch.Tensor] = {}       # EasyCache: output - input of the last computed call
        self.previous_input = self.computed_input = self.computed_output = self.rate = None

    def rule(self, key):
        if key not in self.rules:
            s = self.settings
            self.rules[key] = {"teacache": lambda: TeaCacheRule(self.setup.tea.coefficients, s.threshold),
                               "magcache": lambda: MagCacheRule(s.threshold, s.magcache_k),
                               "easycache": lambda: EasyCacheRule(s.threshold)}[s.method]()
        return self.rules[key]


class _Pass:
    """One model call in flight: its keys, the decision (taken at the first block list), and the computed
    segments [input kept (a copy, or the input itself), the input, its versions, output, its versions]."""

    def __init__(self, call: calls.Call, keys: tuple):
        self.call, self.keys = call, keys
        self.skip: bool | None = None
        self.segment = 0
        self.fallback = False   # a skipped call runs the segment it has no residual for
        self.last_out = None
        self.segments: list[list] = []


# ----------------------------------------------------------------------------------------- the wrapper
class StepCache(Wrapper):
    """The "step_cache" wrapper (see the package docstring)."""

    order = 50  # outside block swap (100): a call that reuses the cache streams no block

    def __init__(self, settings: StepCacheSettings):
        self.settings = settings
        self.calls = self.skipped = 0
        self._run: calls.Run | None = None
        self._state: _RunState | None = None
        self._pass: _Pass | None = None
        self._reports: calls.Reports | None = None
        self._clone_inputs = False   # whether the blocks were last seen adding into their input in place
        self._who = ""
        self._span = range(0)

    @property
    def _calibrating(self) -> bool:
        return self.settings.method == "magcache" and self.settings.threshold <= 0

    # ------------------------------------------------------------------ run and report
    def _begin(self, call: calls.Call, model: nn.Module, x: torch.Tensor) -> _RunState:
        if call.run.reports is not self._reports:  # a new sampling session: a new report
            self._reports, self.calls, self.skipped = call.run.reports, 0, 0
            call.run.reports.post(self, self.report)
        if call.run is not self._run:
            setup = _Setup(self.settings, model, call, tuple(x.shape))
            if self._run is None or self._run.reports is not call.run.reports:
                log.info("OpenReel Step Cache: %s", setup.text)
            self._run, self._state = call.run, _RunState(setup, self.settings)
            self._who = "" if call.experts == 1 else " (high-noise expert)" if call.expert == 0 else \
                " (low-noise expert)"
            self._span = call.span
        return self._state

    def report(self) -> str:
        if not self.calls:
            return ""
        work = "the model" if self.settings.method == "easycache" else "its blocks"
        speedup = self.calls / max(1, self.calls - self.skipped)
        text = (f"{TITLES[self.settings.method]}{self._who}: {self.skipped} of {self.calls} model calls reused the "
                f"cache instead of running {work}, estimated speedup {speedup:.2f}× (a reused call counted as free)")
        if self._calibrating and self._state is not None and self._state.measured:
            span, rows = self._span, []
            for by_step in self._state.measured.values():   # one read from the device for the whole run
                values = dict(zip(by_step, torch.stack(list(by_step.values())).tolist()))
                rows.append(", ".join(f"{values.get(i, 1.0):.5f}" for i in span))
            text += (f"\nMagCache ratios measured at steps {span.start}–{span.stop - 1} (one row per branch; give "
                     f"them as coefficients, a pair's two experts' rows joined): " + "; ".join(rows))
        return text

    def _keys(self, call: calls.Call) -> tuple:
        if self._state.setup.joint and len(call.branches) > 1 and self.settings.method != "easycache":
            return (call.branches,)
        return call.branches

    # ------------------------------------------------------------------ the model call
    def forward(self, call: Callable, model: nn.Module, *args, **kwargs):
        info = calls.current()
        if info is None or self._pass is not None:  # outside a sampling session: the model as it is
            return call(*args, **kwargs)
        x = args[0] if args else kwargs["x"]
        state = self._begin(info, model, x)
        self.calls += 1
        p = _Pass(info, self._keys(info))
        if self.settings.method == "easycache":
            return self._easycache(call, state, p, x, args, kwargs)
        self._pass = p
        try:
            out = call(*args, **kwargs)
        finally:
            self._pass = None
        if p.skip:
            self.skipped += 1
        elif p.segments:
            self._keep_residuals(state, p)
        return out

    def blocks(self, call: Callable, model: nn.Module, list_name: str, x, *args):
        p = self._pass
        if p is None:
            return call(x, *args)
        state = self._state
        if p.skip is None:  # the call's first block list: decide
            p.skip = self._decide(state, p, model, x, args)
        chained = p.last_out is not None and x is p.last_out
        if p.skip and chained:
            out = call(x, *args) if p.fallback else x
        elif p.skip:
            kept = state.residuals.get(p.keys, [])
            residual = kept[p.segment] if p.segment < len(kept) else None
            p.segment += 1
            p.fallback = residual is None or _shapes(residual) != _shapes(x)  # no residual: run this segment
            out = call(x, *args) if p.fallback else _map(torch.add, x, residual)
        else:
            if not chained:
                kept = _map(torch.clone, x) if self._clone_inputs else x
                p.segments.append([kept, x, _versions(x), None, None])
            out = call(x, *args)
            p.segments[-1][3:] = [out, _versions(out)]
        p.last_out = out
        return out

    # ------------------------------------------------------------------ TeaCache and MagCache
    def _decide(self, state: _RunState, p: _Pass, model: nn.Module, x, args) -> bool:
        info, s, setup = p.call, self.settings, state.setup
        kept = state.residuals.get(p.keys)
        available = bool(kept) and _shapes(kept[0]) == _shapes(x)
        outside = not s.in_window(info.step)
        rules = [state.rule(k) for k in p.keys]
        if s.method == "teacache":
            tea = setup.tea
            retained = outside or info.step < tea.first or info.step >= info.run.steps - tea.last
            signal = model.step_cache_signal(tea.signal, x, *args)
            parts = [_rows(signal, i, len(p.keys)) for i in range(len(p.keys))]
            before = [state.signals.get(k) for k in p.keys]
            compare = [i for i, b in enumerate(before) if not retained and b is not None and b.shape == parts[i].shape]
            distances: list[float | None] = [None] * len(parts)
            if compare:  # one read from the device for the call
                values = torch.stack([((parts[i] - before[i]).abs().mean() / before[i].abs().mean()).float()
                                      for i in compare]).tolist()
                for i, value in zip(compare, values):
                    distances[i] = value
            state.signals.update(zip(p.keys, parts))
            wishes = [rule.decide(retained, d) for rule, d in zip(rules, distances)]
        else:
            wishes = []
            for key, rule in zip(p.keys, rules):
                single = isinstance(key, str)   # one branch's rows (else a joint key: the whole batch)
                branch, per_step = (calls.BRANCHES.index(key), info.branches_per_step) if single else (0, 1)
                local = (info.step - info.span.start) * per_step + branch
                retained = (outside or (setup.experts is not None and info.expert not in setup.experts)
                            or local < int(len(info.span) * per_step * s.retention))
                column = setup.columns[min(branch, len(setup.columns) - 1)]
                wishes.append(rule.decide(retained, column[info.step]))
        skip = all(wishes) and available
        if not skip:
            for rule, wish in zip(rules, wishes):
                if wish:
                    rule.overruled()
            if not self._calibrating:
                state.residuals.pop(p.keys, None)  # replaced by this call's: free it before the blocks run
        return skip

    def _keep_residuals(self, state: _RunState, p: _Pass) -> None:
        residuals, changed = [], False
        for kept, given, versions, out, out_versions in p.segments:
            now = _versions(given)  # the blocks added into their input (HunyuanVideo's chunks); unknown: assumed
            inplace = now != versions or None in now
            changed |= inplace
            if (inplace and kept is given) or _versions(out) != out_versions:
                residuals = None                     # the input kept, or the output, is no longer what it was
            elif residuals is not None:
                residuals.append(_map(torch.sub, out, kept))
        self._clone_inputs = changed   # copy the inputs from the next call on (or no longer)
        if residuals is None:
            state.residuals.pop(p.keys, None)
            return
        before = state.residuals.get(p.keys)
        if self._calibrating and before and _shapes(before[0]) == _shapes(residuals[0]):
            now, then = _leaves(residuals[0])[0], _leaves(before[0])[0]
            for i, key in enumerate(p.keys):
                a, b = _rows(now, i, len(p.keys)).float(), _rows(then, i, len(p.keys)).float()
                state.measured.setdefault(key, {})[p.call.step] = (a.norm(dim=-1) / b.norm(dim=-1)).mean()
        state.residuals[p.keys] = residuals

    # ------------------------------------------------------------------ EasyCache
    def _easycache(self, call: Callable, state: _RunState, p: _Pass, x: torch.Tensor, args, kwargs):
        info, s = p.call, self.settings
        stored = state.diffs.get(info.branches)
        available = stored is not None and stored.shape == x.shape
        lead = info.branches.index("positive") if "positive" in info.branches else None
        if lead is None:  # a call of the other branch alone follows its step's decision
            skip = state.decided.get(info.step, False) and available
        else:
            mine = _rows(x, lead, len(info.branches))
            retained = (not s.in_window(info.step) or info.step < int(s.retention * info.run.steps)
                        or info.step >= info.run.steps - 1)
            change = None
            ready = None not in (state.previous_input, state.computed_output, state.rate)
            if not retained and ready and state.previous_input.shape == mine.shape:  # the call's one read
                change = (state.rate * (mine - state.previous_input).abs().mean()
                          / state.computed_output.abs().mean()).item()
            rule = state.rule("positive")
            wish = rule.decide(retained, change)
            skip = wish and available
            if wish and not available:
                rule.overruled()
            state.decided[info.step] = skip
            state.previous_input = mine.clone()
        if skip:
            self.skipped += 1
            return x + stored
        out = call(*args, **kwargs)
        if out.shape != x.shape:
            raise InputError(f"EasyCache reuses the difference between the model's output and input, and this "
                             f"model's output {tuple(out.shape)} differs in shape from its input {tuple(x.shape)}",
                             "use TeaCache or MagCache with this model")
        if lead is not None:
            mine_out = _rows(out, lead, len(info.branches))
            if state.computed_output is not None and state.computed_input is not None:
                state.rate = ((mine_out - state.computed_output).abs().mean()
                              / (state.previous_input - state.computed_input).abs().mean())
            state.computed_input, state.computed_output = state.previous_input, mine_out.clone()
        state.diffs[info.branches] = out - x
        return out
