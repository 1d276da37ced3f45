"""One Step-Video text-to-video run through OpenReel's nodes (the loaders, Text Encode, Empty Latent, Sampler and the
VAE decode) on the synthetic set's files equals the official pipeline's pieces on the same weights, fp32:

- the caption server's text: `Wrapped_StepChatTokenizer` + `Step1Model` (StepFun's square-root-ALiBi fallback
  standing in for the closed kernel, as tests/test_stepvideo_text.py loads it) padded to 320 tokens, and HunyuanCLIP
  (`BertTokenizer` + `BertModel`) padded to 77, the LLM mask left-padded with 77 ones (api/call_remote_server.py);
- the pipeline's loop: `StepVideoModel` with batched CFG [positive; negative] and `FlowMatchDiscreteScheduler`
  (stepvideo/diffusion/video_pipeline.py), from the same noise;
- `AutoencoderKL(version=2).decode`.

Needs the official code ($STEPVIDEO_T2V_PATH); skipped with the reason without it.
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from openreel import runtime
from openreel import synthetic_stepvideo as tiny
from openreel.encoding.prompts import STEPVIDEO_NEGATIVE, STEPVIDEO_POSITIVE_MAGIC
from openreel.encoding.video import decode_pixels
from openreel.model_loaders.cache import MODULES
from openreel.model_loaders.core import module_of
from openreel.nodes.encode import OpenReelTextEncode
from openreel.nodes.loaders import OpenReelDiTLoader, OpenReelTextEncoderLoader, OpenReelVAELoader
from openreel.nodes.sample import OpenReelEmptyLatent, OpenReelSampler
from openreel.samplers.sample import make_noise
from references import load_stepvideo, rel_err, stepvideo_root

PROMPT = "a red fox walks on the snow, cinematic"
STEPS, GUIDANCE, SHIFT, SEED = 3, 9.0, 13.0, 3



@pytest.fixture
def models(tmp_path):
    stepvideo_root()  # skip first, before writing anything
    folder = tmp_path / "models"
    tiny.write_models(folder)
    runtime.set_models_dir(folder)
    yield folder
    runtime.set_models_dir(None)
    MODULES.clear()


def ours(models):
    """The nodes a graph wires, fp32 everywhere."""
    dit = OpenReelDiTLoader().load(tiny.DIT_FILES[0], "auto", "fp32")[0]
    llm = OpenReelTextEncoderLoader().load("step_llm/model-00001-of-00002.safetensors", "fp32")[0]
    clip = OpenReelTextEncoderLoader().load("hunyuan_clip/clip_text_encoder/pytorch_model.bin", "fp32")[0]
    vae = OpenReelVAELoader().load(tiny.VAE_FILE, "fp32")[0]
    embeds = OpenReelTextEncode().encode(llm, PROMPT, STEPVIDEO_NEGATIVE, clip)[0]
    latent = OpenReelEmptyLatent().make(vae, 64, 64, 17, 1)[0]
    out = OpenReelSampler().run(dit, embeds, latent, SEED, STEPS, GUIDANCE, 0.0, "official")[0]
    return embeds, out["samples"], decode_pixels(vae, out["samples"], "off"), module_of(vae)


def official_text(models, monkeypatch):
    """y, y_mask and clip_embedding as the official caption server makes them for [positive + magic; negative]."""
    import transformers
    from test_stepvideo_text import _official

    llm_dir, clip_dir = models / "text_encoders" / "step_llm", models / "text_encoders" / "hunyuan_clip"
    prompts = [PROMPT + STEPVIDEO_POSITIVE_MAGIC, STEPVIDEO_NEGATIVE]
    tokenizer = _official("text_encoder.tokenizer", monkeypatch).Wrapped_StepChatTokenizer(
        str(llm_dir / "step1_chat_tokenizer.model"))
    config = {**json.loads((llm_dir / "config.json").read_text()), "params_dtype": torch.float32}
    step1 = _official("text_encoder.stepllm", monkeypatch).Step1Model(transformers.PretrainedConfig(**config)).eval()
    state = {k: v.float() for shard in sorted(llm_dir.glob("model-*.safetensors")) for k, v in load_file(shard).items()}
    step1.load_state_dict(state)
    tokens = tokenizer(prompts, max_length=320, padding="max_length", truncation=True, return_tensors="pt")
    y = step1(tokens.input_ids, attention_mask=tokens.attention_mask).transpose(0, 1)
    bert_tokens = transformers.BertTokenizer.from_pretrained(str(clip_dir / "tokenizer"))(
        prompts, padding="max_length", max_length=77, truncation=True, return_attention_mask=True,
        return_tensors="pt")
    bert = transformers.BertModel.from_pretrained(str(clip_dir / "clip_text_encoder")).float().eval()
    clip = bert(bert_tokens.input_ids, attention_mask=bert_tokens.attention_mask).last_hidden_state
    y_mask = torch.nn.functional.pad(tokens.attention_mask, (clip.shape[1], 0), value=1)
    return y, y_mask, clip


def official_latent(models, y, y_mask, clip):
    """The pipeline's loop on the DiT file's weights, from our sampler's noise (in the official (B, F, C, H, W))."""
    cfg = tiny.tiny_dit_config()
    ref = load_stepvideo("modules.model").StepVideoModel(
        num_attention_heads=cfg.heads, attention_head_dim=cfg.head_dim, in_channels=cfg.in_channels,
        out_channels=cfg.out_channels, num_layers=cfg.layers, caption_channels=[cfg.caption_dim, cfg.clip_dim],
        attention_type="torch").float().eval()
    prefix = "model.diffusion_model."
    state = load_file(models / "diffusion_models" / tiny.DIT_FILES[0])
    ref.load_state_dict({k[len(prefix):]: v.float() for k, v in state.items()})
    scheduler = load_stepvideo("diffusion.scheduler").FlowMatchDiscreteScheduler()
    scheduler.set_timesteps(num_inference_steps=STEPS, time_shift=SHIFT)
    latents = make_noise((1, cfg.in_channels, 3, 4, 4), SEED).transpose(1, 2)
    for t in scheduler.timesteps:
        pred = ref(hidden_states=torch.cat([latents] * 2), timestep=t.expand(2), encoder_hidden_states=y,
                   encoder_attention_mask=y_mask, encoder_hidden_states_2=clip, return_dict=False)
        cond, uncond = pred.chunk(2)
        latents = scheduler.step(model_output=uncond + GUIDANCE * (cond - uncond), timestep=t, sample=latents)
    return latents


@torch.no_grad()
def test_a_t2v_run_equals_the_official_pipelines_pieces(models, monkeypatch):
    embeds, latent, video, our_vae = ours(models)
    y, y_mask, clip = official_text(models, monkeypatch)
    real = int(y_mask[0, clip.shape[1]:].sum())
    assert rel_err(embeds.positive[0, :real], y[0, :real]) <= 1e-5
    assert rel_err(embeds.positive_2, clip[:1]) <= 1e-5 and rel_err(embeds.negative_2, clip[1:]) <= 1e-5

    expected = official_latent(models, y, y_mask, clip)
    assert rel_err(latent, expected.transpose(1, 2)) <= 1e-4

    from test_stepvideo_vae import official as official_vae

    _, ref_vae, _ = official_vae(tiny.TINY_VAE)
    ref_vae.load_state_dict(our_vae.state_dict())
    frames = ref_vae.decode(expected.clone()).transpose(1, 2).clamp(-1, 1)
    assert video.shape == (1, 3, 17, 64, 64) and rel_err(video, frames) <= 1e-4
