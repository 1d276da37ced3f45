"""Token chunks on the CPU: HunyuanVideo's and Wan's networks give the values of the default path (fp32, tiny random
weights, chunk sizes that do and do not divide the token count, with block swap, with fp8 storage), the families'
chunked activation figures equal a count of the tensors alive in a bfloat16 forward, the patch refuses bad values,
and the Block Swap and VRAM Budget nodes set it."""
import re
import weakref
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_flatten

from openreel import runtime, synthetic
from openreel.errors import InputError
from openreel.memory import patches
from openreel.memory.block_swap import BlockSwap
from openreel.memory.planner import GIB, predict, weight_bytes
from openreel.memory.token_chunks import TOKEN_CHUNK
from openreel.model_loaders.build import materialize
from openreel.model_loaders.cache import MODULES
from openreel.model_loaders.checkpoint import Checkpoint, TensorInfo
from openreel.model_loaders.core import module_of, prepare
from openreel.model_loaders.dit import load_dit
from openreel.models.common.ops import weight_linears
from openreel.models.hunyuan import model as hunyuan
from openreel.models.hunyuan.family import HUNYUAN
from openreel.models.wan import model as wan
from openreel.models.wan.family import WAN
from openreel.nodes.memory import OpenReelBlockSwap, OpenReelVRAMBudget

TOL = 1e-6
# 2 double + 3 single blocks; heads of 128, as the real model (fp8 per-tensor scales need wide enough layers)
HUNYUAN_CFG = hunyuan.HunyuanConfig(hidden=256, heads=2, mlp_width=1024, double_blocks=2, single_blocks=3,
                                    text_dim=32, pooled_dim=8, refiner_heads=2, refiner_mlp_width=256)
WAN_CFG = wan.WanConfig(dim=128, ffn_dim=512, num_heads=2, num_layers=3, text_dim=32, image_tokens=257, image_dim=48)
HUNYUAN_TOKENS = 3 * 2 * 3 + 7   # image tokens + the longer prompt's valid tokens: 25
WAN_TOKENS = 4 * 2 * 3           # 24
CHUNKS = (1, 5, 7, 16)           # 5, 7 and 16 leave a shorter last chunk


