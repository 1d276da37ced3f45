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
