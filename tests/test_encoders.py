"""umT5 text encoder, its tokenizer, and the CLIP vision encoder against the official Wan code, on tiny random weights.

The official modules come from `wan22` (`wan/modules/t5.py`, `wan/modules/animate/clip.py`). Importing them needs
what this CPU test machine may lack, supplied only while they load: `torch.cuda.current_device()` (a default
argument evaluated at import), `torchvision` (transforms the vision tower does not use) and `ftfy` (used only to
clean text, which these tests do not do through the official modules).
"""
from __future__ import annotations

import importlib.util
import json
import random
import re
import sys
import types
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from openreel import runtime
from openreel.errors import DetectionError, InputError
from openreel.encoding.images import encode_image
from openreel.encoding.prompts import encode_text
from openreel.model_loaders.clip_vision import load_clip_vision
from openreel.model_loaders.core import module_of
from openreel.model_loaders.text_encoder import load_text_encoder
from openreel.model_loaders.cache import MODULES
from openreel.models.text.tokenizer import (UMT5Tokenizer, clean_prompt, find_tokenizer, load_tokenizer,
                                            tokenizer_from_sentencepiece)

# Tiny umT5: 300 SentencePiece pieces + 300 sentinels fit a 640-row embedding.
T5_CFG = dict(vocab=640, dim=32, dim_attn=32, dim_ffn=48, num_heads=4, num_layers=2, num_buckets=8)
# Tiny ViT: width 128 → 2 heads (the loader's width // 64 rule when no config.json says otherwise).
CLIP_CFG = dict(image_size=56, patch_size=14, dim=128, mlp_ratio=4, out_dim=32, num_heads=2, num_layers=3)
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]  # the official CLIP transforms' constants
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# fp8 e4m3 keeps 3 mantissa bits: round-to-nearest leaves each weight within 2^-4 of its value (relative), an RMS
# relative error of at most 2^-4/sqrt(3) = 3.6% (2.8% measured). Summed over many weights these errors are
# independent, so a linear layer's output carries about the same relative RMS error; the two residual blocks of the
# tiny model compound it to 3.6-4.5% (measured over five seeds). 10% leaves twice that margin, while a scale that is
# misread or ignored puts the error far above 50%. The exactness of the fp8 path is checked separately, against the
# official model given the same dequantized weights (1e-5).
FP8_TOLERANCE = 0.1
# The umT5 linears ComfyUI stores in fp8 (attention and FFN projections).
UMT5_WEIGHTS = r"encoder\.block\.\d+\.layer\.(0\.SelfAttention\.[qkvo]|1\.DenseReluDense\.(wi_0|wi_1|wo))\.weight"


@contextmanager
def _import_shims():
    """What importing the official t5 / clip modules needs and this CPU test machine may lack, only while they load."""
    import transformers  # noqa: F401  (wan's tokenizers import it: it must load before the stubs go in)

    stubs = {}
    if importlib.util.find_spec("torchvision") is None:
        transforms = types.ModuleType("torchvision.transforms")
        stubs["torchvision"] = types.ModuleType("torchvision")
        stubs["torchvision"].transforms = transforms
        stubs["torchvision.transforms"] = transforms
    if importlib.util.find_spec("ftfy") is None:
        stubs["ftfy"] = types.ModuleType("ftfy")  # used by wan's tokenizers only when cleaning text
    added = [name for name in stubs if name not in sys.modules]
    sys.modules.update({name: stubs[name] for name in added})
    try:
        with mock.patch.object(torch.cuda, "current_device", return_value=0):
            yield
    finally:
        for name in added:
            sys.modules.pop(name, None)


def _official(module: str):
    from references import load_official

    with _import_shims():
        return load_official(module)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest deviation relative to the largest reference value."""
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def _relative_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _perturb(model: torch.nn.Module) -> torch.nn.Module:
    """Norm weights and biases away from their 1 / 0 initialization, so a wrong mapping cannot hide."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(autouse=True)
