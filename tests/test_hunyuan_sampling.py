"""HunyuanVideo text-to-video end to end on tiny random weights: OpenReel's sampler (the model loaded from a diffusers
folder through the DiT loader, the official defaults) against a reference loop built from diffusers' pipeline pieces
(`HunyuanVideoTransformer3DModel`, `FlowMatchEulerDiscreteScheduler` with shift 7 on linspace(1, 0) sigmas, guidance
× 1000 as `HunyuanVideoPipeline` passes it), with the same noise and the same embeddings."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from openreel.handles import TextEmbeds
from openreel.latents import empty_latent, latent_format
from openreel.model_loaders.cache import MODULES
from openreel.model_loaders.dit import load_dit
from openreel.models.hunyuan.model import HunyuanConfig
from openreel.samplers.sample import make_noise, sample
from references import require

require("diffusers")
from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoTransformer3DModel  # noqa: E402

STEPS, SHIFT, SEED = 4, 7.0, 11
CFG = HunyuanConfig(hidden=64, heads=2, mlp_width=256, double_blocks=2, single_blocks=2, text_dim=32, pooled_dim=8,
                    refiner_heads=2, refiner_mlp_width=256, rope_axes=(4, 14, 14))


def _model(guidance_embeds: bool) -> HunyuanVideoTransformer3DModel:
    model = HunyuanVideoTransformer3DModel(
        in_channels=16, out_channels=16, num_attention_heads=CFG.heads, attention_head_dim=CFG.head_dim,
        num_layers=CFG.double_blocks, num_single_layers=CFG.single_blocks, num_refiner_layers=CFG.refiner_blocks,
        mlp_ratio=CFG.mlp_width / CFG.hidden, text_embed_dim=CFG.text_dim, pooled_projection_dim=CFG.pooled_dim,
        rope_axes_dim=CFG.rope_axes, guidance_embeds=guidance_embeds)
    gen = torch.Generator().manual_seed(0)
    for p in model.parameters():
        p.data = torch.randn(p.shape, generator=gen) * (0.1 if p.dim() > 1 else 0.5)
    return model.eval()


def _diffusers_folder(model: HunyuanVideoTransformer3DModel, folder) -> str:
    """A diffusers `transformer/` folder: config.json and the weights."""
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(folder / "diffusion_pytorch_model.safetensors"))
    (folder / "config.json").write_text(json.dumps(dict(model.config)))
    return str(folder / "diffusion_pytorch_model.safetensors")


def _embeds(lengths=(6, 3)) -> tuple[TextEmbeds, dict]:
    """Our embeddings (real rows only) and the pipeline's (padded to 12 rows with a mask)."""
    gen = torch.Generator().manual_seed(5)
    rows = [torch.randn(1, n, CFG.text_dim, generator=gen) for n in lengths]
    pooled = [torch.randn(1, CFG.pooled_dim, generator=gen) for _ in lengths]
    padded = [torch.cat([r, torch.randn(1, 12 - r.shape[1], CFG.text_dim, generator=gen)], 1) for r in rows]
    masks = [(torch.arange(12) < r.shape[1]).long()[None] for r in rows]
    ours = TextEmbeds(rows[0], rows[1], positive_pooled=pooled[0], negative_pooled=pooled[1])
    pipeline = {"positive": (padded[0], masks[0], pooled[0]), "negative": (padded[1], masks[1], pooled[1])}
    return ours, pipeline


@torch.no_grad()
def _reference(model, noise, pipeline, embedded: float | None, cfg_scale: float) -> torch.Tensor:
    """HunyuanVideoPipeline's loop: Euler on shifted linspace(1, 0) sigmas; true CFG when cfg_scale > 1."""
    scheduler = FlowMatchEulerDiscreteScheduler(shift=SHIFT)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 0.0, STEPS + 1)[:-1])
    guidance = None if embedded is None else torch.tensor([embedded]) * 1000.0
    latents = noise.clone()
    for t in scheduler.timesteps:
        timestep = t.expand(1).to(latents.dtype)
        v = model(latents, timestep, *pipeline["positive"], guidance=guidance, return_dict=False)[0]
        if cfg_scale > 1:
            v_neg = model(latents, timestep, *pipeline["negative"], guidance=guidance, return_dict=False)[0]
            v = v_neg + cfg_scale * (v - v_neg)
        latents = scheduler.step(v, t, latents, return_dict=False)[0]
    return latents


@pytest.mark.parametrize("distilled", [True, False])
def test_t2v_run_matches_a_loop_of_diffusers_pieces(tmp_path, distilled):
    model = _model(distilled)
    dit = load_dit(_diffusers_folder(model, tmp_path / "transformer"), "fp32", "fp32")
    embeds, pipeline = _embeds()
    latent = empty_latent(latent_format("hunyuan"), 48, 32, 9)
    noise = make_noise(tuple(latent["samples"].shape), SEED)
    try:
        # the official defaults (0 = default): distilled → cfg 1 with embedded 6; not distilled → cfg 6
        out = sample(dit, embeds, latent, seed=SEED, steps=STEPS, shift=SHIFT)["samples"]
        expected = _reference(model, noise, pipeline, 6.0 if distilled else None, 1.0 if distilled else 6.0)
        assert ((out - expected).norm() / expected.norm()).item() <= 1e-4
        if distilled:  # the embedded scale is a real input, and classifier-free guidance may come on top
            out = sample(dit, TextEmbeds(**{**embeds.__dict__, "embedded_guidance": 3.5}), latent, seed=SEED,
                         steps=STEPS, shift=SHIFT, guidance=2.0)["samples"]
            expected = _reference(model, noise, pipeline, 3.5, 2.0)
            assert ((out - expected).norm() / expected.norm()).item() <= 1e-4
    finally:
        MODULES.clear()
