"""The ComfyUI bridge's pieces that work without ComfyUI, and its ComfyUI branch against a fake model manager."""
import enum
import types

import pytest
import torch

from openreel import runtime
from openreel.models.wan.model import WanConfig, WanDiT


def test_the_holder_comfyui_loads_is_named_after_the_model():
    """Issue 13 item 9: ComfyUI logs "Requested to load <class of the patcher's model>"; it said `_Holder`."""
    with torch.device("meta"):
        model = WanDiT(WanConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=1))
    held = runtime.holder(model)
    assert type(held).__name__ == "OpenReelWanDiT" and held.module is model
    assert type(runtime.holder(model)) is type(held)  # one class per model class
    assert type(runtime.holder(torch.nn.Linear(2, 2))).__name__ == "OpenReelLinear"


def test_error_classes_have_a_stable_name_whatever_the_folder():
    """Issue 13 item 9: ComfyUI reports `exception_type` as module + class; inside ComfyUI the module was the pack's
    folder path (e.g. `custom_nodes.ComfyUI-OpenReel.errors`)."""
    from openreel.errors import CheckpointError, DetectionError, InputError, OpenReelError

    for cls in (OpenReelError, CheckpointError, DetectionError, InputError):
        assert f"{cls.__module__}.{cls.__qualname__}" == f"openreel.{cls.__name__}"


def _small_model() -> torch.nn.Module:
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.LayerNorm(8))
    model.register_buffer("table", torch.arange(4.0))
    return model


def test_offload_puts_back_the_host_tensors_it_was_loaded_from():
    """Standalone, a model leaves the GPU without a copy: its host tensors were kept while it was loaded ("meta"
    stands in for the GPU here: a copy back from it would fail)."""
    model = _small_model()
    before = {k: (v.data_ptr(), v.clone()) for k, v in model.state_dict().items()}
    runtime.set_device("meta")
    try:
        runtime.load_model(model)
        assert all(v.device.type == "meta" for v in model.state_dict().values())
        runtime.offload_model(model)
    finally:
        runtime.set_device("cpu")
    for key, value in model.state_dict().items():
        assert value.device.type == "cpu" and value.data_ptr() == before[key][0]
        assert torch.equal(value, before[key][1])


def test_a_tensor_changed_while_loaded_is_copied_back_and_the_rest_restored():
    """An in-place write on the GPU (a LoRA merged while loaded, block swap's ring refilled at every call) makes
    that tensor's kept host copy stale: only it is left for the offload to copy; the others get their host tensors
    back. A 24 GB plan once copied its whole 17.8 GiB resident part back at every Wan2.2 switch because its ring
    had been written."""
    model = _small_model()
    host = {k: v.data_ptr() for k, v in model.state_dict().items()}
    runtime.set_device("meta")
    try:
        runtime.load_model(model)
        with torch.no_grad():
            model[0].weight.add_(1)
        assert runtime._back_to_host_copies(model) == 4  # the bias, the LayerNorm's weight and bias, the buffer
        assert model[0].weight.device.type == "meta"
        assert all(model.state_dict()[k].data_ptr() == host[k] for k in ("0.bias", "1.weight", "1.bias", "table"))
        model = _small_model()
        runtime.load_model(model)
        runtime.forget_host_copies(model)  # what a writer through `.data` (the LoRA merge) calls first
        model[0].weight.data.add_(1)
        assert runtime._back_to_host_copies(model) == 0
        assert all(v.device.type == "meta" for v in model.state_dict().values())
    finally:
        runtime.set_device("cpu")


class _ManagerList(list):
    """ComfyUI's `current_loaded_models`: the fake manager changes it through `list`'s own methods; any other change
    (as `offload_model` once popped it) fails the test."""

    def _refuse(self, *args, **kwargs):
        raise AssertionError("ComfyUI's loaded-model list was changed from outside its model manager")

    append = insert = pop = remove = clear = extend = __setitem__ = __delitem__ = __iadd__ = _refuse


class _FakePatcher:
    """comfy.model_patcher.ModelPatcher as far as the manager below uses it."""

    def __init__(self, model, load_device, offload_device, size=0):
        self.model, self.load_device, self.offload_device, self.size = model, load_device, offload_device, size
        self.loaded = False
        self.requested = 0  # ComfyUI logs "Requested to load <model class>" once per registration


class _FakeLoadedModel:
    """comfy.model_management.LoadedModel: equal when it holds the same patcher."""

    def __init__(self, model):
        self.model, self.device = model, model.load_device

    def __eq__(self, other):
        return self.model is other.model


