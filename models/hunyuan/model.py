"""The HunyuanVideo diffusion transformer (13B: 20 double-stream and 40 single-stream blocks).

Written from the published architecture (Tencent/HunyuanVideo `hyvideo/modules`); parameter names follow the
official checkpoints, so official and ComfyUI files load without renaming (the family adapter maps diffusers
names). The image tokens and the LLaVA text tokens (refined by a small token refiner) run through double-stream
blocks (a stream each, joint attention), then joined through single-stream blocks; the conditioning vector is the
sum of the time, CLIP-L pooled text and (guidance-distilled models) guidance embeddings.

Numerics: the residual streams, layer norms, q/k RMS norms, RoPE, the modulation vectors and the small
time / text / guidance embedders are float32; the large linears (q/k/v, projections, MLPs, the blocks' modulation
linears) and attention run in `compute_dtype`. (The official code carries the streams in its bf16 model dtype;
float32 streams only remove rounding.)

Token chunks (`token_chunk` > 0, set by the "token_chunks" patch): the blocks build q, k, v (and the single
block's activated MLP state) chunk by chunk into full-length buffers in the compute dtype, run attention once over
all tokens, then add the projections and MLPs into the stream chunk by chunk. No full-length `linear1` output,
[attention, MLP] join, float32 temporary or second float32 stream exists; the values are those of the default
path (the chunked matrix products only have fewer rows). The blocks then update the stream they are given in
place: a wrapper that needs a block list's input after the loop must keep a copy.

Text padding: valid tokens never attend to padding in the official code (the refiner masks it, the blocks' varlen
attention puts it in a segment of its own), and text tokens carry no position. So the text is compacted before the
network (each sample's valid tokens first, trimmed to the longest valid count), which is exact; a key mask stays
only when the samples of a batch (batched CFG) have different counts.
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
from ..common.embeddings import apply_rope_interleaved, axial_rope_angles, rope_cos_sin, timestep_sinusoid
from ..common.norms import RMSNorm, residual_norm
from ..common.ops import PLAIN, Ops
from ..common.token_chunks import add_in_chunks, chunking, spans
from ..common.wrappers import WrappedModel


@dataclass(frozen=True)
class HunyuanConfig:
    """Shapes of one HunyuanVideo DiT; the defaults are the 13B model's (HYVideo-T/2-cfgdistill)."""
    hidden: int = 3072
    heads: int = 24
    mlp_width: int = 12288
    double_blocks: int = 20
    single_blocks: int = 40
    in_channels: int = 16
    out_channels: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)
    text_dim: int = 4096              # LLaVA-Llama-3 hidden states
    pooled_dim: int = 768             # CLIP-L pooled output
    refiner_blocks: int = 2
    refiner_heads: int = 24
    refiner_mlp_width: int = 12288
    guidance_embed: bool = True       # guidance-distilled: `guidance_in` embeds the guidance scale
    rope_axes: tuple[int, int, int] = (16, 56, 56)   # head channels per (t, h, w) axis
    rope_theta: float = 256.0
    freq_dim: int = 256
    eps: float = 1e-6

    def __post_init__(self):
        if self.hidden % self.heads or sum(self.rope_axes) != self.hidden // self.heads:
            raise ValueError(f"HunyuanConfig: {self.heads} heads of width {self.hidden} need RoPE axes summing to "
                             f"the head width, got {self.rope_axes}")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


class StepInputs(NamedTuple):
    """What every block needs besides the token stream; built once per forward."""
    vec: torch.Tensor                 # [B, D] SiLU of the conditioning vector, compute dtype (modulation input)
    img_tokens: int                   # the stream is [image tokens; text tokens]
    rope: tuple[torch.Tensor, torch.Tensor]   # float32 [L, 1, head_dim/2]; text rows rotate by 0
    mask: torch.Tensor | None         # [B, 1, 1, L] bool key mask (True = may attend), or None
    backend: str
    dtype: torch.dtype
    chunk: int = 0                    # tokens per chunk (0: off); see the module docstring


