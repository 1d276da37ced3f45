"""HunyuanVideo's text encoders (the Llama-3 language model of LLaVA-Llama-3-8B and CLIP-L's text tower): networks
against transformers, every file layout users have, tokenizers, and the prompt recipe against diffusers'
`HunyuanVideoPipeline._get_llama_prompt_embeds` / `_get_clip_prompt_embeds` — on tiny random weights and tiny
tokenizers built here with Llama-3's and CLIP's pipelines (the Llama-3 one splits HunyuanVideo's template into the
real tokenizer's 95 tokens: one vocabulary entry per Llama-3 pre-token, as in the real vocabulary).

The Llama-3 reference tokenizer is transformers' plain fast tokenizer over the tokenizer.json (what transformers 4's
fast tokenizers and `AutoTokenizer` run). transformers 5's `LlamaTokenizerFast.from_pretrained` does not: it rebuilds
a SentencePiece-style (Metaspace) pipeline over Llama-3's byte-level vocabulary and splits prompts differently.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from openreel import runtime
from openreel.encoding import prompts as prompt_encoding
from openreel.encoding.prompts import encode_prompts, encode_text
from openreel.errors import DetectionError, InputError
from openreel.handles import TextEncoderHandle
from openreel.model_loaders.cache import MODULES
from openreel.model_loaders.checkpoint import Checkpoint, TensorInfo
from openreel.model_loaders.clip_vision import load_clip_vision
from openreel.model_loaders.core import module_of
from openreel.model_loaders.dit import load_dit
from openreel.model_loaders.identify import identify
from openreel.model_loaders.inspect import inspect_path
from openreel.model_loaders.text_encoder import load_text_encoder
from openreel.models.text.clip_text import CLIPTextEncoder, CLIPTextSpec
from openreel.models.text.llama import TEMPLATE_TOKENS, VIDEO_TEMPLATE, LlamaSpec, LlamaTextEncoder
from openreel.models.text.tokenizer import find_tokenizer, load_tokenizer
from openreel.models.text.umt5 import UMT5Spec
from openreel.nodes.encode import OpenReelTextEncode
from openreel.synthetic import TINY_CLIP_TEXT, TINY_LLAMA, tiny_clip_tokenizer, tiny_llama3_tokenizer

PROMPTS = ["a red cat walks on the grass", "Camera slowly: über 日本 video, it's realistic!", "",
           "the dog walks " * 120]   # the last is longer than 256 tokens: truncated

# Tiny Llama: head_dim 128 (what files without a config.json are read with), GQA 2 query / 1 key-value head,
# 5 layers of which 3 run. The LLaVA folder's model has 4 / 2 heads of 64, which only its config.json tells.
LLAMA_CFG = {**TINY_LLAMA, "num_hidden_layers": 5}
# Tiny CLIP text: heads of 64, as CLIP-L's (files without a config.json are read with width / 64 heads).
CLIP_CFG = {**TINY_CLIP_TEXT, "num_hidden_layers": 3}
LLAMA_LINEARS = r"layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight"


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest deviation relative to the largest reference value."""
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def _perturb(model: torch.nn.Module) -> torch.nn.Module:
    """Norm weights and biases away from their 1 / 0 initialization, so a wrong mapping cannot hide."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """An empty models dir, no ComfyUI around, clean module, tokenizer and prompt caches for every test."""
    runtime.set_models_dir(tmp_path / "models")
    monkeypatch.setattr(runtime, "comfy_package_dir", lambda: None)
    MODULES.clear()
    load_tokenizer.cache_clear()
    prompt_encoding._PROMPT_CACHE.clear()
    yield
    runtime.set_models_dir(None)
    MODULES.clear()


# ----------------------------------------------------------------------------------------- tiny tokenizers
@pytest.fixture(scope="module")
def llama_tokenizer(tmp_path_factory) -> Path:
    """tokenizer.json of the synthetic set's tiny Llama-3-style tokenizer (openreel.synthetic)."""
    path = tiny_llama3_tokenizer(tmp_path_factory.mktemp("llama_tokenizer") / "tokenizer.json")
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(path))
    assert len(tok.encode(VIDEO_TEMPLATE.split("{}")[0]).ids) == TEMPLATE_TOKENS  # as the real tokenizer
    assert tok.get_vocab_size() <= LLAMA_CFG["vocab_size"]
    return path


