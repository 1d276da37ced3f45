"""Tiny random checkpoints written in the real file layouts, for tests and the headless runner's demo model set.

Nothing here is a real model: the weights are random. The layouts are real: official single files and shard
sets (with index json and config.json), ComfyUI's `model.diffusion_model.`-prefixed files, plain fp8 files and
ComfyUI `fp8_scaled` files (`scaled_fp8` marker + per-linear `scale_weight`).
"""
from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from .models.wan.model import WanConfig, WanDiT
from .synthetic_stepvideo import fp8_scaled
from .synthetic_stepvideo import write_models as write_stepvideo_models

COMFY_PREFIX = "model.diffusion_model."
TINY_WAN = WanConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_dim=64)


def wan_state_dict(cfg: WanConfig = TINY_WAN, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights with the official Wan names and shapes for `cfg` (float32)."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in WanDiT(cfg).state_dict().items()}
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=gen) * (0.1 if len(shape) > 1 else 0.5) for k, shape in shapes.items()}


def official_config(cfg: WanConfig) -> dict:
    """config.json as the official repos ship it beside `WanModel` weights."""
    model_type = {48: "ti2v", 36: "i2v"}.get(cfg.in_dim, "t2v")
    return {"_class_name": "WanModel", "model_type": model_type, "dim": cfg.dim, "ffn_dim": cfg.ffn_dim,
            "num_heads": cfg.num_heads, "num_layers": cfg.num_layers, "in_dim": cfg.in_dim, "out_dim": cfg.out_dim,
            "text_len": cfg.text_len, "freq_dim": cfg.freq_dim, "eps": cfg.eps, "patch_size": list(cfg.patch_size)}


def _cast(state: dict, dtype: torch.dtype) -> dict:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}


