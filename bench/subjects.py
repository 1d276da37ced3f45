"""What bench/dit_speed.py measures, per model family: full-size configs, inputs, our module built through the real
loading path from random weights, the diffusers peer on the same weights, and a FLOP count.

Weights are random (none can be downloaded) but of the real size, generated on the GPU per tensor name (the same
values at every read). Ours go through OpenReel's loading path (meta build + the family's `normalize` + materialize).
"""
from __future__ import annotations

import sys
import types
import zlib
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if "openreel" not in sys.modules:  # the library only: the package __init__ would import every node
    package = types.ModuleType("openreel")
    package.__path__ = [str(ROOT)]
    sys.modules["openreel"] = package

from openreel.model_loaders.build import materialize  # noqa: E402
from openreel.model_loaders.checkpoint import Checkpoint, TensorInfo  # noqa: E402


def random_checkpoint(shapes: dict[str, tuple[int, ...]], device: str, salt: str = "") -> Checkpoint:
    """Random bf16 tensors made on the GPU, seeded by `salt` and name."""
    def reader(key, shape):
        def read():
            gen = torch.Generator(device=device).manual_seed(zlib.crc32((salt + key).encode()))
            scale = 0.02 if len(shape) > 1 else 0.1
            return torch.randn(shape, generator=gen, device=device, dtype=torch.bfloat16) * scale
        return read

    return Checkpoint((Path("random.safetensors"),), {k: TensorInfo(s, torch.bfloat16) for k, s in shapes.items()},
                      {k: reader(k, s) for k, s in shapes.items()})


def meta_shapes(factory) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in factory().state_dict().items()}


