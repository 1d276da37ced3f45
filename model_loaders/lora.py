"""LoRA files: every key layout users have, resolved against one model's parameters, with a coverage report.

Layouts (a key is `<prefix><layer>.<part>`):
- prefixes: none, `diffusion_model.` / `model.diffusion_model.` (ComfyUI), `transformer.` (diffusers),
  `base_model.model.` (PEFT), and the kohya ones `lora_unet_` / `lycoris_` / `lora_transformer_`, whose layer names
  have every '.' written as '_' (they are matched against the model's own names written that way);
- layer names: the family's official (= ComfyUI) names, or diffusers names, which the family adapter's
  `lora_target` renames, joining diffusers' separate q / k / v into the rows of a fused layer where the network
  fuses them (HunyuanVideo);
- parts: low-rank pairs `lora_down` / `lora_up`, `lora_A` / `lora_B` (also PEFT's `.default`), `lora.down` /
  `lora.up`, with an optional `.alpha` (scale α/r, else 1) and `lora_B.bias` (a bias delta scaled like the pair);
  full-rank deltas `.diff` (of the weight, or of the parameter the layer name names), `.diff_b` (of the bias) and
  `.diff_m` (of a block's `modulation`, as LightX2V's files name it).

The delta of a pair on a weight W of shape [out, in, k...] is s·(α/r)·(up @ down) reshaped to W (convolutions
such as the patch embedding flatten their kernels); a delta is s·diff. A file whose keys match nothing of the
model is an error that says what the file seems to be for; a partial match loads and reports what it left out.
How the deltas are applied (merged or at run time) is model_loaders/lora_apply.py.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Callable

import torch

from ..errors import InputError
from ..models.common.family import DiTFamily, LoraTarget
from ..models.common.ops import cast_ops
from ..models.registry import dit_families, family_of
from .checkpoint import Checkpoint, open_checkpoint
from .identify import expect

LORA_PATCH = "lora"                     # the handle patch holding the stack of `LoraSpec`s
MODES = ("auto", "merged", "unmerged")
LISTED = 20                             # unmatched keys listed in a report

_PARTS = (  # key ending → role, tried in order
    (".lora_A.default.weight", "down"), (".lora_B.default.weight", "up"),
    (".lora_down.weight", "down"), (".lora_up.weight", "up"), (".lora_A.weight", "down"), (".lora_B.weight", "up"),
    (".lora.down.weight", "down"), (".lora.up.weight", "up"), (".lora_B.bias", "up_bias"),
    (".lora_up.bias", "up_bias"), (".alpha", "alpha"), (".diff_b", "diff_b"), (".diff_m", "diff_m"),
    (".diff", "diff"),
    (".dora_scale", "unsupported"), (".lora_mid.weight", "unsupported"), (".hada_w1_a", "unsupported"),
    (".hada_w1_b", "unsupported"), (".hada_w2_a", "unsupported"), (".hada_w2_b", "unsupported"),
    (".lokr_w1", "unsupported"), (".lokr_w2", "unsupported"),
)
_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "unet.base_model.model.", "base_model.model.",
             "transformer.", "unet.")
_KOHYA_PREFIXES = ("lora_unet_", "lycoris_", "lora_transformer_")
# LoRAs of models OpenReel does not run, by their layer names (in errors only).
_FOREIGN = tuple((re.compile(a), b) for a, b in (
    (r"(^|[._])(down_blocks|up_blocks|input_blocks|output_blocks|mid_block|middle_block)[._]",
     "a Stable Diffusion 1.x / SDXL LoRA (UNet layer names)"),
    (r"^(lora_te\d?_|te\d?[._]|text_encoder)", "a text-encoder LoRA of a Stable Diffusion model"),
    (r"(^|[._])joint_blocks[._]", "a Stable Diffusion 3 LoRA"),
    (r"double_blocks[._]\d+[._]img_(attn\.qkv|mod\.lin|mlp\.0)", "a Flux LoRA"),
))


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA on a DiT handle: the file (and its size / mtime, so a replaced file is read again), its strength,
    and how to apply it ("auto", "merged", "unmerged")."""
    path: str
    stamp: tuple[int, int]
    strength: float = 1.0
    mode: str = "auto"

    @property
    def name(self) -> str:
        return Path(self.path).name