@pytest.fixture(scope="module")
def clip_vocab(tmp_path_factory) -> Path:
    """A folder with the synthetic set's tiny CLIP vocab.json + merges.txt (ComfyUI's sd1_tokenizer layout)."""
    folder = tiny_clip_tokenizer(tmp_path_factory.mktemp("clip_tokenizer"))
    assert len(json.loads((folder / "vocab.json").read_text())) <= CLIP_CFG["vocab_size"]
    return folder


def _put(source: Path, folder: Path) -> None:
    """Copy a tokenizer (a tokenizer.json, or a folder's vocab.json + merges.txt) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in [source] if source.is_file() else [source / "vocab.json", source / "merges.txt"]:
        shutil.copy(f, folder / f.name)


# ----------------------------------------------------------------------------------------- tiny models
def _llama(**over):
    from transformers import LlamaConfig, LlamaModel

    return _perturb(LlamaModel(LlamaConfig(**{**LLAMA_CFG, **over})))


def _clip_text(eos_token_id: int = 2):
    from transformers import CLIPTextConfig, CLIPTextModel

    return _perturb(CLIPTextModel(CLIPTextConfig(**{**CLIP_CFG, "eos_token_id": eos_token_id})))


def _llama_reference(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-3]


def _ids_and_mask(vocab: int, lengths=(40, 23), length=40):
    ids = torch.randint(0, vocab, (len(lengths), length))
    mask = (torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids, mask


# ----------------------------------------------------------------------------------------- networks
def test_llama_network_equals_transformers_third_last_hidden_state():
    reference = _llama()
    spec = LlamaSpec(vocab_size=LLAMA_CFG["vocab_size"], hidden_size=256, intermediate_size=96, num_layers=5, num_heads=2,
                     num_kv_heads=1, head_dim=128)
    ours = LlamaTextEncoder(spec).eval()
    state = {k: v for k, v in reference.state_dict().items() if not re.match(r"(layers\.[34]\.|norm\.)", k)}
    ours.load_state_dict(state)  # strict: the last two layers and the final norm are not even built
    assert len(ours.layers) == 3
    ids, mask = _ids_and_mask(LLAMA_CFG["vocab_size"])
    with torch.no_grad():
        assert _relative(ours(ids, mask), _llama_reference(reference, ids, mask)) <= 1e-5  # padding rows too


@pytest.mark.parametrize("eos_token_id", [2, 319])
def test_clip_text_network_equals_transformers_pooled_output(eos_token_id):
    """Both of transformers' pooling rules: openai's configs (eos 2: the largest id) and fixed ones (the first
    <|endoftext|>); the ids put a larger id before the end token, so the two rules pick different tokens."""
    reference = _clip_text(eos_token_id)
    spec = CLIPTextSpec(vocab_size=CLIP_CFG["vocab_size"], hidden_size=128, intermediate_size=256, num_layers=3, num_heads=2,
                        eos_token_id=eos_token_id)
    ours = CLIPTextEncoder(spec).eval()
    ours.load_state_dict(reference.state_dict())
    ids = torch.randint(0, 300, (2, 77))
    ids[:, 30], ids[:, 20] = 319, 317
    with torch.no_grad():
        expected = reference(input_ids=ids)
        hidden, pooled = ours(ids)
    assert _relative(hidden, expected.last_hidden_state) <= 1e-5
    assert _relative(pooled, expected.pooler_output) <= 1e-5


# ----------------------------------------------------------------------------------------- Llama layouts
def _comfy_llama(reference, path: Path, storage: str):
    """ComfyUI's llava_llama3_fp16 / llava_llama3_fp8_scaled layout (`model.` names; fp8: the linears in fp8 with a
    per-tensor `scale_weight`, the `scaled_fp8` marker); returns the reference holding the stored values."""
    stored, rounded = {}, {}
    for key, value in reference.state_dict().items():
        if storage == "fp8_scaled" and re.fullmatch(LLAMA_LINEARS, key):
            scale = value.abs().amax() / 448.0
            stored["model." + key] = (value / scale).to(torch.float8_e4m3fn)
            stored["model." + key.replace(".weight", ".scale_weight")] = scale
            rounded[key] = stored["model." + key].float() * scale
        else:
            stored["model." + key] = value.half()
            rounded[key] = value.half().float()
    if storage == "fp8_scaled":
        stored["scaled_fp8"] = torch.tensor([], dtype=torch.float8_e4m3fn)
    save_file(stored, path)
    same = _llama()
    same.load_state_dict(rounded)
    return same


def _llava_folder(folder: Path, tokenizer: Path):
    """xtuner/llava-llama-3-8b-v1_1-transformers: two shards + index, `language_model.model.` names, a vision
    tower and projector beside, the heads only in config.json's text_config."""
    reference = _llama(num_attention_heads=4, num_key_value_heads=2, head_dim=64)
    tensors = {"language_model.model." + k: v for k, v in reference.state_dict().items()}
    tensors["language_model.lm_head.weight"] = torch.zeros(LLAMA_CFG["vocab_size"], 256)
    tensors.update({"vision_tower.vision_model.embeddings.patch_embedding.weight": torch.zeros(32, 3, 14, 14),
                    "vision_tower.vision_model.embeddings.class_embedding": torch.zeros(32),
                    "vision_tower.vision_model.encoder.layers.0.self_attn.q_proj.weight": torch.zeros(32, 32),
                    "multi_modal_projector.linear_1.weight": torch.zeros(256, 32)})
    folder.mkdir(parents=True)
    keys = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for name, part in shards.items():
        save_file({k: tensors[k] for k in part}, folder / name)
    weight_map = {k: name for name, part in shards.items() for k in part}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    text_config = {**LLAMA_CFG, "num_attention_heads": 4, "num_key_value_heads": 2, "model_type": "llama"}
    del text_config["head_dim"]  # the v4-era config: head_dim = hidden_size / heads
    (folder / "config.json").write_text(json.dumps({"model_type": "llava", "text_config": text_config,
                                                    "vision_config": {"hidden_size": 32}}))
    _put(tokenizer, folder)
    return reference


