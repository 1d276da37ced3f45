"""A new model family plugs in from outside the package: a toy two-stream DiT ("toy"), its VAE and its latent
format "toy8" are registered here, written as synthetic files, and run through the nodes a user's graph would use
(DiT Loader → Block Swap → Sampler → VAE Decode) without any change to the loaders, sampler, planner or nodes.

Checks: detection and refusals by the registries, prefix stripping, embedded guidance (one call per step, the
scale reaching the model), block swap over two block lists (bitwise the resident result), and a stacked wrapper
seeing every block loop outside block swap."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

from openreel import runtime
from openreel.errors import DetectionError, InputError
from openreel.handles import DiTSpec, TextEmbeds
from openreel.latents import LATENT_FORMATS, LatentFormat, register_latent_format
from openreel.memory.block_swap import BlockSwapResidency
from openreel.model_loaders import core
from openreel.model_loaders.cache import MODULES
from openreel.model_loaders.checkpoint import layer_count
from openreel.model_loaders.dit import inspect_dit
from openreel.models import registry  # noqa: F401  (the built-in families register first, as in a real run)
from openreel.models.common.family import (DIT_FAMILIES, VAE_FAMILIES, DiTFamily, ModelInputs, SamplingDefaults,
                                           VAEFamily, find_prefix, keep_under, register_family, register_vae_family)
from openreel.models.common.ops import PLAIN, Ops
from openreel.models.common.wrappers import WrappedModel, Wrapper
from openreel.nodes.encode import OpenReelVAEDecode
from openreel.nodes.loaders import OpenReelDiTLoader, OpenReelVAELoader
from openreel.nodes.memory import OpenReelBlockSwap
from openreel.nodes.sample import OpenReelEmbeddedGuidance, OpenReelEmptyLatent, OpenReelSampler

TEXT_DIM = 24
STEPS = 3
GUIDANCE = 6.0          # the toy's default embedded guidance scale
WIDTH, HEIGHT, FRAMES = 32, 24, 9
DIT_FILE, VAE_FILE = "toy_dit_bf16.safetensors", "toy_vae.safetensors"


# ----------------------------------------------------------------------------------------- the toy DiT
@dataclass(frozen=True)
class ToyConfig:
    in_channels: int = 8
    dim: int = 32
    text_dim: int = TEXT_DIM
    double_layers: int = 2
    single_layers: int = 3
    patch_size: tuple[int, int, int] = (1, 1, 1)


def sinusoid(v: torch.Tensor, width: int = 16) -> torch.Tensor:
    freqs = torch.exp(-math.log(10000.0) * torch.arange(width // 2, dtype=torch.float32) / (width // 2))
    angles = v.float()[:, None] * freqs
    return torch.cat([angles.cos(), angles.sin()], -1)


class DoubleBlock(nn.Module):
    """Takes and returns (img, txt)."""

    def __init__(self, dim: int, ops: Ops):
        super().__init__()
        self.img_mlp = ops.linear(dim, dim)
        self.txt_mlp = ops.linear(dim, dim)

    def forward(self, pair, vec):
        img, txt = pair
        img = img + torch.tanh(self.img_mlp(img + txt.mean(1, keepdim=True) + vec))
        return img, txt + torch.tanh(self.txt_mlp(txt + vec))


class SingleBlock(nn.Module):
    def __init__(self, dim: int, ops: Ops):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.linear1 = ops.linear(dim, 2 * dim)
        self.linear2 = ops.linear(2 * dim, dim)

    def forward(self, h, vec):
        return h + self.linear2(F.gelu(self.linear1(self.norm(h) + vec)))


class ToyDiT(WrappedModel):
    block_lists = ("double_blocks", "single_blocks")
    embedders = ("text_in",)

    def __init__(self, cfg: ToyConfig, ops: Ops = PLAIN):
        super().__init__()
        self.img_in = nn.Linear(cfg.in_channels, cfg.dim)      # patch (1, 1, 1): one token per latent pixel
        self.text_in = nn.Linear(cfg.text_dim, cfg.dim)
        self.vec_in = nn.Linear(32, cfg.dim)                    # sinusoids of t and of the guidance scale
        self.double_blocks = nn.ModuleList(DoubleBlock(cfg.dim, ops) for _ in range(cfg.double_layers))
        self.single_blocks = nn.ModuleList(SingleBlock(cfg.dim, ops) for _ in range(cfg.single_layers))
        self.final = nn.Linear(cfg.dim, cfg.in_channels)

    def compute(self, x, t, context, guidance):
        b, c, f, h, w = x.shape
        dtype = self.img_in.weight.dtype
        img = self.img_in(x.flatten(2).transpose(1, 2).to(dtype))
        txt = self.text_in(context.to(dtype))
        g = torch.full_like(t[:, 0], float(guidance) * 100)
        vec = self.vec_in(torch.cat([sinusoid(t[:, 0]), sinusoid(g)], -1).to(dtype))[:, None]
        img, txt = self.run_blocks("double_blocks", (img, txt), vec)
        joined = self.run_blocks("single_blocks", torch.cat([txt, img], 1), vec)
        out = self.final(joined[:, txt.shape[1]:])
        return out.transpose(1, 2).reshape(b, c, f, h, w).float()


class ToyFamily(DiTFamily):
    name = "toy"
    title = "Toy"
    anchors = ("double_blocks.0.img_mlp.weight",)

    def normalize(self, ckpt):
        return keep_under(ckpt, find_prefix(ckpt, self.anchors) or "")

    def describe(self, ckpt) -> DiTSpec:
        if "img_in.weight" not in ckpt or "text_in.weight" not in ckpt:
            raise DetectionError(f"{ckpt.name} looks like a toy model but is incomplete", "write it again")
        dim, in_channels = ckpt.shape("img_in.weight")
        cfg = ToyConfig(in_channels=in_channels, dim=dim, text_dim=ckpt.shape("text_in.weight")[1],
                        double_layers=layer_count(ckpt.keys(), r"double_blocks\.(\d+)\."),
                        single_layers=layer_count(ckpt.keys(), r"single_blocks\.(\d+)\."))
        return DiTSpec("toy", "t2v_toy", "a toy two-stream text-to-video model", "t2v", "toy8", cfg)

    def build(self, spec, ops):
        return ToyDiT(spec.config, ops)

    def defaults(self, spec, pair, width, height):
        return SamplingDefaults(STEPS, 3.0, 1.0, 1.0, 0.0, 24, "toy", embedded_guidance=GUIDANCE)

    def check(self, spec, fmt, cond, embeds, pair):
        if embeds.positive.shape[-1] != spec.config.text_dim:
            raise InputError(f"the text embeddings are {embeds.positive.shape[-1]} wide but the model takes "
                             f"{spec.config.text_dim}", "encode the prompt with the toy text encoder")

    def model_inputs(self, spec, embeds, cond, defaults):
        return ModelInputs({"context": embeds.positive}, None, {"guidance": self.embedded_scale(embeds, defaults)})

    def activation_bytes(self, spec, tokens, batch=1, token_chunk=0):
        return batch * tokens * spec.config.dim * 4 * 8


# ----------------------------------------------------------------------------------------- the toy VAE
@dataclass(frozen=True)
class ToyVAEConfig:
    z_dim: int = 8
    spatial_stride: int = 8
    temporal_stride: int = 4


class ToyVAE(nn.Module):
    """Pixel means ↔ latent channels by 1×1×1 convolutions; frames 1 + 4n ↔ latent frames 1 + n."""

    def __init__(self, cfg: ToyVAEConfig):
        super().__init__()
        self.cfg = cfg
        self.toy_encoder = nn.Conv3d(3, cfg.z_dim, 1)
        self.toy_decoder = nn.Conv3d(cfg.z_dim, 3, 1)

    def encode(self, video, tile_size=None):
        s, st = self.cfg.spatial_stride, self.cfg.temporal_stride
        video = torch.cat([video[:, :, :1], video[:, :, 1::st]], 2) if video.shape[2] > 1 else video
        pooled = F.avg_pool3d(video.to(self.toy_encoder.weight.dtype), (1, s, s))
        return self.toy_encoder(pooled).float()

    def _frames(self, latent):
        s = self.cfg.spatial_stride
        rgb = torch.tanh(self.toy_decoder(latent.to(self.toy_decoder.weight.dtype)))
        return F.interpolate(rgb, scale_factor=(1, s, s), mode="nearest")

    def decode_iter(self, latent, tile_size=None):
        for i in range(latent.shape[2]):
            frames = self._frames(latent[:, :, i:i + 1])
            yield frames if i == 0 else frames.repeat(1, 1, self.cfg.temporal_stride, 1, 1)

    def decode(self, latent, tile_size=None):
        return torch.cat(list(self.decode_iter(latent)), 2)


class ToyVAEFamily(VAEFamily):
    name = "toy"
    title = "Toy VAE"
    anchors = ("toy_decoder.weight",)

    def normalize(self, ckpt):
        return keep_under(ckpt, find_prefix(ckpt, self.anchors) or "")

    def describe(self, ckpt):
        return ToyVAEConfig(z_dim=ckpt.shape("toy_decoder.weight")[1])

    def build(self, config):
        return ToyVAE(config)

    def latent_format(self, config):
        return "toy8"


TOY8 = LatentFormat("toy8", "8-channel (Toy VAE)", channels=8, temporal_stride=4, spatial_stride=8, size_multiple=8,
                    preview_factors=tuple((0.1 * (i % 3), 0.05 * i, -0.1) for i in range(8)))


# ----------------------------------------------------------------------------------------- files and registration
def _random_state(module: nn.Module, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(v.shape, generator=gen) * 0.3).to(torch.bfloat16) for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    (folder / "diffusion_models").mkdir()
    (folder / "vae").mkdir()
    dit_state = _random_state(ToyDiT(ToyConfig()), 1)
    save_file({f"model.diffusion_model.{k}": v for k, v in dit_state.items()}, folder / "diffusion_models" / DIT_FILE)
    save_file(_random_state(ToyVAE(ToyVAEConfig()), 2), folder / "vae" / VAE_FILE)
    families = register_family(ToyFamily()), register_vae_family(ToyVAEFamily())
    register_latent_format(TOY8)
    runtime.set_models_dir(folder)
    try:
        yield folder, families
    finally:
        runtime.set_models_dir(None)
        DIT_FAMILIES.pop("toy", None)
        VAE_FAMILIES.pop("toy", None)
        LATENT_FORMATS.pop("toy8", None)
        MODULES.clear()


class CountingWrapper(Wrapper):
    """Outside block swap (order < 100): counts model calls and the block loops of each."""

    order = 10

    def __init__(self):
        self.calls: list[dict] = []

    def forward(self, call, model, *args, **kwargs):
        self.calls.append({"guidance": kwargs.get("guidance"), "lists": [], "chain": model.wrappers.names()})
        return call(*args, **kwargs)

    def blocks(self, call, model, list_name, x, *args):
        self.calls[-1]["lists"].append(list_name)
        return call(x, *args)


def _embeds(width: int = TEXT_DIM) -> TextEmbeds:
    gen = torch.Generator().manual_seed(3)
    return TextEmbeds(torch.randn(1, 5, width, generator=gen), torch.zeros(1, 1, width))


def _graph(vae, blocks_to_swap: int, counter: CountingWrapper):
    """DiT Loader → Block Swap → Sampler (embeds, Empty Latent) → VAE Decode, as a user's graph runs them."""
    dit = OpenReelDiTLoader().load(DIT_FILE, "auto", "auto")[0]
    core.module_of(dit).wrappers.set("count", counter)
    dit = OpenReelBlockSwap().apply(dit, blocks_to_swap, blocks_to_swap > 0)[0]  # 0: block swap off
    latent = OpenReelEmptyLatent().make(vae, WIDTH, HEIGHT, FRAMES, 1)[0]
    sampled = OpenReelSampler().run(dit, _embeds(), latent, 7, 0, 0.0, 0.0, "euler")[0]
    images = OpenReelVAEDecode().decode(vae, sampled, "auto")[0]
    return dit, sampled, images


