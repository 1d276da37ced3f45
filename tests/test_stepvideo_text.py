"""Step-Video's text encoders (Step-LLM and HunyuanCLIP): networks against the references, tokenizers, every file
layout, identification and wrong files, and the Text Encode node's recipe — on tiny random weights and tiny
tokenizers (openreel.synthetic_stepvideo).

The official Step-LLM (`stepvideo/text_encoder/stepllm.py` of $STEPVIDEO_T2V_PATH) runs through
`references.load_stepvideo` with two stand-ins: its `text_encoder.flashattention` (which calls the closed CUDA kernel
`torch.ops.Optimus.fwd`) is replaced by `_alibi_flash_attention`, StepFun's own fallback for that kernel call in
Step1 modeling code (causal square-root ALiBi, written here from that description), and
`transformers.modeling_utils.PretrainedConfig`, which the official file imports and transformers 5 no longer
exports there, is set to `transformers.PretrainedConfig` for the import. The official model is built empty
(`with_empty_init`), so random weights are loaded into it.
"""
from __future__ import annotations

import math
import shutil
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from openreel import runtime
from openreel.encoding import prompts as prompt_encoding
from openreel.encoding.prompts import STEPVIDEO_NEGATIVE, STEPVIDEO_POSITIVE_MAGIC, encode_text
from openreel.errors import DetectionError, InputError
from openreel.handles import TextEncoderHandle
from openreel.model_loaders.cache import MODULES
from openreel.model_loaders.checkpoint import Checkpoint, TensorInfo
from openreel.model_loaders.clip_vision import load_clip_vision
from openreel.model_loaders.core import module_of
from openreel.model_loaders.dit import load_dit
from openreel.model_loaders.identify import identify
from openreel.model_loaders.text_encoder import load_text_encoder
from openreel import synthetic_stepvideo as tiny
from openreel.models.text.bert import BertSpec, BertTextEncoder
from openreel.models.text.clip_text import CLIPTextSpec
from openreel.models.text.stepllm import StepLLMSpec, StepLLMTextEncoder, alibi_slopes, ffn_width
from openreel.models.text.tokenizer import find_tokenizer, load_tokenizer
from openreel.models.text.umt5 import UMT5Spec
from openreel.nodes.encode import OpenReelTextEncode

PROMPTS = ["a red cat walks on the grass", "Camera slowly: über 日本 video, it's realistic!", "",
           "the dog walks " * 200]   # the last is longer than 318 tokens: truncated