@pytest.mark.parametrize("layout", ["comfyui_fp16", "comfyui_fp8_scaled", "official", "diffusers", "llava"])
def test_every_llama_layout_loads(llama_tokenizer, tmp_path, layout):
    reference = _llama()
    if layout.startswith("comfyui"):
        path = runtime.model_folders("text_encoders")[0] / f"llava_llama3_{layout[8:]}.safetensors"
        path.parent.mkdir(parents=True)
        reference = _comfy_llama(reference, path, layout[8:])
        _put(llama_tokenizer, path.parent / "tokenizers" / "llava-llama-3-8b")  # the shared tokenizer folder
    elif layout == "official":  # ckpts/text_encoder: a LlamaForCausalLM and its tokenizer, saved by preprocess
        from transformers import LlamaConfig, LlamaForCausalLM

        causal = LlamaForCausalLM(LlamaConfig(**LLAMA_CFG))
        causal.model.load_state_dict(reference.state_dict())
        path = tmp_path / "ckpts" / "text_encoder"
        causal.save_pretrained(path)
        _put(llama_tokenizer, path)
    elif layout == "diffusers":
        path = tmp_path / "HunyuanVideo" / "text_encoder"
        reference.save_pretrained(path)
        _put(llama_tokenizer, path.parent / "tokenizer")
    else:
        path = tmp_path / "llava-llama-3-8b-v1_1-transformers"
        reference = _llava_folder(path, llama_tokenizer)

    ids, mask = _ids_and_mask(LLAMA_CFG["vocab_size"])
    expected = _llama_reference(reference, ids, mask)
    for dtype in (("auto", "fp32") if layout == "comfyui_fp8_scaled" else ("fp32",)):
        handle = load_text_encoder(path, dtype)
        assert handle.spec.kind == "llama" and handle.tokenizer.kind == "json"
        assert handle.spec.num_layers == 5 and handle.spec.run_layers == 3
        module = module_of(handle)
        assert len(module.layers) == 3
        with torch.no_grad():
            assert _relative(module(ids, mask), expected) <= 1e-5
        if layout == "comfyui_fp8_scaled":  # auto: the fp8 weights and their scales are kept
            assert module.layers[0].mlp.down_proj.weight.dtype == (torch.float8_e4m3fn if dtype == "auto"
                                                                   else torch.float32)
    if layout == "llava":
        assert (handle.spec.num_heads, handle.spec.num_kv_heads, handle.spec.head_dim) == (4, 2, 64)


