"""Tiny random Step-Video models in the real file layouts, for tests and the synthetic model set.

Nothing here is a real model: the weights are random and the tokenizers tiny. The layouts are the official
stepfun-ai/stepvideo-t2v folders — `transformer/` (diffusion_pytorch_model shards with their index and config.json),
`vae/vae_v2.safetensors`, `step_llm/` (config.json with the official field names, safetensors shards with their
index, `step1_chat_tokenizer.model`) and `hunyuan_clip/` (`clip_text_encoder/` with a `BertModel` config.json and
pytorch_model.bin, `tokenizer/` with vocab.txt and tokenizer_config.json) — and single safetensors files.

The VAE and DiT are small by working on 4 latent channels: a 64-channel Step-Video VAE holds a 113M-parameter
unpatchify conv whatever its widths (models/stepvideo/latents.py gives such models a format of their own).
"""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

from .models.stepvideo.model import StepVideoConfig, StepVideoDiT
from .models.stepvideo.vae import StepVideoVAE, StepVideoVAEConfig
from .models.text.bert import BertSpec, BertTextEncoder
from .models.text.stepllm import StepLLMSpec, StepLLMTextEncoder

TINY_VAE = StepVideoVAEConfig(latent_channels=4, encoder_widths=(32,) * 4, decoder_widths=(32,) * 4, layers=1)
# Heads of 128 and 64 (what files without a config.json are read with); the FFN width 512 is what the config's
# ffn_hidden_size 400 rounds up to.
TINY_STEPLLM = StepLLMSpec(vocab_size=512, hidden_size=256, ffn_size=512, num_layers=2, num_heads=2, num_groups=1)
TINY_STEPLLM_FFN_HIDDEN = 400
TINY_HUNYUAN_CLIP = BertSpec(vocab_size=320, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=1,
                             max_positions=80)
STEP_CONTROL = ("<|BOT|>", "<|EOT|>", "<|CALL_START|>", "<|CALL_END|>", "<|THINK_START|>", "<|THINK_END|>")
STEP_USER = ("<|MASK_1e69f|>", "<|UNMASK_1e69f|>")
STEPLLM_LINEARS = r".*\.(wqkv|wo|w1|w2)\.weight"
_WORDS = ("a", "cat", "dog", "red", "video", "walks", "on", "the", "grass", "camera", "slowly", "realistic", "fox",
          "snow", "forest", "sunlit", "cinematic", "photo", "of", "it's", "über")
_HANZI = "超高清视频环境光画面稳定流畅动作逼真的细节专业级构图自然生动清晰暗低分辨率不良手文本缺少指多余裁剪质量颗粒状签名水印用户模糊日本猫狗"


def _corpus(seed: int) -> list[str]:
    rng = random.Random(seed)
    words = list(_WORDS) + list(_HANZI)
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(1500)]