# ----------------------------------------------------------------------------------------- tests
def test_registries_identify_the_toy_files(toy):
    folder, (dit_family, vae_family) = toy
    family, ckpt, handle = inspect_dit(folder / "diffusion_models" / DIT_FILE)
    assert family is dit_family
    assert "img_in.weight" in ckpt and not any(k.startswith("model.") for k in ckpt.keys())  # prefix stripped
    assert handle.spec.family == "toy" and handle.spec.latent_format == "toy8"
    assert (handle.spec.config.double_layers, handle.spec.config.single_layers) == (2, 3)
    vae = OpenReelVAELoader().load(VAE_FILE, "auto")[0]
    assert (vae.family, vae.latent_format) == ("toy", "toy8")
    with pytest.raises(DetectionError, match="OpenReel VAE Loader: .*a Toy diffusion transformer, not a VAE"):
        OpenReelVAELoader().load(str(folder / "diffusion_models" / DIT_FILE), "auto")
    with pytest.raises(DetectionError, match="video VAE \\(Toy VAE\\), not a diffusion transformer"):
        OpenReelDiTLoader().load(str(folder / "vae" / VAE_FILE), "auto", "auto")


def test_family_checks_refuse_before_sampling(toy):
    vae = OpenReelVAELoader().load(VAE_FILE, "auto")[0]
    dit = OpenReelDiTLoader().load(DIT_FILE, "auto", "auto")[0]
    latent = OpenReelEmptyLatent().make(vae, WIDTH, HEIGHT, FRAMES, 1)[0]
    with pytest.raises(InputError, match="^OpenReel Sampler: the text embeddings are 16 wide but the model takes 24"):
        OpenReelSampler().run(dit, _embeds(16), latent, 0, 1, 0.0, 0.0, "euler")