class Wan:
    """Wan 1.3B / 5B / 14B; diffusers `WanTransformer3DModel` shares our big weight tensors (no second copy)."""

    from openreel.models.wan.model import FP32_PARAMS, WanConfig, WanDiT

    SIZES = {"1.3b": WanConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30),
             "5b": WanConfig(dim=3072, ffn_dim=14336, num_heads=24, num_layers=30, in_dim=48, out_dim=48),
             "14b": WanConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)}
    DEFAULT_SIZE = "14b"
    # (frames, height, width) in pixels; the latent is /4 in time (+1), /8 in space (Wan2.1 VAE)
    RESOLUTIONS = {"480p": (81, 480, 832), "720p": (81, 720, 1280)}

    @classmethod
    def with_layers(cls, cfg, layers: int):
        return cls.WanConfig(**{**cfg.__dict__, "num_layers": layers})

    @classmethod
    def blocks(cls, module) -> int:
        return len(module.blocks)

    @classmethod
    def build(cls, cfg, device: str, weight_dtype: str = "bf16"):
        ckpt = random_checkpoint(meta_shapes(lambda: cls.WanDiT(cfg)), device)
        return materialize(lambda ops: cls.WanDiT(cfg, ops), ckpt, weight_dtype=weight_dtype, compute_dtype="bf16",
                           device=torch.device(device), fp32_params=cls.FP32_PARAMS)

    @classmethod
    def peer(cls, ours, device: str):
        from diffusers import WanTransformer3DModel

        from openreel.models.wan.family import diffusers_to_official

        cfg = ours.cfg
        with torch.device("meta"):
            ref = WanTransformer3DModel(patch_size=cfg.patch_size, num_attention_heads=cfg.num_heads,
                                        attention_head_dim=cfg.head_dim, in_channels=cfg.in_dim,
                                        out_channels=cfg.out_dim, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim,
                                        ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers, cross_attn_norm=True,
                                        qk_norm="rms_norm_across_heads", eps=cfg.eps)
        keep_fp32 = set(WanTransformer3DModel._keep_in_fp32_modules)
        for name, _ in list(ref.named_parameters()):
            mod_name, _, attr = name.rpartition(".")
            mod = ref.get_submodule(mod_name) if mod_name else ref
            tensor = ours.get_parameter(diffusers_to_official(name))
            want = torch.float32 if keep_fp32 & set(name.split(".")) else torch.bfloat16
            mod._parameters[attr] = tensor if tensor.dtype == want else torch.nn.Parameter(tensor.to(want), False)
        ref.rope = type(ref.rope)(cfg.head_dim, cfg.patch_size, 1024).to(device)
        return ref.eval()

    @classmethod
    def inputs(cls, cfg, res: str, device: str):
        """(args, kwargs) for ours, (args, kwargs) for the peer, tokens."""
        frames, height, width = cls.RESOLUTIONS[res]
        stride = 16 if cfg.in_dim == 48 else 8
        shape = (1, cfg.in_dim, (frames - 1) // 4 + 1, height // stride, width // stride)
        x = torch.randn(shape, device=device, dtype=torch.bfloat16)
        context = torch.randn(1, 512, cfg.text_dim, device=device, dtype=torch.bfloat16)
        t = torch.tensor([500.0], device=device)
        tokens = shape[2] * (shape[3] // 2) * (shape[4] // 2)
        return ((x, t, context), {}), ((x, t, context), {"return_dict": False}), tokens

    @staticmethod
    def predicted_activation(cfg, tokens: int, token_chunk: int = 0) -> int:
        from types import SimpleNamespace

        from openreel.models.wan.family import WAN

        return WAN.activation_bytes(SimpleNamespace(config=cfg), tokens, token_chunk=token_chunk)

    @staticmethod
    def flops(cfg, tokens: int) -> float:
        """Blocks: GEMMs (self q,k,v,o; cross q,o + k,v on 512 text rows; FFN) and attention."""
        d, f, L = cfg.dim, cfg.ffn_dim, tokens
        gemm = 2 * L * d * d * 6 + 2 * 512 * d * d * 2 + 2 * L * d * f * 2
        attn = 4 * L * L * d + 4 * L * 512 * d
        return cfg.num_layers * (gemm + attn)


class Hunyuan:
    """HunyuanVideo 13B. Random weights are made under diffusers' names: diffusers loads them as they are, ours
    reads them through the family's diffusers → official mapping (the path a diffusers folder takes)."""

    from openreel.models.hunyuan.model import FP32_PARAMS, HunyuanConfig, HunyuanDiT

    SIZES = {"13b": HunyuanConfig()}
    DEFAULT_SIZE = "13b"
    RESOLUTIONS = {"720p": (129, 720, 1280), "544p": (129, 544, 960)}
    TEXT = 256          # the pipeline pads the LLaVA text to 256 tokens …
    TEXT_VALID = 40     # … of which a typical prompt fills this many

    @classmethod
    def with_layers(cls, cfg, layers: int):
        return cls.HunyuanConfig(**{**cfg.__dict__, "double_blocks": layers // 3, "single_blocks": layers - layers // 3})

    @classmethod
    def blocks(cls, module) -> int:
        return len(module.double_blocks) + len(module.single_blocks)

    @classmethod
    def _diffusers_model(cls, cfg):
        from diffusers import HunyuanVideoTransformer3DModel

        return HunyuanVideoTransformer3DModel(
            in_channels=cfg.in_channels, out_channels=cfg.out_channels, num_attention_heads=cfg.heads,
            attention_head_dim=cfg.head_dim, num_layers=cfg.double_blocks, num_single_layers=cfg.single_blocks,
            num_refiner_layers=cfg.refiner_blocks, mlp_ratio=cfg.mlp_width / cfg.hidden, patch_size=cfg.patch_size[1],
            patch_size_t=cfg.patch_size[0], qk_norm="rms_norm", guidance_embeds=cfg.guidance_embed,
            text_embed_dim=cfg.text_dim, pooled_projection_dim=cfg.pooled_dim, rope_theta=cfg.rope_theta,
            rope_axes_dim=cfg.rope_axes)

    @classmethod
    def _checkpoint(cls, cfg, device: str) -> Checkpoint:
        return random_checkpoint(meta_shapes(lambda: cls._diffusers_model(cfg)), device)

    @classmethod
    def build(cls, cfg, device: str, weight_dtype: str = "bf16"):
        from openreel.models.hunyuan.family import HUNYUAN

        ckpt = HUNYUAN.normalize(cls._checkpoint(cfg, device))
        return materialize(lambda ops: cls.HunyuanDiT(cfg, ops), ckpt, weight_dtype=weight_dtype,
                           compute_dtype="bf16", device=torch.device(device), fp32_params=cls.FP32_PARAMS)

    @classmethod
    def peer(cls, ours, device: str):
        """diffusers' model on the same values (its own copy: its q/k/v are separate tensors, ours fused)."""
        with torch.device("meta"):
            ref = cls._diffusers_model(ours.cfg)
        ckpt = cls._checkpoint(ours.cfg, device)
        ref.load_state_dict({k: ckpt.get(k) for k in ckpt.keys()}, assign=True)
        return ref.to(device, torch.bfloat16).eval()

    @classmethod
    def inputs(cls, cfg, res: str, device: str):
        frames, height, width = cls.RESOLUTIONS[res]
        shape = (1, cfg.in_channels, (frames - 1) // 4 + 1, height // 8, width // 8)
        x = torch.randn(shape, device=device, dtype=torch.bfloat16)
        context = torch.randn(1, cls.TEXT, cfg.text_dim, device=device, dtype=torch.bfloat16)
        mask = (torch.arange(cls.TEXT, device=device) < cls.TEXT_VALID).long()[None]
        pooled = torch.randn(1, cfg.pooled_dim, device=device, dtype=torch.bfloat16)
        t = torch.tensor([500.0], device=device)
        g = torch.tensor([6000.0], device=device)  # diffusers takes guidance × 1000, ours the scale
        tokens = shape[2] * (shape[3] // 2) * (shape[4] // 2)
        ours = ((x, t, context), {"context_mask": mask, "pooled": pooled, "guidance": 6.0})
        peer = ((x, t, context, mask, pooled), {"guidance": g, "return_dict": False})
        return ours, peer, tokens

    @staticmethod
    def predicted_activation(cfg, tokens: int, token_chunk: int = 0) -> int:
        from types import SimpleNamespace

        from openreel.models.hunyuan.family import HUNYUAN

        return HUNYUAN.activation_bytes(SimpleNamespace(config=cfg), tokens, token_chunk=token_chunk)

    @classmethod
    def flops(cls, cfg, tokens: int) -> float:
        """Double and single blocks over image + valid text tokens: GEMMs and attention (the refiner is small)."""
        d, m, L = cfg.hidden, cfg.mlp_width, tokens + cls.TEXT_VALID
        double = 2 * L * (4 * d * d + 2 * d * m) + 4 * L * L * d
        single = 2 * L * (3 * d * d + d * m + (d + m) * d) + 4 * L * L * d
        return cfg.double_blocks * double + cfg.single_blocks * single


class StepVideo:
    """Step-Video-T2V 30B. The peer is the official `StepVideoModel` (its blocks from xfuser 0.7.0), single process,
    on the same values: the official names are ours, so it takes our tensors where the dtype matches (bf16 copies of
    our float32 norms and modulation tables, as the official pipeline casts the whole model to bf16). The official
    code comes from $STEPVIDEO_T2V_PATH, loaded as tests/references.py does."""

    from openreel.models.stepvideo.model import FP32_PARAMS, StepVideoConfig, StepVideoDiT

    SIZES = {"30b": StepVideoConfig()}
    DEFAULT_SIZE = "30b"
    RESOLUTIONS = {"544p": (204, 544, 992)}   # 204 frames → 36 latent frames; 16× in space
    PEERS = ("official",)
    LLM, LLM_VALID, CLIP = 320, 40, 77        # Step-LLM padded to 320 tokens, a typical prompt's share; CLIP's 77

    @classmethod
    def with_layers(cls, cfg, layers: int):
        return cls.StepVideoConfig(**{**cfg.__dict__, "layers": layers})

    @classmethod
    def blocks(cls, module) -> int:
        return len(module.transformer_blocks)

    @classmethod
    def build(cls, cfg, device: str, weight_dtype: str = "bf16"):
        ckpt = random_checkpoint(meta_shapes(lambda: cls.StepVideoDiT(cfg)), device)
        return materialize(lambda ops: cls.StepVideoDiT(cfg, ops), ckpt, weight_dtype=weight_dtype,
                           compute_dtype="bf16", device=torch.device(device), fp32_params=cls.FP32_PARAMS)

    @classmethod
    def peer(cls, ours, device: str, dtype: torch.dtype = torch.bfloat16):
        sys.path.insert(0, str(ROOT / "tests"))
        from references import load_stepvideo

        cfg = ours.cfg
        with torch.device("meta"):
            ref = load_stepvideo("modules.model").StepVideoModel(
                num_attention_heads=cfg.heads, attention_head_dim=cfg.head_dim, in_channels=cfg.in_channels,
                out_channels=cfg.out_channels, num_layers=cfg.layers, caption_channels=[cfg.caption_dim, cfg.clip_dim],
                attention_type="torch")
        state = {k: v if v.dtype == dtype else v.to(dtype) for k, v in ours.state_dict().items()}
        ref.load_state_dict(state, assign=True)
        return ref.to(device).eval()

    @classmethod
    def inputs(cls, cfg, res: str, device: str, dtype: torch.dtype = torch.bfloat16):
        frames, height, width = cls.RESOLUTIONS[res]
        shape = (1, cfg.in_channels, frames // 17 * 3, height // 16, width // 16)
        x = torch.randn(shape, device=device, dtype=dtype)
        context = torch.randn(1, cls.LLM, cfg.caption_dim, device=device, dtype=dtype)
        mask = (torch.arange(cls.LLM, device=device) < cls.LLM_VALID).long()[None]
        clip = torch.randn(1, cls.CLIP, cfg.clip_dim, device=device, dtype=dtype)
        t = torch.tensor([500.0], device=device)
        tokens = shape[2] * shape[3] * shape[4]
        ours = ((x, t, context), {"context_mask": mask, "clip": clip})
        full_mask = torch.cat([torch.ones(1, cls.CLIP, dtype=mask.dtype, device=device), mask], dim=1)
        peer = ((x.transpose(1, 2),), {"encoder_hidden_states": context, "encoder_hidden_states_2": clip,
                                       "timestep": t / 1000, "encoder_attention_mask": full_mask,
                                       "return_dict": False})
        return ours, peer, tokens

    @staticmethod
    def peer_output(out) -> torch.Tensor:
        """The official output (a tensor (B, F, C, H, W) with return_dict=False) in our layout."""
        return out.transpose(1, 2)

    @staticmethod
    def predicted_activation(cfg, tokens: int, token_chunk: int = 0) -> int:
        from types import SimpleNamespace

        from openreel.models.stepvideo.family import STEPVIDEO

        return STEPVIDEO.activation_bytes(SimpleNamespace(config=cfg), tokens, token_chunk=token_chunk)

    @classmethod
    def flops(cls, cfg, tokens: int) -> float:
        """Blocks: self-attention q, k, v, o and cross-attention q, o over the video tokens, cross k, v over the
        397 text tokens, the MLP; attention over the video tokens and over the text."""
        d, w, L, text = cfg.hidden, cfg.ffn_width, tokens, cls.CLIP + cls.LLM_VALID
        gemm = 2 * L * d * d * 6 + 2 * text * d * d * 2 + 2 * L * d * w * 2
        attn = 4 * L * L * d + 4 * L * text * d
        return cfg.layers * (gemm + attn)


def use_flash4(peer) -> None:
    """diffusers' own FlashAttention 4 backend ("flash_4_hub") with its kernel taken from the installed
    `flash-attn-4` rather than downloaded from the Hub (the GPU machine has no network), as a custom op, as
    OpenReel's "flash" backend runs it, so diffusers' regional compile keeps whole blocks in one graph."""
    from diffusers.models import attention_dispatch as dispatch

    from openreel.speed import attention_backends

    def kernel(q, k, v, softmax_scale=None, causal=False):
        assert softmax_scale is None and not causal   # Wan and HunyuanVideo: the default scale, no causal mask
        return attention_backends._flash4_op(q.contiguous(), k.contiguous(), v.contiguous())

    dispatch._HUB_KERNELS_REGISTRY[dispatch.AttentionBackendName.FLASH_4_HUB].kernel_fn = kernel
    dispatch._check_attention_backend_requirements = lambda backend: None   # it asks for the `kernels` package
    peer.set_attention_backend("flash_4_hub")


for _subject in (Wan, Hunyuan):
    _subject.PEERS = ("diffusers", "diffusers-compiled", "diffusers-compiled-fa4")
    _subject.use_flash4 = staticmethod(use_flash4)
    _subject.peer_output = staticmethod(lambda out: out[0])  # diffusers: a tuple with return_dict=False

SUBJECTS = {"wan": Wan, "hunyuan": Hunyuan, "stepvideo": StepVideo}
