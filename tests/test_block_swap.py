"""Block swap on the CPU: bitwise the resident model's output for every number of swapped blocks (float and fp8
CastLinear weights, embedders offloaded or not), the ring's reuse, what is handed to the runtime, settings per
handle, and the Block Swap node."""
import types
from pathlib import Path

import pytest
import torch

from openreel import runtime, synthetic
from openreel.errors import InputError
from openreel.memory import patches
from openreel.model_loaders.core import prepare
from openreel.memory.block_swap import OFF, BlockSwap, BlockSwapResidency
from openreel.models.common.ops import CastLinear
from openreel.model_loaders.build import materialize
from openreel.model_loaders.cache import MODULES
from openreel.model_loaders.checkpoint import Checkpoint, TensorInfo
from openreel.model_loaders.dit import load_dit
from openreel.models.wan.model import FP32_PARAMS, WanConfig, WanDiT
from openreel.nodes.memory import OpenReelBlockSwap

CFG = WanConfig(dim=64, ffn_dim=128, num_heads=4, num_layers=5, text_dim=32, image_tokens=257, image_dim=48)


@pytest.fixture(autouse=True)
def _no_gc_collect(monkeypatch):
    """Loads and offloads call gc.collect (0.2 s each in a test process); nothing here depends on it."""
    monkeypatch.setattr(runtime.gc, "collect", lambda *args: 0)


def random_state(cfg: WanConfig = CFG, seed: int = 0) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in WanDiT(cfg).state_dict().items()}
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=gen) * (0.15 if len(s) > 1 else 0.5) for k, s in shapes.items()}


def build(weight_dtype: str = "fp32", cfg: WanConfig = CFG) -> WanDiT:
    """Through the real loading path, so fp8 weights are CastLinear with scales as in a loaded checkpoint."""
    state = random_state(cfg)
    ckpt = Checkpoint((Path("random.safetensors"),), {k: TensorInfo(tuple(v.shape), v.dtype) for k, v in state.items()},
                      {k: (lambda v=v: v) for k, v in state.items()})
    model = materialize(lambda ops: WanDiT(cfg, ops), ckpt, weight_dtype=weight_dtype, compute_dtype="fp32",
                        device=torch.device("cpu"), fp32_params=FP32_PARAMS)
    return model


def inputs(seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 16, 4, 4, 6, generator=gen)
    context = torch.randn(1, 9, CFG.text_dim, generator=gen)
    return x, torch.tensor([700.0]), context, torch.randn(1, CFG.image_tokens, CFG.image_dim, generator=gen)


def forward(model, seed: int = 1) -> torch.Tensor:
    x, t, context, clip = inputs(seed)
    with torch.no_grad():
        return model(x, t, context, clip_fea=clip)


def swap(model, settings: BlockSwap):
    patches.PATCHES["block_swap"].apply(model, settings)
    patches.load(model, 0)
    return getattr(model, "residency", None)


@pytest.mark.parametrize("weight_dtype", ["fp32", "fp8_e4m3fn_scaled"])
def test_swapped_output_is_bitwise_the_resident_output(weight_dtype):
    model = build(weight_dtype)
    if weight_dtype != "fp32":
        linear = model.blocks[0].ffn[0]
        assert isinstance(linear, CastLinear) and linear.weight.dtype == torch.float8_e4m3fn
    reference = forward(model)
    for blocks in range(CFG.num_layers + 1):
        offload = blocks % 2 == 1
        swap(model, BlockSwap(blocks, offload))
        assert torch.equal(forward(model), reference), (blocks, offload)
        patches.offload(model)
    swap(model, OFF)
    assert getattr(model, "residency", None) is None and model.wrappers.get("block_swap") is None
    assert torch.equal(forward(model), reference)


def test_copies_go_in_block_order_through_a_ring_of_two_reused_buffers():
    model = build()
    residency = swap(model, BlockSwap(4))
    assert list(residency.swapped) == [1, 2, 3, 4] and len(residency.ring) == 2
    storage = [[p.data_ptr() for p in shell.parameters()] for shell in residency.ring]
    host = {i: (residency.host[i], residency.host[i].buffer.data_ptr()) for i in residency.swapped}
    for seed in (1, 2):
        forward(model, seed)
        assert residency.trace == [(1, 0), (2, 1), (3, 0), (4, 1)]
    patches.offload(model)
    patches.load(model, 0)
    forward(model)
    assert [[p.data_ptr() for p in shell.parameters()] for shell in residency.ring] == storage
    # host memory is filled once and kept: no new copy, no re-pinning, the blocks' tensors still point into it
    assert {i: (residency.host[i], residency.host[i].buffer.data_ptr()) for i in residency.swapped} == host
    assert all(residency.host[i].intact() for i in residency.swapped)

    residency = swap(model, BlockSwap(1))  # one swapped block needs one buffer
    forward(model)
    assert len(residency.ring) == 1 and residency.trace == [(4, 0)]


