"""Text-encoder files → (our parameter names, spec, layout), one reader per encoder kind.

- umT5 (Wan): the official `models_t5_umt5-xxl-enc-bf16.pth` (`token_embedding`, `blocks.N.attn.q`, ...) and
  transformers / ComfyUI names (`shared.weight`, `encoder.block.N.layer.0.SelfAttention.q.weight`, ...; a full
  seq2seq umT5 loads its encoder).
- Llama (HunyuanVideo's LLaVA-Llama-3-8B language model): transformers' `LlamaModel` names under any prefix:
  none (diffusers `text_encoder/`), `model.` (ComfyUI's llava_llama3 files, the official `ckpts/text_encoder/`
  saved as a LlamaForCausalLM; its `lm_head` is dropped), `language_model.model.` (the LLaVA folder
  xtuner/llava-llama-3-8b-v1_1-transformers; its vision tower and projector are dropped). The last
  `skip_layers` layers and the final norm are dropped too: HunyuanVideo never reads them.
- CLIP text (HunyuanVideo's CLIP-L): `text_model.` names (ComfyUI's clip_l.safetensors, HF folders; a full CLIP
  model loads its text tower) or transformers 5's unprefixed ones.
- Step-LLM (Step-Video): the official `Step1Model` names (`tok_embeddings.word_embeddings`, `transformer.layers.N.
  {attention.wqkv, attention.wo, feed_forward.w1, feed_forward.w2, attention_norm, ffn_norm}`) under any prefix: the
  official step_llm/ folder (config.json beside) or a single file.
- BERT (Step-Video's HunyuanCLIP): transformers' `BertModel` names with or without `bert.` (the official
  hunyuan_clip/clip_text_encoder/ folder, a single file); the pooler and any pre-training heads are dropped.
Each takes any storage ComfyUI uses (16-bit, fp8, fp8_scaled with `scale_weight`: model_loaders/build.py reads the
scales). config.json values the shapes cannot give (heads, epsilons, rope θ) are read when a config beside the
weights describes a model of the same width (its `text_config` first: LLaVA and full CLIP configs keep it there).
"""
from __future__ import annotations

import re

from ..errors import DetectionError
from ..models.common.family import find_prefix, keep_under
from ..models.text.bert import BertSpec
from ..models.text.clip_text import LEGACY_EOS_ID, CLIPTextSpec
from ..models.text.llama import LlamaSpec
from ..models.text.stepllm import StepLLMSpec
from ..models.text.umt5 import UMT5Spec
from .checkpoint import Checkpoint, config_value, layer_count
from .identify import (BERT_ANCHORS, CLIP_TEXT_ANCHORS, LLAMA_ANCHORS, STEPLLM_ANCHORS, T5_HF_ANCHORS,
                       UMT5_OFFICIAL_ANCHORS)

UMT5_FILES = ("Wan needs umT5-XXL: models_t5_umt5-xxl-enc-bf16.pth, ComfyUI's umt5_xxl_*.safetensors or a "
              "transformers umT5 folder")
LLAMA_FILES = ("HunyuanVideo needs LLaVA-Llama-3-8B: ComfyUI's llava_llama3_fp16.safetensors or "
               "llava_llama3_fp8_scaled.safetensors, the official ckpts/text_encoder folder, diffusers' text_encoder "
               "folder or xtuner/llava-llama-3-8b-v1_1-transformers")
CLIP_FILES = ("HunyuanVideo needs CLIP-L: ComfyUI's clip_l.safetensors or the folder of "
              "openai/clip-vit-large-patch14 (diffusers' text_encoder_2)")
STEPLLM_FILES = ("Step-Video needs Step-LLM: the step_llm folder of stepfun-ai/stepvideo-t2v (or a single "
                 "safetensors file of it)")
BERT_FILES = ("Step-Video needs HunyuanCLIP: the hunyuan_clip folder of stepfun-ai/stepvideo-t2v (or its "
              "clip_text_encoder folder, or a single safetensors file of it)")


def text_config(ckpt: Checkpoint, width: int) -> dict:
    """The config.json beside the weights (its `text_config` if it has one) if it describes this width, else {}."""
    config = ckpt.config or {}
    scope = config.get("text_config") or config
    return scope if scope.get("hidden_size", width) == width else {}


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
    prefix = find_prefix(ckpt, UMT5_OFFICIAL_ANCHORS)
    if prefix is not None:
        return keep_under(ckpt, prefix).renamed(official_umt5_to_hf), "official"
    prefix = find_prefix(ckpt, T5_HF_ANCHORS)
    if prefix is not None:
        ckpt = keep_under(ckpt, prefix)
        tied_copy_only = "shared.weight" not in ckpt  # some exports keep only the encoder's copy of the embedding
        return ckpt.renamed(lambda k: _hf_encoder_key(k, tied_copy_only)), "hf"
    if "token_embedding.weight" in ckpt and "blocks.0.attn.q.weight" in ckpt:
        raise DetectionError(f"{ckpt.name} is a T5 encoder in the official layout with one position bias shared "
                             f"by all layers, not umT5", "Wan needs umT5-XXL: use models_t5_umt5-xxl-enc-bf16.pth "
                             "or ComfyUI's umt5_xxl_*.safetensors")
    raise DetectionError(f"{ckpt.name} is a T5-family file OpenReel cannot read as umT5", UMT5_FILES)


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
    layers = layer_count(ckpt.keys(), r"encoder\.block\.(\d+)\.")
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
        num_buckets=buckets, max_distance=config_value(ckpt, d_model, "relative_attention_max_distance") or 128,
        eps=config_value(ckpt, d_model, "layer_norm_epsilon") or 1e-6)