def _isolated(tmp_path):
    """An empty models dir (no stray shared tokenizer) and a clean module cache for every test."""
    runtime.set_models_dir(tmp_path / "models")
    MODULES.clear()
    load_tokenizer.cache_clear()
    yield
    runtime.set_models_dir(None)
    MODULES.clear()


# ----------------------------------------------------------------------------------------- tokenizer model
@pytest.fixture(scope="module")
def spiece(tmp_path_factory) -> bytes:
    """A tiny unigram SentencePiece model with umT5's special ids (pad 0, eos 1, bos 2, unk 3)."""
    import sentencepiece

    folder = tmp_path_factory.mktemp("spm")
    rng = random.Random(0)
    syllables = ["ka", "to", "ri", "mu", "se", "na", "po", "li", "ve", "da", "zo", "ba", "ne", "hi", "ku"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(400)]
    words += ["über", "café", "日本", "猫", "video", "cat", "dog", "the", "a", "red"]
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(3000)]
    (folder / "corpus.txt").write_text("\n".join(lines), encoding="utf-8")
    sentencepiece.SentencePieceTrainer.train(
        input=str(folder / "corpus.txt"), model_prefix=str(folder / "tiny"), vocab_size=300, model_type="unigram",
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, character_coverage=1.0, minloglevel=2)
    return (folder / "tiny.model").read_bytes()


PROMPTS = [
    "a red cat video",
    "  über   café\t日本猫\nkato rimu  ",
    "<extra_id_0> kato </s> rimu <pad> dog <extra_id_299>",
    "ｖｉｄｅｏ ｃａｔ ｄｏｇ",         # full width: NFKC through the model's precompiled normalizer
    "",
    "kato rimu the dog " * 30,        # longer than the test length: truncated, </s> kept
]


def test_tokenizer_ids_equal_transformers_t5(spiece, tmp_path):
    pytest.importorskip("google.protobuf")  # transformers' own SentencePiece conversion needs protobuf
    from transformers import T5Tokenizer

    (tmp_path / "spiece.model").write_bytes(spiece)
    reference = T5Tokenizer.from_pretrained(str(tmp_path), extra_ids=300)
    ours = UMT5Tokenizer(tokenizer_from_sentencepiece(spiece, "tiny"), "tiny")
    for length in (32, 512):
        ids, mask = ours(PROMPTS, length)
        expected = reference([clean_prompt(p) for p in PROMPTS], padding="max_length", truncation=True,
                             max_length=length, return_tensors="pt")
        assert torch.equal(ids, expected.input_ids)
        assert torch.equal(mask, expected.attention_mask)
    assert ids[-1, 511] == 0 and ids[-1, mask[-1].sum() - 1] == 1  # padded, and </s> closes every prompt


def test_tokenizer_unknown_piece_is_the_models_unk(spiece):
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_proto=spiece)
    ours = UMT5Tokenizer(tokenizer_from_sentencepiece(spiece, "tiny"), "tiny")
    text = "kato ☃ rimu xyz dog"
    ids, mask = ours([text], 32)
    assert ids[0, :mask.sum()].tolist() == processor.encode(text) + [1]
    assert 3 in ids[0].tolist()  # umT5's <unk>; transformers 5's T5Tokenizer would say 2 (<s>)


def test_prompt_cleaning_matches_official():
    from references import wan_root

    pytest.importorskip("ftfy")
    path = wan_root() / "modules" / "tokenizers.py"  # skips when wan22 is not installed
    module_spec = importlib.util.spec_from_file_location("wan_tokenizers_reference", path)
    official = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(official)
    for text in ["  a   cat\t\tsits\n", "Tom &amp;amp; Jerry", "“quoted” ‘text’", "a\u00a0b\u3000c", "",
                 "Ã©tÃ© (mojibake)"]:
        assert clean_prompt(text) == official.whitespace_clean(official.basic_clean(text)), text