# ----------------------------------------------------------------------------------------- CLIP layouts
@pytest.mark.parametrize("layout", ["comfyui", "transformers5", "full_clip"])
def test_every_clip_text_layout_loads(clip_vocab, tmp_path, layout):
    """ComfyUI's clip_l.safetensors (`text_model.` names, projection and position ids dropped), a text_encoder_2
    folder saved by transformers 5 (no prefix; config eos 319: first-<|endoftext|> pooling) with ../tokenizer_2/,
    and a full CLIP model (openai's layout: text and vision towers, config eos 2, tokenizer.json beside), which the
    CLIP Vision Loader still reads as a vision encoder."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    reference = _clip_text(319 if layout == "transformers5" else 2)
    if layout == "comfyui":
        path = runtime.model_folders("text_encoders")[0] / "clip_l.safetensors"
        path.parent.mkdir(parents=True)
        tensors = {"text_model." + k: v for k, v in reference.state_dict().items()}
        tensors.update({"text_model.embeddings.position_ids": torch.arange(77)[None],
                        "text_projection.weight": torch.zeros(32, 128), "logit_scale": torch.zeros(())})
        save_file(tensors, path)
        _put(clip_vocab, path.parent / "tokenizers" / "clip-vit-large-patch14")
    elif layout == "transformers5":
        path = tmp_path / "HunyuanVideo" / "text_encoder_2"
        reference.save_pretrained(path)
        _put(clip_vocab, path.parent / "tokenizer_2")
    else:
        path = tmp_path / "clip-vit-large-patch14"
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      image_size=28, patch_size=14)
        full = CLIPModel(CLIPConfig(text_config={**CLIP_CFG, "eos_token_id": 2}, vision_config=vision))
        full.text_model.load_state_dict(reference.state_dict())
        full.save_pretrained(path)
        CLIPTokenizer.from_pretrained(clip_vocab).save_pretrained(path)  # tokenizer.json
        (path / "vocab.json").unlink(missing_ok=True)
        assert load_clip_vision(path, "fp32").spec.hidden_size == 32

    handle = load_text_encoder(path, "fp32")
    assert handle.spec.kind == "clip_text"
    assert handle.tokenizer.kind == ("json" if layout == "full_clip" else "bpe")
    ids, _ = load_tokenizer(handle.tokenizer)(PROMPTS)
    with torch.no_grad():
        expected = reference(input_ids=ids).pooler_output
        pooled = module_of(handle)(ids)[1]
    assert _relative(pooled, expected) <= 1e-5


def test_clip_tokenizer_from_vocab_and_merges_equals_transformers(clip_vocab, tmp_path):
    from transformers import CLIPTokenizer

    reference = CLIPTokenizer.from_pretrained(clip_vocab)
    reference.save_pretrained(tmp_path / "json")
    ours = [load_tokenizer(find_tokenizer("clip_text", [], [folder / "model.safetensors"]))
            for folder in (clip_vocab, tmp_path / "json")]
    expected = reference(PROMPTS + ["  A  RED\tcat  "], padding="max_length", max_length=77, truncation=True,
                         return_tensors="pt")
    for tokenizer in ours:
        ids, mask = tokenizer(PROMPTS + ["  A  RED\tcat  "])
        assert torch.equal(ids, expected.input_ids) and torch.equal(mask, expected.attention_mask)
    assert ids[3, 76] == tokenizer.backend.token_to_id("<|endoftext|>")  # truncated, the end token kept


# ----------------------------------------------------------------------------------------- the recipe
def test_hunyuan_recipe_equals_diffusers(llama_tokenizer, clip_vocab, tmp_path):
    """Token ids, masks and embeddings of HunyuanVideo's two encoders equal diffusers' pipeline methods (the template
    crop included; ours keeps the rows where diffusers' mask is 1); the Text Encode node returns the same."""
    from references import require

    require("diffusers")
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import (DEFAULT_PROMPT_TEMPLATE,
                                                                          HunyuanVideoPipeline)
    from transformers import CLIPTokenizer, PreTrainedTokenizerFast

    assert (VIDEO_TEMPLATE, TEMPLATE_TOKENS) == (DEFAULT_PROMPT_TEMPLATE["template"],
                                                 DEFAULT_PROMPT_TEMPLATE["crop_start"])
    root = tmp_path / "HunyuanVideo"
    llama, clip = _llama(), _clip_text()
    llama.save_pretrained(root / "text_encoder")
    clip.save_pretrained(root / "text_encoder_2")
    _put(llama_tokenizer, root / "tokenizer")
    _put(clip_vocab, root / "tokenizer_2")
    pipe = SimpleNamespace(  # just what the two methods use
        text_encoder=llama, tokenizer=PreTrainedTokenizerFast(tokenizer_file=str(llama_tokenizer), pad_token="<pad>"),
        text_encoder_2=clip, tokenizer_2=CLIPTokenizer.from_pretrained(clip_vocab))
    with torch.no_grad():
        embeds, mask = HunyuanVideoPipeline._get_llama_prompt_embeds(pipe, PROMPTS, DEFAULT_PROMPT_TEMPLATE,
                                                                     device=torch.device("cpu"), dtype=torch.float32)
        pooled = HunyuanVideoPipeline._get_clip_prompt_embeds(pipe, PROMPTS, device=torch.device("cpu"),
                                                              dtype=torch.float32)
    te, te2 = load_text_encoder(root / "text_encoder", "fp32"), load_text_encoder(root / "text_encoder_2", "fp32")

    texts = [VIDEO_TEMPLATE.format(p) for p in PROMPTS]
    ids, ours_mask = load_tokenizer(te.tokenizer)(texts)
    expected = pipe.tokenizer(texts, max_length=TEMPLATE_TOKENS + 256, padding="max_length", truncation=True,
                              return_tensors="pt")
    assert torch.equal(ids, expected.input_ids) and torch.equal(ours_mask, expected.attention_mask)
    assert torch.equal(ours_mask[:, TEMPLATE_TOKENS:], mask) and mask[3].all()  # the long prompt fills 256
    ids_2, _ = load_tokenizer(te2.tokenizer)(PROMPTS)
    assert torch.equal(ids_2, pipe.tokenizer_2(PROMPTS, padding="max_length", max_length=77, truncation=True,
                                               return_tensors="pt").input_ids)

    rows, vectors = encode_text(te, PROMPTS), encode_text(te2, PROMPTS)
    for b in range(len(PROMPTS)):
        assert rows[b].shape == (1, int(mask[b].sum()), 256)
        assert _relative(rows[b][0], embeds[b][mask[b].bool()]) <= 1e-5
        assert vectors[b].shape == (1, 128) and _relative(vectors[b][0], pooled[b]) <= 1e-5
    assert rows[2].shape[1] == 1  # an empty prompt leaves the template's closing <|eot_id|>

    node_embeds = OpenReelTextEncode().encode(te, PROMPTS[0], PROMPTS[1], te2)[0]
    assert torch.equal(node_embeds.positive, rows[0]) and torch.equal(node_embeds.negative, rows[1])
    assert torch.equal(node_embeds.positive_pooled, vectors[0]) and torch.equal(node_embeds.negative_pooled,
                                                                                vectors[1])
    assert node_embeds.positive_mask is None and node_embeds.negative_mask is None
    # The official code strips the prompt before templating it (diffusers does not).
    assert torch.equal(encode_text(te, ["  " + PROMPTS[0] + "\n"])[0], rows[0])


def test_prompts_are_cached_per_encoder_and_prompt(llama_tokenizer, clip_vocab, tmp_path, monkeypatch):
    root = tmp_path / "HunyuanVideo"
    _llama().save_pretrained(root / "text_encoder")
    _clip_text().save_pretrained(root / "text_encoder_2")
    _put(llama_tokenizer, root / "tokenizer")
    _put(clip_vocab, root / "tokenizer_2")
    te, te2 = load_text_encoder(root / "text_encoder", "fp32"), load_text_encoder(root / "text_encoder_2", "fp32")
    calls = []
    real = prompt_encoding.encode_text
    monkeypatch.setattr(prompt_encoding, "encode_text", lambda h, p: calls.append((h.spec.kind, list(p))) or real(h, p))
    first = encode_prompts(te, "a cat", "a dog", te2)
    second = encode_prompts(te, "a cat", "a red dog", te2)
    assert calls == [("llama", ["a cat", "a dog"]), ("clip_text", ["a cat", "a dog"]),
                     ("llama", ["a red dog"]), ("clip_text", ["a red dog"])]
    assert torch.equal(first.positive, second.positive) and torch.equal(first.positive_pooled,
                                                                        second.positive_pooled)


# ----------------------------------------------------------------------------------------- identify and errors
def _keys(*parts: tuple[str, dict[str, tuple[int, ...]]]) -> Checkpoint:
    """A header-only checkpoint holding each (prefix, {name: shape}) part."""
    infos = {prefix + k: TensorInfo(shape, torch.float16) for prefix, names in parts for k, shape in names.items()}
    return Checkpoint((Path("model.safetensors"),), infos, {})


LLAMA_KEYS = {"embed_tokens.weight": (512, 256), "layers.0.self_attn.q_proj.weight": (256, 256),
              "layers.0.post_attention_layernorm.weight": (256,), "norm.weight": (256,)}
CLIP_TEXT_KEYS = {"embeddings.token_embedding.weight": (320, 128), "final_layer_norm.weight": (128,),
                  "encoder.layers.0.self_attn.q_proj.weight": (128, 128)}
CLIP_VISION_KEYS = {"embeddings.patch_embedding.weight": (32, 3, 14, 14), "embeddings.class_embedding": (32,),
                    "encoder.layers.0.self_attn.q_proj.weight": (32, 32)}
UMT5_KEYS = {"shared.weight": (640, 32), "encoder.block.0.layer.0.SelfAttention.q.weight": (32, 32)}


FULL_CLIP = (("text_model.", CLIP_TEXT_KEYS), ("vision_model.", CLIP_VISION_KEYS))


@pytest.mark.parametrize("parts, prefer, what", [
    ((("", LLAMA_KEYS),), "", "a Llama text encoder"),
    ((("model.", LLAMA_KEYS),), "", "a Llama text encoder"),
    ((("language_model.model.", LLAMA_KEYS), ("vision_tower.vision_model.", CLIP_VISION_KEYS)), "",
     "a Llama text encoder"),
    ((("text_model.", CLIP_TEXT_KEYS),), "", "a CLIP text encoder"),
    ((("", CLIP_TEXT_KEYS),), "clip_vision", "a CLIP text encoder"),
    ((("vision_model.", CLIP_VISION_KEYS),), "text_encoder", "a CLIP vision encoder"),
    (FULL_CLIP, "", "a CLIP vision encoder"),
    (FULL_CLIP, "text_encoder", "a CLIP text encoder"),
    ((("", UMT5_KEYS),), "", "a text encoder (T5 family)"),
])
def test_identify_tells_the_encoders_apart(parts, prefer, what):
    assert identify(_keys(*parts), prefer).what.startswith(what)


def test_wrong_files_say_what_they_are_and_where_they_belong(tmp_path):
    llama, clip = _llama(), _clip_text()
    save_file({"model." + k: v for k, v in llama.state_dict().items()}, tmp_path / "llava_llama3.safetensors")
    save_file({"text_model." + k: v for k, v in clip.state_dict().items()}, tmp_path / "clip_l.safetensors")
    qwen = {"model." + k: v for k, v in llama.state_dict().items()}
    qwen["model.layers.0.self_attn.k_proj.bias"] = torch.zeros(128)
    save_file(qwen, tmp_path / "qwen.safetensors")
    cases = [(load_clip_vision, "clip_l.safetensors", "is a CLIP text encoder, not a CLIP vision encoder",
              "Text Encoder Loader"),
             (load_dit, "llava_llama3.safetensors", "is a Llama text encoder", "Text Encoder Loader"),
             (load_clip_vision, "llava_llama3.safetensors", "is a Llama text encoder", "Text Encoder Loader"),
             (load_text_encoder, "qwen.safetensors", "attention biases", "llava_llama3_fp16")]
    for load, name, what, todo in cases:
        with pytest.raises(DetectionError) as err:
            load(tmp_path / name)
        assert what in err.value.what and todo in err.value.todo, (name, str(err.value))
    assert inspect_path(tmp_path / "llava_llama3.safetensors")[1].strip().startswith("a Llama decoder (5 layers")
    assert "CLIP text encoder" in inspect_path(tmp_path / "clip_l.safetensors")[0]


def test_missing_tokenizer_names_the_folders_and_what_to_put_where(llama_tokenizer, clip_vocab, tmp_path,
                                                                   monkeypatch):
    folder = tmp_path / "te"
    folder.mkdir()
    save_file({"model." + k: v for k, v in _llama().state_dict().items()}, folder / "llava_llama3.safetensors")
    save_file({"text_model." + k: v for k, v in _clip_text().state_dict().items()}, folder / "clip_l.safetensors")
    shared = runtime.model_folders("text_encoders")[0] / "tokenizers"
    for name, wanted, repo in (("llava_llama3", "tokenizer.json", "xtuner/llava-llama-3-8b-v1_1-transformers"),
                               ("clip_l", "vocab.json + merges.txt", "openai/clip-vit-large-patch14")):
        with pytest.raises(InputError) as err:
            load_text_encoder(folder / f"{name}.safetensors")
        assert str(folder) in err.value.what and str(tmp_path / "tokenizer") in err.value.what
        assert wanted in err.value.todo and repo in err.value.todo and str(shared) in err.value.todo
        assert "inside ComfyUI" in err.value.todo

    # Another encoder's tokenizer beside the weights is passed over, and named if nothing else fits.
    _put(llama_tokenizer, folder)
    with pytest.raises(InputError, match="passed over.*not a CLIP tokenizer"):
        load_text_encoder(folder / "clip_l.safetensors")
    assert load_text_encoder(folder / "llava_llama3.safetensors").tokenizer.path == str(folder / "tokenizer.json")

    # ComfyUI's bundled copies (comfy/text_encoders/llama_tokenizer/, comfy/sd1_tokenizer/).
    (folder / "tokenizer.json").unlink()
    comfy = tmp_path / "ComfyUI" / "comfy"
    _put(llama_tokenizer, comfy / "text_encoders" / "llama_tokenizer")
    _put(clip_vocab, comfy / "sd1_tokenizer")
    monkeypatch.setattr(runtime, "comfy_package_dir", lambda: comfy)
    bundled = comfy / "text_encoders" / "llama_tokenizer" / "tokenizer.json"
    assert find_tokenizer("llama", [], [folder / "x"]).path == str(bundled)
    assert find_tokenizer("clip_text", [], [folder / "x"]).path == str(comfy / "sd1_tokenizer" / "vocab.json")


def test_a_llama_tokenizer_that_splits_the_template_otherwise_is_refused(llama_tokenizer, tmp_path):
    from tokenizers import Tokenizer

    backend = Tokenizer.from_file(str(llama_tokenizer))
    backend.post_processor = None  # no <|begin_of_text|>: every prompt would be cropped one token late
    (tmp_path / "tok").mkdir()
    backend.save(str(tmp_path / "tok" / "tokenizer.json"))
    with pytest.raises(InputError, match="94 tokens, not 95"):
        find_tokenizer("llama", [], [tmp_path / "tok" / "llava_llama3.safetensors"])


def _handle(spec) -> TextEncoderHandle:
    return TextEncoderHandle(spec, (), (), "auto", "fp32")


@pytest.mark.parametrize("first, second, what, todo", [
    (UMT5Spec(), CLIPTextSpec(), "takes no second encoder", "leave text_encoder_2 empty"),
    (LlamaSpec(), None, "pairs with CLIP-L as text_encoder_2 for the pooled vector; text_encoder_2 is empty",
     "clip_l.safetensors"),
    (LlamaSpec(), UMT5Spec(), "text_encoder_2 is umT5-XXL", "connect it to text_encoder_2"),
    (LlamaSpec(), LlamaSpec(), "text_encoder_2 is LLaVA-Llama-3-8B", "clip_l.safetensors"),
    (CLIPTextSpec(), None, "gives only HunyuanVideo's pooled vector", "CLIP-L (clip_l.safetensors) to text_encoder_2"),
])
def test_text_encode_node_refuses_encoders_that_do_not_pair(first, second, what, todo):
    with pytest.raises(InputError) as err:
        OpenReelTextEncode().encode(_handle(first), "a cat", "", None if second is None else _handle(second))
    assert err.value.what.startswith("OpenReel Text Encode: ") and what in err.value.what and todo in err.value.todo


def test_text_encode_node_inputs_keep_their_order():
    inputs = OpenReelTextEncode.INPUT_TYPES()
    assert list(inputs["required"]) == ["text_encoder", "prompt", "negative_prompt"]  # saved workflows still load
    assert list(inputs["optional"]) == ["text_encoder_2"]
    assert inputs["optional"]["text_encoder_2"][1]["tooltip"] == ("HunyuanVideo: CLIP-L (clip_l.safetensors) for "
                                                                  "the pooled vector; Step-Video: HunyuanCLIP "
                                                                  "(hunyuan_clip/); Wan: leave empty")
    assert "without classifier-free guidance" in inputs["required"]["negative_prompt"][1]["tooltip"]
