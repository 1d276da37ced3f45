"""The Wan diffusion transformer: Wan2.1, Wan2.2 (A14B experts, TI2V-5B) and SkyReels-V2 in one network.

Written from the published architecture (Wan-Video/Wan2.1 `wan/modules/model.py`); parameter names follow the
official checkpoints so official and ComfyUI files load without renaming. One network serves every variant:
- timesteps per sample [B], per latent frame [B, F] (diffusion forcing, TI2V first frame) or per token [B, L];
- image cross-attention on CLIP tokens (Wan2.1 / SkyReels I2V: 257 tokens; FLF2V: 514 with `emb_pos`);
- the fps embedding of SkyReels-V2 DF-1.3B; block-causal attention (SkyReels `causal_block_size`).

Numerics follow the official code: the residual stream, norms, modulation and time embedding run in float32;
the linear layers and attention run in `compute_dtype`.

Token chunks (`token_chunk` > 0, set by the "token_chunks" patch): each block's FFN, with the norm and modulation
around it, runs over chunks of that many tokens, adding into the stream chunk by chunk; the values are those of
the default path (the chunked matrix products only have fewer rows).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...errors import InputError
from ..common.attention import attention, self_attention
from ..common.embeddings import axial_rope_angles, rope_cos_sin, timestep_sinusoid
from ..common.norms import RMSNorm, layer_norm, residual_norm, rms_norm_rope
from ..common.ops import PLAIN, Ops
from ..common.token_chunks import add_in_chunks, chunking
from ..common.wrappers import WrappedModel


@dataclass(frozen=True)
class WanConfig:
    dim: int
    ffn_dim: int
    num_heads: int
    num_layers: int
    in_dim: int = 16
    out_dim: int = 16
    text_dim: int = 4096
    text_len: int = 512
    freq_dim: int = 256
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    image_dim: int = 1280     # width of the CLIP vision tokens
    image_tokens: int = 0     # 0: no image cross-attention; 257: I2V; 514: FLF2V (first + last frame, emb_pos)
    fps_embedding: bool = False
    rope_theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def rope_axis_dims(self) -> tuple[int, int, int]:
        d = self.head_dim
        return (d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6))


class StepInputs(NamedTuple):
    """What every block needs besides the hidden states; built once per forward."""
    e0: torch.Tensor                  # [B, G, 6, D] float32 modulation (G = 1, frames or tokens)
    context: torch.Tensor             # [B, text_len, D] compute dtype
    image_context: torch.Tensor | None  # [B, image_tokens, D] compute dtype
    rope: tuple[torch.Tensor, torch.Tensor]
    mask: torch.Tensor | None         # [L, L] bool, True = may attend
    backend: str
    dtype: torch.dtype
    chunk: int = 0                    # tokens per chunk in the FFN (0: off)
    e: torch.Tensor | None = None     # [B, G, D] float32 time embedding (the head's; step caches compare it)


def _linear_fp32(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, layer.weight.float(), None if layer.bias is None else layer.bias.float())


def _gate(y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    b, length, d = y.shape
    return (y.float().view(b, gate.shape[1], -1, d) * gate).view(b, length, d)


def _rows(mod: torch.Tensor, s: slice, length: int) -> torch.Tensor:
    """Modulation vectors mod [B, G, 1, D] (G groups of consecutive tokens) for tokens `s` of `length`: `mod`
    itself when one group holds every token, else a row per token."""
    if mod.shape[1] == 1:
        return mod
    return mod[:, torch.arange(s.start, s.stop, device=mod.device) // (length // mod.shape[1])]


class SelfAttention(nn.Module):
    def __init__(self, cfg: WanConfig, ops: Ops):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.q, self.k, self.v, self.o = (ops.linear(cfg.dim, cfg.dim) for _ in range(4))
        self.norm_q = RMSNorm(cfg.dim, cfg.eps)
        self.norm_k = RMSNorm(cfg.dim, cfg.eps)

    def forward(self, x: torch.Tensor, inp: StepInputs) -> torch.Tensor:
        q = rms_norm_rope(self.q, x, self.norm_q, inp.rope, self.num_heads)
        k = rms_norm_rope(self.k, x, self.norm_k, inp.rope, self.num_heads)
        v = self.v(x).unflatten(2, (self.num_heads, -1))
        return self.o(self_attention(q, k, v, mask=inp.mask, backend=inp.backend))


class CrossAttention(nn.Module):
    def __init__(self, cfg: WanConfig, ops: Ops):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.q, self.k, self.v, self.o = (ops.linear(cfg.dim, cfg.dim) for _ in range(4))
        self.norm_q = RMSNorm(cfg.dim, cfg.eps)
        self.norm_k = RMSNorm(cfg.dim, cfg.eps)
        if cfg.image_tokens:
            self.k_img = ops.linear(cfg.dim, cfg.dim)
            self.v_img = ops.linear(cfg.dim, cfg.dim)
            self.norm_k_img = RMSNorm(cfg.dim, cfg.eps)

    def forward(self, x: torch.Tensor, inp: StepInputs) -> torch.Tensor:
        heads = (self.num_heads, -1)
        q = self.norm_q(self.q(x)).unflatten(2, heads)
        k = self.norm_k(self.k(inp.context)).unflatten(2, heads)
        v = self.v(inp.context).unflatten(2, heads)
        out = attention(q, k, v, backend=inp.backend)
        if inp.image_context is not None:
            k_img = self.norm_k_img(self.k_img(inp.image_context)).unflatten(2, heads)
            v_img = self.v_img(inp.image_context).unflatten(2, heads)
            out = out + attention(q, k_img, v_img, backend=inp.backend)
        return self.o(out)


class WanBlock(nn.Module):
    def __init__(self, cfg: WanConfig, ops: Ops):
        super().__init__()
        self.eps = cfg.eps
        self.self_attn = SelfAttention(cfg, ops)
        self.norm3 = nn.LayerNorm(cfg.dim, eps=cfg.eps)
        self.cross_attn = CrossAttention(cfg, ops)
        self.ffn = nn.Sequential(ops.linear(cfg.dim, cfg.ffn_dim), nn.GELU(approximate="tanh"),
                                 ops.linear(cfg.ffn_dim, cfg.dim))
        self.modulation = nn.Parameter(torch.zeros(1, 6, cfg.dim))

    def forward(self, x: torch.Tensor, inp: StepInputs) -> torch.Tensor:
        mod = (self.modulation.float().unsqueeze(0) + inp.e0).unsqueeze(2)  # [B, G, 1, 6, D]
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = mod.unbind(3)
        x, h = residual_norm(x, eps=self.eps, shift=shift_sa, scale=scale_sa, dtype=inp.dtype)
        x, h = residual_norm(x, self.self_attn(h, inp), gate_sa, eps=self.eps, norm=self.norm3, dtype=inp.dtype)
        length = x.shape[1]
        if chunking(inp.chunk, length):
            x = x + self.cross_attn(h, inp).float()
            return add_in_chunks(x, lambda s: self._ffn_branch(
                x[:, s], *(_rows(m, s, length) for m in (shift_ff, scale_ff, gate_ff)), inp.dtype), inp.chunk)
        x, h = residual_norm(x, self.cross_attn(h, inp), eps=self.eps, shift=shift_ff, scale=scale_ff,
                             dtype=inp.dtype)
        return x + _gate(self.ffn(h), gate_ff)

    def _ffn_branch(self, x: torch.Tensor, shift, scale, gate, dtype: torch.dtype) -> torch.Tensor:
        """The gated FFN branch of the tokens x (a chunk), with their modulation vectors."""
        h = residual_norm(x, eps=self.eps, shift=shift, scale=scale, dtype=dtype)[1]
        return _gate(self.ffn(h), gate)


class Head(nn.Module):
    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.eps = cfg.eps
        self.head = nn.Linear(cfg.dim, cfg.out_dim * math.prod(cfg.patch_size))
        self.modulation = nn.Parameter(torch.zeros(1, 2, cfg.dim))

    def forward(self, x: torch.Tensor, e: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        mod = (self.modulation.float().unsqueeze(0) + e.unsqueeze(2)).unsqueeze(2)  # [B, G, 1, 2, D]
        shift, scale = mod.unbind(3)
        return self.head(residual_norm(x, eps=self.eps, shift=shift, scale=scale, dtype=dtype)[1])


class ImageEmbedding(nn.Module):
    """CLIP vision tokens → model width (LayerNorm, MLP, LayerNorm); FLF2V adds a learned position table."""

    def __init__(self, cfg: WanConfig):
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(cfg.image_dim), nn.Linear(cfg.image_dim, cfg.image_dim), nn.GELU(),
                                  nn.Linear(cfg.image_dim, cfg.dim), nn.LayerNorm(cfg.dim))
        if cfg.image_tokens == 514:
            self.emb_pos = nn.Parameter(torch.zeros(1, cfg.image_tokens, cfg.image_dim))

    def forward(self, clip_tokens: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        x = clip_tokens.float()
        if hasattr(self, "emb_pos"):
            x = x + self.emb_pos.float()
        x = layer_norm(x, self.proj[0].eps, self.proj[0]).to(dtype)
        x = self.proj[3](self.proj[2](self.proj[1](x)))
        return layer_norm(x, self.proj[4].eps, self.proj[4]).to(dtype)


class WanDiT(WrappedModel):
    """Block list "blocks"; the text and image embedders run once per call (block swap may keep them on the host).
    `ops` builds the block linears (see models/common/ops.py)."""

    block_lists = ("blocks",)
    embedders = ("text_embedding", "img_emb")
    token_chunk = 0   # tokens per chunk in the blocks' FFN, 0 = off (the "token_chunks" patch sets it)

    def __init__(self, cfg: WanConfig, ops: Ops = PLAIN):
        super().__init__()
        self.cfg = cfg
        self.compute_dtype = torch.float32
        self.attention_backend = "sdpa"
        d = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_dim, d, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, d), nn.GELU(approximate="tanh"), nn.Linear(d, d))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        if cfg.fps_embedding:
            self.fps_embedding = nn.Embedding(2, d)
            self.fps_projection = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, 6 * d))
        if cfg.image_tokens:
            self.img_emb = ImageEmbedding(cfg)
        self.blocks = nn.ModuleList(WanBlock(cfg, ops) for _ in range(cfg.num_layers))
        self.head = Head(cfg)

    # ------------------------------------------------------------------------------ conditioning
    def _time_embeddings(self, t: torch.Tensor, fps: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """e [B, G, D] (for the head) and e0 [B, G, 6, D] (for the blocks), float32."""
        e = timestep_sinusoid(t, self.cfg.freq_dim)
        e = _linear_fp32(self.time_embedding[2], F.silu(_linear_fp32(self.time_embedding[0], e)))
        e0 = _linear_fp32(self.time_projection[1], F.silu(e))
        if self.cfg.fps_embedding:
            index = torch.full((t.shape[0],), 0 if fps == 16 else 1, dtype=torch.long, device=t.device)
            f = self.fps_embedding.weight.float()[index]
            f = _linear_fp32(self.fps_projection[2], F.silu(_linear_fp32(self.fps_projection[0], f)))
            e0 = e0 + f.unsqueeze(1)
        return e, e0.unflatten(-1, (6, self.cfg.dim))

    def _text_context(self, context: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        b, length, width = context.shape
        if width != self.cfg.text_dim:
            raise InputError(f"text embeddings of shape {tuple(context.shape)} do not fit this model "
                             f"(tokens of width {self.cfg.text_dim})",
                             "encode the prompt with the umT5-XXL text encoder this model was trained with")
        if length > self.cfg.text_len:
            raise InputError(f"the prompt has {length} tokens but this model reads at most {self.cfg.text_len}",
                             "shorten the prompt")
        # Wan pads to text_len with zero rows *before* the embedding MLP, and attends to all of them.
        padded = context.new_zeros(b, self.cfg.text_len, width)
        padded[:, :length] = context
        return self.text_embedding(padded.to(dtype))

    def _timesteps(self, t: torch.Tensor, batch: int, frames: int, tokens: int) -> torch.Tensor:
        t = torch.as_tensor(t)
        if t.dim() == 0:
            t = t.expand(batch)
        if t.dim() == 1:
            t = t.unsqueeze(1)
        if t.dim() != 2 or t.shape[0] not in (1, batch) or t.shape[1] not in (1, frames, tokens):
            raise InputError(f"timesteps of shape {tuple(t.shape)} do not match a batch of {batch} with "
                             f"{frames} latent frames ({tokens} tokens)",
                             "pass one timestep per sample, per latent frame, or per token")
        return t.expand(batch, -1)

    def _block_causal_mask(self, grid: tuple[int, int, int], block: int, device) -> torch.Tensor:
        frame_block = torch.arange(grid[0], device=device) // block
        token_block = frame_block.repeat_interleave(grid[1] * grid[2])
        return token_block.unsqueeze(0) <= token_block.unsqueeze(1)

    # ------------------------------------------------------------------------------ forward
    def compute(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, *, clip_fea: torch.Tensor | None = None,
                y: torch.Tensor | None = None, fps: int | None = None,
                causal_block_size: int | None = None) -> torch.Tensor:
        """Predict the flow velocity for latents `x` [B, C, F, H, W] at timesteps `t` (0..1000).

        `y` [B, C_y, F, H, W] is concatenated to `x` on channels (image-to-video conditioning); `clip_fea`
        [B, image_tokens, 1280] are CLIP vision tokens; `fps` selects SkyReels DF's fps embedding (16 → 0, else 1);
        `causal_block_size` makes attention block-causal over groups of that many latent frames.
        Returns float32 [B, out_dim, F, H, W].
        """
        cfg, dtype = self.cfg, self.compute_dtype
        if y is not None:
            x = torch.cat([x, y.to(x.dtype)], dim=1)
        b, c, f, h, w = x.shape
        pt, ph, pw = cfg.patch_size
        if c != cfg.in_dim:
            raise InputError(f"the latent has {c} channels (with image conditioning) but this model takes {cfg.in_dim}",
                             "use the latent and conditioning nodes made for this model")
        if f % pt or h % ph or w % pw:
            raise InputError(f"latent size {f}×{h}×{w} is not a multiple of the patch size {cfg.patch_size}",
                             "choose a width and height that are multiples of the VAE stride × 2")
        if cfg.image_tokens and clip_fea is None:
            raise InputError("this image-to-video model needs CLIP vision features", "connect a CLIP vision encoding")
        grid = (f // pt, h // ph, w // pw)
        tokens = math.prod(grid)

        x = self.patch_embedding(x.to(dtype)).flatten(2).transpose(1, 2)
        # tokens × channels in memory, as the norms read them (a cast copies so; a float32 one does not)
        x = x.to(torch.float32, memory_format=torch.contiguous_format).contiguous()
        t = self._timesteps(t.to(x.device), b, grid[0], tokens)
        e, e0 = self._time_embeddings(t, fps)

        image_context = None
        if cfg.image_tokens:
            if clip_fea.shape[1:] != (cfg.image_tokens, cfg.image_dim):
                raise InputError(f"CLIP features of shape {tuple(clip_fea.shape)} do not fit this model, which takes "
                                 f"{cfg.image_tokens} tokens of width {cfg.image_dim}",
                                 "use the ViT-H/14 CLIP vision encoder; first-last-frame models need both frames")
            image_context = self.img_emb(clip_fea.to(x.device), dtype)

        rope = rope_cos_sin(axial_rope_angles(grid, cfg.rope_axis_dims, cfg.rope_theta, device=x.device))
        mask = None
        if causal_block_size and causal_block_size > 0:
            mask = self._block_causal_mask(grid, causal_block_size, x.device)
        inp = StepInputs(e0, self._text_context(context.to(x.device), dtype), image_context, rope, mask,
                         self.attention_backend, dtype, self.token_chunk, e)
        x = self.run_blocks("blocks", x, inp)
        out = self.head(x, e, dtype).float()
        return self.unpatchify(out, grid)

    def inputs_for_tokens(self, inp: StepInputs, s: slice, length: int) -> StepInputs:
        """The blocks' inputs for tokens `s` of `length` (a rank's share under sequence parallelism): their
        modulation rows and RoPE angles; the mask stays over all tokens, as attention sees all of them."""
        cos, sin = inp.rope
        return inp._replace(e0=_rows(inp.e0, s, length), rope=(cos[s], sin[s]))

    def step_cache_signal(self, kind: str, x: torch.Tensor, inp: StepInputs) -> torch.Tensor:
        """What TeaCache compares from step to step (speed/step_cache), from the block list's inputs, as
        TeaCache4Wan2.1: the time embedding e [B, G, D] ("teacache"), or with retention steps ("teacache_ret") the
        blocks' modulation input e0 [B, G, 6, D]."""
        return inp.e0 if kind == "teacache_ret" else inp.e

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """[B, L, pt·ph·pw·C] (channel fastest) → [B, C, F, H, W]."""
        pt, ph, pw = self.cfg.patch_size
        b = x.shape[0]
        x = x.view(b, *grid, pt, ph, pw, self.cfg.out_dim).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(b, self.cfg.out_dim, grid[0] * pt, grid[1] * ph, grid[2] * pw)


# Parameters kept in float32 (the official numerics); the block linears' storage is the ops' choice, and the
# rest is stored in the compute dtype.
FP32_PARAMS = r".*(modulation|norm|time_embedding|time_projection|fps_|emb_pos|img_emb\.proj\.[04]\.).*"