def _random_state(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """Random float32 values for every tensor of `module` (norm weights around 1)."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, value in module.state_dict().items():
        noise = torch.randn(value.shape, generator=gen)
        out[key] = 1.0 + 0.2 * noise if value.dim() == 1 and "weight" in key else noise * (0.1 if value.dim() > 1
                                                                                             else 0.5)
    return out


def tiny_step_tokenizer(path: Path) -> Path:
    """A tiny SentencePiece model at `path` with Step's ids (unk 0, BOS 1, EOS 2) and the chat control tokens the
    official tokenizer asserts, trained on the spot."""
    import sentencepiece

    path.parent.mkdir(parents=True, exist_ok=True)
    corpus = path.with_suffix(".corpus.txt")
    corpus.write_text("\n".join(_corpus(7)), encoding="utf-8")
    sentencepiece.SentencePieceTrainer.train(
        input=str(corpus), model_prefix=str(path.with_suffix("")), vocab_size=150, hard_vocab_limit=False,
        model_type="unigram", unk_id=0, bos_id=1, eos_id=2, pad_id=-1, control_symbols=list(STEP_CONTROL),
        user_defined_symbols=list(STEP_USER), character_coverage=1.0, minloglevel=2)
    corpus.unlink()
    path.with_suffix(".vocab").unlink()
    return path


def tiny_bert_tokenizer(folder: Path) -> Path:
    """A tiny BERT vocab.txt (special tokens first, [PAD] 0, words, word pieces, single CJK characters) and its
    tokenizer_config.json in `folder`."""
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ",", ".", "'", "!", "、", "。"]
    pieces += sorted({w.lower() for w in _WORDS}) + ["##s", "##ed", "##ing", "u", "##ber", "##ü"] + list(_HANZI)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(dict.fromkeys(pieces)) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "tokenizer_class":
                                                              "BertTokenizer"}))
    return folder


def stepllm_state(spec: StepLLMSpec = TINY_STEPLLM, seed: int = 600) -> dict[str, torch.Tensor]:
    """Random Step-LLM weights under the official `Step1Model` names (float32)."""
    with torch.device("meta"):
        shapes = StepLLMTextEncoder(spec)
    return _random_state(shapes, seed)


def hunyuan_clip_state(spec: BertSpec = TINY_HUNYUAN_CLIP, seed: int = 601) -> dict[str, torch.Tensor]:
    """Random HunyuanCLIP weights under `BertModel` names without a prefix (float32)."""
    with torch.device("meta"):
        shapes = BertTextEncoder(spec)
    return {k.removeprefix("bert."): v for k, v in _random_state(shapes, seed).items()}


def stepllm_config(spec: StepLLMSpec = TINY_STEPLLM, ffn_hidden_size: int = TINY_STEPLLM_FFN_HIDDEN) -> dict:
    """step_llm/config.json with the fields the official `Step1Model` reads."""
    return {"hidden_size": spec.hidden_size, "num_attention_heads": spec.num_heads,
            "num_attention_groups": spec.num_groups, "num_layers": spec.num_layers, "ffn_hidden_size": ffn_hidden_size,
            "layernorm_epsilon": spec.eps, "padded_vocab_size": spec.vocab_size, "seq_length": 8192,
            "use_flash_attn": True, "attention_dropout": 0.0, "hidden_dropout": 0.0, "params_dtype": "bfloat16",
            "fp32_residual_connection": False, "embedding_weights_in_fp32": False}


def fp8_scaled(state: dict[str, torch.Tensor], linear: str = STEPLLM_LINEARS) -> dict[str, torch.Tensor]:
    """ComfyUI's fp8_scaled layout: keys matching `linear` in fp8 with a per-tensor `scale_weight`, the rest in
    fp16, and the `scaled_fp8` marker."""
    out = {}
    for key, value in state.items():
        if re.fullmatch(linear, key):
            scale = value.float().abs().amax() / 448.0
            out[key] = (value.float() / scale).to(torch.float8_e4m3fn)
            out[key.removesuffix("weight") + "scale_weight"] = scale.reshape(1)
        else:
            out[key] = value.half()
    out["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    return out


def write_step_llm(folder: Path, state: dict[str, torch.Tensor] | None = None, spec: StepLLMSpec = TINY_STEPLLM,
                   shards: int = 2, dtype: torch.dtype = torch.bfloat16) -> Path:
    """The official step_llm/ folder at `folder`: `model-0000i-of-0000n.safetensors` + `model.safetensors.index.json`,
    config.json and a tiny `step1_chat_tokenizer.model`. Returns `folder`."""
    state = stepllm_state(spec) if state is None else state
    folder.mkdir(parents=True, exist_ok=True)
    keys, weight_map = sorted(state), {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: state[k].to(dtype).contiguous() for k in keys[i::shards]}, str(folder / name))
        weight_map.update({k: name for k in keys[i::shards]})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(stepllm_config(spec)))
    tiny_step_tokenizer(folder / "step1_chat_tokenizer.model")
    return folder


def write_hunyuan_clip(folder: Path, state: dict[str, torch.Tensor] | None = None,
                       spec: BertSpec = TINY_HUNYUAN_CLIP) -> Path:
    """The official hunyuan_clip/ folder at `folder`: `clip_text_encoder/` (a `BertModel` config.json and
    pytorch_model.bin, float32) and `tokenizer/` (vocab.txt, tokenizer_config.json). Returns `folder`."""
    state = hunyuan_clip_state(spec) if state is None else state
    encoder = folder / "clip_text_encoder"
    encoder.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.float().contiguous() for k, v in state.items()}, encoder / "pytorch_model.bin")
    (encoder / "config.json").write_text(spec.config().to_json_string())
    tiny_bert_tokenizer(folder / "tokenizer")
    return folder


def write_single(state: dict[str, torch.Tensor], path: Path, *, prefix: str = "",
                 dtype: torch.dtype | None = torch.bfloat16) -> Path:
    """One safetensors file of `state` (`prefix` before every name; `dtype` None: stored as given, e.g. after
    `fp8_scaled`, whose marker keeps no prefix). Its tokenizer goes in the shared tokenizers/ folder (see
    models/text/tokenizer.py: `tokenizers/step_llm/`, `tokenizers/hunyuan_clip/`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({(k if k == "scaled_fp8" else prefix + k): (v if dtype is None else v.to(dtype)).contiguous()
               for k, v in state.items()}, str(path))
    return path


def write_vae(path: Path, cfg: StepVideoVAEConfig = TINY_VAE, prefix: str = "", seed: int = 0,
              dtype: torch.dtype = torch.bfloat16) -> Path:
    """A random Step-Video VAE in the official file layout (`decoder.conv_out.weight`, not `.conv.weight`), keys
    under `prefix`; small weights keep decoded values in range. Returns `path`."""
    gen = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in StepVideoVAE(cfg).state_dict().items()}
    tensors = {}
    for key, shape in shapes.items():
        value = 1 + 0.1 * torch.randn(shape, generator=gen) if "norm" in key and key.endswith("weight") else \
            torch.randn(shape, generator=gen) * (0.5 / shape[1:].numel() ** 0.5 if len(shape) > 1 else 0.05)
        tensors[prefix + key.replace("decoder.conv_out.conv.", "decoder.conv_out.")] = value.to(dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    return path


def tiny_dit_config(llm: StepLLMSpec = TINY_STEPLLM, clip: BertSpec = TINY_HUNYUAN_CLIP,
                    vae: StepVideoVAEConfig = TINY_VAE) -> StepVideoConfig:
    """A Step-Video DiT for the tiny encoders and VAE: one head of 128, two blocks, the MLP 4× wide as the official."""
    return StepVideoConfig(hidden=128, heads=1, layers=2, ffn_width=512, in_channels=vae.latent_channels,
                           out_channels=vae.latent_channels, patch=1, caption_dim=llm.hidden_size,
                           clip_dim=clip.hidden_size)


def dit_state(cfg: StepVideoConfig | None = None, seed: int = 700) -> dict[str, torch.Tensor]:
    return _random_state(StepVideoDiT(cfg or tiny_dit_config()), seed)


def write_dit(path: Path, state: dict[str, torch.Tensor] | None = None, *, prefix: str = "",
              dtype: torch.dtype = torch.bfloat16) -> Path:
    """One safetensors file of a tiny Step-Video DiT under the official names (`prefix`, e.g. ComfyUI's
    `model.diffusion_model.`)."""
    return write_single(dit_state() if state is None else state, path, prefix=prefix, dtype=dtype)


DIT_FILES = ("stepvideo_t2v_bf16.safetensors", "stepvideo_t2v_turbo_bf16.safetensors")
VAE_FILE = "stepvideo_vae_v2.safetensors"


def write_models(models: Path) -> None:
    """The synthetic set's Step-Video files: the DiTs as single files (T2V and Turbo: the same tiny weights, as
    their shapes are the same), the VAE (the official file's layout), and the official step_llm/ and hunyuan_clip/
    folders."""
    state = dit_state()
    for name in DIT_FILES:
        write_dit(models / "diffusion_models" / name, state, prefix="model.diffusion_model.")
    write_vae(models / "vae" / VAE_FILE)
    write_step_llm(models / "text_encoders" / "step_llm")
    write_hunyuan_clip(models / "text_encoders" / "hunyuan_clip")