def lora_spec(path: str | Path, strength: float = 1.0, mode: str = "auto") -> LoraSpec:
    if mode not in MODES:
        raise InputError(f"LoRA mode must be one of {MODES}, not {mode!r}", "pick auto, merged or unmerged")
    stat = Path(path).stat()
    return LoraSpec(str(path), (stat.st_size, stat.st_mtime_ns), float(strength), mode)


@dataclass(frozen=True)
class Term:
    """One change a LoRA makes to one parameter: a low-rank pair (`keys` = (down, up)) or a full-rank delta
    (`keys` = (delta,)); `scale` α/r for pairs (and a pair's bias), else 1."""
    param: str
    keys: tuple[str, ...]
    scale: float = 1.0
    rows: tuple[int, int] | None = None
    reorder: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def low_rank(self) -> bool:
        return len(self.keys) == 2


@dataclass
class Resolution:
    """What a LoRA file does to one model: its terms, and the coverage report's figures."""
    file: str
    layout: str
    terms: list[Term] = field(default_factory=list)
    matched: int = 0
    unmatched: dict[str, str] = field(default_factory=dict)   # key → why
    ranks: set[int] = field(default_factory=set)
    seems: str = ""                                           # what the unmatched keys look like, if known

    def report(self, mode: str = "") -> str:
        pairs = sum(t.low_rank for t in self.terms)
        modules = len({t.param.rpartition(".")[0] for t in self.terms})
        rank = "-" if not self.ranks else str(min(self.ranks)) if len(self.ranks) == 1 else \
            f"{min(self.ranks)}-{max(self.ranks)}"
        lines = [f"LoRA {self.file}: {self.layout}, rank {rank}" + (f", {mode}" if mode else ""),
                 f"matched {self.matched} of {self.matched + len(self.unmatched)} keys; layers touched: {modules} "
                 f"(low-rank pairs: {pairs}, full-rank deltas: {len(self.terms) - pairs})"]
        if self.unmatched:
            lines.append(f"not matched ({len(self.unmatched)}" + (f"; they look like {self.seems}" if self.seems
                                                                    else "") + "):")
            lines += [f"  {k} ({why})" for k, why in sorted(self.unmatched.items())[:LISTED]]
            if len(self.unmatched) > LISTED:
                lines.append(f"  … and {len(self.unmatched) - LISTED} more")
        return "\n".join(lines)


def open_lora(path: str | Path) -> Checkpoint:
    """The LoRA file at `path` (headers only); a file of another kind is refused, saying what it is."""
    ckpt = open_checkpoint(path)
    expect(ckpt, "lora", "use a LoRA file (lora_down/lora_up, lora_A/lora_B or diff keys)")
    return ckpt