class _FakeManager:
    """comfy.model_management 0.3.64 for the calls the bridge makes (model_management.py L569-700): a load keeps a
    model registered; `free_memory` unloads the models on a device not in `keep_loaded` and drops them from its
    list; `unload_all_models` (POST /free, "unload models") is `free_memory(1e30, device)`."""

    class VRAMState(enum.Enum):
        NO_VRAM = 1
        NORMAL_VRAM = 3

    LoadedModel = _FakeLoadedModel

    def __init__(self):
        self.vram_state = self.VRAMState.NORMAL_VRAM
        self.current_loaded_models = _ManagerList()
        self.calls = []

    def get_torch_device(self):
        return torch.device("cpu")

    unet_offload_device = get_torch_device

    def soft_empty_cache(self):
        pass

    def loaded_models(self):
        return [entry.model for entry in self.current_loaded_models]

    def load_models_gpu(self, models, memory_required=0, force_full_load=False):
        self.calls.append(("load", list(models), memory_required, force_full_load))
        for patcher in models:
            entry = _FakeLoadedModel(patcher)
            if entry in self.current_loaded_models:
                list.remove(self.current_loaded_models, entry)
            else:
                patcher.requested += 1
            patcher.loaded = True
            list.insert(self.current_loaded_models, 0, entry)

    def free_memory(self, memory_required, device, keep_loaded=()):
        self.calls.append(("free", memory_required, device, list(keep_loaded)))
        for entry in list(self.current_loaded_models):
            if entry.device == device and entry not in keep_loaded:
                entry.model.loaded = False
                list.remove(self.current_loaded_models, entry)

    def unload_all_models(self):
        self.free_memory(1e30, self.get_torch_device())


@pytest.fixture
def manager(monkeypatch):
    """The bridge as inside ComfyUI, talking to a fake model manager."""
    fake = _FakeManager()
    monkeypatch.setattr(runtime, "IN_COMFYUI", True)
    monkeypatch.setattr(runtime, "_mm", fake)
    monkeypatch.setattr(runtime, "_model_patcher", types.SimpleNamespace(ModelPatcher=_FakePatcher))
    return fake


def _native(manager) -> _FakePatcher:
    """A native ComfyUI model the manager has loaded."""
    native = _FakePatcher(torch.nn.Linear(2, 2), torch.device("cpu"), torch.device("cpu"))
    manager.load_models_gpu([native])
    return native


def test_inside_comfyui_our_models_load_and_unload_through_the_model_manager(manager):
    """Issue 13 item 10: a load registers the model with ComfyUI's manager (fully loaded: our kernels need every
    weight on the device); an offload unloads it through the manager's own `free_memory`, keeping every other
    model, and never changes the manager's list itself."""
    native = _native(manager)
    model = _small_model()
    runtime.load_model(model, memory_required=123)
    (patcher,) = manager.calls[-1][1]
    assert manager.calls[-1] == ("load", [patcher], 123, True)
    assert type(patcher.model).__name__ == "OpenReelSequential" and patcher.model.module is model
    assert patcher.size == runtime.module_bytes(model)
    assert manager.loaded_models() == [patcher, native] and patcher.loaded
    runtime.load_model(model)  # before every use: the same registration
    assert manager.calls[-1][1] == [patcher] and patcher.requested == 1
    runtime.offload_model(model)
    kind, _, device, keep = manager.calls[-1]
    assert kind == "free" and device == patcher.load_device and keep == [_FakeLoadedModel(native)]
    assert manager.loaded_models() == [native] and native.loaded and not patcher.loaded


def test_a_model_comfyui_unloaded_is_loaded_again_at_its_next_use(manager):
    """POST /free, the "unload models" button or a native model's load unload ours inside the manager; the next
    use registers and loads it again (same patcher)."""
    model = _small_model()
    runtime.load_model(model)
    (patcher,) = manager.loaded_models()
    _native(manager)
    manager.unload_all_models()
    assert manager.loaded_models() == [] and not patcher.loaded
    runtime.load_model(model)
    assert manager.loaded_models() == [patcher] and patcher.loaded and patcher.requested == 2
    runtime.offload_model(model)  # nothing else loaded: nothing else to keep
    assert manager.calls[-1][3] == [] and manager.loaded_models() == []


def test_block_swap_registers_only_its_resident_part_with_the_manager(manager):
    """With block swap the manager holds the resident part (and the ring), never the whole model: a whole model
    it held before block swap was set is unloaded through the manager."""
    from test_block_swap import build, swap
    from openreel.memory.block_swap import BlockSwap
    from openreel.memory import patches

    model = build()
    runtime.load_model(model)  # a run before block swap was set
    whole = model._openreel_patcher
    residency = swap(model, BlockSwap(3, offload_embeddings=True))
    (view,) = manager.loaded_models()
    assert view is residency.view._openreel_patcher and not whole.loaded
    assert view.size == runtime.module_bytes(residency.view) < runtime.module_bytes(model)
    patches.offload(model)
    assert manager.loaded_models() == []