SPEC = tiny.TINY_STEPLLM
CLIP_SPEC = tiny.TINY_HUNYUAN_CLIP


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest deviation relative to the largest reference value."""
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


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


@pytest.fixture(scope="module")
def step_tokenizer(tmp_path_factory) -> Path:
    return tiny.tiny_step_tokenizer(tmp_path_factory.mktemp("step") / "step1_chat_tokenizer.model")


@pytest.fixture(scope="module")
def bert_vocab(tmp_path_factory) -> Path:
    return tiny.tiny_bert_tokenizer(tmp_path_factory.mktemp("bert"))


def _stepllm(spec: StepLLMSpec = SPEC, seed: int = 0) -> StepLLMTextEncoder:
    model = StepLLMTextEncoder(spec).eval()
    model.load_state_dict(tiny.stepllm_state(spec, seed))
    return model


def _bert_reference(spec: BertSpec = CLIP_SPEC, state: dict | None = None):
    from transformers import BertModel

    model = BertModel(spec.config()).eval()
    state = tiny.hunyuan_clip_state(spec) if state is None else state
    model.load_state_dict(state, strict=False)  # the pooler keeps its random init: never read
    return model


def _clip_reference_output(model, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).last_hidden_state


# ----------------------------------------------------------------------------------------- official Step-LLM
def _alibi_flash_attention(q, k, v, cu_seqlens=None, max_seq_len=None):
    """StepFun's fallback for `torch.ops.Optimus.fwd(q, k, v, …, causal=True)` ([B, S, H, D] in and out): scores
    scaled by D^-0.5 plus −m_h·√(i − j) on keys j ≤ i, −inf after; m_h = 2^(−8h/n) for h = 1..n (n the largest power
    of two ≤ H), then 2^(−4h/n) for h = 1, 3, 5, … for the remaining heads."""
    heads, length = q.shape[2], q.shape[1]
    n = 2 ** int(math.log2(heads))
    slopes = [2 ** (-8 * h / n) for h in range(1, n + 1)]
    slopes += [2 ** (-4 * h / n) for h in range(1, 1 + 2 * (heads - n), 2)]
    i, j = torch.arange(length)[:, None], torch.arange(length)[None, :]
    bias = torch.where(j <= i, -(i - j).clamp(min=0).float().sqrt(), torch.tensor(float("-inf")))
    bias = bias[None] * torch.tensor(slopes)[:, None, None]
    out = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                           attn_mask=bias.to(q.dtype))
    return out.transpose(1, 2)


def _official(module: str, monkeypatch):
    """The official `stepvideo/<module>` with the stand-ins named in the module docstring."""
    import transformers
    from references import load_stepvideo

    monkeypatch.setattr(transformers.modeling_utils, "PretrainedConfig", transformers.PretrainedConfig, raising=False)
    kernel = types.ModuleType("stepvideo.text_encoder.flashattention")

    class FlashSelfAttention(torch.nn.Module):
        def __init__(self, attention_dropout=0.0):
            super().__init__()

        def forward(self, q, k, v, cu_seqlens=None, max_seq_len=None):
            return _alibi_flash_attention(q, k, v)
    kernel.FlashSelfAttention = FlashSelfAttention
    return load_stepvideo(module, replace={"text_encoder.flashattention": kernel})


def test_alibi_slopes():
    assert torch.allclose(alibi_slopes(8), torch.tensor([2.0 ** -k for k in range(1, 9)]))
    six = alibi_slopes(6)  # n = 4: 2^-2, 2^-4, 2^-6, 2^-8, then 2^-1, 2^-3
    assert torch.allclose(six, torch.tensor([2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8, 2 ** -1, 2 ** -3]))
    assert len(alibi_slopes(48)) == 48 and abs(alibi_slopes(48)[0].item() - 2 ** -0.25) < 1e-7
    assert ffn_width(400) == 512 and ffn_width(512) == 512 and ffn_width(16384) == 16384


@pytest.mark.parametrize("heads, groups", [(4, 2), (6, 3), (4, 1)])
def test_stepllm_equals_official_step1model(monkeypatch, heads, groups):
    """Our Step-LLM vs the official `Step1Model` (fp32, the ALiBi fallback standing in for the kernel): every row,
    padding included, of a batch of two; 6 heads take the slopes' second series."""
    official = _official("text_encoder.stepllm", monkeypatch)
    import transformers

    width, ffn_hidden = 16 * heads, 100
    config = {**tiny.stepllm_config(StepLLMSpec(vocab_size=300, hidden_size=width, num_layers=3, num_heads=heads,
                                                num_groups=groups), ffn_hidden), "params_dtype": torch.float32}
    reference = official.Step1Model(transformers.PretrainedConfig(**config)).eval()
    spec = StepLLMSpec(vocab_size=300, hidden_size=width, ffn_size=ffn_width(ffn_hidden), num_layers=3,
                       num_heads=heads, num_groups=groups)
    ours = _stepllm(spec)
    reference.load_state_dict(ours.state_dict())
    ids = torch.randint(0, 300, (2, 40))
    with torch.no_grad():
        expected = reference(ids).transpose(0, 1)
        got = ours(ids)
    assert _relative(got, expected) <= 1e-5


def test_step_tokenizer_equals_official_wrapper(monkeypatch, step_tokenizer):
    official = _official("text_encoder.tokenizer", monkeypatch)
    reference = official.Wrapped_StepChatTokenizer(str(step_tokenizer))
    ours = load_tokenizer(find_tokenizer("stepllm", [], [step_tokenizer.parent / "model.safetensors"]))
    for prompts in (PROMPTS, [PROMPTS[2]]):
        expected = reference(prompts, max_length=320)
        ids, mask = ours(prompts)
        assert torch.equal(ids, expected.input_ids) and torch.equal(mask, expected.attention_mask)


# ----------------------------------------------------------------------------------------- tokenizers (CI)
def test_step_tokenizer_ids(step_tokenizer):
    import sentencepiece

    ours = load_tokenizer(find_tokenizer("stepllm", [], [step_tokenizer.parent / "x.safetensors"]))
    sp = sentencepiece.SentencePieceProcessor(model_file=str(step_tokenizer))
    ids, mask = ours(PROMPTS)
    assert ids.shape == mask.shape == (4, 320)
    pieces = sp.encode(PROMPTS[0])
    assert ids[0, :len(pieces) + 3].tolist() == [1] + pieces + [2, 2] and mask[0].sum() == len(pieces) + 2
    assert ids[2, :3].tolist() == [1, 2, 2] and mask[2].sum() == 2          # an empty prompt: BOS, EOS
    assert mask[3].all() and ids[3, -1] == 2 and ids[3, :319].tolist() == [1] + sp.encode(PROMPTS[3])[:318]