def save_single(state: dict, path: Path, *, prefix: str = "", dtype: torch.dtype = torch.bfloat16) -> Path:
    """One safetensors file; `prefix=COMFY_PREFIX` gives the ComfyUI-repackaged layout."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({prefix + k: v.contiguous() for k, v in _cast(state, dtype).items()}, str(path))
    return path


def save_sharded(state: dict, folder: Path, cfg: WanConfig, *, shards: int = 3,
                 dtype: torch.dtype = torch.bfloat16, stem: str = "diffusion_pytorch_model") -> Path:
    """The official layout: `<stem>-0000i-of-0000n.safetensors`, `<stem>.safetensors.index.json`, config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = sorted(state)
    weight_map = {}
    for i in range(shards):
        name = f"{stem}-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: state[k] for k in keys[i::shards]}
        save_file({k: v.contiguous() for k, v in _cast(part, dtype).items()}, str(folder / name))
        weight_map.update({k: name for k in part})
    (folder / f"{stem}.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(official_config(cfg)))
    return folder / f"{stem}-00001-of-{shards:05d}.safetensors"


_FP8_LINEAR = re.compile(r".*\.(q|k|v|o|k_img|v_img|ffn\.0|ffn\.2|text_embedding\.[02]|head\.head)\.weight")


def save_fp8(state: dict, path: Path, *, scaled: bool, prefix: str = COMFY_PREFIX) -> Path:
    """Linear weights as float8_e4m3fn. `scaled=True` writes ComfyUI's fp8_scaled layout (per-tensor
    `scale_weight` and the `scaled_fp8` marker); otherwise a plain cast (as other packs' fp8 files)."""
    out = {}
    for key, value in _cast(state, torch.bfloat16).items():
        if _FP8_LINEAR.fullmatch(key):
            w = value.float()
            scale = (w.abs().amax() / 448.0) if scaled else torch.tensor(1.0)
            out[prefix + key] = (w / scale).clamp(-448, 448).to(torch.float8_e4m3fn)
            if scaled:
                out[prefix + key.removesuffix("weight") + "scale_weight"] = scale.reshape(1).float()
        else:
            out[prefix + key] = value
    if scaled:
        out[prefix + "scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in out.items()}, str(path))
    return path


# ----------------------------------------------------------------------------------------- the demo model set
SYNTHETIC_NOTE = "SYNTHETIC model set: tiny random weights in the real file layouts; outputs are noise, not videos"
SET_VERSION = "7"  # bump when the set's files change: a set written by another version is written anew
TINY_TEXT_DIM = 64
TINY_CLIP_DIM = 64

# File names as ComfyUI's repackaged releases name them (SkyReels-V2: the official 1.3B folders).
DIFFUSION_MODELS = {
    "wan2.1_t2v_1.3B_fp16.safetensors": dict(),
    "wan2.1_i2v_480p_14B_fp16.safetensors": dict(in_dim=36, image_tokens=257),
    "wan2.1_flf2v_720p_14B_fp16.safetensors": dict(in_dim=36, image_tokens=514),
    "wan2.2_t2v_high_noise_14B_fp8_scaled.safetensors": dict(),
    "wan2.2_t2v_low_noise_14B_fp8_scaled.safetensors": dict(),
    "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors": dict(in_dim=36),
    "wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors": dict(in_dim=36),
    "wan2.2_ti2v_5B_fp16.safetensors": dict(in_dim=48, out_dim=48),
    "SkyReels-V2-DF-1.3B-540P/model.safetensors": dict(fps_embedding=True),
    "SkyReels-V2-I2V-1.3B-540P/model.safetensors": dict(in_dim=36, image_tokens=257),
}
TEXT_ENCODER = "umt5_xxl_fp8_e4m3fn_scaled.safetensors"
CLIP_VISION = "clip_vision_h.safetensors"
VAES = {"wan_2.1_vae.safetensors": "wan21", "wan2.2_vae.safetensors": "wan22",
        "hunyuan_video_vae_bf16.safetensors": "hunyuan"}  # file → its latent format
# HunyuanVideo: ComfyUI's file names. The DiT in ComfyUI's layout; the VAE in the official names (a
# safetensors re-save of pytorch_model.pt); the encoders in ComfyUI's layouts, with their tokenizers in the shared
# tokenizers/ folders.
HUNYUAN_DIT = "hunyuan_video_t2v_720p_bf16.safetensors"
LLAVA_LLAMA = "llava_llama3_fp8_scaled.safetensors"
CLIP_L = "clip_l.safetensors"
TINY_LLAMA = dict(hidden_size=256, intermediate_size=96, num_hidden_layers=4, num_attention_heads=2,
                  num_key_value_heads=1, head_dim=128, rope_theta=500000.0, rms_norm_eps=1e-5, vocab_size=640)
TINY_CLIP_TEXT = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
                      vocab_size=400, max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=0,
                      eos_token_id=2, pad_token_id=1)
WORDS = ("cat", "dog", "red", "video", "walks", "on", "the", "grass", "realistic", "camera", "slowly", "über",
         "日本", "a", "photo", "of", "it's", "fox", "snow", "forest", "sunlit", "cinematic")
# The 4-step distillation LoRA pairs as ComfyUI repackages LightX2V's (Comfy-Org/Wan_2.2_ComfyUI_Repackaged
# split_files/loras): the layout of those files, on the tiny experts.
LORAS = {"wan2.2_t2v_lightx2v_4steps_lora_v1.1_high_noise.safetensors": 500,
         "wan2.2_t2v_lightx2v_4steps_lora_v1.1_low_noise.safetensors": 501,
         "wan2.2_i2v_lightx2v_4steps_lora_v1_high_noise.safetensors": 502,
         "wan2.2_i2v_lightx2v_4steps_lora_v1_low_noise.safetensors": 503}
INPUT_IMAGES = ("openreel_start.png", "openreel_end.png")
INPUT_VIDEO = "openreel_clip.mp4"   # 33 frames at 24 fps, for the video-extension workflow


def _random(shapes: dict, seed: int, scale: float = 0.1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=gen) * (scale if len(s) > 1 else 0.5) for k, s in shapes.items()}


def tiny_spiece(folder: Path) -> bytes:
    """A tiny SentencePiece model with umT5's special ids (pad 0, eos 1, bos 2, unk 3), trained on the spot."""
    import random

    import sentencepiece

    rng = random.Random(0)
    syllables = ["ka", "to", "ri", "mu", "se", "na", "po", "li", "ve", "da", "zo", "ba", "ne", "hi", "ku"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(300)]
    words += "a cat dog the red video sea ship sunset city street walks runs".split()
    lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(2000)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corpus.txt").write_text("\n".join(lines), encoding="utf-8")
    sentencepiece.SentencePieceTrainer.train(
        input=str(folder / "corpus.txt"), model_prefix=str(folder / "spiece"), vocab_size=250, model_type="unigram",
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, character_coverage=1.0, minloglevel=2)
    return (folder / "spiece.model").read_bytes()


LLAMA3_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
                r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
LLAMA3_SPECIAL = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                  "<pad>")


