"""What any checkpoint is, from its keys (never its file name): one table for every kind of model file.

Entries are tried in order; the first that matches names the file's kind ("dit", "vae", "text_encoder",
"clip_vision", "lora"), what it is in words, where it belongs, and for DiTs and VAEs the family adapter that reads
it. Each loader asks `identify` and refuses a file of another kind with a message naming what it is and which
loader takes it. CLIP comes before T5: the official open-clip file also holds a text tower whose keys look like
T5's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import DetectionError
from ..models.common.family import find_prefix
from ..models.registry import dit_families, vae_families
from .checkpoint import Checkpoint

LOADERS = {
    "dit": "load it with OpenReel DiT Loader (put it in models/diffusion_models)",
    "vae": "load it with OpenReel VAE Loader (put it in models/vae)",
    "text_encoder": "load it with OpenReel Text Encoder Loader (put it in models/text_encoders)",
    "clip_vision": "load it with OpenReel CLIP Vision Loader (put it in models/clip_vision)",
    "lora": "apply it to a loaded DiT with the OpenReel LoRA node (put it in models/loras)",
}
NOUNS = {"dit": "a diffusion transformer", "vae": "a VAE", "text_encoder": "a text encoder",
         "clip_vision": "a CLIP vision encoder", "lora": "a LoRA"}
UNKNOWN = {**NOUNS, "dit": "a diffusion model"}   # "… is not a diffusion model OpenReel knows"

UMT5_OFFICIAL_ANCHORS = ("blocks.0.pos_embedding.embedding.weight",)
T5_HF_ANCHORS = ("encoder.block.0.layer.0.SelfAttention.q.weight",)
CLIP_OFFICIAL_ANCHORS = ("visual.transformer.0.attn.to_qkv.weight",)
CLIP_HF_ANCHORS = ("embeddings.patch_embedding.weight",)
LLAMA_ANCHORS = ("layers.0.post_attention_layernorm.weight",)
CLIP_TEXT_ANCHORS = ("embeddings.token_embedding.weight",)
STEPLLM_ANCHORS = ("transformer.layers.0.attention.wqkv.weight",)
BERT_ANCHORS = ("encoder.layer.0.attention.self.query.weight",)


@dataclass(frozen=True)
class Identity:
    kind: str
    what: str                 # e.g. "a Wan diffusion transformer"
    todo: str                 # where it belongs
    family: object = None     # the DiTFamily / VAEFamily adapter, when one reads this file
    runnable: bool = True     # False: recognized, but OpenReel cannot run it yet


def _any_fragment(*fragments: str) -> Callable[[Checkpoint], bool]:
    """Some key contains one of `fragments` (for names that only one kind of file uses anywhere in a key)."""
    return lambda ckpt: any(f in k for k in ckpt.keys() for f in fragments)


def _any_key(*names: str) -> Callable[[Checkpoint], bool]:
    """Some key is one of `names`, bare or under a prefix ending in '.' (so `double_blocks.0.attn.q.weight` is not
    `blocks.0.attn.q.weight`)."""
    return lambda ckpt: find_prefix(ckpt, names) is not None


def is_clip(ckpt: Checkpoint) -> bool:
    if find_prefix(ckpt, CLIP_OFFICIAL_ANCHORS) is not None:
        return True
    prefix = find_prefix(ckpt, CLIP_HF_ANCHORS)
    return (prefix is not None and prefix + "embeddings.class_embedding" in ckpt) or \
        _any_fragment("visual.transformer.", "vision_model.")(ckpt) or _any_key("visual.patch_embedding.weight")(ckpt)


def is_llama(ckpt: Checkpoint) -> bool:
    """Llama-style decoders (transformers names under any prefix: a LLaVA folder's language model too)."""
    prefix = find_prefix(ckpt, LLAMA_ANCHORS)
    return prefix is not None and prefix + "layers.0.self_attn.q_proj.weight" in ckpt


def is_clip_text(ckpt: Checkpoint) -> bool:
    """CLIP text towers (transformers names, `text_model.`-prefixed or not; a full CLIP model's text tower)."""
    prefix = find_prefix(ckpt, CLIP_TEXT_ANCHORS)
    return prefix is not None and prefix + "encoder.layers.0.self_attn.q_proj.weight" in ckpt


def is_stepllm(ckpt: Checkpoint) -> bool:
    """Step-Video's Step-LLM (the official `Step1Model` names under any prefix)."""
    prefix = find_prefix(ckpt, STEPLLM_ANCHORS)
    return prefix is not None and prefix + "transformer.layers.0.feed_forward.w2.weight" in ckpt


def is_bert(ckpt: Checkpoint) -> bool:
    """BERT text encoders (transformers' `BertModel` names, `bert.`-prefixed or not): Step-Video's HunyuanCLIP."""
    prefix = find_prefix(ckpt, BERT_ANCHORS)
    return prefix is not None and prefix + "embeddings.word_embeddings.weight" in ckpt


def is_t5(ckpt: Checkpoint) -> bool:
    """umT5 / T5 encoders: transformers names, Wan's official names (per-layer or shared position bias)."""
    return _any_key(*T5_HF_ANCHORS, *UMT5_OFFICIAL_ANCHORS, "blocks.0.attn.q.weight", "shared.weight")(ckpt)


def is_lora(ckpt: Checkpoint) -> bool:
    """Low-rank factors (ComfyUI / kohya, diffusers / PEFT names) or full-rank deltas (`diff`, `diff_b`, `diff_m`)."""
    return _any_fragment(".lora_A.", ".lora_B.", "lora_down.weight", "lora_up.weight", ".lora.down.weight")(ckpt) or \
        any(k.endswith((".diff", ".diff_b", ".diff_m")) for k in ckpt.keys())


# Kinds without an adapter: (kind, what, todo or None for the kind's loader, runnable, matcher), in order. The
# Llama row comes before CLIP vision (a LLaVA folder holds a CLIP vision tower beside its language model); a full
# CLIP model is a vision encoder unless a text-encoder loader asks (then its text tower is read).
_OTHER_KINDS = (
    ("text_encoder", "a Llama text encoder (HunyuanVideo's LLaVA-Llama-3)", None, True, is_llama),
    ("text_encoder", "Step-LLM (Step-Video's first text encoder)", None, True, is_stepllm),
    ("text_encoder", "a BERT text encoder (Step-Video's HunyuanCLIP)", None, True, is_bert),
    ("clip_vision", "a CLIP vision encoder", None, True, is_clip),
    ("text_encoder", "a CLIP text encoder", None, True, is_clip_text),
    ("text_encoder", "a text encoder (T5 family)", None, True, is_t5),
    ("lora", "a LoRA", None, True, is_lora),
    ("vae", "the Step-Video VAE version 1 (vae.safetensors, 16 latent channels)",
     "use Step-Video's vae_v2.safetensors, the VAE Step-Video-T2V works with", False,
     _any_key("encoder.conv_in.conv.weight")),  # the v2 file has its own family's anchors, tried first
    ("vae", "an image VAE (Stable Diffusion / Flux family)", "use the VAE of the video model (Wan2.1, Wan2.2 or HunyuanVideo)", False,
     _any_fragment("decoder.up.0.block.0.")),
    ("vae", "a video VAE", None, False,
     _any_fragment("decoder.upsamples.0.", "decoder.up_blocks.0.", "decoder.conv_in.weight", "post_quant_conv.weight")),
)


def _entries():
    for family in dit_families():
        yield "dit", lambda c, f=family: find_prefix(c, f.anchors) is not None, \
            lambda f=family: Identity("dit", f"a {f.title} diffusion transformer", LOADERS["dit"], f, f.runnable)
    for family in vae_families():
        yield "vae", lambda c, f=family: find_prefix(c, f.anchors) is not None, \
            lambda f=family: Identity("vae", f"a video VAE ({f.title})", LOADERS["vae"], f)
    for kind, what, todo, runnable, matches in _OTHER_KINDS:
        yield kind, matches, lambda k=kind, w=what, t=todo, r=runnable: Identity(k, w, t or LOADERS[k], None, r)


def identify(ckpt: Checkpoint, prefer: str = "") -> Identity | None:
    """What `ckpt` is, or None when no entry knows it. Entries of kind `prefer` are tried first: a combined file
    (e.g. a DiT with its VAE under a prefix) is what the loader asking for it wants."""
    entries = sorted(_entries(), key=lambda entry: entry[0] != prefer)
    return next((make() for kind, matches, make in entries if matches(ckpt)), None)


def expect(ckpt: Checkpoint, kind: str, supported: str) -> Identity:
    """The identity of `ckpt` if it is a `kind` file OpenReel can read; else a DetectionError that says what it is
    and where it belongs (`supported` lists what the loader takes, for files nothing recognizes)."""
    found = identify(ckpt, kind)
    if found is None:
        sample = ", ".join(sorted(ckpt.keys())[:5])
        raise DetectionError(f"{ckpt.name} is not {UNKNOWN[kind]} OpenReel knows (first keys: {sample})", supported)
    if found.kind != kind:
        raise DetectionError(f"{ckpt.name} is {found.what}, not {NOUNS[kind]}", found.todo)
    if not found.runnable:
        what = found.what if found.family is None else found.family.describe(found.family.normalize(ckpt)).description
        raise DetectionError(f"{ckpt.name} is {what}, which this version of OpenReel recognizes but cannot "
                             f"run yet", found.todo if found.todo != LOADERS[kind] else supported)
    return found
