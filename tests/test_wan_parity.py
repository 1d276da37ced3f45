"""Parity of our Wan DiT with the official code (PyPI `wan22`) and diffusers 0.42.1, fp32, tiny random weights.

Every variant the loader detects is covered: T2V, per-frame and per-token timesteps (Wan2.2, TI2V-5B, diffusion
forcing), Wan2.2 I2V (36 channels, no CLIP), Wan2.1 I2V with CLIP tokens, FLF2V (emb_pos), SkyReels-V2's fps
embedding, and block-causal attention.
"""
import pytest
import torch

from openreel.models.wan.family import diffusers_to_official
from openreel.models.wan.model import WanConfig, WanDiT
from references import load_official, require

require("diffusers")  # every test here needs it: the diffusers models, or wan22's WanModel (a diffusers ModelMixin)
from diffusers import SkyReelsV2Transformer3DModel, WanTransformer3DModel  # noqa: E402

TOL = 1e-5
DIM, HEADS, FFN, LAYERS, TEXT_DIM, TEXT_LEN = 64, 4, 128, 2, 32, 512
F_, H_, W_ = 4, 4, 6  # latent frames, height, width → 4·2·3 = 24 tokens


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def randomize(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.data = torch.randn(p.shape, generator=gen) * (0.15 if p.dim() > 1 else 0.5)
    return module.eval()


def ours_from(state: dict, **cfg) -> WanDiT:
    model = WanDiT(WanConfig(dim=DIM, ffn_dim=FFN, num_heads=HEADS, num_layers=LAYERS, text_dim=TEXT_DIM, **cfg))
    model.load_state_dict(state, strict=True)
    return model.eval()


def inputs(channels=16, y_channels=0, batch=1):
    x = torch.randn(batch, channels, F_, H_, W_)
    y = torch.randn(batch, y_channels, F_, H_, W_) if y_channels else None
    context = torch.randn(batch, 11, TEXT_DIM)
    return x, y, context


# ----------------------------------------------------------------------------------------- official (wan22)
def official_model(in_dim=16, out_dim=16, model_type="t2v"):
    ref = load_official("model")
    return randomize(ref.WanModel(model_type=model_type, in_dim=in_dim, out_dim=out_dim, dim=DIM, ffn_dim=FFN,
                                  text_dim=TEXT_DIM, num_heads=HEADS, num_layers=LAYERS, text_len=TEXT_LEN))


def official_i2v_clip():
    """Wan2.1 I2V from official parts: wan22's WanModel with the official image cross-attention and MLPProj
    (wan22 keeps them in wan/modules/animate); CLIP tokens are prepended to the text context as Wan2.1 does."""
    anim = load_official("animate/model_animate")
    model = load_official("model").WanModel(model_type="i2v", in_dim=36, dim=DIM, ffn_dim=FFN, text_dim=TEXT_DIM,
                                            num_heads=HEADS, num_layers=LAYERS, text_len=TEXT_LEN)
    for block in model.blocks:
        block.cross_attn = anim.WanAnimateCrossAttention(DIM, HEADS, (-1, -1), True, 1e-6, use_img_emb=True)
    model.img_emb = anim.MLPProj(1280, DIM)
    model.clip_fea = None
    model.text_embedding.register_forward_hook(
        lambda _m, _i, out: torch.cat([model.img_emb(model.clip_fea), out], dim=1))
    return randomize(model)


def run_official(model, x, t, context, y=None):
    seq_len = F_ * (H_ // 2) * (W_ // 2)
    if t.dim() == 1:  # the official code expands a 1-D t per token only for batch 1
        t = t.unsqueeze(1).expand(-1, seq_len)
    ys = None if y is None else list(y)
    return torch.stack(model(list(x), t, list(context), seq_len=seq_len, y=ys))


@torch.no_grad()
def test_t2v_matches_official():
    ref = official_model()
    ours = ours_from(ref.state_dict())
    x, _, ctx = inputs(batch=2)
    t = torch.tensor([999.0, 250.0])
    assert rel_err(ours(x, t, ctx), run_official(ref, x, t, ctx)) < TOL


@torch.no_grad()
def test_per_frame_and_per_token_timesteps_match_official():
    ref = official_model()
    ours = ours_from(ref.state_dict())
    x, _, ctx = inputs()
    per_frame = torch.tensor([[0.0, 300.0, 600.0, 900.0]])
    per_token = per_frame.repeat_interleave((H_ // 2) * (W_ // 2), dim=1)  # the official Wan2.2 form
    expected = run_official(ref, x, per_token, ctx)
    assert rel_err(ours(x, per_token, ctx), expected) < TOL
    assert rel_err(ours(x, per_frame, ctx), expected) < TOL


@torch.no_grad()
def test_ti2v_5b_matches_official():
    ref = official_model(in_dim=48, out_dim=48, model_type="ti2v")
    ours = ours_from(ref.state_dict(), in_dim=48, out_dim=48)
    x, _, ctx = inputs(channels=48)
    t = torch.tensor([[0.0] + [700.0] * (F_ - 1)]).repeat_interleave(6, dim=1)  # first frame clean
    assert rel_err(ours(x, t, ctx), run_official(ref, x, t, ctx)) < TOL


@torch.no_grad()
def test_wan22_i2v_expert_matches_official():
    ref = official_model(in_dim=36, model_type="i2v")
    ours = ours_from(ref.state_dict(), in_dim=36)
    x, y, ctx = inputs(y_channels=20)
    t = torch.tensor([900.0])
    assert rel_err(ours(x, t, ctx, y=y), run_official(ref, x, t, ctx, y)) < TOL


@torch.no_grad()
def test_wan21_i2v_with_clip_matches_official():
    ref = official_i2v_clip()
    state = {k: v for k, v in ref.state_dict().items()}
    ours = ours_from(state, in_dim=36, image_tokens=257)
    x, y, ctx = inputs(y_channels=20)
    clip = torch.randn(1, 257, 1280)
    ref.clip_fea = clip
    t = torch.tensor([500.0])
    assert rel_err(ours(x, t, ctx, y=y, clip_fea=clip), run_official(ref, x, t, ctx, y)) < TOL


# ----------------------------------------------------------------------------------------- diffusers
def diffusers_wan(in_ch=16, out_ch=16, clip=False, flf=False):
    return randomize(WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=HEADS, attention_head_dim=DIM // HEADS, in_channels=in_ch,
        out_channels=out_ch, text_dim=TEXT_DIM, freq_dim=256, ffn_dim=FFN, num_layers=LAYERS, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=1280 if clip else None,
        added_kv_proj_dim=DIM if clip else None, pos_embed_seq_len=514 if flf else None))


def diffusers_skyreels(in_ch=16, clip=False, fps=False, causal_block=0):
    model = SkyReelsV2Transformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=HEADS, attention_head_dim=DIM // HEADS, in_channels=in_ch,
        out_channels=16, text_dim=TEXT_DIM, freq_dim=256, ffn_dim=FFN, num_layers=LAYERS, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=1280 if clip else None,
        added_kv_proj_dim=DIM if clip else None, inject_sample_info=fps)
    if causal_block:
        model._set_ar_attention(causal_block)
    return randomize(model)


def ours_from_diffusers(model, **cfg) -> WanDiT:
    return ours_from({diffusers_to_official(k): v for k, v in model.state_dict().items()}, **cfg)


def padded(ctx):
    out = torch.zeros(ctx.shape[0], TEXT_LEN, ctx.shape[2])
    out[:, : ctx.shape[1]] = ctx
    return out


@torch.no_grad()
@pytest.mark.parametrize("variant", ["t2v", "i2v_clip", "flf2v", "i2v", "ti2v"])
def test_wan_variants_match_diffusers(variant):
    in_ch, out_ch, y_ch = {"t2v": (16, 16, 0), "ti2v": (48, 48, 0)}.get(variant, (36, 16, 20))
    clip_tokens = {"i2v_clip": 257, "flf2v": 514}.get(variant, 0)
    ref = diffusers_wan(in_ch, out_ch, clip=bool(clip_tokens), flf=variant == "flf2v")
    ours = ours_from_diffusers(ref, in_dim=in_ch, out_dim=out_ch, image_tokens=clip_tokens)
    x, y, ctx = inputs(channels=out_ch, y_channels=y_ch)
    full = x if y is None else torch.cat([x, y], 1)
    t = torch.tensor([[0.0] + [640.0] * (F_ - 1)]).repeat_interleave(6, 1) if variant == "ti2v" else torch.tensor([640.0])
    clip = torch.randn(1, clip_tokens, 1280) if clip_tokens else None
    # diffusers takes FLF2V's two CLIP encodings stacked on the batch axis
    ref_clip = clip.view(2, 257, 1280) if variant == "flf2v" else clip
    expected = ref(full, t, padded(ctx), encoder_hidden_states_image=ref_clip, return_dict=False)[0]
    assert rel_err(ours(x, t, ctx, y=y, clip_fea=clip), expected) < TOL


@torch.no_grad()
def test_skyreels_t2v_and_i2v_match_diffusers():
    for clip in (False, True):
        in_ch = 36 if clip else 16
        ref = diffusers_skyreels(in_ch, clip=clip)
        ours = ours_from_diffusers(ref, in_dim=in_ch, image_tokens=257 if clip else 0)
        x, y, ctx = inputs(y_channels=20 if clip else 0)
        full = x if y is None else torch.cat([x, y], 1)
        feats = torch.randn(1, 257, 1280) if clip else None
        t = torch.tensor([333.0])
        expected = ref(full, t, padded(ctx), encoder_hidden_states_image=feats, return_dict=False)[0]
        assert rel_err(ours(x, t, ctx, y=y, clip_fea=feats), expected) < TOL


@torch.no_grad()
@pytest.mark.parametrize("fps", [16, 24])
def test_skyreels_df_fps_embedding_and_per_frame_timesteps_match_diffusers(fps):
    ref = diffusers_skyreels(fps=True)
    ours = ours_from_diffusers(ref, fps_embedding=True)
    x, _, ctx = inputs()
    t = torch.tensor([[0.0, 250.0, 750.0, 999.0]])
    expected = ref(x, t, padded(ctx), enable_diffusion_forcing=True, fps=[0 if fps == 16 else 1],
                   return_dict=False)[0]
    assert rel_err(ours(x, t, ctx, fps=fps), expected) < TOL


@torch.no_grad()
def test_skyreels_block_causal_attention_matches_diffusers():
    ref = diffusers_skyreels(causal_block=2)
    ours = ours_from_diffusers(ref)
    x, _, ctx = inputs()
    t = torch.tensor([[100.0, 100.0, 800.0, 800.0]])
    expected = ref(x, t, padded(ctx), enable_diffusion_forcing=True, return_dict=False)[0]
    got = ours(x, t, ctx, causal_block_size=2)
    assert rel_err(got, expected) < TOL
    # and the mask matters: the first block must not see the second
    assert rel_err(ours(x, t, ctx), expected) > 1e-3