def tiny_llama3_tokenizer(path: Path) -> Path:
    """tokenizer.json of a tiny Llama-3-style tokenizer at `path`: Llama-3's pre-token split, byte-level BPE that
    takes a pre-token found whole in its vocabulary as one token (so HunyuanVideo's template splits into the real
    tokenizer's 95 tokens), Llama-3's special tokens and LLaVA's <pad>, <|begin_of_text|> prepended."""
    import random

    from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer

    from .models.text.llama import VIDEO_TEMPLATE

    rng = random.Random(0)
    corpus = [VIDEO_TEMPLATE.replace("{}", "")] * 50
    corpus += [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(500)]
    tok = Tokenizer(BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, BpeTrainer(vocab_size=1000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                               show_progress=False))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in LLAMA3_SPECIAL])
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                       special_tokens=[("<|begin_of_text|>", bos)])
    path.parent.mkdir(parents=True, exist_ok=True)
    tok.save(str(path))
    return path


def tiny_clip_tokenizer(folder: Path) -> Path:
    """A tiny CLIP vocab.json + merges.txt in `folder` (ComfyUI's sd1_tokenizer layout); <|startoftext|> and
    <|endoftext|> take the last two ids, as in CLIP's vocabulary."""
    import random

    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer

    from .models.text.tokenizer import CLIP_WORDS

    rng = random.Random(1)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(500)]
    tok = Tokenizer(BPE(end_of_word_suffix="</w>", continuing_subword_prefix=""))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(CLIP_WORDS), "removed", invert=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.train_from_iterator(corpus, BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                               end_of_word_suffix="</w>", show_progress=False))
    folder.mkdir(parents=True, exist_ok=True)
    tok.model.save(str(folder))
    vocab = json.loads((folder / "vocab.json").read_text())
    vocab.update({"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    return folder


def write_hunyuan_models(models: Path) -> None:
    """HunyuanVideo's four files, tiny: the DiT (heads of 128, 1 double + 2 single blocks), the VAE (widths of 32),
    the LLaVA-Llama-3 encoder (fp8_scaled) and CLIP-L, with their tokenizers in the shared folders."""
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    from .models.hunyuan.model import HunyuanConfig, HunyuanDiT
    from .models.hunyuan.vae import HunyuanVAE, HunyuanVAEConfig

    cfg = HunyuanConfig(hidden=128, heads=1, mlp_width=256, double_blocks=1, single_blocks=2,
                        text_dim=TINY_LLAMA["hidden_size"], pooled_dim=TINY_CLIP_TEXT["hidden_size"], refiner_heads=1,
                        refiner_mlp_width=512)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in HunyuanDiT(cfg).state_dict().items()}
    save_single(_random(shapes, seed=400), models / "diffusion_models" / HUNYUAN_DIT, prefix=COMFY_PREFIX)

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in HunyuanVAE(HunyuanVAEConfig(block_out=(32, 64, 64, 64))).state_dict().items()}
    (models / "vae").mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in _random(shapes, seed=401, scale=0.05).items()},
              str(models / "vae" / "hunyuan_video_vae_bf16.safetensors"))

    text = models / "text_encoders"
    with torch.device("meta"):
        llama = {k: v.shape for k, v in LlamaModel(LlamaConfig(**TINY_LLAMA)).state_dict().items()}
        clip = {k: v.shape for k, v in CLIPTextModel(CLIPTextConfig(**TINY_CLIP_TEXT)).state_dict().items()}
    llama = {"model." + k: v for k, v in fp8_scaled(_random(llama, seed=402), r".*_proj\.weight").items()}
    llama["scaled_fp8"] = llama.pop("model.scaled_fp8")
    text.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in llama.items()}, str(text / LLAVA_LLAMA))
    clip = {("" if k.startswith("text_model.") else "text_model.") + k: v for k, v in clip.items()
            if "position_ids" not in k}
    save_file({k: v.contiguous() for k, v in _cast(_random(clip, seed=403), torch.float16).items()},
              str(text / CLIP_L))
    tiny_llama3_tokenizer(text / "tokenizers" / "llava-llama-3-8b" / "tokenizer.json")
    tiny_clip_tokenizer(text / "tokenizers" / "clip-vit-large-patch14")