def test_swapped_blocks_live_in_one_host_buffer_each_and_fp8_halves_their_bytes():
    model = build("bf16")
    residency = swap(model, BlockSwap(2))
    for index in residency.swapped:
        copy = residency.host[index]
        start, end = copy.buffer.data_ptr(), copy.buffer.data_ptr() + copy.nbytes
        assert all(start <= t.data_ptr() < end for t in model.blocks[index].state_dict().values())
    fp8 = swap(build("fp8_e4m3fn_scaled"), BlockSwap(2))
    linears = sum(t.numel() for n, t in model.blocks[4].named_parameters() if n.endswith("weight") and t.dim() == 2)
    moved = [sum(v.numel() * v.element_size() for v in r.host[4].views) for r in (residency, fp8)]
    assert moved[0] - moved[1] == linears - 4 * 12  # 2 bytes → 1 byte per weight, plus 12 fp32 scales


def test_only_the_resident_part_and_the_ring_are_handed_to_the_runtime(monkeypatch):
    model = build()
    calls = []
    monkeypatch.setattr(runtime, "load_model", lambda m, required=0: calls.append(("load", m, required)) or
                        torch.device("cpu"))
    monkeypatch.setattr(runtime, "offload_model", lambda m: calls.append(("offload", m, None)))
    residency = swap(model, BlockSwap(3, offload_embeddings=True))
    assert calls[0] == ("offload", model, None)  # a whole-model load (inside ComfyUI) is undone first
    kind, view, required = calls[1]
    assert kind == "load" and view is residency.view
    handed = {id(p) for p in view.parameters()}
    assert all(id(p) in handed for p in model.blocks[:2].parameters())
    assert not any(id(p) in handed for p in model.blocks[2:].parameters())
    assert not any(id(p) in handed for p in [*model.text_embedding.parameters(), *model.img_emb.parameters()])
    assert all(id(p) in handed for p in [*model.head.parameters(), *model.patch_embedding.parameters()])
    assert all(id(p) in handed for shell in residency.ring for p in shell.parameters())
    assert required == residency.host["text_embedding"].nbytes + residency.host["img_emb"].nbytes
    patches.offload(model)
    assert calls[-1] == ("offload", view, None)


def test_offloaded_embedders_return_to_host_memory_after_each_call():
    model = build()
    residency = swap(model, BlockSwap(0, offload_embeddings=True))
    assert model.wrappers.get("block_swap") is None  # nothing to stream: blocks run as usual
    forward(model)
    assert residency.host["text_embedding"].intact() and residency.host["img_emb"].intact()


def test_patched_block_attributes_and_compiled_forwards_reach_the_ring():
    model = build("fp8_e4m3fn_scaled")
    reference = forward(model)
    ran_on = []

    def traced_forward(self, x, inp):
        ran_on.append(self)
        return type(self).forward(self, x, inp)

    for block in model.blocks:  # what the compile patch does: an instance `forward` per block
        block.forward = types.MethodType(traced_forward, block)
        block.ffn[0].fp8_matmul = "row"  # a CastLinear attribute set by the fp8_matmul patch
    residency = swap(model, BlockSwap(3))
    assert torch.equal(forward(model), reference)
    ring = residency.ring
    assert ran_on[:2] == list(model.blocks[:2]) and ran_on[2:] == [ring[0], ring[1], ring[0]]
    assert all(shell.ffn[0].fp8_matmul == "row" for shell in residency.ring)
    for block in model.blocks:
        del block.forward
    residency.ring[0].ffn[0].comfy_patched_weights = True  # what ComfyUI's manager sets on modules it loads
    patches.load(model, 0)
    assert all("forward" not in vars(shell) for shell in residency.ring)
    assert residency.ring[0].ffn[0].comfy_patched_weights


def test_refusals():
    model = build()
    with pytest.raises(InputError, match="cannot swap 6 blocks: this model has 5"):
        patches.PATCHES["block_swap"].apply(model, BlockSwap(6))
    patches.PATCHES["block_swap"].apply(model, BlockSwap(2))
    with pytest.raises(RuntimeError, match="before memory.patches.load"):
        forward(model)
    with pytest.raises(InputError, match="does not support"):
        BlockSwapResidency(torch.nn.Linear(2, 2), BlockSwap(1))