def parameter_shapes(spec) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of the network of DiT spec `spec` (built on the meta device: no weights)."""
    if spec not in _SHAPES:
        with torch.device("meta"):
            model = family_of(spec).build(spec, cast_ops(False))
        _SHAPES[spec] = {name: tuple(p.shape) for name, p in model.named_parameters()}
    return _SHAPES[spec]


_SHAPES: dict = {}


def check(spec, lora: LoraSpec) -> Resolution:
    """What LoRA `lora` does to a model of DiT spec `spec`, before any weight is read (an InputError if nothing)."""
    return resolve(open_lora(lora.path), family_of(spec), spec, parameter_shapes(spec), lora.name)


# ----------------------------------------------------------------------------------------- grouping keys
@dataclass
class _Group:
    name: str            # the layer name, prefix removed
    kohya: bool          # '.' written as '_'
    parts: dict[str, str] = field(default_factory=dict)   # role → key


def _split(key: str) -> tuple[str, str] | None:
    for ending, role in _PARTS:
        if key.endswith(ending):
            return key[: -len(ending)], role
    return None


def _strip(name: str) -> tuple[str, str, bool]:
    """(name without its prefix, the prefix, kohya naming)."""
    for prefix in _KOHYA_PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):].lstrip("_"), prefix, True   # Wan Fun files write `lora_unet__blocks…`
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):], prefix, False
    return name, "", False


def _groups(keys: list[str]) -> tuple[dict[str, _Group], dict[str, str], set[str]]:
    groups, unknown, prefixes = {}, {}, set()
    for key in keys:
        split = _split(key)
        if split is None:
            unknown[key] = "not a LoRA part"
            continue
        layer, role = split
        name, prefix, kohya = _strip(layer)
        prefixes.add(prefix)
        group = groups.setdefault(layer, _Group(name, kohya))
        group.parts[role] = key
    return groups, unknown, prefixes


# ----------------------------------------------------------------------------------------- resolving
class _Model:
    """A model's parameter names and shapes, and the lookups a LoRA's names go through."""

    def __init__(self, family: DiTFamily, spec, shapes: dict[str, tuple[int, ...]]):
        self.family, self.spec, self.shapes = family, spec, shapes
        names = set(shapes) | {n.rpartition(".")[0] for n in shapes}
        self.kohya = {n.replace(".", "_"): n for n in names}

    def find(self, group: _Group, attr: str | None) -> tuple[LoraTarget | None, str]:
        """Our parameter for `group`'s layer and `attr` ("weight", "bias", …; None: the layer name itself), and
        the naming that found it ("kohya", "official" or "diffusers")."""
        if group.kohya:
            name = self.kohya.get(group.name)
            name = name if attr is None or name is None else f"{name}.{attr}"
            return (LoraTarget(name) if name in self.shapes else None), "kohya"
        name = group.name if attr is None else f"{group.name}.{attr}"
        if name in self.shapes:
            return LoraTarget(name), "official"
        target = self.family.lora_target(name, self.spec)
        return (target if target is not None and target.param in self.shapes else None), "diffusers"


def _rows_shape(target: LoraTarget, shape: tuple[int, ...]) -> tuple[int, ...]:
    return shape if target.rows is None else (target.rows[1] - target.rows[0], *shape[1:])


def resolve(ckpt: Checkpoint, family: DiTFamily, spec, shapes: dict[str, tuple[int, ...]],
            file: str = "") -> Resolution:
    """The terms of LoRA `ckpt` on a model of `family` / `spec` with these parameter shapes. Raises an InputError
    naming what the LoRA seems to be for when none of its keys fits the model."""
    model = _Model(family, spec, shapes)
    groups, unknown, prefixes = _groups(ckpt.keys())
    res = Resolution(file or ckpt.name, "")
    res.unmatched.update(unknown)
    mismatches: list[str] = []
    naming = set()

    def fail(group: _Group, why: str, roles=None) -> None:
        for role, key in group.parts.items():
            if roles is None or role in roles:
                res.unmatched[key] = why

    for group in groups.values():
        parts, used = group.parts, set()
        if "unsupported" in parts:
            fail(group, "LoHa / LoKr / DoRA / Tucker layers are not supported")
            continue
        alpha = float(ckpt.get(parts["alpha"]).float().item()) if "alpha" in parts else None
        scale = 1.0
        if "down" in parts or "up" in parts:
            if not ("down" in parts and "up" in parts):
                fail(group, "half of a low-rank pair", {"down", "up"})
            else:
                down, up = ckpt.shape(parts["down"]), ckpt.shape(parts["up"])
                rank = down[0]
                scale = alpha / rank if alpha is not None else 1.0
                target, how = model.find(group, "weight")
                want = None if target is None else _rows_shape(target, shapes[target.param])
                if target is None:
                    fail(group, "no such layer in this model", {"down", "up"})
                elif len(up) < 2 or up[1] != rank or up[0] != want[0] or math.prod(down[1:]) != math.prod(want[1:]):
                    fail(group, f"shape {up[0]}×{math.prod(down[1:])}, the model's is {want[0]}×"
                                f"{math.prod(want[1:])}", {"down", "up"})
                    mismatches.append(f"its {target.param} is {up[0]}×{math.prod(down[1:])} where this model's is "
                                      f"{want[0]}×{math.prod(want[1:])}")
                else:
                    res.terms.append(Term(target.param, (parts["down"], parts["up"]), scale, target.rows,
                                          target.reorder))
                    res.ranks.add(rank)
                    used |= {"down", "up"}
                    naming.add(how)
        for role, attrs in (("up_bias", ("bias",)), ("diff", ("weight", None)), ("diff_b", ("bias",)),
                            ("diff_m", ("modulation",))):
            if role not in parts:
                continue
            target, how = next((found for found in (model.find(group, a) for a in attrs) if found[0] is not None),
                               (None, ""))
            if target is None:
                fail(group, "no such parameter in this model", {role})
                continue
            want, have = _rows_shape(target, shapes[target.param]), ckpt.shape(parts[role])
            if have != want and (target.rows is not None or math.prod(have) != math.prod(want)):
                fail(group, f"shape {have}, the model's is {want}", {role})
                mismatches.append(f"its {target.param} delta is {have} where this model's is {want}")
                continue
            res.terms.append(Term(target.param, (parts[role],), scale if role == "up_bias" else 1.0, target.rows,
                                  target.reorder))
            used.add(role)
            naming.add(how)
        if used:
            used.add("alpha")
        elif "alpha" in parts:
            res.unmatched.setdefault(parts["alpha"], "its layer matched nothing")
        res.matched += sum(1 for role in used if role in parts)
    res.layout = _layout(prefixes, naming, groups)
    names = [g.name for g in groups.values()]
    if not res.terms:
        what, todo = _seems_for(names, family, spec, mismatches, groups)
        raise InputError(f"{res.file} changes nothing in {spec.description}: it seems to be {what}", todo)
    if res.unmatched:
        left = [g.name for g in groups.values() if any(k in res.unmatched for k in g.parts.values())]
        res.seems = _foreign(left, family) or ""
    return res


def _layout(prefixes: set[str], naming: set[str], groups: dict[str, _Group]) -> str:
    roles = {role for g in groups.values() for role in g.parts}
    keys = {k for g in groups.values() for k in g.parts.values()}
    factors = [n for n, hit in (("lora_down/lora_up", any(".lora_down." in k for k in keys)),
                                ("lora_A/lora_B", any(".lora_A." in k for k in keys)),
                                ("lora.down/lora.up", any(".lora.down." in k for k in keys))) if hit]
    deltas = [r for r in ("diff", "diff_b", "diff_m") if r in roles]
    prefix = ", ".join(sorted(p or "no prefix" for p in prefixes)) or "no prefix"
    names = "/".join(sorted(naming)) or "unknown"
    parts = " + ".join(factors + deltas) or "no parts"
    return f"{names} names ({prefix}), {parts}" + (" + alpha" if "alpha" in roles else "")


# ----------------------------------------------------------------------------------------- what a LoRA is for
def _dotted(name: str, limit: int = 10) -> list[str]:
    """Every way to read a kohya name's '_' as '.' or '_' (at most 2^limit of them)."""
    pieces = name.split("_")
    if len(pieces) - 1 > limit:
        return []
    joins = product((".", "_"), repeat=len(pieces) - 1)
    return ["".join(p + s for p, s in zip(pieces, seps + ("",))) for seps in joins]


