"""End-to-end sampling parity on tiny random weights: our sampler vs loops built from the official Wan pieces
(wan22's WanModel and FlowUniPCMultistepScheduler, stepped exactly as text2video.py / textimage2video.py do):
same noise, same text embeddings, same steps / shift / CFG; ≤ 1e-4 relative on the final latent."""
import pytest
import torch

from types import SimpleNamespace

from openreel.handles import TextEmbeds
from openreel.latents import ImageConditioning
from openreel.models.wan.family import WAN
from openreel.models.wan.model import WanConfig, WanDiT
from openreel.samplers.flow import sample_flow
from openreel.samplers.session import Expert
from openreel.samplers.schedules import wan_unipc_schedule
from references import load_official, load_official_util

TOL = 1e-4
DIM, HEADS, FFN, LAYERS, TEXT_DIM = 64, 4, 128, 2, 32
LATENT = (3, 4, 6)  # latent frames, height, width → 3·2·3 = 18 tokens


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def model_pair(seed, in_dim=16, out_dim=16, model_type="t2v"):
    """An official WanModel with random weights and our DiT holding the same weights."""
    ref = load_official("model").WanModel(model_type=model_type, in_dim=in_dim, out_dim=out_dim, dim=DIM,
                                          ffn_dim=FFN, text_dim=TEXT_DIM, num_heads=HEADS, num_layers=LAYERS)
    gen = torch.Generator().manual_seed(seed)
    for p in ref.parameters():
        p.data = torch.randn(p.shape, generator=gen) * (0.15 if p.dim() > 1 else 0.5)
    ours = WanDiT(WanConfig(dim=DIM, ffn_dim=FFN, num_heads=HEADS, num_layers=LAYERS, text_dim=TEXT_DIM,
                            in_dim=in_dim, out_dim=out_dim))
    ours.load_state_dict(ref.state_dict())
    return ref.eval(), ours.eval()


def expert(model, guidance, ctx, nctx, y=None):
    """Our session's expert for `model`, its inputs made by the Wan family adapter."""
    cond = ImageConditioning("i2v", concat=y) if y is not None else None
    spec = SimpleNamespace(config=model.cfg)
    return Expert(model, guidance, WAN.model_inputs(spec, TextEmbeds(ctx, nctx), cond, None), WAN, spec)


def official_scheduler(steps, shift):
    sched = load_official_util("fm_solvers_unipc.py").FlowUniPCMultistepScheduler(
        num_train_timesteps=1000, shift=1, use_dynamic_shifting=False)
    sched.set_timesteps(steps, shift=shift)
    return sched


def texts():
    return torch.randn(1, 9, TEXT_DIM), torch.randn(1, 5, TEXT_DIM)