@pytest.fixture
def tiny_dit(tmp_path):
    cfg = WanConfig(**{**synthetic.TINY_WAN.__dict__, "num_layers": 4})
    path = synthetic.save_single(synthetic.wan_state_dict(cfg), tmp_path / "wan_t2v.safetensors")
    yield load_dit(path, "auto", "fp32")
    MODULES.clear()


def test_settings_are_per_handle_even_on_one_shared_module(tiny_dit):
    swapped = tiny_dit.with_patch("block_swap", BlockSwap(3))
    plain = tiny_dit
    x, t = torch.randn(1, 16, 2, 4, 4), torch.tensor([500.0])
    context = torch.randn(1, 5, synthetic.TINY_TEXT_DIM)
    module = prepare(plain)
    with torch.no_grad():
        reference = module(x, t, context)
    assert prepare(swapped) is module and module.residency.settings == BlockSwap(3)
    patches.load(module, 0)
    with torch.no_grad():
        assert torch.equal(module(x, t, context), reference)
    patches.offload(module)
    prepare(plain)  # the handle without the patch gets the default: off
    assert getattr(module, "residency", None) is None and module.wrappers.get("block_swap") is None


def test_block_swap_node(tiny_dit):
    node = OpenReelBlockSwap()
    (out,) = node.apply(tiny_dit, 3, True)
    assert out.patch("block_swap") == BlockSwap(3, True) and tiny_dit.patch("block_swap") is None
    with pytest.raises(InputError, match="^OpenReel Block Swap: blocks_to_swap is 5 but this model has 4 blocks"):
        node.apply(tiny_dit, 5, False)
    required = OpenReelBlockSwap.INPUT_TYPES()["required"]
    assert all(options.get("tooltip") for _, options in required.values())


def _every_family() -> list[torch.nn.Module]:
    from openreel.models.hunyuan.model import HunyuanConfig, HunyuanDiT
    from openreel.models.stepvideo.model import StepVideoDiT
    from openreel.synthetic_stepvideo import tiny_dit_config

    return [WanDiT(CFG), HunyuanDiT(HunyuanConfig(hidden=128, heads=1, mlp_width=256, double_blocks=1,
                                                  single_blocks=2, refiner_heads=1, refiner_mlp_width=256)),
            StepVideoDiT(tiny_dit_config())]


@pytest.mark.parametrize("model", _every_family(), ids=lambda m: type(m).__name__)
def test_every_tensor_but_the_swapped_blocks_is_handed_to_the_runtime(monkeypatch, model):
    """With every block swapped, what is left (the model's own parameters too: Step-Video's output
    `scale_shift_table`) must be in the view the runtime moves to the GPU, or the forward mixes devices."""
    handed = []
    monkeypatch.setattr(runtime, "load_model", lambda m, required=0: handed.append(m) or torch.device("cpu"))
    monkeypatch.setattr(runtime, "offload_model", lambda m: None)
    blocks = sum(len(getattr(model, name)) for name in model.block_lists)
    residency = swap(model, BlockSwap(blocks))
    in_view = {id(p) for p in handed[-1].parameters()}
    swapped = {id(p) for name in model.block_lists for p in getattr(model, name).parameters()}
    left = [name for name, p in model.named_parameters() if id(p) not in swapped and id(p) not in in_view]
    assert handed[-1] is residency.view and left == []


def test_an_offload_empties_the_ring_and_gives_the_resident_part_its_host_tensors_back():
    """A Wan2.2 switch under a 24 GB plan once copied the whole resident part (17.8 GiB of a 14B expert, 16 s)
    back to the host: the ring is written at every call, so the kept host copies were judged stale. Now the ring
    is emptied and the resident tensors get their host tensors back ("meta" stands in for the GPU: any copy back
    from it would fail); the next load and run give the resident output again."""
    model = build()
    reference = forward(model)
    host = {n: p.data_ptr() for n, p in model.blocks[:2].named_parameters()}
    runtime.set_device("meta")
    try:
        residency = swap(model, BlockSwap(3))
        assert all(p.device.type == "meta" for p in residency.view.parameters())
        with torch.no_grad():
            for p in residency.ring[0].parameters():
                p.add_(1)  # what refilling a slot does to its tensors' version counters
        patches.offload(model)
    finally:
        runtime.set_device("cpu")
    assert all(p.device.type == "cpu" for p in residency.view.parameters())
    assert {n: p.data_ptr() for n, p in model.blocks[:2].named_parameters()} == host
    patches.load(model, 0)
    assert torch.equal(forward(model), reference)