def test_toy_family_samples_through_the_nodes_with_block_swap(toy):
    vae = OpenReelVAELoader().load(VAE_FILE, "auto")[0]

    swapped_counter = CountingWrapper()
    dit, sampled, images = _graph(vae, 4, swapped_counter)
    module = core.module_of(dit)
    assert isinstance(module, ToyDiT) and module.double_blocks[0].img_mlp.weight.dtype == torch.float32  # CPU: fp32

    # the latent and the decoded frames
    assert sampled["latent_format"] == "toy8"
    assert tuple(sampled["samples"].shape) == (1, 8, (FRAMES - 1) // 4 + 1, HEIGHT // 8, WIDTH // 8)
    assert torch.isfinite(sampled["samples"]).all()
    assert tuple(images.shape) == (FRAMES, HEIGHT, WIDTH, 3)
    assert images.min() >= 0 and images.max() <= 1

    # block swap was on, over both block lists: 4 of 2 + 3 blocks reach into the double-stream list
    residency = module.residency
    assert isinstance(residency, BlockSwapResidency)
    assert set(residency.segments) == {"double_blocks", "single_blocks"}
    assert residency.segments["double_blocks"].first == 1 and residency.segments["single_blocks"].first == 0
    assert residency.offloaded == ("text_in",)
    assert sorted(number for number, _ in residency.trace) == [1, 2, 3, 4]  # every swapped block streamed

    # embedded guidance: one model call per step, the scale given to the model; the wrapper sat outside block
    # swap and saw both block loops on every call
    assert len(swapped_counter.calls) == STEPS
    for call in swapped_counter.calls:
        assert call["guidance"] == GUIDANCE
        assert call["chain"] == ["count", "block_swap"]
        assert call["lists"] == ["double_blocks", "single_blocks"]

    # the same graph without block swap: bitwise the same numbers
    resident_counter = CountingWrapper()
    dit0, sampled0, images0 = _graph(vae, 0, resident_counter)
    assert core.module_of(dit0) is module and getattr(module, "residency", None) is None
    assert module.wrappers.names() == ["count"]  # prepare() kept the unknown wrapper, dropped block swap's
    assert len(resident_counter.calls) == STEPS
    assert all(c["lists"] == ["double_blocks", "single_blocks"] for c in resident_counter.calls)
    assert torch.equal(sampled0["samples"], sampled["samples"])
    assert torch.equal(images0, images)

    # the guidance scale is a real model input: another scale gives another video
    embeds = OpenReelEmbeddedGuidance().apply(_embeds(), 2.0)[0]
    other = OpenReelSampler().run(dit0, embeds, OpenReelEmptyLatent().make(vae, WIDTH, HEIGHT, FRAMES, 1)[0], 7,
                                  0, 0.0, 0.0, "euler")[0]
    assert resident_counter.calls[-1]["guidance"] == 2.0
    assert not torch.equal(other["samples"], sampled0["samples"])