def distillation_lora(cfg: WanConfig, seed: int, rank: int = 4) -> dict[str, torch.Tensor]:
    """A LoRA for a Wan network of `cfg` in the layout of LightX2V's distillation LoRAs: `diffusion_model.`-named
    `lora_down` / `lora_up` factors on every attention and FFN linear (no alpha: α = rank), `diff_b` on their
    biases and full `diff` deltas on the norms with weights."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in WanDiT(cfg).state_dict().items()}
    gen = torch.Generator().manual_seed(seed)
    linear = re.compile(r"blocks\.\d+\.(self_attn|cross_attn)\.[qkvo]|blocks\.\d+\.ffn\.[02]")
    out = {}
    for key, shape in shapes.items():
        name, _, kind = key.rpartition(".")
        if linear.fullmatch(name) and kind == "weight":
            out[f"diffusion_model.{name}.lora_down.weight"] = torch.randn(rank, shape[1], generator=gen) * 0.05
            out[f"diffusion_model.{name}.lora_up.weight"] = torch.randn(shape[0], rank, generator=gen) * 0.05
        elif kind in ("weight", "bias") and (linear.fullmatch(name) or re.fullmatch(
                r"blocks\.\d+\.(norm3|self_attn\.norm_[qk]|cross_attn\.norm_[qk])", name)):
            out[f"diffusion_model.{name}.{'diff' if kind == 'weight' else 'diff_b'}"] = \
                torch.randn(shape, generator=gen) * 0.01
    return _cast(out, torch.bfloat16)


def write_model_set(models: Path, inputs: Path | None = None) -> None:
    """Every model kind the workflows use, tiny and random, under the file names the workflows name."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from .models.text.umt5 import UMT5Spec, UMT5TextEncoder
    from .models.wan.vae import WAN21, WAN22, WanVAE

    for i, (name, extra) in enumerate(DIFFUSION_MODELS.items()):
        image = {"image_dim": TINY_CLIP_DIM} if extra.get("image_tokens") else {}
        cfg = WanConfig(**{**TINY_WAN.__dict__, "text_dim": TINY_TEXT_DIM, **extra, **image})
        path = models / "diffusion_models" / name
        state = wan_state_dict(cfg, seed=i)
        if "fp8_scaled" in name:
            save_fp8(state, path, scaled=True)
        else:
            save_single(state, path, prefix="" if name.startswith("SkyReels") else COMFY_PREFIX)

    spec = UMT5Spec(vocab_size=640, d_model=TINY_TEXT_DIM, d_kv=32, d_ff=128, num_heads=2, num_layers=2)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in UMT5TextEncoder(spec).state_dict().items()}
    text = _random(shapes, seed=100)
    text = {k: v.to(torch.float8_e4m3fn) if v.dim() == 2 and "embed" not in k and "shared" not in k
            and "relative_attention_bias" not in k else v for k, v in text.items()}
    text.update({k.removesuffix("weight") + "scale_weight": torch.ones(1) for k, v in text.items()
                 if v.dtype == torch.float8_e4m3fn})
    text["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    with tempfile.TemporaryDirectory() as scratch:
        text["spiece_model"] = torch.frombuffer(bytearray(tiny_spiece(Path(scratch))), dtype=torch.uint8)
    (models / "text_encoders").mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in text.items()}, str(models / "text_encoders" / TEXT_ENCODER))

    clip = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=TINY_CLIP_DIM, intermediate_size=128, num_hidden_layers=3, num_attention_heads=1,
        image_size=224, patch_size=14, projection_dim=32))
    clip_state = {("" if k.startswith(("vision_model.", "visual_projection")) else "vision_model.") + k: v
                  for k, v in clip.state_dict().items()}
    clip_state = {k: (v if "position_ids" in k else _random({k: v.shape}, seed=200)[k]) for k, v in clip_state.items()}
    (models / "clip_vision").mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in clip_state.items()}, str(models / "clip_vision" / CLIP_VISION))

    from dataclasses import replace

    tiny_vaes = {"wan_2.1_vae.safetensors": replace(WAN21, dim=8, dec_dim=8),
                 "wan2.2_vae.safetensors": replace(WAN22, dim=8, dec_dim=12)}
    for name, cfg in tiny_vaes.items():
        with torch.device("meta"):
            shapes = {k: v.shape for k, v in WanVAE(cfg).state_dict().items()}
        (models / "vae").mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in _random(shapes, seed=300, scale=0.05).items()},
                  str(models / "vae" / name))

    write_hunyuan_models(models)
    write_stepvideo_models(models)

    (models / "loras").mkdir(parents=True, exist_ok=True)
    for name, seed in LORAS.items():
        cfg = WanConfig(**{**TINY_WAN.__dict__, "text_dim": TINY_TEXT_DIM, "in_dim": 36 if "_i2v_" in name else 16})
        save_file({k: v.contiguous() for k, v in distillation_lora(cfg, seed).items()}, str(models / "loras" / name))

    if inputs is not None:
        from PIL import Image

        inputs.mkdir(parents=True, exist_ok=True)
        for seed, name in enumerate(INPUT_IMAGES):
            pixels = torch.rand(96, 128, 3, generator=torch.Generator().manual_seed(seed))
            Image.fromarray((pixels * 255).byte().numpy()).save(inputs / name)
        from .video_io import save_mp4

        clip = torch.rand(33, 96, 128, 3, generator=torch.Generator().manual_seed(7))
        path, _ = save_mp4([clip], inputs, "openreel_clip", 24.0)
        path.replace(inputs / INPUT_VIDEO)