def _recognizes(family: DiTFamily, name: str) -> bool:
    return any(family.lora_target(f"{n}.weight") is not None or family.lora_target(n) is not None
               for n in ([name] if "_" not in name or "." in name else _dotted(name)))


def _foreign(names: list[str], family: DiTFamily) -> str | None:
    """What LoRA layer names look like: another OpenReel family's, or a model OpenReel does not run."""
    sample = names[:: max(1, len(names) // 8)][:8]
    for other in dit_families():
        if other is not family and other.runnable and sum(_recognizes(other, n) for n in sample) * 2 > len(sample):
            return f"a {other.title} LoRA"
    for pattern, what in _FOREIGN:
        if sum(bool(pattern.search(n)) for n in names) * 2 > len(names):
            return what
    return None


def _seems_for(names: list[str], family: DiTFamily, spec, mismatches: list[str],
               groups: dict[str, _Group]) -> tuple[str, str]:
    """(what a LoRA that matches nothing seems to be for, what to do)."""
    mine = f"pick a LoRA made for this model ({spec.description})"
    if mismatches:
        return f"a LoRA for another size of {family.title} model ({mismatches[0]})", mine
    found = _foreign(names, family)
    for other in dit_families():
        if found == f"a {other.title} LoRA":
            return found, f"connect it to a {other.title} model, or {mine}"
    if found:
        return found, mine
    heads = sorted({".".join(k.split(".")[:2]) for g in groups.values() for k in g.parts.values()})
    return f"a LoRA for another model (keys such as {', '.join(heads[:3]) or 'none'})", mine