@pytest.fixture(autouse=True)
def _no_gc_collect(monkeypatch):
    monkeypatch.setattr(runtime.gc, "collect", lambda *args: 0)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def build(network, cfg, weight_dtype: str = "fp32", seed: int = 0):
    """Through the real loading path, so fp8 weights are CastLinears with scales as in a loaded checkpoint."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in network(cfg).state_dict().items()}
    gen = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(s, generator=gen) * (0.1 if len(s) > 1 else 0.5) for k, s in shapes.items()}
    ckpt = Checkpoint((Path("random.safetensors"),), {k: TensorInfo(tuple(v.shape), v.dtype) for k, v in state.items()},
                      {k: (lambda v=v: v) for k, v in state.items()})
    fp32 = hunyuan.FP32_PARAMS if network is hunyuan.HunyuanDiT else wan.FP32_PARAMS
    return materialize(lambda ops: network(cfg, ops), ckpt, weight_dtype=weight_dtype, compute_dtype="fp32",
                       device=torch.device("cpu"), fp32_params=fp32)


def hunyuan_call(model, batch: int = 2):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 16, 3, 4, 6, generator=gen)
    context = torch.randn(batch, 10, HUNYUAN_CFG.text_dim, generator=gen)
    mask = (torch.arange(10)[None] < torch.tensor([7, 4][:batch])[:, None]).long()  # a key mask when batched
    pooled = torch.randn(batch, HUNYUAN_CFG.pooled_dim, generator=gen)
    with torch.no_grad():
        return model(x, torch.tensor([700.0, 250.0][:batch]), context, context_mask=mask, pooled=pooled, guidance=6.0)


def wan_call(model, t=(700.0,)):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 16, 4, 4, 6, generator=gen)
    context = torch.randn(1, 9, WAN_CFG.text_dim, generator=gen)
    clip = torch.randn(1, WAN_CFG.image_tokens, WAN_CFG.image_dim, generator=gen)
    with torch.no_grad():
        return model(x, torch.tensor(t), context, clip_fea=clip)


def with_patches(model, call, **values):
    patches.configure(model, values)
    patches.load(model, 0)
    try:
        return call(model)
    finally:
        patches.offload(model)
        patches.configure(model, {})


CASES = {
    "hunyuan": (hunyuan.HunyuanDiT, HUNYUAN_CFG, hunyuan_call, HUNYUAN_TOKENS),
    "hunyuan batch 1": (hunyuan.HunyuanDiT, HUNYUAN_CFG, lambda m: hunyuan_call(m, batch=1), 18 + 7),
    "wan": (wan.WanDiT, WAN_CFG, wan_call, WAN_TOKENS),
    "wan per-frame timesteps": (wan.WanDiT, WAN_CFG, lambda m: wan_call(m, [[900.0, 700.0, 500.0, 300.0]]),
                                WAN_TOKENS),
    "wan per-token timesteps": (wan.WanDiT, WAN_CFG, lambda m: wan_call(m, [[float(i) for i in range(24)]]),
                                WAN_TOKENS),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_chunks_give_the_values_of_the_default_path(case):
    network, cfg, call, tokens = CASES[case]
    model = build(network, cfg)
    reference = with_patches(model, call)
    for chunk in (*CHUNKS, tokens - 1):
        assert rel_err(with_patches(model, call, token_chunks=chunk), reference) <= TOL, chunk
    assert torch.equal(with_patches(model, call, token_chunks=tokens), reference)  # one chunk: the default path
    assert torch.equal(with_patches(model, call), reference)  # and off again


@pytest.mark.parametrize("case", sorted(CASES))
def test_only_the_row_count_of_the_matrix_products_differs(monkeypatch, case):
    """With products in float64 (rounded once to float32, whatever their row count), chunks are bitwise."""
    linear = F.linear
    monkeypatch.setattr(F, "linear", lambda x, w, b=None: linear(x.double(), w.double(), None if b is None else
                                                                 b.double()).to(x.dtype))
    network, cfg, call, tokens = CASES[case]
    model = build(network, cfg)
    reference = with_patches(model, call)
    for chunk in (*CHUNKS, tokens - 1):
        assert torch.equal(with_patches(model, call, token_chunks=chunk), reference), chunk


@pytest.mark.parametrize("case", ["hunyuan", "wan"])
@pytest.mark.parametrize("weight_dtype", ["fp32", "fp8_e4m3fn_scaled"])
def test_chunks_with_block_swap_and_fp8_storage(case, weight_dtype):
    network, cfg, call, _ = CASES[case]
    model = build(network, cfg, weight_dtype)
    if weight_dtype != "fp32":
        assert all(layer.weight.dtype == torch.float8_e4m3fn for _, layer in weight_linears(model))
    reference = with_patches(model, call)
    count = len(model.all_blocks())
    for blocks, chunk in ((count, 5), (3, 7), (0, 16)):
        out = with_patches(model, call, token_chunks=chunk, block_swap=BlockSwap(blocks, blocks == count))
        assert rel_err(out, reference) <= TOL, (blocks, chunk)
    swapped = with_patches(model, call, token_chunks=5, block_swap=BlockSwap(count))
    assert torch.equal(swapped, with_patches(model, call, token_chunks=5))  # block swap stays bitwise


def test_the_patch_refuses_what_it_cannot_do():
    model = build(wan.WanDiT, WAN_CFG)
    apply = patches.PATCHES["token_chunks"].apply
    for bad in (-1, 1.5, True, "4096", None):
        with pytest.raises(InputError, match="it must be a whole number of tokens per chunk, 0 or more"):
            apply(model, bad)
    with pytest.raises(InputError, match="Linear cannot run in token chunks. Set token_chunks to 0"):
        apply(torch.nn.Linear(2, 2), 4096)
    plain = torch.nn.Linear(2, 2)
    apply(plain, 0)  # off: nothing to do on a network without chunks
    assert not hasattr(plain, "token_chunk")
    apply(model, 64)
    assert model.token_chunk == 64 and type(model).token_chunk == 0
    patches.configure(model, {})
    assert model.token_chunk == 0


# ----------------------------------------------------------------------------------------- activation figures
class LiveBytes(TorchDispatchMode):
    """The most bytes of tensors made inside the mode that were alive at once (storages counted once, freed when
    the last view dies; `known` storages, the weights, never count)."""

    def __init__(self, known: set[int]):
        super().__init__()
        self.known = known
        self.alive: dict[int, int] = {}
        self.now = self.peak = 0

    def _free(self, key: int) -> None:
        self.now -= self.alive.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self.alive and key not in self.known:
                    self.alive[key] = storage.nbytes()
                    self.now += storage.nbytes()
                    self.peak = max(self.peak, self.now)
                    weakref.finalize(storage, self._free, key)
        return out


def counted_forward(monkeypatch, network, cfg, inputs, chunk: int) -> int:
    """Bytes alive at the peak of a bfloat16 forward, `rms_norm` allocating only its output as CUDA's fused kernel
    does (the CPU's composite one makes more temporaries)."""
    model = network(cfg).eval()
    fp32 = hunyuan.FP32_PARAMS if network is hunyuan.HunyuanDiT else wan.FP32_PARAMS
    for name, p in model.named_parameters():
        p.data = (torch.randn_like(p) * 0.02).to(torch.float32 if re.fullmatch(fp32, name) else torch.bfloat16)
    model.compute_dtype, model.token_chunk = torch.bfloat16, chunk
    original = F.rms_norm

    def fused(x, shape, weight=None, eps=None):
        with _disable_current_modes():
            result = original(x, shape, weight, eps)
        return torch.empty_like(x).copy_(result)

    monkeypatch.setattr(F, "rms_norm", fused)
    live = LiveBytes({p.untyped_storage().data_ptr() for p in model.parameters()})
    with torch.no_grad(), live:
        model(*inputs[0], **inputs[1])
    return live.peak


@pytest.mark.parametrize("chunk", [0, 300, 1000])
def test_hunyuan_figure_equals_the_tensors_alive(monkeypatch, chunk):
    cfg = hunyuan.HunyuanConfig(hidden=256, heads=2, mlp_width=1024, double_blocks=2, single_blocks=2, text_dim=64,
                                pooled_dim=16, refiner_heads=2, refiner_mlp_width=256)
    text = 40
    inputs = ((torch.randn(1, 16, 4, 32, 64, dtype=torch.bfloat16), torch.tensor([500.0]),
               torch.randn(1, 256, 64, dtype=torch.bfloat16)),
              {"context_mask": (torch.arange(256) < text).long()[None], "pooled": torch.randn(1, 16), "guidance": 6.0})
    tokens = 4 * 16 * 32
    counted = counted_forward(monkeypatch, hunyuan.HunyuanDiT, cfg, inputs, chunk)
    spec = type("Spec", (), {"config": cfg})
    figure = HUNYUAN.activation_bytes(spec, tokens - (256 - text), token_chunk=chunk)  # the figure counts 256
    assert counted * 0.995 <= figure <= counted * 1.005


def test_wan_figure_frees_what_chunking_the_ffn_frees(monkeypatch):
    spec = type("Spec", (), {})
    inputs = ((torch.randn(1, 16, 4, 32, 64, dtype=torch.bfloat16), torch.tensor([500.0]),
               torch.randn(1, 512, 64, dtype=torch.bfloat16)), {})
    tokens = 4 * 16 * 32
    for dim, ffn, frees in ((256, 2048, True), (512, 1024, False)):  # the FFN's peak above attention's, or not
        cfg = wan.WanConfig(dim=dim, ffn_dim=ffn, num_heads=dim // 128, num_layers=3, text_dim=64)
        spec.config = cfg
        counted = [counted_forward(monkeypatch, wan.WanDiT, cfg, inputs, chunk) for chunk in (0, 300)]
        figures = [WAN.activation_bytes(spec, tokens, token_chunk=chunk) for chunk in (0, 300)]
        assert abs((figures[0] - figures[1]) - (counted[0] - counted[1])) <= 0.005 * counted[0]
        assert (counted[1] < 0.9 * counted[0]) == frees
        assert counted[1] <= figures[1]


def test_hunyuan_13b_at_544p_with_full_block_swap_is_predicted_under_8_gb():
    with torch.device("meta"):
        model = hunyuan.HunyuanDiT(hunyuan.HunyuanConfig())
    for name, p in model.named_parameters():  # stored as the loader stores a bf16 file
        if not re.fullmatch(hunyuan.FP32_PARAMS, name):
            p.data = p.data.to(torch.bfloat16)
    spec = type("Spec", (), {"config": model.cfg})
    wb, tokens = weight_bytes(model), 33 * 34 * 60  # 960×544, 129 frames: 67,320 tokens
    peaks = [predict(wb, lambda n, b: HUNYUAN.activation_bytes(spec, n, b, token_chunk=chunk), tokens, 1,
                     swap=len(wb.blocks)) for chunk in (0, TOKEN_CHUNK)]
    assert 3.8 * GIB < peaks[1].activations < 4.0 * GIB < 8.5 * GIB < peaks[0].activations
    assert peaks[1].total < 8e9 < peaks[0].total


# ----------------------------------------------------------------------------------------- nodes
@pytest.fixture
def tiny_hunyuan(tmp_path):
    cfg = hunyuan.HunyuanConfig(hidden=128, heads=1, mlp_width=512, double_blocks=1, single_blocks=2, text_dim=32,
                                pooled_dim=16, refiner_heads=1, refiner_mlp_width=256)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in hunyuan.HunyuanDiT(cfg).state_dict().items()}
    state = {k: torch.randn(s) * 0.1 for k, s in shapes.items()}
    path = synthetic.save_single(state, tmp_path / "hunyuan_video_t2v.safetensors", prefix="model.diffusion_model.")
    yield load_dit(path, "auto", "bf16")
    MODULES.clear()


def test_block_swap_node_sets_token_chunks(tiny_hunyuan):
    node = OpenReelBlockSwap()
    (old,) = node.apply(tiny_hunyuan, 2, False)  # a saved workflow without the input: chunks off
    assert old.patch("token_chunks") == 0 and old.patch("block_swap") == BlockSwap(2)
    (out,) = node.apply(tiny_hunyuan, 0, False, 4096)
    assert out.patch("token_chunks") == 4096 and prepare(out).token_chunk == 4096
    assert prepare(tiny_hunyuan).token_chunk == 0
    with pytest.raises(InputError, match="^OpenReel Block Swap: token_chunks is -5"):
        node.apply(tiny_hunyuan, 0, False, -5)
    optional = OpenReelBlockSwap.INPUT_TYPES()["optional"]
    assert list(optional) == ["token_chunks"] and optional["token_chunks"][1]["default"] == 0


def test_vram_budget_node_applies_token_chunks(tiny_hunyuan):
    latent = {"samples": torch.zeros(1, 16, 8, 128, 128)}   # 8 × 64 × 64 = 32,768 tokens: 8 chunks
    spec, wb, tokens = tiny_hunyuan.spec, weight_bytes(module_of(tiny_hunyuan)), 8 * 64 * 64
    peak = {(chunk, batched): predict(wb, lambda n, b: HUNYUAN.activation_bytes(spec, n, b, token_chunk=chunk),
                                      tokens, 1, batched_cfg=batched).total
            for chunk in (0, TOKEN_CHUNK) for batched in (True, False)}
    budget = peak[TOKEN_CHUNK, False] + (1 << 20)
    assert peak[0, False] > budget and peak[TOKEN_CHUNK, True] > budget  # only chunks make it fit
    dit, _, text = OpenReelVRAMBudget().apply(tiny_hunyuan, latent, budget / GIB, False)["result"]
    assert dit.patch("token_chunks") == TOKEN_CHUNK and dit.patch("block_swap") == BlockSwap(0)
    assert dit.patch("cfg_batching") is False
    assert "token chunks of 4,096 tokens" in text and "Token chunks: activations" in text
    dit, _, text = OpenReelVRAMBudget().apply(tiny_hunyuan, latent, peak[0, True] / GIB + 0.01, False)["result"]
    assert dit.patch("token_chunks") == 0 and "token chunks" not in text.lower()