def read_umt5(raw: Checkpoint) -> tuple[Checkpoint, UMT5Spec, str]:
    ckpt, layout = _normalize_umt5(raw)
    return ckpt, describe_umt5(ckpt), layout


# ----------------------------------------------------------------------------------------- Llama
# Layers other decoders have and Llama has not, and what they make the file.
_NOT_LLAMA = (("layers.0.self_attn.k_proj.bias", "a decoder with attention biases (Qwen2 family)"),
              ("layers.0.self_attn.q_norm.weight", "a decoder with q/k norms (Qwen3 / Gemma-3 family)"),
              ("layers.0.post_feedforward_layernorm.weight", "a Gemma-2 decoder"))


def read_llama(raw: Checkpoint) -> tuple[Checkpoint, LlamaSpec, str]:
    """The language model under `LlamaTextEncoder` names (only the layers HunyuanVideo reads), its spec, layout."""
    prefix = find_prefix(raw, LLAMA_ANCHORS) or ""
    ckpt = keep_under(raw, prefix)
    for key, what in _NOT_LLAMA:
        if key in ckpt:
            raise DetectionError(f"{raw.name} is {what}, not Llama", LLAMA_FILES)
    needed = ("embed_tokens.weight", "layers.0.self_attn.q_proj.weight", "layers.0.self_attn.k_proj.weight",
              "layers.0.mlp.gate_proj.weight")
    missing = [k for k in needed if k not in ckpt]
    if missing:
        raise DetectionError(f"{raw.name} looks like a Llama decoder but lacks "
                             f"{', '.join(prefix + k for k in missing)}", "the file is incomplete; download it again")
    vocab, width = ckpt.shape("embed_tokens.weight")
    config = text_config(ckpt, width)
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise DetectionError(f"{raw.name} is a Llama with {rope.get('rope_type', rope.get('type'))!r} rotary "
                             f"scaling (Llama 3.1 or later), not the Llama-3 HunyuanVideo uses", LLAMA_FILES)
    heads_in_config = config.get("num_attention_heads")
    head_dim = config.get("head_dim") or (width // heads_in_config if heads_in_config else 128)
    spec = LlamaSpec(
        vocab_size=vocab, hidden_size=width, intermediate_size=ckpt.shape("layers.0.mlp.gate_proj.weight")[0],
        num_layers=layer_count(ckpt.keys(), r"layers\.(\d+)\."),
        num_heads=ckpt.shape("layers.0.self_attn.q_proj.weight")[0] // head_dim,
        num_kv_heads=ckpt.shape("layers.0.self_attn.k_proj.weight")[0] // head_dim, head_dim=head_dim,
        rope_theta=float(rope.get("rope_theta") or config.get("rope_theta") or 500000.0),
        eps=config.get("rms_norm_eps") or 1e-5)
    if spec.run_layers < 1:
        raise DetectionError(f"{raw.name} holds {spec.num_layers} Llama layers; HunyuanVideo reads the state "
                             f"{spec.skip_layers} layers before the last", LLAMA_FILES)

    def kept(key: str) -> str | None:
        """Embedding and the layers that run (with their fp8 scales); None for the rest (final norm, head, ...)."""
        layer = re.match(r"layers\.(\d+)\.", key)
        if layer is None:
            return key if key.startswith("embed_tokens.") else None
        return key if int(layer.group(1)) < spec.run_layers and not key.endswith("rotary_emb.inv_freq") else None
    return ckpt.renamed(kept), spec, "hf"


# ----------------------------------------------------------------------------------------- CLIP text
def read_clip_text(raw: Checkpoint) -> tuple[Checkpoint, CLIPTextSpec, str]:
    """The text tower under `CLIPTextEncoder` names, its spec, layout (its vision tower, projections dropped)."""
    prefix = find_prefix(raw, CLIP_TEXT_ANCHORS) or ""
    tower = ("embeddings.token_embedding.", "embeddings.position_embedding.", "encoder.layers.", "final_layer_norm.")
    ckpt = keep_under(raw, prefix).renamed(lambda k: k if k.startswith(tower) else None)
    needed = ("embeddings.position_embedding.weight", "encoder.layers.0.mlp.fc1.weight", "final_layer_norm.weight")
    missing = [k for k in needed if k not in ckpt]
    if missing:
        raise DetectionError(f"{raw.name} looks like a CLIP text encoder but lacks "
                             f"{', '.join(prefix + k for k in missing)}", "the file is incomplete; download it again")
    vocab, width = ckpt.shape("embeddings.token_embedding.weight")
    config = text_config(ckpt, width)
    spec = CLIPTextSpec(
        vocab_size=vocab, hidden_size=width, intermediate_size=ckpt.shape("encoder.layers.0.mlp.fc1.weight")[0],
        num_layers=layer_count(ckpt.keys(), r"encoder\.layers\.(\d+)\."),
        num_heads=config.get("num_attention_heads") or max(1, width // 64),
        max_positions=ckpt.shape("embeddings.position_embedding.weight")[0],
        eps=config.get("layer_norm_eps") or 1e-5, hidden_act=config.get("hidden_act") or "quick_gelu",
        eos_token_id=config.get("eos_token_id") or LEGACY_EOS_ID)
    return ckpt, spec, "hf"


def _missing(raw: Checkpoint, ckpt: Checkpoint, prefix: str, what: str, needed: tuple[str, ...]) -> None:
    """A DetectionError naming the tensors of `needed` that `ckpt` lacks (with the file's `prefix`)."""
    missing = [k for k in needed if k not in ckpt]
    if missing:
        raise DetectionError(f"{raw.name} looks like {what} but lacks {', '.join(prefix + k for k in missing)}",
                             "the file is incomplete; download it again")


# ----------------------------------------------------------------------------------------- Step-LLM
def read_stepllm(raw: Checkpoint) -> tuple[Checkpoint, StepLLMSpec, str]:
    """Step-LLM under `StepLLMTextEncoder` names, its spec (heads and epsilon from config.json when one describes
    this width, else heads of 128 and 1e-5), layout."""
    prefix = find_prefix(raw, STEPLLM_ANCHORS) or ""
    ckpt = keep_under(raw, prefix).renamed(
        lambda k: k if k.startswith(("tok_embeddings.", "transformer.layers.")) else None)
    layer = "transformer.layers.0."
    _missing(raw, ckpt, prefix, "Step-LLM", ("tok_embeddings.word_embeddings.weight", layer + "attention.wo.weight",
                                             layer + "feed_forward.w1.weight", layer + "attention_norm.weight"))
    vocab, width = ckpt.shape("tok_embeddings.word_embeddings.weight")
    config = text_config(ckpt, width)
    heads = config.get("num_attention_heads") or width // 128
    head_dim = width // heads
    groups, rest = divmod(ckpt.shape(layer + "attention.wqkv.weight")[0] - width, 2 * head_dim)
    if rest or groups < 1 or heads % groups:
        raise DetectionError(f"{raw.name}: its fused attention projection fits no grouping of {heads} heads of "
                             f"{head_dim}", "put the config.json of step_llm beside the weights, or use the "
                             "official step_llm folder")
    spec = StepLLMSpec(vocab_size=vocab, hidden_size=width, ffn_size=ckpt.shape(layer + "feed_forward.w2.weight")[1],
                       num_layers=layer_count(ckpt.keys(), r"transformer\.layers\.(\d+)\."), num_heads=heads,
                       num_groups=groups, eps=config.get("layernorm_epsilon") or 1e-5)
    return ckpt, spec, "official"


# ----------------------------------------------------------------------------------------- BERT (HunyuanCLIP)
def read_bert(raw: Checkpoint) -> tuple[Checkpoint, BertSpec, str]:
    """The BERT encoder under `BertTextEncoder` names (`bert.`), its spec (heads, epsilon and activation from
    config.json when one describes this width, else heads of 64, 1e-12 and GELU), layout."""
    prefix = find_prefix(raw, BERT_ANCHORS) or ""
    tower = keep_under(raw, prefix)
    _missing(raw, tower, prefix, "a BERT text encoder", ("embeddings.position_embeddings.weight",
                                                         "embeddings.token_type_embeddings.weight",
                                                         "encoder.layer.0.intermediate.dense.weight"))
    ckpt = tower.renamed(
        lambda k: "bert." + k if k.startswith(("embeddings.", "encoder.")) and not k.endswith("_ids") else None)
    vocab, width = ckpt.shape("bert.embeddings.word_embeddings.weight")
    config = text_config(ckpt, width)
    spec = BertSpec(
        vocab_size=vocab, hidden_size=width,
        intermediate_size=ckpt.shape("bert.encoder.layer.0.intermediate.dense.weight")[0],
        num_layers=layer_count(ckpt.keys(), r"bert\.encoder\.layer\.(\d+)\."),
        num_heads=config.get("num_attention_heads") or max(1, width // 64),
        max_positions=ckpt.shape("bert.embeddings.position_embeddings.weight")[0],
        type_vocab_size=ckpt.shape("bert.embeddings.token_type_embeddings.weight")[0],
        eps=config.get("layer_norm_eps") or 1e-12, hidden_act=config.get("hidden_act") or "gelu")
    return ckpt, spec, "hf"
