"""Text-encoder (umT5) and CLIP-vision loading: detection by keys, layout maps, handles, and encoding.

Layouts read:
- umT5: the official `models_t5_umt5-xxl-enc-bf16.pth` (`token_embedding`, `blocks.N.attn.q`, ...), and transformers /
  ComfyUI names (`shared.weight`, `encoder.block.N.layer.0.SelfAttention.q.weight`, ...; optionally prefixed; bf16,
  fp8_e4m3fn, or fp8_e4m3fn_scaled with `scale_weight`), as single files, sharded sets or HF folders (a full
  seq2seq umT5 loads its encoder).
- CLIP vision: the official open-clip `models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth` (`visual.*`; the
  text tower is ignored) and transformers / ComfyUI `clip_vision_h.safetensors` (`vision_model.*`).
Anything else is a DetectionError that says what the file is and which loader takes it.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn as nn

from .. import runtime
from ..errors import CheckpointError, DetectionError
from ..handles import TextEmbeds
from ..models.text import clip_vision, umt5
from ..models.text.clip_vision import CLIPVisionEncoder, CLIPVisionSpec
from ..models.text.tokenizer import TEXT_LENGTH, TokenizerSource, find_tokenizer, load_tokenizer
from ..models.text.umt5 import UMT5Spec, UMT5TextEncoder
from . import hunyuan, stepvideo, wan  # noqa: F401  (register the DiT families, to name a DiT given here)
from .build import COMPUTE_DTYPES, materialize, resolve_compute_dtype
from .cache import MODULES
from .checkpoint import Checkpoint, TensorInfo, open_checkpoint
from .families import FAMILIES, other_kind, find_prefix

DTYPE_CHOICES = ("auto", "bf16", "fp16", "fp32", "fp8_e4m3fn", "fp8_e4m3fn_scaled")

TEXT_LOADER = "load it with OpenReel Text Encoder Loader (put it in models/text_encoders)"
CLIP_LOADER = "load it with OpenReel CLIP Vision Loader (put it in models/clip_vision)"


@dataclass(frozen=True)
class TextEncoderHandle:
    """OPENREEL_TEXT_ENCODER: a detected umT5 encoder, its files and layout, its tokenizer and dtypes."""
    spec: UMT5Spec
    layout: str                                 # "official" or "hf" (transformers / ComfyUI names)
    files: tuple[str, ...]
    file_stamp: tuple[tuple[int, int], ...]     # (size, mtime_ns) per file: a replaced file is reloaded
    tokenizer: TokenizerSource
    weight_dtype: str
    compute_dtype: str

    @property
    def weights_key(self) -> tuple:
        return ("umt5", self.files, self.file_stamp, self.weight_dtype, self.compute_dtype)


@dataclass(frozen=True)
class ClipVisionHandle:
    """OPENREEL_CLIP_VISION: a detected CLIP vision tower, its files and layout, and dtypes."""
    spec: CLIPVisionSpec
    layout: str                                 # "official" (open-clip `visual.*`) or "hf"
    files: tuple[str, ...]
    file_stamp: tuple[tuple[int, int], ...]
    weight_dtype: str
    compute_dtype: str

    @property
    def weights_key(self) -> tuple:
        return ("clip_vision", self.files, self.file_stamp, self.weight_dtype, self.compute_dtype)


# ----------------------------------------------------------------------------------------- detection helpers
UMT5_OFFICIAL_ANCHORS = ("blocks.0.pos_embedding.embedding.weight",)
T5_HF_ANCHORS = ("encoder.block.0.layer.0.SelfAttention.q.weight",)
CLIP_OFFICIAL_ANCHORS = ("visual.transformer.0.attn.to_qkv.weight",)
CLIP_HF_ANCHORS = ("embeddings.patch_embedding.weight",)


def _is_clip(ckpt: Checkpoint) -> bool:
    if find_prefix(ckpt, CLIP_OFFICIAL_ANCHORS) is not None:
        return True
    prefix = find_prefix(ckpt, CLIP_HF_ANCHORS)
    return prefix is not None and prefix + "embeddings.class_embedding" in ckpt


def _is_t5(ckpt: Checkpoint) -> bool:
    return find_prefix(ckpt, T5_HF_ANCHORS) is not None or find_prefix(ckpt, UMT5_OFFICIAL_ANCHORS) is not None \
        or ("token_embedding.weight" in ckpt and "blocks.0.attn.q.weight" in ckpt)


def _wrong_kind(ckpt: Checkpoint, expected: str, supported: str) -> DetectionError:
    """The error for a file that is not the `expected` ("text" or "clip") encoder: what it is, where it belongs."""
    wanted = "a text encoder" if expected == "text" else "a CLIP vision encoder"
    if expected == "text" and _is_clip(ckpt):
        return DetectionError(f"{ckpt.name} is a CLIP vision encoder, not a text encoder", CLIP_LOADER)
    if expected == "clip" and _is_t5(ckpt):
        return DetectionError(f"{ckpt.name} is a text encoder (T5 family), not a CLIP vision encoder", TEXT_LOADER)
    for family in FAMILIES:
        if find_prefix(ckpt, family.anchors) is not None:
            return DetectionError(f"{ckpt.name} is a {family.title} diffusion transformer, not {wanted}",
                                  "load it with OpenReel DiT Loader (put it in models/diffusion_models)")
    other = other_kind(ckpt)  # VAEs and LoRAs (encoders were told apart above)
    if other is not None and other[1] not in (TEXT_LOADER, CLIP_LOADER):
        return DetectionError(f"{ckpt.name} is {other[0]}, not {wanted}", other[1])
    sample = ", ".join(sorted(ckpt.keys())[:5])
    return DetectionError(f"{ckpt.name} is not {wanted} OpenReel knows (first keys: {sample})", supported)


def _remapped(ckpt: Checkpoint, plan: dict[str, tuple[str, Callable[[torch.Tensor], torch.Tensor] | None,
                                                      tuple[int, ...] | None]]) -> Checkpoint:
    """A view whose key k reads source key plan[k][0], through the transform plan[k][1], with shape plan[k][2]."""
    infos, readers = {}, {}
    for key, (source, transform, shape) in plan.items():
        info = ckpt.info(source)
        infos[key] = TensorInfo(tuple(shape) if shape is not None else info.shape, info.dtype)
        if transform is None:
            readers[key] = lambda source=source: ckpt.get(source)
        else:
            readers[key] = lambda source=source, transform=transform: transform(ckpt.get(source))
    return Checkpoint(ckpt.files, infos, readers, ckpt.config)


def _layer_count(keys: Sequence[str], pattern: str) -> int:
    found = [int(m.group(1)) for k in keys if (m := re.match(pattern, k))]
    return 1 + max(found) if found else 0


def _config_value(ckpt: Checkpoint, width: int, name: str):
    """`name` from the config.json beside the weights (its `vision_config`, else its top level), if that config
    describes a model of this `width`: a config.json of another model in the same folder is ignored."""
    config = ckpt.config or {}
    for scope in (config.get("vision_config") or {}, config):
        if scope.get(name) is not None and scope.get("hidden_size", scope.get("d_model", width)) == width:
            return scope[name]
    return None


# ----------------------------------------------------------------------------------------- umT5
_UMT5_OFFICIAL_RULES = [(re.compile(a), b) for a, b in (
    (r"^token_embedding\.", "shared."),
    (r"^blocks\.(\d+)\.norm1\.", r"encoder.block.\1.layer.0.layer_norm."),
    (r"^blocks\.(\d+)\.attn\.([qkvo])\.", r"encoder.block.\1.layer.0.SelfAttention.\2."),
    (r"^blocks\.(\d+)\.pos_embedding\.embedding\.", r"encoder.block.\1.layer.0.SelfAttention.relative_attention_bias."),
    (r"^blocks\.(\d+)\.norm2\.", r"encoder.block.\1.layer.1.layer_norm."),
    (r"^blocks\.(\d+)\.ffn\.gate\.0\.", r"encoder.block.\1.layer.1.DenseReluDense.wi_0."),
    (r"^blocks\.(\d+)\.ffn\.fc1\.", r"encoder.block.\1.layer.1.DenseReluDense.wi_1."),
    (r"^blocks\.(\d+)\.ffn\.fc2\.", r"encoder.block.\1.layer.1.DenseReluDense.wo."),
    (r"^norm\.", "encoder.final_layer_norm."),
)]


def official_umt5_to_hf(key: str) -> str:
    """Official Wan umT5 name → transformers name (unknown names pass through, to be reported as unexpected)."""
    for pattern, repl in _UMT5_OFFICIAL_RULES:
        new, count = pattern.subn(repl, key)
        if count:
            return new
    return key


def _normalize_umt5(ckpt: Checkpoint) -> tuple[Checkpoint, str]:
    """(the checkpoint under transformers' names, layout); a DetectionError for anything that is not umT5."""
    if _is_clip(ckpt):
        raise _wrong_kind(ckpt, "text", "")
    prefix = find_prefix(ckpt, UMT5_OFFICIAL_ANCHORS)
    if prefix is not None:
        return _keep_under(ckpt, prefix).renamed(official_umt5_to_hf), "official"
    prefix = find_prefix(ckpt, T5_HF_ANCHORS)
    if prefix is not None:
        ckpt = _keep_under(ckpt, prefix)
        tied_copy_only = "shared.weight" not in ckpt  # some exports keep only the encoder's copy of the embedding
        return ckpt.renamed(lambda k: _hf_encoder_key(k, tied_copy_only)), "hf"
    if "token_embedding.weight" in ckpt and "blocks.0.attn.q.weight" in ckpt:
        raise DetectionError(f"{ckpt.name} is a T5 encoder in the official layout with one position bias shared "
                             f"by all layers, not umT5", "Wan needs umT5-XXL: use models_t5_umt5-xxl-enc-bf16.pth "
                             "or ComfyUI's umt5_xxl_*.safetensors")
    raise _wrong_kind(ckpt, "text", "supported: umT5-XXL (models_t5_umt5-xxl-enc-bf16.pth, ComfyUI's "
                                    "umt5_xxl_*.safetensors, or a transformers umT5 folder)")


def _keep_under(ckpt: Checkpoint, prefix: str) -> Checkpoint:
    """Keys under `prefix`, with it removed; other keys (other models in a combined file) are dropped."""
    return ckpt.renamed(lambda k: k[len(prefix):] if k.startswith(prefix) else None)


def _hf_encoder_key(key: str, tied_copy_only: bool) -> str | None:
    """transformers name → our name; None for a seq2seq decoder and head, the tokenizer, the tied embedding copy."""
    if key == "encoder.embed_tokens.weight":
        return "shared.weight" if tied_copy_only else None
    if key.startswith(("decoder.", "lm_head.")) or key == "spiece_model":
        return None
    return key


def describe_umt5(ckpt: Checkpoint) -> UMT5Spec:
    """The spec of a normalized umT5 checkpoint, from its shapes (and config.json values shapes cannot give)."""
    block0 = "encoder.block.0.layer."
    needed = ("shared.weight", block0 + "0.SelfAttention.q.weight",
              block0 + "0.SelfAttention.relative_attention_bias.weight", "encoder.final_layer_norm.weight")
    missing = [k for k in needed if k not in ckpt]
    if missing:
        raise DetectionError(f"{ckpt.name} looks like a T5 encoder but lacks {', '.join(missing)}",
                             "the file is incomplete or not a full text encoder; download it again")
    layers = _layer_count(ckpt.keys(), r"encoder\.block\.(\d+)\.")
    if layers > 1 and "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight" not in ckpt:
        raise DetectionError(f"{ckpt.name} is a T5 encoder with one position bias shared by all layers (T5 v1.1 / "
                             f"Flan-T5, e.g. t5xxl for Flux or SD3), not umT5",
                             "Wan needs umT5-XXL: use ComfyUI's umt5_xxl_*.safetensors or "
                             "models_t5_umt5-xxl-enc-bf16.pth")
    if block0 + "1.DenseReluDense.wi_0.weight" not in ckpt:
        raise DetectionError(f"{ckpt.name} is a T5 encoder without a gated FFN (T5 v1.0), not umT5",
                             "Wan needs umT5-XXL: use ComfyUI's umt5_xxl_*.safetensors")
    vocab, d_model = ckpt.shape("shared.weight")
    buckets, heads = ckpt.shape(block0 + "0.SelfAttention.relative_attention_bias.weight")
    return UMT5Spec(
        vocab_size=vocab, d_model=d_model, d_kv=ckpt.shape(block0 + "0.SelfAttention.q.weight")[0] // heads,
        d_ff=ckpt.shape(block0 + "1.DenseReluDense.wi_0.weight")[0], num_heads=heads, num_layers=layers,
        num_buckets=buckets, max_distance=_config_value(ckpt, d_model, "relative_attention_max_distance") or 128,
        eps=_config_value(ckpt, d_model, "layer_norm_epsilon") or 1e-6)


def inspect_text_encoder(path: str | Path) -> tuple[Checkpoint, Checkpoint, UMT5Spec, str]:
    """Read headers only: (the raw checkpoint, its normalized view, spec, layout)."""
    raw = open_checkpoint(path)
    ckpt, layout = _normalize_umt5(raw)
    return raw, ckpt, describe_umt5(ckpt), layout


def load_text_encoder(path: str | Path, dtype: str = "auto") -> TextEncoderHandle:
    """Detect and load an umT5 encoder into the module cache, find its tokenizer; return the handle.

    `dtype`: how weights are stored and computed. auto: fp8 files stay fp8 (computed in bf16 on GPUs, fp32 on CPU),
    others take the compute dtype; bf16 / fp16 / fp32: stored and computed so; fp8_e4m3fn(_scaled): fp8 storage.
    """
    raw, ckpt, spec, layout = inspect_text_encoder(path)
    source = find_tokenizer(raw.keys(), raw.files)
    tokenizer = load_tokenizer(source)
    if tokenizer.vocab_size > spec.vocab_size:
        raise CheckpointError(f"the tokenizer {source.path} has {tokenizer.vocab_size} tokens but {ckpt.name} "
                              f"embeds only {spec.vocab_size}", "use the tokenizer of google/umt5-xxl")
    weight_dtype, compute_dtype = _dtypes(dtype)
    handle = TextEncoderHandle(spec, layout, tuple(str(f) for f in raw.files), _stamps(raw), source,
                               weight_dtype, compute_dtype)
    MODULES.get_or_build(handle.weights_key, lambda: _build_text(ckpt, handle))
    return handle


def text_encoder_module(handle: TextEncoderHandle) -> UMT5TextEncoder:
    """The module behind `handle`, rebuilt from its files if the cache let it go."""
    return MODULES.get_or_build(handle.weights_key,
                                lambda: _build_text(inspect_text_encoder(handle.files[0])[1], handle))


def encode_text(handle: TextEncoderHandle, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts → (context [B, 512, d_model] with rows past each prompt zeroed, lengths [B]), on the CPU.

    The encoder is on the GPU only for the call."""
    ids, mask = load_tokenizer(handle.tokenizer)(prompts, TEXT_LENGTH)
    module = text_encoder_module(handle)
    runtime.throw_if_interrupted()
    with _placed(module) as device:
        context, lengths = module.encode(ids.to(device), mask.to(device))
        return context.cpu(), lengths.cpu()


_PROMPT_CACHE: OrderedDict[tuple, torch.Tensor] = OrderedDict()
_PROMPT_CACHE_SIZE = 64


def encode_prompts(handle: TextEncoderHandle, positive: str, negative: str) -> TextEmbeds:
    """Both prompts → TextEmbeds. Encodings are cached per (encoder weights, prompt): re-running a graph or
    changing only the seed costs no encoder run."""
    wanted = [p for p in (positive, negative) if (handle.weights_key, p) not in _PROMPT_CACHE]
    if wanted:
        context, lengths = encode_text(handle, wanted)
        for prompt, row, length in zip(wanted, context, lengths):
            _PROMPT_CACHE[(handle.weights_key, prompt)] = row[: int(length)].unsqueeze(0).clone()
    embeds = []
    for prompt in (positive, negative):
        _PROMPT_CACHE.move_to_end((handle.weights_key, prompt))
        embeds.append(_PROMPT_CACHE[(handle.weights_key, prompt)])
    while len(_PROMPT_CACHE) > _PROMPT_CACHE_SIZE:
        _PROMPT_CACHE.popitem(last=False)
    return TextEmbeds(embeds[0], embeds[1], "umt5")


def _build_text(ckpt: Checkpoint, handle: TextEncoderHandle) -> UMT5TextEncoder:
    return materialize(lambda: UMT5TextEncoder(handle.spec), ckpt, weight_dtype=handle.weight_dtype,
                       compute_dtype=COMPUTE_DTYPES[handle.compute_dtype], device=runtime.offload_device(),
                       weight_params=umt5.WEIGHT_PARAMS, fp32_params=umt5.FP32_PARAMS)


# ----------------------------------------------------------------------------------------- CLIP vision
def _normalize_clip(ckpt: Checkpoint) -> tuple[Checkpoint, str, int]:
    """(the vision tower under `CLIPVisionEncoder` names minus its last block, layout, blocks in the file)."""
    prefix = find_prefix(ckpt, CLIP_OFFICIAL_ANCHORS)
    if prefix is not None:
        root = prefix + "visual."
        layers = _layer_count(ckpt.keys(), re.escape(root) + r"transformer\.(\d+)\.")
        return _official_clip_plan(ckpt, root, layers), "official", layers
    prefix = find_prefix(ckpt, CLIP_HF_ANCHORS)
    if prefix is not None and prefix + "embeddings.class_embedding" in ckpt:
        layers = _layer_count(ckpt.keys(), re.escape(prefix) + r"encoder\.layers\.(\d+)\.")
        last = f"encoder.layers.{layers - 1}."

        def rename(key: str) -> str | None:
            if not key.startswith(prefix):
                return None  # text tower, projections, logit scale
            key = key[len(prefix):]
            return None if key.startswith(last) or key == "embeddings.position_ids" else "tower." + key
        return ckpt.renamed(rename), "hf", layers
    raise _wrong_kind(ckpt, "clip", "supported: CLIP ViT-H/14 (ComfyUI's clip_vision_h.safetensors or the official "
                                    "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth)")


def _official_clip_plan(ckpt: Checkpoint, root: str, layers: int) -> Checkpoint:
    dim = ckpt.shape(root + "cls_embedding")[-1]
    plan = {
        "tower.embeddings.class_embedding": (root + "cls_embedding", lambda t: t.reshape(-1), (dim,)),
        "tower.embeddings.patch_embedding.weight": (root + "patch_embedding.weight", None, None),
        "tower.embeddings.position_embedding.weight": (root + "pos_embedding", lambda t: t.reshape(-1, dim),
                                                       ckpt.shape(root + "pos_embedding")[-2:]),
    }
    for ours, theirs in (("pre_layrnorm", "pre_norm"), ("post_layernorm", "post_norm")):
        for attr in ("weight", "bias"):
            plan[f"tower.{ours}.{attr}"] = (f"{root}{theirs}.{attr}", None, None)
    for n in range(layers - 1):
        src, dst = f"{root}transformer.{n}.", f"tower.encoder.layers.{n}."
        for ours, theirs in (("layer_norm1", "norm1"), ("layer_norm2", "norm2"), ("self_attn.out_proj", "attn.proj"),
                             ("mlp.fc1", "mlp.0"), ("mlp.fc2", "mlp.2")):
            for attr in ("weight", "bias"):
                plan[f"{dst}{ours}.{attr}"] = (f"{src}{theirs}.{attr}", None, None)
        for attr in ("weight", "bias"):
            qkv = f"{src}attn.to_qkv.{attr}"
            shape = (dim,) + tuple(ckpt.shape(qkv)[1:])
            for i, name in enumerate(("q", "k", "v")):
                plan[f"{dst}self_attn.{name}_proj.{attr}"] = (qkv, lambda t, i=i: t[i * dim:(i + 1) * dim], shape)
    missing = sorted({src for src, _, _ in plan.values() if src not in ckpt})
    if missing:
        raise CheckpointError(f"{ckpt.name} looks like an open-clip model but lacks {len(missing)} tensors "
                              f"(e.g. {', '.join(missing[:3])})", "the file is incomplete; download it again")
    return _remapped(ckpt, plan)


def describe_clip(ckpt: Checkpoint, layers: int) -> CLIPVisionSpec:
    """The spec of a normalized CLIP vision checkpoint, from its shapes (heads from config.json or the width)."""
    needed = ("tower.embeddings.class_embedding", "tower.embeddings.position_embedding.weight",
              "tower.pre_layrnorm.weight", "tower.encoder.layers.0.mlp.fc1.weight")
    missing = [k.removeprefix("tower.") for k in needed if k not in ckpt]
    if missing or layers < 2:
        raise DetectionError(f"{ckpt.name} looks like a vision transformer but is not a CLIP ViT OpenReel can use "
                             f"(lacks {', '.join(missing) or 'a second block'})",
                             "use CLIP ViT-H/14: ComfyUI's clip_vision_h.safetensors")
    dim = ckpt.shape("tower.embeddings.class_embedding")[0]
    patch = ckpt.shape("tower.embeddings.patch_embedding.weight")[-1]
    grid = round((ckpt.shape("tower.embeddings.position_embedding.weight")[0] - 1) ** 0.5)
    heads = _config_value(ckpt, dim, "num_attention_heads") or {768: 12, 1280: 16}.get(dim, max(1, dim // 64))
    return CLIPVisionSpec(
        hidden_size=dim, intermediate_size=ckpt.shape("tower.encoder.layers.0.mlp.fc1.weight")[0], num_layers=layers,
        num_heads=heads, patch_size=patch, image_size=grid * patch,
        eps=_config_value(ckpt, dim, "layer_norm_eps") or 1e-5,
        hidden_act=_config_value(ckpt, dim, "hidden_act") or "gelu")


def inspect_clip_vision(path: str | Path) -> tuple[Checkpoint, CLIPVisionSpec, str]:
    """Read headers only: (normalized checkpoint, spec, layout)."""
    raw = open_checkpoint(path)
    ckpt, layout, layers = _normalize_clip(raw)
    return ckpt, describe_clip(ckpt, layers), layout


def load_clip_vision(path: str | Path, dtype: str = "auto") -> ClipVisionHandle:
    """Detect and load a CLIP vision tower into the module cache; return its handle (`dtype` as for text)."""
    ckpt, spec, layout = inspect_clip_vision(path)
    weight_dtype, compute_dtype = _dtypes(dtype)
    handle = ClipVisionHandle(spec, layout, tuple(str(f) for f in ckpt.files), _stamps(ckpt),
                              weight_dtype, compute_dtype)
    MODULES.get_or_build(handle.weights_key, lambda: _build_clip(ckpt, handle))
    return handle


def clip_vision_module(handle: ClipVisionHandle) -> CLIPVisionEncoder:
    """The module behind `handle`, rebuilt from its files if the cache let it go."""
    return MODULES.get_or_build(handle.weights_key,
                                lambda: _build_clip(inspect_clip_vision(handle.files[0])[0], handle))


def encode_image(handle: ClipVisionHandle, images: torch.Tensor) -> torch.Tensor:
    """IMAGE [B, H, W, C] in 0..1 → Wan's CLIP tokens [B, 257, 1280] (ViT-H/14) on the CPU, one set per image."""
    module = clip_vision_module(handle)
    runtime.throw_if_interrupted()
    with _placed(module) as device:
        return module.encode(images.to(device)).cpu()


def _build_clip(ckpt: Checkpoint, handle: ClipVisionHandle) -> CLIPVisionEncoder:
    module = materialize(lambda: CLIPVisionEncoder(handle.spec), ckpt, weight_dtype=handle.weight_dtype,
                         compute_dtype=COMPUTE_DTYPES[handle.compute_dtype], device=runtime.offload_device(),
                         weight_params=clip_vision.WEIGHT_PARAMS, fp32_params=clip_vision.FP32_PARAMS)
    module.restore_position_ids()
    return module


# ----------------------------------------------------------------------------------------- shared
def _dtypes(dtype: str) -> tuple[str, str]:
    """The loaders' single dtype choice → (weight dtype for `materialize`, compute dtype name)."""
    if dtype not in DTYPE_CHOICES:
        raise ValueError(f"dtype must be one of {DTYPE_CHOICES}, not {dtype!r}")
    compute = COMPUTE_DTYPES[dtype] if dtype in COMPUTE_DTYPES else \
        resolve_compute_dtype("auto", runtime.torch_device())
    return dtype, next(name for name, d in COMPUTE_DTYPES.items() if d == compute)


def _stamps(ckpt: Checkpoint) -> tuple[tuple[int, int], ...]:
    return tuple((f.stat().st_size, f.stat().st_mtime_ns) for f in ckpt.files)


@contextmanager
def _placed(module: nn.Module):
    """Run a block with `module` on the compute device (through the memory manager), then offload it."""
    device = runtime.load_model(module)
    try:
        yield device
    finally:
        runtime.offload_model(module)