def test_tokenizer_found_in_each_place(spiece, tmp_path):
    weights = tmp_path / "te" / "model.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(b"")
    # 1. inside the checkpoint
    assert find_tokenizer("umt5", ["shared.weight", "spiece_model"], [weights]).kind == "checkpoint"
    # 2. beside it, each place taking over from the one after it: the same folder, google/umt5-xxl/ (official
    #    Wan), ../tokenizer/ (diffusers)
    for folder in (tmp_path / "tokenizer", tmp_path / "te" / "google" / "umt5-xxl", tmp_path / "te"):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "spiece.model").write_bytes(spiece)
        assert find_tokenizer("umt5", ["shared.weight"], [weights]).path == str(folder / "spiece.model")
    tokenizer_from_sentencepiece(spiece, "tiny").save(str(tmp_path / "te" / "tokenizer.json"))
    found = find_tokenizer("umt5", ["shared.weight"], [weights])
    assert found.kind == "json"
    from_json, from_spm = load_tokenizer(found), UMT5Tokenizer(tokenizer_from_sentencepiece(spiece, "t"), "t")
    assert all(torch.equal(a, b) for a, b in zip(from_json(PROMPTS, 64), from_spm(PROMPTS, 64)))
    # 3. the shared folder under the text-encoder models folder
    elsewhere = tmp_path / "other" / "place" / "model.safetensors"
    shared = runtime.model_folders("text_encoders")[0] / "tokenizers" / "umt5-xxl"
    shared.mkdir(parents=True)
    (shared / "spiece.model").write_bytes(spiece)
    assert find_tokenizer("umt5", ["shared.weight"], [elsewhere]).path == str(shared / "spiece.model")


def test_missing_tokenizer_says_what_to_put_where(tmp_path):
    with pytest.raises(InputError) as err:
        find_tokenizer("umt5", ["shared.weight"], [tmp_path / "umt5.safetensors"])
    shared = runtime.model_folders("text_encoders")[0] / "tokenizers" / "umt5-xxl"
    assert "spiece.model" in err.value.todo and str(shared) in err.value.todo
    assert str(tmp_path) in err.value.what


# ----------------------------------------------------------------------------------------- umT5
def _official_t5():
    t5 = _official("t5")
    return _perturb(t5.T5Encoder(**T5_CFG, shared_pos=False, dropout=0.0))