def test_standalone_models_stay_on_the_device_until_another_needs_the_room(monkeypatch):
    """Standalone, a model stays on the compute device after use ("meta" stands in for the GPU) and the least
    recently used ones are moved out, only when a load needs their room; one already there moves nothing."""
    free = {"bytes": 1 << 40}
    monkeypatch.setattr(runtime, "free_vram", lambda device: free["bytes"])
    a, b, c = (_small_model() for _ in range(3))

    def where(model):
        return next(model.parameters()).device.type

    runtime.set_device("meta")
    try:
        runtime.load_model(a)
        runtime.load_model(b)
        assert (where(a), where(b)) == ("meta", "meta")   # both fit: nothing moved out
        free["bytes"] = 0
        runtime.load_model(a)                             # already there: nothing to make room for
        assert (where(a), where(b)) == ("meta", "meta")
        runtime.load_model(c)                             # no room: b (least recent), then a, are moved out
        assert (where(a), where(b), where(c)) == ("cpu", "cpu", "meta")
    finally:
        runtime.offload_model(c)
        runtime.set_device("cpu")
    assert not runtime._RESIDENT


def test_standalone_a_load_that_fits_neither_collects_nor_empties_the_cache(monkeypatch):
    """A collection and emptying the allocator's cache stall the GPU, and the next call allocates its working
    memory anew: a load (a Wan2.2 expert switch with both experts resident) asks for them only on a shortage."""
    free = {"bytes": 1 << 40}
    freed = []
    monkeypatch.setattr(runtime, "free_vram", lambda device: free["bytes"])
    monkeypatch.setattr(runtime, "free_memory", lambda needed, device: freed.append(needed))
    model = _small_model()
    runtime.set_device("meta")
    try:
        runtime.load_model(model, memory_required=1 << 20)
        runtime.load_model(model, memory_required=1 << 20)
        assert freed == []
        free["bytes"] = 0
        runtime.load_model(model, memory_required=1 << 20)
        assert freed == [1 << 20]
    finally:
        runtime.offload_model(model)
        runtime.set_device("cpu")


def test_standalone_a_model_already_on_the_device_is_not_walked_again(monkeypatch):
    """`Module.to` visits every submodule even when nothing moves (tens of ms for a 14B DiT, at each run's start
    and each expert switch): a load that finds every tensor on the device skips it."""
    monkeypatch.setattr(runtime, "free_vram", lambda device: 1 << 40)
    model = _small_model()
    moves = []
    original = type(model).to
    monkeypatch.setattr(type(model), "to", lambda self, *a, **k: moves.append(a) or original(self, *a, **k))
    runtime.set_device("meta")
    try:
        runtime.load_model(model)
        runtime.load_model(model)
        assert len(moves) == 1
    finally:
        runtime.offload_model(model)
        runtime.set_device("cpu")


def test_a_planned_pair_offloads_the_expert_an_earlier_run_left_on_the_gpu(monkeypatch):
    """After a run the last expert stays on the GPU. An expert under a VRAM plan assumed the GPU to itself, so the
    next run's first activation offloads that one, though this session never loaded it (a 24 GB plan on an H200
    once peaked at 41.5 GiB with both experts' resident parts on it); unplanned experts that fit stay."""
    from openreel.memory import patches
    from openreel.models.common.family import ModelInputs
    from openreel.samplers.session import Expert, SamplingSession

    moves = []
    monkeypatch.setattr(patches, "load", lambda module, required: moves.append(("load", module)))
    monkeypatch.setattr(patches, "offload", lambda module: moves.append(("offload", module)))
    monkeypatch.setattr(runtime, "free_vram", lambda device=None: 1 << 50)
    high, low = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    x = torch.zeros(1, 2)
    for planned in (True, False):
        for m in (high, low):
            m.cfg_batching = False if planned else None
        experts = [Expert(m, 1.0, ModelInputs({})) for m in (high, low)]
        with SamplingSession(experts) as session:
            session.device = torch.device("cuda")  # the rule for a GPU; nothing runs
            session.activate(1, x)                # the earlier run's last expert
        moves.clear()
        with SamplingSession(experts) as session:
            session.device = torch.device("cuda")
            session.activate(0, x)
        assert (("offload", low) in moves) == planned and moves[-1] == ("load", high)
