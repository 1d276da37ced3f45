"""The ComfyUI bridge's pieces that work without ComfyUI."""
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


def test_a_model_changed_while_loaded_is_copied_back_not_restored():
    """An in-place write on the GPU (e.g. a LoRA merged while loaded) makes the kept host tensors stale: the
    offload then copies, as it did without them."""
    model = _small_model()
    runtime.set_device("meta")
    try:
        runtime.load_model(model)
        with torch.no_grad():
            model[0].weight.add_(1)
        assert not runtime._back_to_host_copies(model)
        model = _small_model()
        runtime.load_model(model)
        runtime.forget_host_copies(model)  # what a writer through `.data` (the LoRA merge) calls first
        model[0].weight.data.add_(1)
        assert not runtime._back_to_host_copies(model)
    finally:
        runtime.set_device("cpu")