def _hf_names(official: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official umT5 names → transformers / ComfyUI names, written out independently."""
    out = {}
    for key, value in official.items():
        parts = key.split(".")
        if key == "token_embedding.weight":
            out["shared.weight"] = value
        elif key == "norm.weight":
            out["encoder.final_layer_norm.weight"] = value
        else:
            n, rest = parts[1], ".".join(parts[2:])
            name = {"norm1.weight": "layer.0.layer_norm.weight", "norm2.weight": "layer.1.layer_norm.weight",
                    "attn.q.weight": "layer.0.SelfAttention.q.weight",
                    "attn.k.weight": "layer.0.SelfAttention.k.weight",
                    "attn.v.weight": "layer.0.SelfAttention.v.weight",
                    "attn.o.weight": "layer.0.SelfAttention.o.weight",
                    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
                    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",
                    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
                    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight"}[rest]
            out[f"encoder.block.{n}.{name}"] = value
    return out


def _ids_and_mask(lengths=(24, 9), length=24):
    ids = torch.randint(4, T5_CFG["vocab"], (len(lengths), length))
    mask = (torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]).long()
    return ids * mask, mask


def _check_umt5(handle, reference, ids, mask, tolerance, metric=_relative):
    context, lengths = module_of(handle).encode(ids, mask)
    expected = reference(ids, mask)
    assert lengths.tolist() == mask.sum(1).tolist()
    errors = []
    for b, n in enumerate(lengths.tolist()):
        errors.append(metric(context[b, :n], expected[b, :n]))
        assert torch.all(context[b, n:] == 0)
    assert max(errors) <= tolerance, errors
    return max(errors)


def test_umt5_official_pth_matches_official(spiece, tmp_path):
    official = _official_t5()
    torch.save(official.state_dict(), tmp_path / "models_t5_umt5-xxl-enc-bf16.pth")
    (tmp_path / "google" / "umt5-xxl").mkdir(parents=True)
    (tmp_path / "google" / "umt5-xxl" / "spiece.model").write_bytes(spiece)
    handle = load_text_encoder(tmp_path / "models_t5_umt5-xxl-enc-bf16.pth", "fp32")
    assert handle.layout == "official" and handle.tokenizer.kind == "spiece"
    assert handle.spec.num_heads == 4 and handle.spec.d_kv == 8 and handle.spec.num_buckets == 8
    with torch.no_grad():
        _check_umt5(handle, official, *_ids_and_mask(), 1e-5)

        # The whole Wan path at 512 tokens: the official encoder's outputs trimmed to each prompt's tokens.
        prompts = ["a red cat video", "kato rimu " * 40]
        encoded = encode_text(handle, prompts)
        ids, mask = load_tokenizer(handle.tokenizer)(prompts)
        expected = official(ids, mask)
        for b, n in enumerate(mask.sum(1).tolist()):
            assert encoded[b].shape == (1, n, T5_CFG["dim"])
            assert _relative(encoded[b][0], expected[b, :n]) <= 1e-5


def test_umt5_comfyui_and_hf_files_match_official(spiece, tmp_path):
    official = _official_t5()
    tensors = _hf_names(official.state_dict())
    ids, mask = _ids_and_mask()
    with torch.no_grad():
        # ComfyUI single file carrying its tokenizer
        save_file({**tensors, "spiece_model": torch.frombuffer(bytearray(spiece), dtype=torch.uint8)},
                  tmp_path / "umt5_xxl_fp32.safetensors")
        handle = load_text_encoder(tmp_path / "umt5_xxl_fp32.safetensors", "fp32")
        assert handle.layout == "hf" and handle.tokenizer.kind == "checkpoint"
        _check_umt5(handle, official, ids, mask, 1e-5)

        # transformers folder: config.json, two shards, a full seq2seq model (decoder and head ignored)
        folder = tmp_path / "umt5-hf"
        folder.mkdir()
        keys = sorted(tensors)
        extra = {"decoder.final_layer_norm.weight": torch.ones(T5_CFG["dim"]),
                 "lm_head.weight": torch.zeros(T5_CFG["vocab"], T5_CFG["dim"])}
        shards = {"model-00001-of-00002.safetensors": {k: tensors[k] for k in keys[: len(keys) // 2]},
                  "model-00002-of-00002.safetensors": {**{k: tensors[k] for k in keys[len(keys) // 2:]}, **extra}}
        for name, part in shards.items():
            save_file(part, folder / name)
        weight_map = {k: name for name, part in shards.items() for k in part}
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
        (folder / "config.json").write_text(json.dumps({"model_type": "umt5", "relative_attention_max_distance": 128}))
        (folder / "spiece.model").write_bytes(spiece)
        _check_umt5(load_text_encoder(folder, "fp32"), official, ids, mask, 1e-5)


@pytest.mark.parametrize("storage", ["bf16", "fp8_e4m3fn", "fp8_e4m3fn_scaled"])
def test_umt5_comfyui_quantized_files(spiece, tmp_path, storage):
    """ComfyUI's umt5_xxl_{bf16, fp8_e4m3fn, fp8_e4m3fn_scaled} layouts: linear weights stored low (the scaled one
    with a per-tensor `scale_weight` and the `scaled_fp8` marker), everything else as is."""
    official = _official_t5()
    names = _hf_names(official.state_dict())  # official name → same tensor under the HF name, in the same order
    stored, rounded = {"spiece_model": torch.frombuffer(bytearray(spiece), dtype=torch.uint8)}, {}
    if storage == "fp8_e4m3fn_scaled":
        stored["scaled_fp8"] = torch.tensor([], dtype=torch.float8_e4m3fn)
    for (official_key, value), key in zip(official.state_dict().items(), names):
        if not re.search(UMT5_WEIGHTS, key):
            stored[key] = value
        elif storage == "fp8_e4m3fn_scaled":
            scale = value.abs().amax() / 448.0
            stored[key] = (value / scale).to(torch.float8_e4m3fn)
            stored[key.replace(".weight", ".scale_weight")] = scale
            rounded[official_key] = stored[key].float() * scale
        else:
            stored[key] = value.to(torch.bfloat16 if storage == "bf16" else torch.float8_e4m3fn)
            rounded[official_key] = stored[key].float()
    path = tmp_path / f"umt5_xxl_{storage}.safetensors"
    save_file(stored, path)
    same_weights = _official_t5()
    same_weights.load_state_dict({**official.state_dict(), **rounded})

    ids, mask = _ids_and_mask()
    with torch.no_grad():
        for dtype in ("auto", "fp32"):  # auto: fp8 stays fp8 (scales kept); fp32: dequantized once at load
            handle = load_text_encoder(path, dtype)
            _check_umt5(handle, same_weights, ids, mask, 1e-5)  # the stored values and scales, read exactly
            if storage != "bf16":
                _check_umt5(handle, official, ids, mask, FP8_TOLERANCE, _relative_rms)
            wo = module_of(handle).encoder.block[0].layer[1].DenseReluDense.wo
            kept_fp8 = dtype == "auto" and storage != "bf16"
            assert wo.weight.dtype == (torch.float8_e4m3fn if kept_fp8 else torch.float32)


# ----------------------------------------------------------------------------------------- CLIP vision
def _official_clip():
    clip = _official("animate/clip")
    return _perturb(clip.VisionTransformer(**CLIP_CFG, pool_type="token", pre_norm=True, post_norm=False,
                                           activation="gelu"))


def _official_clip_tokens(visual, images: torch.Tensor) -> torch.Tensor:
    """Wan's `CLIPModel.visual` on IMAGE in 0..1: frames in [-1, 1], bicubic resize, to [0, 1], normalize."""
    frames = images.movedim(-1, 1) * 2 - 1
    size = (CLIP_CFG["image_size"],) * 2
    x = F.interpolate(frames, size=size, mode="bicubic", align_corners=False).mul_(0.5).add_(0.5)
    x = (x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return visual(x, use_31_block=True)


def _hf_clip_names(visual_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official open-clip visual names → transformers `CLIPVisionModelWithProjection` names."""
    dim = CLIP_CFG["dim"]
    out = {"vision_model.embeddings.class_embedding": visual_state["cls_embedding"].reshape(dim),
           "vision_model.embeddings.patch_embedding.weight": visual_state["patch_embedding.weight"],
           "vision_model.embeddings.position_embedding.weight": visual_state["pos_embedding"][0],
           "vision_model.embeddings.position_ids": torch.arange(visual_state["pos_embedding"].shape[1])[None],
           "visual_projection.weight": visual_state["head"].t().contiguous()}
    for ours, theirs in (("pre_layrnorm", "pre_norm"), ("post_layernorm", "post_norm")):
        for attr in ("weight", "bias"):
            out[f"vision_model.{ours}.{attr}"] = visual_state[f"{theirs}.{attr}"]
    for n in range(CLIP_CFG["num_layers"]):
        src, dst = f"transformer.{n}.", f"vision_model.encoder.layers.{n}."
        for attr in ("weight", "bias"):
            q, k, v = visual_state[f"{src}attn.to_qkv.{attr}"].chunk(3)
            out.update({f"{dst}self_attn.q_proj.{attr}": q, f"{dst}self_attn.k_proj.{attr}": k,
                        f"{dst}self_attn.v_proj.{attr}": v})
            for ours, theirs in (("layer_norm1", "norm1"), ("layer_norm2", "norm2"),
                                 ("self_attn.out_proj", "attn.proj"), ("mlp.fc1", "mlp.0"), ("mlp.fc2", "mlp.2")):
                out[f"{dst}{ours}.{attr}"] = visual_state[f"{src}{theirs}.{attr}"]
    return {k: v.contiguous() for k, v in out.items()}


def test_clip_vision_official_and_hf_files_match_official(tmp_path):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    visual = _official_clip()
    images = torch.rand(2, 40, 70, 3)  # not square: the whole frame is resized, nothing cropped
    with torch.no_grad():
        expected = _official_clip_tokens(visual, images)
        state = {f"visual.{k}": v for k, v in visual.state_dict().items()}
        state.update({"textual.token_embedding.weight": torch.zeros(10, 8), "log_scale": torch.zeros(())})
        torch.save(state, tmp_path / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth")
        handle = load_clip_vision(tmp_path / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth", "fp32")
        assert handle.layout == "official" and handle.spec.num_heads == 2 and handle.spec.tokens == 17
        tokens = encode_image(handle, images)
        assert tokens.shape == (2, 17, CLIP_CFG["dim"])
        assert _relative(tokens, expected) <= 1e-5

        hf = _hf_clip_names(visual.state_dict())
        save_file(hf, tmp_path / "clip_vision_h.safetensors")
        tokens = encode_image(load_clip_vision(tmp_path / "clip_vision_h.safetensors", "fp32"),
                                       images)
        assert _relative(tokens, expected) <= 1e-5

        # use_31_block is transformers' hidden_states[-2] of the full tower
        config = CLIPVisionConfig(hidden_size=CLIP_CFG["dim"], intermediate_size=4 * CLIP_CFG["dim"],
                                  num_hidden_layers=CLIP_CFG["num_layers"], num_attention_heads=2,
                                  image_size=CLIP_CFG["image_size"], patch_size=14, hidden_act="gelu")
        full = CLIPVisionModel(config).eval()
        tower = getattr(full, "vision_model", full)
        tower.load_state_dict({k.removeprefix("vision_model."): v for k, v in hf.items()
                               if k.startswith("vision_model.")}, strict=False)
        module = module_of(handle)
        hidden = full(pixel_values=module.preprocess(images), output_hidden_states=True).hidden_states
        assert _relative(hidden[-2], expected) <= 1e-5


def test_clip_vision_config_json_gives_heads(tmp_path):
    visual = _official_clip()
    folder = tmp_path / "clip"
    folder.mkdir()
    save_file(_hf_clip_names(visual.state_dict()), folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"vision_config": {"num_attention_heads": 4}}))
    handle = load_clip_vision(folder / "model.safetensors", "fp32")
    assert handle.spec.num_heads == 4  # a config.json beside the weights wins over the width rule


# ----------------------------------------------------------------------------------------- wrong files
def test_wrong_files_say_what_they_are(tmp_path):
    visual, t5 = _official_clip(), _official_t5()
    torch.save({f"visual.{k}": v for k, v in visual.state_dict().items()}, tmp_path / "clip.pth")
    torch.save(t5.state_dict(), tmp_path / "t5.pth")
    save_file({"head.modulation": torch.zeros(1, 2, 8), "patch_embedding.weight": torch.zeros(8, 16, 1, 2, 2)},
              tmp_path / "dit.safetensors")
    save_file({"decoder.conv_in.weight": torch.zeros(4, 4, 3, 3, 3)}, tmp_path / "vae.safetensors")
    save_file({"foo.weight": torch.zeros(2)}, tmp_path / "unknown.safetensors")
    shared_bias = _hf_names(t5.state_dict())
    del shared_bias["encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"]
    save_file(shared_bias, tmp_path / "t5xxl.safetensors")

    cases = [
        (load_text_encoder, "clip.pth", "CLIP vision encoder", "CLIP Vision Loader"),
        (load_clip_vision, "t5.pth", "text encoder", "Text Encoder Loader"),
        (load_text_encoder, "dit.safetensors", "Wan diffusion transformer", "DiT Loader"),
        (load_clip_vision, "dit.safetensors", "Wan diffusion transformer", "DiT Loader"),
        (load_text_encoder, "vae.safetensors", "VAE", "VAE Loader"),
        (load_clip_vision, "unknown.safetensors", "not a CLIP vision encoder", "clip_vision_h"),
        (load_text_encoder, "t5xxl.safetensors", "not umT5", "umT5-XXL"),
    ]
    for load, name, what, todo in cases:
        with pytest.raises(DetectionError) as err:
            load(tmp_path / name)
        assert what in err.value.what and todo in err.value.todo, (name, str(err.value))
