"""The Step-Video-T2V diffusion transformer (30B: 48 blocks, 48 heads of 128 channels).

Written from the published architecture (stepfun-ai/Step-Video-T2V `stepvideo/modules/model.py`, whose blocks come
from xfuser 0.7.0); parameter names follow the official checkpoints, so official and ComfyUI files load without
renaming. The video latent is embedded frame by frame (a 2D convolution), its tokens run through blocks of
modulated self-attention (3D RoPE), unmodulated cross-attention over [HunyuanCLIP tokens; Step-LLM tokens] and a
modulated GELU-tanh MLP, conditioned by AdaLN-single: one time embedding → six modulation vectors, added to each
block's own `scale_shift_table`.

Conventions: latents are [B, C, F, H, W] (the official model takes [B, F, C, H, W]); the timestep is the official
one already scaled, 0..1000 with **0 = pure noise** (the official scheduler runs σ_step = 1 − σ and the network
multiplies it by 1000), and the network predicts x0 − noise (the family adapter maps both to the samplers' flow
convention). The LLM mask is read as the official reads it: a count of real tokens at the front of the text
(right padding); the 77 CLIP rows are always attended.

Numerics: the residual stream, layer norms, q/k RMS norms, RoPE, the modulation vectors and the time embedding
(sinusoid and MLP) are float32; the large linears, the text projections and attention run in `compute_dtype`. (The
official model runs everything in its bf16 dtype except the sinusoid and the RMS norms; float32 elsewhere only
removes rounding. Its pipeline also rounds the timestep to bf16 before ×1000, e.g. 0.5465 → 548; here the
timestep stays as given.)

Token chunks (`token_chunk` > 0, set by the "token_chunks" patch): the blocks build q, k, v chunk by chunk into
full-length buffers, run self-attention once over all tokens, then add the output projection, the cross-attention
(its queries are independent, so it runs per chunk against keys and values made once per block) and the MLP into
the stream chunk by chunk; the values are those of the default path (the chunked matrix products only have fewer
rows). Without chunks q, k, v come straight from one projection and the branches are added as one chunk, so the
blocks always update the stream they are given in place: a wrapper that needs a block list's input after the loop
must keep a copy.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...errors import InputError
from ..common.attention import attention, self_attention
from ..common.embeddings import axial_rope_angles, rope_cos_sin, timestep_sinusoid
from ..common.norms import RMSNorm, layer_norm, residual_norm
from ..common.ops import PLAIN, Ops
from ..common.token_chunks import add_in_chunks, chunking, spans
from ..common.wrappers import WrappedModel


@dataclass(frozen=True)
class StepVideoConfig:
    """Shapes of one Step-Video DiT; the defaults are the 30B model's (Step-Video-T2V and -Turbo)."""
    hidden: int = 6144
    heads: int = 48
    layers: int = 48
    ffn_width: int = 24576
    in_channels: int = 64
    out_channels: int = 64
    patch: int = 1
    caption_dim: int = 6144          # Step-LLM hidden states
    clip_dim: int = 1024             # HunyuanCLIP last hidden states
    rope_axes: tuple[int, int, int] = (64, 32, 32)   # head channels per (t, h, w) axis
    rope_theta: float = 1e4
    freq_dim: int = 256

    def __post_init__(self):
        if self.hidden % self.heads or sum(self.rope_axes) != self.hidden // self.heads:
            raise ValueError(f"StepVideoConfig: {self.heads} heads of width {self.hidden} need RoPE axes summing to "
                             f"the head width, got {self.rope_axes}")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @property
    def patch_size(self) -> tuple[int, int, int]:
        """(t, h, w) patch, as the planner counts tokens."""
        return 1, self.patch, self.patch


class StepInputs(NamedTuple):
    """What every block needs besides the token stream; built once per forward."""
    mod: torch.Tensor                 # [B, 6, D] float32 AdaLN-single modulation (before each block's table)
    context: torch.Tensor             # [B, Lk, D] text tokens [CLIP; LLM], compute dtype
    mask: torch.Tensor | None         # [B, 1, 1, Lk] bool key mask (True = may attend), or None
    rope: tuple[torch.Tensor, torch.Tensor]   # float32 [L, 1, head_dim / 2] angles' cos and sin
    backend: str
    dtype: torch.dtype
    chunk: int = 0                    # tokens per chunk (0: off); see the module docstring