@torch.no_grad()
def official_loop(models, guides, boundary, noise, ctx, nctx, steps, shift, t_fn=None, paste=None):
    """text2video.py's loop (Wan2.2: expert and guide chosen by `t >= boundary·1000`)."""
    sched = official_scheduler(steps, shift)
    latent = noise[0] if paste is None else paste(noise[0])
    seq_len = LATENT[0] * (LATENT[1] // 2) * (LATENT[2] // 2)
    for t in sched.timesteps:
        i = 0 if len(models) == 1 or t.item() >= boundary * 1000 else 1
        timestep = torch.stack([t]) if t_fn is None else t_fn(t)
        cond = models[i]([latent], t=timestep, context=[ctx[0]], seq_len=seq_len)[0]
        uncond = models[i]([latent], t=timestep, context=[nctx[0]], seq_len=seq_len)[0]
        pred = uncond + guides[i] * (cond - uncond)
        latent = sched.step(pred.unsqueeze(0), t, latent.unsqueeze(0), return_dict=False)[0].squeeze(0)
        if paste is not None:
            latent = paste(latent)
    return latent.unsqueeze(0)


@pytest.mark.parametrize("batch_cfg", [False, True])
def test_t2v_sampling_matches_official(batch_cfg):
    ref, ours = model_pair(1)
    ctx, nctx = texts()
    noise = torch.randn(1, 16, *LATENT)
    expected = official_loop([ref], [5.0], 0.0, noise, ctx, nctx, steps=6, shift=5.0)
    got = sample_flow([expert(ours, 5.0, ctx, nctx)], wan_unipc_schedule(6, 5.0), "unipc", noise.clone(),
                      batch_cfg=batch_cfg)
    assert rel_err(got, expected) < TOL


def test_wan22_expert_pair_switches_like_official():
    (ref_high, high), (ref_low, low) = model_pair(2), model_pair(3)
    ctx, nctx = texts()
    noise = torch.randn(1, 16, *LATENT)
    steps, shift, boundary = 8, 12.0, 0.875
    schedule = wan_unipc_schedule(steps, shift)
    n_high = int((schedule.timesteps >= boundary * 1000).sum())
    assert 0 < n_high < steps  # the run really uses both experts
    expected = official_loop([ref_high, ref_low], [4.0, 3.0], boundary, noise, ctx, nctx, steps, shift)
    calls = []
    for module in (high, low):
        module.register_forward_pre_hook(lambda m, *_: calls.append(m))
    got = sample_flow([expert(high, 4.0, ctx, nctx), expert(low, 3.0, ctx, nctx)], schedule, "unipc",
                      noise.clone(), boundary=boundary, batch_cfg=False)
    assert rel_err(got, expected) < TOL
    assert calls == [high] * (2 * n_high) + [low] * (2 * (steps - n_high))


def test_ti2v_image_mode_matches_official():
    ref, ours = model_pair(4, in_dim=48, out_dim=48, model_type="ti2v")
    ctx, nctx = texts()
    noise = torch.randn(1, 48, *LATENT)
    z = torch.randn(48, 1, *LATENT[1:])  # the VAE-encoded first frame
    mask = torch.ones(48, *LATENT)
    mask[:, 0] = 0  # textimage2video.py's masks_like(zero=True)

    def t_fn(t):  # per token: 0 on the first frame's tokens
        return (mask[0][:, ::2, ::2] * t).flatten().unsqueeze(0)

    def paste(latent):
        return (1.0 - mask) * z + mask * latent

    expected = official_loop([ref], [5.0], 0.0, noise, ctx, nctx, 5, 5.0, t_fn=t_fn, paste=paste)
    got = sample_flow([expert(ours, 5.0, ctx, nctx)], wan_unipc_schedule(5, 5.0), "unipc", noise.clone(),
                      given=z.unsqueeze(0), batch_cfg=True)
    assert rel_err(got, expected) < TOL
    assert torch.equal(got[:, :, :1], z.unsqueeze(0))  # the given frame is exactly the image latent


def test_i2v_conditioning_reaches_the_model():
    ref, ours = model_pair(5, in_dim=36, model_type="i2v")
    ctx, nctx = texts()
    noise = torch.randn(1, 16, *LATENT)
    y = torch.randn(1, 20, *LATENT)
    sched = official_scheduler(4, 5.0)
    latent = noise[0]
    with torch.no_grad():
        for t in sched.timesteps:
            args = dict(t=torch.stack([t]), seq_len=18, y=[y[0]])
            cond = ref([latent], context=[ctx[0]], **args)[0]
            uncond = ref([latent], context=[nctx[0]], **args)[0]
            pred = uncond + 3.5 * (cond - uncond)
            latent = sched.step(pred.unsqueeze(0), t, latent.unsqueeze(0), return_dict=False)[0].squeeze(0)
    got = sample_flow([expert(ours, 3.5, ctx, nctx, y=y)], wan_unipc_schedule(4, 5.0), "unipc", noise.clone())
    assert rel_err(got, latent.unsqueeze(0)) < TOL


def test_schedule_node_gives_comfyui_sigmas_of_the_official_tables():
    from openreel.nodes.sample import OpenReelSchedule
    from openreel.samplers.schedules import FlowSchedule, linear_schedule

    for kind, build in (("wan_unipc", wan_unipc_schedule), ("linear", linear_schedule)):
        (sigmas,) = OpenReelSchedule().make(kind, 30, 8.0, 0.6)
        official = build(30, 8.0, 0.6)
        assert sigmas.dtype == torch.float32 and sigmas.dim() == 1 and sigmas[-1] == 0  # ComfyUI's SIGMAS
        assert torch.equal(sigmas, official.sigmas)
        # SIGMAS carry no integer timesteps: σ·1000 is used, at most 1 from the official int64 truncation
        assert (FlowSchedule.from_sigmas(sigmas).timesteps - official.timesteps.float()).abs().max() < 1


@pytest.mark.parametrize("batch_cfg", [True, False])
def test_progress_total_of_a_pair_is_known_up_front(monkeypatch, batch_cfg):
    """The bar counts guidance branches (a batched CFG call ticks twice), so a pair's total is set once, before
    any expert is loaded, and the bar ends full (before: it shrank when an expert batched its CFG)."""
    from openreel import runtime

    totals, values = [], []

    class Recording(runtime.Progress):
        def set_total(self, total):
            totals.append(total)
            super().set_total(total)

        def update(self, n=1, preview=None):
            super().update(n, preview)
            values.append(self.value)

    monkeypatch.setattr(runtime, "Progress", Recording)
    (_, high), (_, low) = model_pair(2), model_pair(3)
    ctx, nctx = texts()
    sample_flow([expert(high, 4.0, ctx, nctx), expert(low, 1.0, ctx, nctx)], wan_unipc_schedule(6, 12.0), "unipc",
                torch.randn(1, 16, *LATENT), boundary=0.875, batch_cfg=batch_cfg)
    n_high = int((wan_unipc_schedule(6, 12.0).timesteps >= 875).sum())
    expected = 2 * n_high + (6 - n_high)  # two branches per high-noise step, one (cfg 1) per low-noise step
    assert set(totals) == {expected} and values[-1] == expected


def test_previews_show_every_step_and_the_last_at_the_end(monkeypatch):
    """Each step's preview (the x0 estimate's middle frame) is drawn at the next step or the run's end, so its
    copy to the host never waits for the GPU; every step still shows one, the last step's before the run returns."""
    from openreel import latents, runtime

    shown = []

    class Recording(runtime.Progress):
        def update(self, n=1, preview=None):
            super().update(n, preview)
            if preview is not None:
                shown.append((self.value, preview.size))

    monkeypatch.setattr(runtime, "Progress", Recording)
    (_, model), (ctx, nctx) = model_pair(4), texts()
    sample_flow([expert(model, 1.0, ctx, nctx)], wan_unipc_schedule(3, 5.0), "unipc", torch.randn(1, 16, *LATENT),
                latent_format=latents.latent_format("wan21"))
    assert shown == [(2, (6, 4)), (3, (6, 4)), (3, (6, 4))]   # drawn one call late; the last at the end