def test_a_sentencepiece_model_without_steps_control_tokens_is_refused(tmp_path):
    from openreel.synthetic import tiny_spiece

    tiny_spiece(tmp_path)  # umT5's tiny SentencePiece model
    shutil.copy(tmp_path / "spiece.model", tmp_path / "step1_chat_tokenizer.model")
    with pytest.raises(InputError, match="passed over.*not a Step-LLM tokenizer.*<\\|BOT\\|>"):
        find_tokenizer("stepllm", [], [tmp_path / "model.safetensors"])


def test_bert_tokenizer_equals_transformers(bert_vocab):
    from transformers import BertTokenizer

    reference = BertTokenizer.from_pretrained(bert_vocab)
    ours = load_tokenizer(find_tokenizer("hunyuan_clip", [], [bert_vocab / "x.safetensors"]))
    texts = PROMPTS + ["  A  RED\tCat, Über 超高清视频。", STEPVIDEO_NEGATIVE]
    expected = reference(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    ids, mask = ours(texts)
    assert torch.equal(ids, expected.input_ids) and torch.equal(mask, expected.attention_mask)
    assert ids[3, 76] == reference.sep_token_id and ids[2, :3].tolist() == [2, 3, 0]


# ----------------------------------------------------------------------------------------- HunyuanCLIP (CI)
def test_hunyuan_clip_wrapper_equals_transformers_bertmodel():
    reference = _bert_reference()
    ours = BertTextEncoder(CLIP_SPEC).eval()
    ours.load_state_dict({"bert." + k: v for k, v in tiny.hunyuan_clip_state(CLIP_SPEC).items()})
    ids = torch.randint(0, CLIP_SPEC.vocab_size, (2, 77))
    mask = (torch.arange(77)[None] < torch.tensor([[77], [12]])).long()
    with torch.no_grad():
        assert _relative(ours(ids, mask), _clip_reference_output(reference, ids, mask)) <= 1e-6


# ----------------------------------------------------------------------------------------- layouts
def _ids(n: int = 320) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(3, SPEC.vocab_size, (2, n))
    return ids, (torch.arange(n)[None] < torch.tensor([[n], [9]])).long()


def _stored(path: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    """The float32 values a single file holds (fp8 weights times their `scale_weight`), without `prefix`."""
    from safetensors.torch import load_file

    raw = load_file(str(path))
    return {k.removeprefix(prefix): v.float() * raw[k.removesuffix("weight") + "scale_weight"].float()
            if k.removesuffix("weight") + "scale_weight" in raw else v.float()
            for k, v in raw.items() if not k.endswith("scale_weight") and k != "scaled_fp8"}


@pytest.mark.parametrize("layout", ["official", "first_shard", "single", "prefixed", "fp8_scaled"])
def test_every_stepllm_layout_loads(step_tokenizer, tmp_path, layout):
    """The official step_llm folder (bf16 shards, config.json, tokenizer beside; the folder or its first shard, as
    the loader node lists it) and single files in the text encoders folder (bare or `text_encoder.`-prefixed bf16,
    ComfyUI fp8_scaled), their tokenizer in the shared tokenizers/step_llm/ folder; fp8 stays fp8 under auto."""
    state = tiny.stepllm_state(SPEC)
    if layout in ("official", "first_shard"):
        path = tiny.write_step_llm(tmp_path / "stepvideo-t2v" / "step_llm", state)
        path = path if layout == "official" else path / "model-00001-of-00002.safetensors"
        stored = {k: v.bfloat16().float() for k, v in state.items()}
    else:
        shared = runtime.model_folders("text_encoders")[0]
        prefix = "text_encoder." if layout == "prefixed" else ""
        fp8 = layout == "fp8_scaled"
        path = tiny.write_single(tiny.fp8_scaled(state) if fp8 else state, shared / f"step_llm_{layout}.safetensors",
                                 prefix=prefix, dtype=None if fp8 else torch.bfloat16)
        (shared / "tokenizers" / "step_llm").mkdir(parents=True)
        shutil.copy(step_tokenizer, shared / "tokenizers" / "step_llm")
        stored = _stored(path, prefix)
    reference = StepLLMTextEncoder(SPEC).eval()
    reference.load_state_dict(stored)
    ids, mask = _ids()
    for dtype in ("auto", "fp32") if layout == "fp8_scaled" else ("fp32",):
        handle = load_text_encoder(path, dtype)
        assert handle.spec == SPEC and handle.tokenizer.kind == "step"
        module = module_of(handle)
        with torch.no_grad():
            assert _relative(module(ids, mask), reference(ids)) <= 1e-5
        weight = module.transformer.layers[0].feed_forward.w1.weight.dtype
        assert weight == (torch.float8_e4m3fn if dtype == "auto" and layout == "fp8_scaled" else torch.float32)


@pytest.mark.parametrize("layout", ["official", "clip_text_encoder", "bin_file", "single", "bert_prefixed"])
def test_every_hunyuan_clip_layout_loads(bert_vocab, tmp_path, layout):
    """The official hunyuan_clip folder (picked as the folder, its clip_text_encoder folder or the weights file in
    it; tokenizer/ beside) and fp16 single files (bare or `bert.`-prefixed, tokenizer in tokenizers/hunyuan_clip/)."""
    state = tiny.hunyuan_clip_state(CLIP_SPEC)
    root = tiny.write_hunyuan_clip(tmp_path / "stepvideo-t2v" / "hunyuan_clip", state)
    path = {"official": root, "clip_text_encoder": root / "clip_text_encoder",
            "bin_file": root / "clip_text_encoder" / "pytorch_model.bin"}.get(layout)
    if path is None:
        shared = runtime.model_folders("text_encoders")[0]
        path = tiny.write_single(state, shared / "hunyuan_clip.safetensors", dtype=torch.float16,
                                 prefix="bert." if layout == "bert_prefixed" else "")
        tiny.tiny_bert_tokenizer(shared / "tokenizers" / "hunyuan_clip")
        state = {k: v.half().float() for k, v in state.items()}
    reference = _bert_reference(state=state)
    handle = load_text_encoder(path)  # auto: float32, as the official caption server runs it
    assert handle.spec.kind == "hunyuan_clip" and handle.compute_dtype == "fp32"
    assert handle.spec == CLIP_SPEC and handle.tokenizer.kind == "wordpiece"
    ids, mask = load_tokenizer(handle.tokenizer)(PROMPTS)
    with torch.no_grad():
        assert _relative(module_of(handle)(ids, mask), _clip_reference_output(reference, ids, mask)) <= 1e-6


# ----------------------------------------------------------------------------------------- identify and errors
def _keys(names: dict[str, tuple[int, ...]], prefix: str = "") -> Checkpoint:
    infos = {prefix + k: TensorInfo(shape, torch.bfloat16) for k, shape in names.items()}
    return Checkpoint((Path("model.safetensors"),), infos, {})


STEP_KEYS = {"tok_embeddings.word_embeddings.weight": (512, 256), "transformer.layers.0.attention.wqkv.weight":
             (512, 256), "transformer.layers.0.feed_forward.w2.weight": (256, 512)}
BERT_KEYS = {"embeddings.word_embeddings.weight": (320, 64), "encoder.layer.0.attention.self.query.weight": (64, 64)}


@pytest.mark.parametrize("keys, prefix, what", [
    (STEP_KEYS, "", "Step-LLM"), (STEP_KEYS, "model.", "Step-LLM"),
    (BERT_KEYS, "", "a BERT text encoder"), (BERT_KEYS, "bert.", "a BERT text encoder"),
])
def test_identify_knows_the_stepvideo_encoders(keys, prefix, what):
    found = identify(_keys(keys, prefix))
    assert found.kind == "text_encoder" and found.what.startswith(what)


def test_wrong_files_say_what_they_are_and_where_they_belong(tmp_path):
    step = tiny.write_single(tiny.stepllm_state(SPEC), tmp_path / "step_llm.safetensors")
    clip = tiny.write_single(tiny.hunyuan_clip_state(CLIP_SPEC), tmp_path / "hunyuan_clip.safetensors")
    for load, path, what in ((load_dit, step, "is Step-LLM (Step-Video's first text encoder), not a diffusion"),
                             (load_clip_vision, clip, "is a BERT text encoder (Step-Video's HunyuanCLIP), not a CLIP")):
        with pytest.raises(DetectionError) as err:
            load(path)
        assert what in err.value.what and "Text Encoder Loader" in err.value.todo
    broken = {k: v for k, v in tiny.stepllm_state(SPEC).items() if "attention.wo" not in k}
    save_file(broken, tmp_path / "broken.safetensors")
    with pytest.raises(DetectionError, match="looks like Step-LLM but lacks transformer.layers.0.attention.wo"):
        load_text_encoder(tmp_path / "broken.safetensors")


def test_missing_tokenizers_name_the_folders(tmp_path):
    step = tiny.write_single(tiny.stepllm_state(SPEC), tmp_path / "te" / "step_llm.safetensors")
    clip = tiny.write_single(tiny.hunyuan_clip_state(CLIP_SPEC), tmp_path / "te" / "hunyuan_clip.safetensors")
    shared = runtime.model_folders("text_encoders")[0] / "tokenizers"
    for path, wanted, folder in ((step, "step1_chat_tokenizer.model", "step_llm"),
                                 (clip, "tokenizer.json or vocab.txt", "hunyuan_clip")):
        with pytest.raises(InputError) as err:
            load_text_encoder(path)
        assert str(tmp_path / "te") in err.value.what and wanted in err.value.todo
        assert str(shared / folder) in err.value.todo and "stepfun-ai/stepvideo-t2v" in err.value.todo


# ----------------------------------------------------------------------------------------- the recipe
def test_text_encode_node_gives_stepvideos_embeddings(tmp_path):
    """Step-LLM as text_encoder and HunyuanCLIP as text_encoder_2: every row of Step-LLM's last hidden state
    [1, 320, width] with its mask, and HunyuanCLIP's last_hidden_state [1, 77, width] with its mask, for the
    positive prompt followed by the official magic suffix and the negative prompt as given (not stripped)."""
    te = load_text_encoder(tiny.write_step_llm(tmp_path / "stepvideo-t2v" / "step_llm"), "fp32")
    te2 = load_text_encoder(tiny.write_hunyuan_clip(tmp_path / "stepvideo-t2v" / "hunyuan_clip"), "fp32")
    positive, negative = " a red cat walks on the grass ", STEPVIDEO_NEGATIVE
    embeds = OpenReelTextEncode().encode(te, positive, negative, te2)[0]

    texts = [positive + STEPVIDEO_POSITIVE_MAGIC, negative]
    ids, mask = load_tokenizer(te.tokenizer)(texts)
    ids_2, mask_2 = load_tokenizer(te2.tokenizer)(texts)
    with torch.no_grad():
        hidden, hidden_2 = module_of(te)(ids, mask), module_of(te2)(ids_2, mask_2)
    assert embeds.positive.shape == (1, 320, SPEC.hidden_size) and embeds.positive_mask.shape == (1, 320)
    assert embeds.positive_2.shape == (1, 77, CLIP_SPEC.hidden_size) and embeds.negative_2_mask.shape == (1, 77)
    for b, (rows, rows_mask, rows_2, rows_2_mask) in enumerate((
            (embeds.positive, embeds.positive_mask, embeds.positive_2, embeds.positive_2_mask),
            (embeds.negative, embeds.negative_mask, embeds.negative_2, embeds.negative_2_mask))):
        assert torch.equal(rows[0], hidden[b]) and torch.equal(rows_mask[0], mask[b])
        assert torch.equal(rows_2[0], hidden_2[b]) and torch.equal(rows_2_mask[0], mask_2[b])
    assert 2 < int(embeds.positive_mask.sum()) < 320 and embeds.positive_pooled is None
    assert torch.equal(encode_text(te, texts[:1])[0], embeds.positive)


def _handle(spec) -> TextEncoderHandle:
    return TextEncoderHandle(spec, (), (), "auto", "fp32")


@pytest.mark.parametrize("first, second, what, todo", [
    (StepLLMSpec(), None, "which Step-Video pairs with HunyuanCLIP as text_encoder_2 for its token states; "
     "text_encoder_2 is empty", "load the hunyuan_clip folder with OpenReel Text Encoder Loader"),
    (StepLLMSpec(), CLIPTextSpec(), "text_encoder_2 is CLIP-L", "connect it to text_encoder_2"),
    (BertSpec(), StepLLMSpec(), "gives only Step-Video's second text encoder states",
     "connect Step-LLM (the step_llm folder) to text_encoder and HunyuanCLIP (the hunyuan_clip folder) to "
     "text_encoder_2"),
    (UMT5Spec(), BertSpec(), "takes no second encoder", "leave text_encoder_2 empty"),
])
def test_text_encode_node_refuses_encoders_that_do_not_pair(first, second, what, todo):
    with pytest.raises(InputError) as err:
        OpenReelTextEncode().encode(_handle(first), "a cat", "", None if second is None else _handle(second))
    assert err.value.what.startswith("OpenReel Text Encode: ") and what in err.value.what and todo in err.value.todo