def _linear_fp32(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x.float(), layer.weight.float(), None if layer.bias is None else layer.bias.float())



def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def _qkv_buffers(x: torch.Tensor, heads: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """Empty q, k, v [B, L, heads, D / heads] in `dtype` for the stream x [B, L, D], filled chunk by chunk."""
    return [x.new_empty(*x.shape[:2], heads, x.shape[2] // heads, dtype=dtype) for _ in range(3)]


def _store_qkv(buffers: list[torch.Tensor], s: slice, qkv: torch.Tensor, q_norm: nn.Module, k_norm: nn.Module,
               rope: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Tokens `s` of q and k (normalized, rotated) and v from a fused projection [B, n, 3·D] into `buffers`
    (a function of its own, as the chunk's projection below: its temporaries die before the next chunk's)."""
    q, k, v = qkv.unflatten(-1, (3, buffers[0].shape[2], -1)).unbind(2)
    cos, sin = rope[0][s], rope[1][s]
    buffers[0][:, s] = apply_rope_interleaved(q_norm(q), cos, sin)
    buffers[1][:, s] = apply_rope_interleaved(k_norm(k), cos, sin)
    buffers[2][:, s] = v


class MLP(nn.Module):
    """fc1 → activation → fc2."""

    def __init__(self, dim: int, width: int, ops: Ops, act=_gelu_tanh):
        super().__init__()
        self.fc1 = ops.linear(dim, width)
        self.fc2 = ops.linear(width, dim)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Modulation(nn.Module):
    """A linear on SiLU(vec) giving `factor` float32 vectors [B, D] (the SiLU is taken once per call, outside)."""

    def __init__(self, hidden: int, factor: int, ops: Ops):
        super().__init__()
        self.factor = factor
        self.linear = ops.linear(hidden, factor * hidden)

    def forward(self, vec_act: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.linear(vec_act).float().chunk(self.factor, dim=-1)


class TimestepEmbedder(nn.Module):
    """Float32 [cos | sin] sinusoid of a value (0..1000 timesteps, or guidance × 1000) → Linear → SiLU → Linear."""

    def __init__(self, hidden: int, freq_dim: int):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        e = timestep_sinusoid(t, self.freq_dim, dtype=torch.float32)
        return _linear_fp32(self.mlp[2], F.silu(_linear_fp32(self.mlp[0], e)))


class SiluMLP(nn.Module):
    """Linear → SiLU → Linear in float32, its layers named as in the official checkpoints (vector_in's
    in_layer / out_layer, the refiner's c_embedder linear_1 / linear_2)."""

    def __init__(self, in_dim: int, hidden: int, names: tuple[str, str] = ("in_layer", "out_layer")):
        super().__init__()
        self.names = names
        setattr(self, names[0], nn.Linear(in_dim, hidden))
        setattr(self, names[1], nn.Linear(hidden, hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, second = (getattr(self, name) for name in self.names)
        return _linear_fp32(second, F.silu(_linear_fp32(first, x)))


# ----------------------------------------------------------------------------------------- token refiner
class RefinerBlock(nn.Module):
    """Self-attention and a SiLU MLP over the text tokens, gated by the refiner's conditioning vector."""

    def __init__(self, cfg: HunyuanConfig):
        super().__init__()
        d = cfg.hidden
        self.heads, self.eps = cfg.refiner_heads, cfg.eps
        self.norm1 = nn.LayerNorm(d, eps=cfg.eps)
        self.self_attn_qkv = nn.Linear(d, 3 * d)
        self.self_attn_proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d, eps=cfg.eps)
        self.mlp = MLP(d, cfg.refiner_mlp_width, PLAIN, act=F.silu)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))

    def forward(self, x: torch.Tensor, c_act: torch.Tensor, mask: torch.Tensor | None,
                dtype: torch.dtype) -> torch.Tensor:
        gate_attn, gate_mlp = _linear_fp32(self.adaLN_modulation[1], c_act).chunk(2, dim=-1)
        h = residual_norm(x, eps=self.eps, norm=self.norm1, dtype=dtype)[1]
        q, k, v = self.self_attn_qkv(h).unflatten(-1, (3, self.heads, -1)).unbind(2)
        # a short masked call once per model call: SDPA, as the official refiner, whatever the blocks' backend
        x, h = residual_norm(x, self.self_attn_proj(attention(q, k, v, mask=mask)), gate_attn, eps=self.eps,
                             norm=self.norm2, dtype=dtype)
        return x + self.mlp(h).float() * gate_mlp.unsqueeze(1)


class TokenRefiner(nn.Module):
    """`txt_in`: text states → model width, refined by a few blocks conditioned on the timestep and the mean of
    the valid text states."""

    def __init__(self, cfg: HunyuanConfig):
        super().__init__()
        self.input_embedder = nn.Linear(cfg.text_dim, cfg.hidden)
        self.t_embedder = TimestepEmbedder(cfg.hidden, cfg.freq_dim)
        self.c_embedder = SiluMLP(cfg.text_dim, cfg.hidden, ("linear_1", "linear_2"))
        self.individual_token_refiner = nn.ModuleDict(
            {"blocks": nn.ModuleList(RefinerBlock(cfg) for _ in range(cfg.refiner_blocks))})

    def forward(self, text: torch.Tensor, t: torch.Tensor, valid: torch.Tensor | None,
                dtype: torch.dtype) -> torch.Tensor:
        """text [B, L, text_dim] with valid tokens first; valid [B, L] bool or None (all valid) → [B, L, D] f32."""
        weights = torch.ones(text.shape[:2], device=text.device) if valid is None else valid.float()
        weights = weights.unsqueeze(-1)
        pooled = (text.float() * weights).sum(1) / weights.sum(1).clamp(min=1)
        c_act = F.silu(self.t_embedder(t) + self.c_embedder(pooled))
        mask = None
        if valid is not None:
            mask = valid.clone()
            mask[:, :1] = True  # as the official mask: a sample without valid tokens must not attend to nothing
            mask = mask[:, None, None, :]
        x = self.input_embedder(text.to(dtype)).float()
        for block in self.individual_token_refiner["blocks"]:
            x = block(x, c_act, mask, dtype)
        return x


# ----------------------------------------------------------------------------------------- blocks
class DoubleStreamBlock(nn.Module):
    """Image and text tokens, each with its own modulation, q/k/v, projection and MLP, attend jointly. The stream
    it takes and returns is [image tokens; text tokens] (float32)."""

    def __init__(self, cfg: HunyuanConfig, ops: Ops):
        super().__init__()
        d, hd = cfg.hidden, cfg.head_dim
        self.heads, self.eps = cfg.heads, cfg.eps
        self.img_mod = Modulation(d, 6, ops)
        self.img_attn_qkv = ops.linear(d, 3 * d)
        self.img_attn_q_norm = RMSNorm(hd, cfg.eps)
        self.img_attn_k_norm = RMSNorm(hd, cfg.eps)
        self.img_attn_proj = ops.linear(d, d)
        self.img_mlp = MLP(d, cfg.mlp_width, ops)
        self.txt_mod = Modulation(d, 6, ops)
        self.txt_attn_qkv = ops.linear(d, 3 * d)
        self.txt_attn_q_norm = RMSNorm(hd, cfg.eps)
        self.txt_attn_k_norm = RMSNorm(hd, cfg.eps)
        self.txt_attn_proj = ops.linear(d, d)
        self.txt_mlp = MLP(d, cfg.mlp_width, ops)

    def _qkv(self, x: torch.Tensor, mod, qkv: nn.Module, q_norm: nn.Module, k_norm: nn.Module, dtype: torch.dtype):
        h = residual_norm(x, eps=self.eps, shift=mod[0], scale=mod[1], dtype=dtype)[1]
        q, k, v = qkv(h).unflatten(-1, (3, self.heads, -1)).unbind(2)
        return q_norm(q), k_norm(k), v

    def _finish(self, x: torch.Tensor, attn: torch.Tensor, mod, proj: nn.Module, mlp: nn.Module,
                dtype: torch.dtype) -> torch.Tensor:
        x, h = residual_norm(x, proj(attn), mod[2], eps=self.eps, shift=mod[3], scale=mod[4], dtype=dtype)
        return x + mlp(h).float() * mod[5].unsqueeze(1)

    def _attention(self, img: torch.Tensor, txt: torch.Tensor, img_mod, txt_mod, inp: StepInputs) -> torch.Tensor:
        """Joint attention over [image; text] (a method of its own, so its q/k/v die on return)."""
        iq, ik, iv = self._qkv(img, img_mod, self.img_attn_qkv, self.img_attn_q_norm, self.img_attn_k_norm,
                               inp.dtype)
        tq, tk, tv = self._qkv(txt, txt_mod, self.txt_attn_qkv, self.txt_attn_q_norm, self.txt_attn_k_norm,
                               inp.dtype)
        q = apply_rope_interleaved(torch.cat([iq, tq], 1), *inp.rope)
        k = apply_rope_interleaved(torch.cat([ik, tk], 1), *inp.rope)
        return self_attention(q, k, torch.cat([iv, tv], 1), mask=inp.mask, backend=inp.backend)

    def _chunked(self, x: torch.Tensor, img_mod, txt_mod, inp: StepInputs) -> torch.Tensor:
        """The block in token chunks (see the module docstring), updating `x` in place."""
        n, length, dtype = inp.img_tokens, x.shape[1], inp.dtype
        streams = ((slice(0, n), img_mod, self.img_attn_qkv, self.img_attn_q_norm, self.img_attn_k_norm,
                    self.img_attn_proj, self.img_mlp),
                   (slice(n, length), txt_mod, self.txt_attn_qkv, self.txt_attn_q_norm, self.txt_attn_k_norm,
                    self.txt_attn_proj, self.txt_mlp))
        qkv = _qkv_buffers(x, self.heads, dtype)
        for rows, mod, linear, q_norm, k_norm, _, _ in streams:
            for s in spans(rows.start, rows.stop, inp.chunk):
                _store_qkv(qkv, s, linear(residual_norm(x[:, s], eps=self.eps, shift=mod[0], scale=mod[1],
                                                        dtype=dtype)[1]), q_norm, k_norm, inp.rope)
        attn = self_attention(*qkv, mask=inp.mask, backend=inp.backend)
        del qkv
        for rows, mod, _, _, _, proj, mlp in streams:
            a, part = attn[:, rows], x[:, rows]
            add_in_chunks(part, lambda s: proj(a[:, s]).float() * mod[2].unsqueeze(1), inp.chunk)
            add_in_chunks(part, lambda s: mlp(residual_norm(part[:, s], eps=self.eps, shift=mod[3], scale=mod[4],
                                                            dtype=dtype)[1]).float() * mod[5].unsqueeze(1), inp.chunk)
        return x

    def forward(self, x: torch.Tensor, inp: StepInputs) -> torch.Tensor:
        n = inp.img_tokens
        img, txt = x[:, :n], x[:, n:]
        img_mod, txt_mod = self.img_mod(inp.vec), self.txt_mod(inp.vec)
        if chunking(inp.chunk, x.shape[1]):
            return self._chunked(x, img_mod, txt_mod, inp)
        attn = self._attention(img, txt, img_mod, txt_mod, inp)
        img = self._finish(img, attn[:, :n], img_mod, self.img_attn_proj, self.img_mlp, inp.dtype)
        txt = self._finish(txt, attn[:, n:], txt_mod, self.txt_attn_proj, self.txt_mlp, inp.dtype)
        return torch.cat([img, txt], 1)


class SingleStreamBlock(nn.Module):
    """One stream over [image; text]: `linear1` gives q, k, v and the MLP input in one product, `linear2` takes
    the attention output and the activated MLP hidden state together."""

    def __init__(self, cfg: HunyuanConfig, ops: Ops):
        super().__init__()
        d, hd = cfg.hidden, cfg.head_dim
        self.heads, self.eps, self.hidden, self.mlp_width = cfg.heads, cfg.eps, d, cfg.mlp_width
        self.linear1 = ops.linear(d, 3 * d + cfg.mlp_width)
        self.linear2 = ops.linear(d + cfg.mlp_width, d)
        self.q_norm = RMSNorm(hd, cfg.eps)
        self.k_norm = RMSNorm(hd, cfg.eps)
        self.modulation = Modulation(d, 3, ops)

    def _attention_and_mlp(self, h: torch.Tensor, inp: StepInputs) -> torch.Tensor:
        """[attention output, activated MLP hidden state] of the modulated input `h`, joined for `linear2` (a
        method of its own, so the large `linear1` output dies on return)."""
        qkv, mlp = self.linear1(h).split([3 * self.hidden, self.mlp_width], dim=-1)
        q, k, v = qkv.unflatten(-1, (3, self.heads, -1)).unbind(2)
        attn = self_attention(apply_rope_interleaved(self.q_norm(q), *inp.rope),
                              apply_rope_interleaved(self.k_norm(k), *inp.rope), v, mask=inp.mask,
                              backend=inp.backend)
        return torch.cat([attn, _gelu_tanh(mlp)], dim=-1)

    def _store_chunk(self, qkv: list[torch.Tensor], mlp: torch.Tensor, s: slice, h: torch.Tensor, rope) -> None:
        """q, k, v and the activated MLP state of tokens `s` (modulated input `h`) into their buffers."""
        projected, hidden = self.linear1(h).split([3 * self.hidden, self.mlp_width], dim=-1)
        _store_qkv(qkv, s, projected, self.q_norm, self.k_norm, rope)
        mlp[:, s] = _gelu_tanh(hidden)

    def _chunked(self, x: torch.Tensor, shift, scale, gate, inp: StepInputs) -> torch.Tensor:
        """The block in token chunks (see the module docstring), adding into `x`: only x, q, k, v, the activated
        MLP state and then the attention output are full length."""
        qkv = _qkv_buffers(x, self.heads, inp.dtype)
        mlp = x.new_empty(*x.shape[:2], self.mlp_width, dtype=inp.dtype)
        for s in spans(0, x.shape[1], inp.chunk):
            self._store_chunk(qkv, mlp, s, residual_norm(x[:, s], eps=self.eps, shift=shift, scale=scale,
                                                         dtype=inp.dtype)[1], inp.rope)
        attn = self_attention(*qkv, mask=inp.mask, backend=inp.backend)
        del qkv
        return add_in_chunks(x, lambda s: self.linear2(torch.cat([attn[:, s], mlp[:, s]], dim=-1)).float()
                             * gate.unsqueeze(1), inp.chunk)

    def forward(self, x: torch.Tensor, inp: StepInputs) -> torch.Tensor:
        shift, scale, gate = self.modulation(inp.vec)
        if chunking(inp.chunk, x.shape[1]):
            return self._chunked(x, shift, scale, gate, inp)
        joined = self._attention_and_mlp(residual_norm(x, eps=self.eps, shift=shift, scale=scale,
                                                       dtype=inp.dtype)[1], inp)
        return x + self.linear2(joined).float() * gate.unsqueeze(1)


class FinalLayer(nn.Module):
    """Layer norm, modulated by [shift, scale] from the conditioning vector, then the linear to patch pixels."""

    def __init__(self, cfg: HunyuanConfig):
        super().__init__()
        self.eps = cfg.eps
        self.linear = nn.Linear(cfg.hidden, math.prod(cfg.patch_size) * cfg.out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cfg.hidden, 2 * cfg.hidden))

    def forward(self, x: torch.Tensor, vec_act: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        shift, scale = _linear_fp32(self.adaLN_modulation[1], vec_act).chunk(2, dim=-1)
        return self.linear(residual_norm(x, eps=self.eps, shift=shift, scale=scale, dtype=dtype)[1])


# ----------------------------------------------------------------------------------------- the network
class HunyuanDiT(WrappedModel):
    """Block lists "double_blocks" then "single_blocks", both carrying the float32 stream [image; text]; the
    token refiner and the time / pooled-text / guidance embedders run once per call (block swap may keep them in
    host memory). `ops` builds the block linears (see models/common/ops.py)."""

    block_lists = ("double_blocks", "single_blocks")
    embedders = ("txt_in", "time_in", "vector_in", "guidance_in")
    token_chunk = 0   # tokens per chunk in the blocks, 0 = off (the "token_chunks" patch sets it)

    def __init__(self, cfg: HunyuanConfig, ops: Ops = PLAIN):
        super().__init__()
        self.cfg = cfg
        self.compute_dtype = torch.float32
        self.attention_backend = "sdpa"
        self.img_in = nn.ModuleDict(
            {"proj": nn.Conv3d(cfg.in_channels, cfg.hidden, kernel_size=cfg.patch_size, stride=cfg.patch_size)})
        self.txt_in = TokenRefiner(cfg)
        self.time_in = TimestepEmbedder(cfg.hidden, cfg.freq_dim)
        self.vector_in = SiluMLP(cfg.pooled_dim, cfg.hidden)
        if cfg.guidance_embed:  # absent otherwise (block swap skips embedders a model lacks)
            self.guidance_in = TimestepEmbedder(cfg.hidden, cfg.freq_dim)
        self.double_blocks = nn.ModuleList(DoubleStreamBlock(cfg, ops) for _ in range(cfg.double_blocks))
        self.single_blocks = nn.ModuleList(SingleStreamBlock(cfg, ops) for _ in range(cfg.single_blocks))
        self.final_layer = FinalLayer(cfg)

    # ------------------------------------------------------------------------------ inputs
    def _check(self, x: torch.Tensor, context: torch.Tensor, context_mask, pooled) -> None:
        cfg = self.cfg
        if x.dim() != 5 or x.shape[1] != cfg.in_channels:
            raise InputError(f"the latent (with any image conditioning) has shape {tuple(x.shape)} but this model "
                             f"takes [batch, {cfg.in_channels}, frames, height, width]",
                             "use the latent and conditioning nodes made for this model")
        b, _, f, h, w = x.shape
        if any(n % p for n, p in zip((f, h, w), cfg.patch_size)):
            raise InputError(f"latent size {f}×{h}×{w} is not a multiple of the patch size {cfg.patch_size}",
                             "choose a width and height that are multiples of 16")
        if context.dim() != 3 or context.shape[0] != b or context.shape[2] != cfg.text_dim:
            raise InputError(f"text embeddings of shape {tuple(context.shape)} do not fit this model, which takes "
                             f"[{b}, tokens, {cfg.text_dim}]", "encode the prompt with the LLaVA-Llama-3 text encoder")
        if context_mask is not None and tuple(context_mask.shape) != tuple(context.shape[:2]):
            raise InputError(f"the text mask has shape {tuple(context_mask.shape)} but the text embeddings "
                             f"{tuple(context.shape)}", "pass one mask entry per text token")
        if pooled is None or tuple(pooled.shape) != (b, cfg.pooled_dim):
            got = "none" if pooled is None else f"shape {tuple(pooled.shape)}"
            raise InputError(f"HunyuanVideo needs CLIP-L pooled text vectors [{b}, {cfg.pooled_dim}], got {got}",
                             "connect CLIP-L (clip_l.safetensors) as text_encoder_2 of OpenReel Text Encode")

    @staticmethod
    def _per_sample(value, batch: int, device: torch.device, what: str) -> torch.Tensor:
        v = torch.as_tensor(value, device=device).float()
        if v.dim() == 0 or (v.dim() == 1 and v.shape[0] == 1):
            return v.reshape(1).expand(batch)
        if v.dim() != 1 or v.shape[0] != batch:
            raise InputError(f"{what} of shape {tuple(v.shape)} do not match a batch of {batch}",
                             f"pass one {what.rstrip('s')} per sample")
        return v

    def _guidance(self, guidance, batch: int, device: torch.device) -> torch.Tensor | None:
        if not self.cfg.guidance_embed:
            if guidance is not None:
                raise InputError("this HunyuanVideo model is not guidance-distilled (it has no guidance_in), so it "
                                 "takes no embedded guidance", "leave embedded guidance out; use the sampler's cfg")
            return None
        if guidance is None:
            raise InputError("this guidance-distilled HunyuanVideo model needs an embedded guidance scale",
                             "pass guidance (the official value is 6.0)")
        return self._per_sample(guidance, batch, device, "guidance scales")

    @staticmethod
    def _compact_text(context: torch.Tensor, mask: torch.Tensor | None):
        """Each sample's valid tokens first (in order), trimmed to the longest valid count: (text, valid [B, L]
        bool or None when every sample has that many)."""
        if mask is None:
            return context, None
        valid = mask.to(context.device).bool()
        counts = valid.sum(1)
        longest = int(counts.max()) if counts.numel() else 0
        order = torch.sort((~valid).to(torch.int16), dim=1, stable=True).indices[:, :longest]
        context = context.gather(1, order.unsqueeze(-1).expand(-1, -1, context.shape[-1]))
        if bool((counts == longest).all()):
            return context, None
        return context, torch.arange(longest, device=context.device) < counts.unsqueeze(1)

    def _rope(self, grid: tuple[int, int, int], text_tokens: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Image tokens rotate by their (t, h, w) position; text tokens by 0, so a single table serves both."""
        angles = axial_rope_angles(grid, self.cfg.rope_axes, self.cfg.rope_theta, device=device)
        return rope_cos_sin(torch.cat([angles, angles.new_zeros(text_tokens, angles.shape[1])]))

    # ------------------------------------------------------------------------------ forward
    def compute(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, *,
                context_mask: torch.Tensor | None = None, pooled: torch.Tensor | None = None,
                guidance: float | torch.Tensor | None = None, y: torch.Tensor | None = None) -> torch.Tensor:
        """Predict the flow velocity for latents `x` [B, C, F, H, W] at timesteps `t` [B] (0..1000).

        `context` [B, L, text_dim] LLaVA text states with `context_mask` [B, L] (1 = real token; None: all real);
        `pooled` [B, pooled_dim] CLIP-L pooled vectors; `guidance` the embedded guidance scale (a float or [B]; the
        network embeds scale × 1000), required by guidance-distilled models; `y` [B, C_y, F, H, W] concatenated
        to `x` on channels. Returns float32 [B, out_channels, F, H, W].
        """
        cfg, dtype = self.cfg, self.compute_dtype
        if y is not None:
            x = torch.cat([x, y.to(x.device, x.dtype)], dim=1)
        context = context.to(x.device)
        self._check(x, context, context_mask, pooled)
        b, _, f, h, w = x.shape
        pt, ph, pw = cfg.patch_size
        grid = (f // pt, h // ph, w // pw)
        tokens = math.prod(grid)
        t = self._per_sample(t, b, x.device, "timesteps")
        g = self._guidance(guidance, b, x.device)

        vec = self.time_in(t) + self.vector_in(pooled.to(x.device))
        if g is not None:
            vec = vec + self.guidance_in(g * 1000.0)
        vec_act = F.silu(vec)

        text, valid = self._compact_text(context, context_mask)
        txt = self.txt_in(text, t, valid, dtype)
        img = self.img_in["proj"](x.to(dtype)).flatten(2).transpose(1, 2)
        # tokens × channels in memory, as the norms read them (a cast copies so; a float32 one does not)
        img = img.to(torch.float32, memory_format=torch.contiguous_format).contiguous()
        mask = None
        if valid is not None:
            mask = torch.cat([valid.new_ones(b, tokens), valid], dim=1)[:, None, None, :]
        inp = StepInputs(vec_act.to(dtype), tokens, self._rope(grid, txt.shape[1], x.device), mask,
                         self.attention_backend, dtype, self.token_chunk)
        stream = torch.cat([img, txt], dim=1)
        del img, txt   # the stream is the only full-length copy the blocks see
        stream = self.run_blocks("double_blocks", stream, inp)
        stream = self.run_blocks("single_blocks", stream, inp)
        out = self.final_layer(stream[:, :tokens], vec_act, dtype).float()
        return self.unpatchify(out, grid)

    def replicated_tokens(self, inp: StepInputs) -> int:
        """Under sequence parallelism the text tokens at the stream's end stay whole on every rank."""
        return inp.rope[0].shape[0] - inp.img_tokens

    def inputs_for_tokens(self, inp: StepInputs, s: slice, length: int) -> StepInputs:
        """The blocks' inputs for image tokens `s` of `length` (a rank's share under sequence parallelism) followed
        by the whole text; the key mask stays over all tokens, as attention sees all of them."""
        cos, sin = inp.rope
        rows = torch.cat([torch.arange(s.start, s.stop), torch.arange(length, cos.shape[0])]).to(cos.device)
        return inp._replace(img_tokens=s.stop - s.start, rope=(cos[rows], sin[rows]))

    def step_cache_signal(self, kind: str, x: torch.Tensor, inp: StepInputs) -> torch.Tensor:
        """What TeaCache compares from step to step (speed/step_cache), from the first block list's inputs, as
        TeaCache4HunyuanVideo (for either kind): the first double block's modulated image input, its layer-normed
        image tokens under the block's first shift and scale, in the compute dtype. Where block swap keeps that
        block in host memory, its modulation runs on copies of its weights."""
        block = self.double_blocks[0]
        mod = block.img_mod
        if mod.linear.weight.device != inp.vec.device:
            tensors = {**dict(mod.named_parameters()), **dict(mod.named_buffers())}
            moved = {n: t.to(inp.vec.device, non_blocking=True) for n, t in tensors.items()}
            shift, scale = torch.func.functional_call(mod, moved, (inp.vec,))[:2]
        else:
            shift, scale = mod(inp.vec)[:2]
        return residual_norm(x[:, :inp.img_tokens], eps=block.eps, shift=shift, scale=scale, dtype=inp.dtype)[1]

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """[B, L, C·pt·ph·pw] (channel-major within a token, unlike Wan) → [B, C, F, H, W]."""
        pt, ph, pw = self.cfg.patch_size
        c, b = self.cfg.out_channels, x.shape[0]
        x = x.view(b, *grid, c, pt, ph, pw).permute(0, 4, 1, 5, 2, 6, 3, 7)
        return x.reshape(b, c, grid[0] * pt, grid[1] * ph, grid[2] * pw)


# Parameters kept in float32 (norms, the small embedders, the final and refiner modulation); the block linears'
# storage is the ops' choice, and the rest is stored in the compute dtype.
FP32_PARAMS = (r".*(norm|adaLN_modulation).*"
               r"|(time_in|vector_in|guidance_in|txt_in\.t_embedder|txt_in\.c_embedder)\..*")
