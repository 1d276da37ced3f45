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