def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def apply_rope_halves(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                      axes: tuple[int, ...]) -> torch.Tensor:
    """Rotary embedding, NeoX style per axis: within each axis's channels of x [B, L, H, D] the first half
    rotates with the second by that axis's angles (cos/sin [L, 1, D/2], axes side by side); float32 inside."""
    out, start = [], 0
    for part, width in zip(x.float().split(list(axes), dim=-1), axes):
        c, s = cos[..., start:start + width // 2], sin[..., start:start + width // 2]
        first, second = part.chunk(2, dim=-1)
        out += [first * c - second * s, second * c + first * s]
        start += width // 2
    return torch.cat(out, dim=-1).to(x.dtype)


class PatchEmbed(nn.Module):
    """`pos_embed`: each latent frame → tokens through a 2D convolution of patch × patch (the official Conv2d)."""

    def __init__(self, cfg: StepVideoConfig):
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_channels, cfg.hidden, kernel_size=cfg.patch, stride=cfg.patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, C, F, H, W] → [B, F·h·w, D] float32."""
        b = x.shape[0]
        frames = x.transpose(1, 2).flatten(0, 1).to(self.proj.weight.dtype)
        return self.proj(frames).flatten(2).transpose(1, 2).reshape(b, -1, self.proj.out_channels).float()


class TimestepEmbedder(nn.Module):
    """Float32 [cos | sin] sinusoid of the timestep → Linear → SiLU → Linear (`linear_1`, `linear_2`)."""

    def __init__(self, freq_dim: int, hidden: int):
        super().__init__()
        self.freq_dim = freq_dim
        self.linear_1 = nn.Linear(freq_dim, hidden)
        self.linear_2 = nn.Linear(hidden, hidden)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        e = timestep_sinusoid(t, self.freq_dim, dtype=torch.float32)
        w1, w2 = self.linear_1, self.linear_2
        h = F.silu(F.linear(e, w1.weight.float(), w1.bias.float()))
        return F.linear(h, w2.weight.float(), w2.bias.float())


class AdaLNSingle(nn.Module):
    """`adaln_single`: the time embedding (for the final layer) and SiLU → Linear of it: the six block modulation
    vectors [B, 6, D], float32."""

    def __init__(self, cfg: StepVideoConfig, ops: Ops):
        super().__init__()
        self.emb = nn.ModuleDict({"timestep_embedder": TimestepEmbedder(cfg.freq_dim, cfg.hidden)})
        self.linear = ops.linear(cfg.hidden, 6 * cfg.hidden)

    def forward(self, t: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        embedded = self.emb["timestep_embedder"](t)
        return self.linear(F.silu(embedded).to(dtype)).float().unflatten(-1, (6, -1)), embedded


class TextProjection(nn.Module):
    """`caption_projection`: Step-LLM states → model width (Linear → GELU tanh → Linear)."""

    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, hidden)
        self.linear_2 = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(_gelu_tanh(self.linear_1(x)))


class SelfAttention(nn.Module):
    """`attn1`: fused `wqkv` whose rows are per head [q_h | k_h | v_h], q/k RMS norms per head, 3D RoPE."""

    def __init__(self, cfg: StepVideoConfig, ops: Ops):
        super().__init__()
        self.heads, self.axes = cfg.heads, cfg.rope_axes
        self.wqkv = ops.linear(cfg.hidden, 3 * cfg.hidden, bias=False)
        self.wo = ops.linear(cfg.hidden, cfg.hidden, bias=False)
        self.q_norm = RMSNorm(cfg.head_dim, 1e-6)
        self.k_norm = RMSNorm(cfg.head_dim, 1e-6)

    def forward(self, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """q and k (normalized, rotated by these angles) and v of the modulated tokens h [B, n, D]."""
        q, k, v = self.wqkv(h).unflatten(-1, (self.heads, 3, -1)).unbind(-2)
        return (apply_rope_halves(self.q_norm(q), cos, sin, self.axes),
                apply_rope_halves(self.k_norm(k), cos, sin, self.axes), v)


class CrossAttention(nn.Module):
    """`attn2`: queries from the stream, keys and values (`wkv` rows per head [k_h | v_h]) from the text."""

    def __init__(self, cfg: StepVideoConfig, ops: Ops):
        super().__init__()
        self.heads = cfg.heads
        self.wq = ops.linear(cfg.hidden, cfg.hidden, bias=False)
        self.wkv = ops.linear(cfg.hidden, 2 * cfg.hidden, bias=False)
        self.wo = ops.linear(cfg.hidden, cfg.hidden, bias=False)
        self.q_norm = RMSNorm(cfg.head_dim, 1e-6)
        self.k_norm = RMSNorm(cfg.head_dim, 1e-6)

    def keys_values(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.wkv(context).unflatten(-1, (self.heads, 2, -1)).unbind(-2)
        return self.k_norm(k), v

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], inp: StepInputs) -> torch.Tensor:
        """The cross-attention output of the stream tokens x (a chunk, float32) as float32."""
        q = self.q_norm(self.wq(x.to(inp.dtype)).unflatten(-1, (self.heads, -1)))
        return self.wo(attention(q, *kv, mask=inp.mask, backend=inp.backend)).float()


class FeedForward(nn.Module):
    """`ff`: Linear (`net.0.proj`) → GELU tanh → Linear (`net.2`), no biases (the official module list's names)."""

    def __init__(self, cfg: StepVideoConfig, ops: Ops):
        super().__init__()
        self.net = nn.ModuleList([nn.ModuleDict({"proj": ops.linear(cfg.hidden, cfg.ffn_width, bias=False)}),
                                  nn.Identity(), ops.linear(cfg.ffn_width, cfg.hidden, bias=False)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](_gelu_tanh(self.net[0]["proj"](x)))


class StepVideoBlock(nn.Module):
    """Modulated self-attention → cross-attention (neither normed nor gated) → modulated MLP, each added into the
    float32 stream; the modulation is the AdaLN-single vectors plus the block's `scale_shift_table` rows
    [shift, scale, gate] for attention, then for the MLP."""

    def __init__(self, cfg: StepVideoConfig, ops: Ops):
        super().__init__()
        self.heads = cfg.heads
        self.norm1 = nn.LayerNorm(cfg.hidden, eps=1e-5)
        self.attn1 = SelfAttention(cfg, ops)
        self.norm2 = nn.LayerNorm(cfg.hidden, eps=1e-5)
        self.attn2 = CrossAttention(cfg, ops)
        self.ff = FeedForward(cfg, ops)
        self.scale_shift_table = nn.Parameter(torch.zeros(6, cfg.hidden))

    def modulation(self, inp: StepInputs) -> tuple[torch.Tensor, ...]:
        """[shift, scale, gate] of attention, then of the MLP: six float32 [B, D]."""
        return (self.scale_shift_table.float() + inp.mod).unbind(1)

    def _self_attention(self, x: torch.Tensor, shift, scale, step: int, inp: StepInputs) -> torch.Tensor:
        """Self-attention of the modulated stream; with chunks, q, k, v are made chunk by chunk into buffers (a
        method of its own, so they die on return)."""
        def modulated(s: slice) -> torch.Tensor:
            return residual_norm(x[:, s], eps=1e-5, norm=self.norm1, shift=shift, scale=scale, dtype=inp.dtype)[1]

        cos, sin = inp.rope
        if step >= x.shape[1]:
            return self_attention(*self.attn1(modulated(slice(None)), cos, sin), backend=inp.backend)
        qkv = [x.new_empty(*x.shape[:2], self.heads, x.shape[2] // self.heads, dtype=inp.dtype) for _ in range(3)]
        for s in spans(0, x.shape[1], step):
            self._store(qkv, s, modulated(s), cos[s], sin[s])
        return self_attention(*qkv, backend=inp.backend)

    def _store(self, buffers: list[torch.Tensor], s: slice, h: torch.Tensor, cos, sin) -> None:
        """q, k, v of tokens `s` (modulated input `h`) into their buffers (a function of its own: the chunk's
        projection dies before the next chunk's)."""
        for buffer, part in zip(buffers, self.attn1(h, cos, sin)):
            buffer[:, s] = part

    def forward(self, x: torch.Tensor, inp: StepInputs) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.modulation(inp)
        step = inp.chunk if chunking(inp.chunk, x.shape[1]) else x.shape[1]
        attn = self._self_attention(x, shift_msa, scale_msa, step, inp)
        add_in_chunks(x, lambda s: self.attn1.wo(attn[:, s]).float() * gate_msa.unsqueeze(1), step)
        del attn
        kv = self.attn2.keys_values(inp.context)
        add_in_chunks(x, lambda s: self.attn2(x[:, s], kv, inp), step)
        del kv
        return add_in_chunks(x, lambda s: self.ff(residual_norm(x[:, s], eps=1e-5, norm=self.norm2, shift=shift_mlp,
                                                                 scale=scale_mlp, dtype=inp.dtype)[1]).float()
                             * gate_mlp.unsqueeze(1), step)


# ----------------------------------------------------------------------------------------- the network
class StepVideoDiT(WrappedModel):
    """Block list "transformer_blocks" carrying the float32 token stream; the patch embedding, AdaLN-single and the
    text projections run once per call (block swap may keep them in host memory). `ops` builds the block linears
    and AdaLN-single's large linear (see models/common/ops.py)."""

    block_lists = ("transformer_blocks",)
    embedders = ("pos_embed", "adaln_single", "caption_projection", "clip_projection")
    token_chunk = 0   # tokens per chunk in the blocks, 0 = off (the "token_chunks" patch sets it)

    def __init__(self, cfg: StepVideoConfig, ops: Ops = PLAIN):
        super().__init__()
        self.cfg = cfg
        self.compute_dtype = torch.float32
        self.attention_backend = "sdpa"
        self.pos_embed = PatchEmbed(cfg)
        self.adaln_single = AdaLNSingle(cfg, ops)
        self.caption_projection = TextProjection(cfg.caption_dim, cfg.hidden)
        self.clip_projection = nn.Linear(cfg.clip_dim, cfg.hidden)
        self.transformer_blocks = nn.ModuleList(StepVideoBlock(cfg, ops) for _ in range(cfg.layers))
        self.scale_shift_table = nn.Parameter(torch.zeros(2, cfg.hidden))
        self.proj_out = nn.Linear(cfg.hidden, cfg.patch * cfg.patch * cfg.out_channels)

    # ------------------------------------------------------------------------------ inputs
    def _check(self, x: torch.Tensor, context: torch.Tensor, context_mask, clip) -> None:
        cfg = self.cfg
        if x.dim() != 5 or x.shape[1] != cfg.in_channels:
            raise InputError(f"the latent has shape {tuple(x.shape)} but this model takes [batch, "
                             f"{cfg.in_channels}, frames, height, width]", "use the latent nodes made for this model")
        b, _, _, h, w = x.shape
        if h % cfg.patch or w % cfg.patch:
            raise InputError(f"latent size {h}×{w} is not a multiple of the patch size {cfg.patch}",
                             f"choose a width and height that are multiples of {16 * cfg.patch}")
        if context.dim() != 3 or context.shape[0] != b or context.shape[2] != cfg.caption_dim:
            raise InputError(f"text embeddings of shape {tuple(context.shape)} do not fit this model, which takes "
                             f"[{b}, tokens, {cfg.caption_dim}]", "encode the prompt with the Step-LLM text encoder")
        if context_mask is not None and tuple(context_mask.shape) != tuple(context.shape[:2]):
            raise InputError(f"the text mask has shape {tuple(context_mask.shape)} but the text embeddings "
                             f"{tuple(context.shape)}", "pass one mask entry per text token")
        if clip is None or clip.dim() != 3 or clip.shape[0] != b or clip.shape[2] != cfg.clip_dim:
            got = "none" if clip is None else f"shape {tuple(clip.shape)}"
            raise InputError(f"Step-Video needs HunyuanCLIP token states [{b}, 77, {cfg.clip_dim}], got {got}",
                             "connect the HunyuanCLIP text encoder as the second text encoder of OpenReel Text "
                             "Encode")

    @staticmethod
    def _timesteps(t, batch: int, device: torch.device) -> torch.Tensor:
        t = torch.as_tensor(t, device=device).float()
        if t.dim() == 0 or (t.dim() == 1 and t.shape[0] == 1):
            return t.reshape(1).expand(batch)
        if t.dim() != 1 or t.shape[0] != batch:
            raise InputError(f"timesteps of shape {tuple(t.shape)} do not match a batch of {batch}",
                             "pass one timestep per sample")
        return t

    def _text(self, context: torch.Tensor, mask: torch.Tensor | None, clip: torch.Tensor,
              dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[CLIP; LLM] projected to the model width, the LLM part trimmed to its longest real count, and the key
        mask [B, 1, 1, Lk] (None when every sample has that many real tokens)."""
        counts = None if mask is None else mask.to(context.device).bool().sum(1)
        if counts is not None:
            context = context[:, :int(counts.max())]
        llm = self.caption_projection(F.layer_norm(context.float(), context.shape[-1:], eps=1e-6).to(dtype))
        text = torch.cat([self.clip_projection(clip.to(context.device, dtype)), llm], dim=1)
        if counts is None or bool((counts == context.shape[1]).all()):
            return text, None
        real = torch.arange(text.shape[1], device=text.device) < (counts + clip.shape[1]).unsqueeze(1)
        return text, real[:, None, None, :]

    def _rope(self, grid: tuple[int, int, int], device) -> tuple[torch.Tensor, torch.Tensor]:
        return rope_cos_sin(axial_rope_angles(grid, self.cfg.rope_axes, self.cfg.rope_theta, device=device))

    # ------------------------------------------------------------------------------ forward
    def compute(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, *,
                context_mask: torch.Tensor | None = None, clip: torch.Tensor | None = None) -> torch.Tensor:
        """Predict x0 − noise for latents `x` [B, C, F, H, W] at the official timesteps `t` [B] (0..1000, 0 = noise).

        `context` [B, L, caption_dim] Step-LLM states with `context_mask` [B, L] (1 for the real tokens, in front;
        None: all real); `clip` [B, 77, clip_dim] HunyuanCLIP token states (all attended). Returns float32
        [B, out_channels, F, H, W]."""
        cfg, dtype = self.cfg, self.compute_dtype
        context = context.to(x.device)
        self._check(x, context, context_mask, clip)
        b, _, f, h, w = x.shape
        grid = (f, h // cfg.patch, w // cfg.patch)
        mod, embedded = self.adaln_single(self._timesteps(t, b, x.device), dtype)
        text, mask = self._text(context, context_mask, clip, dtype)
        stream = self.pos_embed(x)
        inp = StepInputs(mod, text, mask, self._rope(grid, x.device), self.attention_backend, dtype,
                         self.token_chunk)
        normed = layer_norm(self.run_blocks("transformer_blocks", stream, inp), 1e-6)
        del stream, inp   # the final layer modulates the normed stream in place: no second float32 stream
        shift, scale = (self.scale_shift_table.float() + embedded.unsqueeze(1)).unbind(1)
        out = self.proj_out(normed.mul_(1 + scale.unsqueeze(1)).add_(shift.unsqueeze(1)).to(dtype)).float()
        return self.unpatchify(out, grid)

    def inputs_for_tokens(self, inp: StepInputs, s: slice, length: int) -> StepInputs:
        """The blocks' inputs for tokens `s` (a rank's share under sequence parallelism): their RoPE angles."""
        cos, sin = inp.rope
        return inp._replace(rope=(cos[s], sin[s]))

    def step_cache_signal(self, kind: str, x: torch.Tensor, inp: StepInputs) -> torch.Tensor:
        """What TeaCache compares from step to step (speed/step_cache), for either kind: the first block's
        modulated input (its layer-normed stream under its first shift and scale), in the compute dtype. Where
        block swap keeps that block in host memory, its few small tensors are copied for this."""
        block = self.transformer_blocks[0]
        norm, table = block.norm1, block.scale_shift_table.to(x.device).float()
        shift, scale = (table[:2] + inp.mod[:, :2]).unbind(1)
        if norm.weight.device != x.device:
            norm = copy.deepcopy(norm).to(x.device)   # two vectors of the width
        return residual_norm(x, eps=norm.eps, norm=norm, shift=shift, scale=scale, dtype=inp.dtype)[1]

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """[B, L, p·p·C] (patch rows, patch columns, then channels within a token) → [B, C, F, H, W]."""
        p, c, b = self.cfg.patch, self.cfg.out_channels, x.shape[0]
        x = x.view(b, *grid, p, p, c).permute(0, 6, 1, 2, 4, 3, 5)
        return x.reshape(b, c, grid[0], grid[1] * p, grid[2] * p)


# Parameters kept in float32 (norms, modulation tables, the time embedding); the block linears' and AdaLN-single's
# linear storage is the ops' choice, and the rest is stored in the compute dtype.
FP32_PARAMS = r".*(norm|scale_shift_table).*|adaln_single\.emb\..*"
