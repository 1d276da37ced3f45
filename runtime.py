"""The one bridge between OpenReel and ComfyUI.

Every other module asks this one for devices, memory, progress, interrupts and folders; none imports
ComfyUI. Inside ComfyUI the answers come from `comfy.model_management`, `comfy.utils` and `folder_paths`.
Standalone (tests, CI, the headless runner) they come from plain torch, tqdm, and a models directory given
by `set_models_dir`, the `OPENREEL_MODELS` environment variable, the enclosing ComfyUI's `models/` when the
pack sits in `custom_nodes/`, or `~/openreel-models`.
"""
from __future__ import annotations

import gc
import os
import threading
import time
import weakref
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

import torch

from .errors import InputError

try:  # pragma: no cover - exercised only inside a ComfyUI process
    import comfy.model_management as _mm
    import comfy.model_patcher as _model_patcher
    import comfy.utils as _comfy_utils
    import folder_paths as _folder_paths

    IN_COMFYUI = True
except ImportError:
    _mm = _model_patcher = _comfy_utils = _folder_paths = None
    IN_COMFYUI = False

# ComfyUI's folder names, and the legacy folder names it also searches.
MODEL_KINDS = ("diffusion_models", "text_encoders", "vae", "clip_vision", "loras")
_LEGACY_FOLDERS = {"diffusion_models": ("unet",), "text_encoders": ("clip",)}
_MODEL_EXTENSIONS = (".safetensors", ".sft", ".pth", ".pt", ".ckpt", ".bin")


class Interrupted(Exception):
    """Raised between model calls when the user asked to stop (standalone runs)."""


class _Settings:
    """Standalone settings; unused inside ComfyUI. Set once by the runner or tests, read per call."""

    def __init__(self):
        self.models_dir: Path | None = None
        self.output_dir: Path | None = None
        self.input_dir: Path | None = None
        self.device: torch.device | None = None
        self.interrupt = threading.Event()


_settings = _Settings()


# ----------------------------------------------------------------------------------------- devices
def torch_device() -> torch.device:
    """The device models compute on."""
    if IN_COMFYUI:
        return _mm.get_torch_device()
    if _settings.device is not None:
        return _settings.device
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def offload_device() -> torch.device:
    """Where idle model weights wait (host memory unless ComfyUI runs in high-VRAM mode)."""
    if IN_COMFYUI:
        return _mm.unet_offload_device()
    return torch.device("cpu")


def set_device(device: str | torch.device | None) -> None:
    """Standalone only: force the compute device (e.g. 'cpu' for tests)."""
    _settings.device = None if device is None else torch.device(device)


# ----------------------------------------------------------------------------------------- memory
def free_memory(bytes_needed: int, device: torch.device) -> None:
    """Make room for `bytes_needed` on `device`; inside ComfyUI its own models are unloaded as needed."""
    if IN_COMFYUI:
        _mm.free_memory(bytes_needed, device)
        _mm.soft_empty_cache()
        return
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def empty_cache() -> None:
    """Return cached allocator blocks to the driver."""
    if IN_COMFYUI:
        _mm.soft_empty_cache()
        return
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def attention_flag() -> str | None:
    """The attention ComfyUI was started with: "sage" (--use-sage-attention), "flash" (--use-flash-attention), or
    None (its default; standalone)."""
    if not IN_COMFYUI:
        return None
    for name, enabled in (("sage", "sage_attention_enabled"), ("flash", "flash_attention_enabled")):
        if getattr(_mm, enabled, lambda: False)():
            return name
    return None


def free_vram(device: torch.device) -> int:
    """Bytes free for new allocations on `device` (driver free + allocator cache)."""
    if IN_COMFYUI:
        return int(_mm.get_free_memory(device))
    if device.type != "cuda":
        return 0
    free, _total = torch.cuda.mem_get_info(device)
    return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))


def module_bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


class _Holder(torch.nn.Module):
    """What ComfyUI's ModelPatcher wraps: it sets attributes such as `device` on its model, which some modules
    (transformers models) do not allow."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module


_HOLDER_CLASSES: dict[type, type] = {}


def holder(module: torch.nn.Module) -> _Holder:
    """A `_Holder` whose class is named after the model (ComfyUI logs "Requested to load OpenReelWanDiT")."""
    cls = type(module)
    if cls not in _HOLDER_CLASSES:
        _HOLDER_CLASSES[cls] = type(f"OpenReel{cls.__name__}", (_Holder,), {"__doc__": _Holder.__doc__})
    return _HOLDER_CLASSES[cls](module)


def load_model(module: torch.nn.Module, memory_required: int = 0) -> torch.device:
    """Put `module` on the compute device for use, with `memory_required` bytes of working memory to spare.

    Inside ComfyUI this goes through its model manager, where the module stays registered: other models (native
    ones too) are unloaded as needed, and ComfyUI's own free paths (a native model's load, `POST /free`, "unload
    models") may unload this one, wholly or partly. Call this before every use: the manager loads again whatever
    it unloaded. Returns the device.
    """
    device = torch_device()
    if IN_COMFYUI and _mm.vram_state != _mm.VRAMState.NO_VRAM:
        # A full load: our layers are plain torch modules, not ComfyUI's weight-casting ops, so a partial load
        # would leave weights on the host that our kernels read on the device. (Block swap hands over only the
        # part it keeps resident, so that is all the manager is asked to hold.) In NO_VRAM mode the manager loads
        # nothing fully whatever is asked, so there the module is placed as in standalone runs, outside it.
        _mm.load_models_gpu([_patcher(module, device)], memory_required=memory_required, force_full_load=True)
        return device
    needed = memory_required + (0 if id(module) in _RESIDENT else module_bytes(module))
    _make_room(module, needed, device)
    if device.type != "cpu" and free_vram(device) < needed:
        # only a shortage is worth a collection and emptying the allocator's cache: both stall the GPU, and the
        # next call then allocates its working memory from the driver again (a Wan2.2 expert switch: 0.3 s)
        free_memory(needed, device)
    host = _tensors(module) if device.type != "cpu" else []
    if not host or any(not _on(t, device) for _, _, t in host):   # `to` walks every submodule even when all is there
        module.to(device)
    if host and any(t.device.type == "cpu" for _, _, t in host):
        module.__dict__["_openreel_host"] = [(owner, name, old, _stamp(owner, name))
                                             for owner, name, old in host if old.device.type == "cpu"]
    if device.type != "cpu":
        _RESIDENT[id(module)] = weakref.ref(module)
        _RESIDENT.move_to_end(id(module))
    return device


# Standalone: the models on the compute device, least recently loaded first (ComfyUI's manager does this inside it).
_RESIDENT: "OrderedDict[int, weakref.ref]" = OrderedDict()


def _make_room(module: torch.nn.Module, needed: int, device: torch.device) -> None:
    """Standalone: offload the least recently used other models until `needed` bytes are free on `device`."""
    for key in list(_RESIDENT):
        if free_vram(device) >= needed:
            return
        other = _RESIDENT[key]()
        if other is None:
            del _RESIDENT[key]
        elif other is not module:
            offload_model(other)



def _patcher(module: torch.nn.Module, device: torch.device):
    """The ComfyUI ModelPatcher that registers `module` with the model manager, made on first use."""
    patcher = module.__dict__.get("_openreel_patcher")
    if patcher is None:
        patcher = _model_patcher.ModelPatcher(holder(module), load_device=device, offload_device=offload_device(),
                                              size=module_bytes(module))
        module._openreel_patcher = patcher  # ComfyUI holds patchers weakly; the module keeps its own alive
    return patcher


_OUTSIDE: dict[str, object] = {}


def hold_outside(name: str, release) -> None:
    """Memory that lives outside this process (OpenReel Multi-GPU's worker processes) registered with ComfyUI's
    memory manager under `name`, so its free paths (POST /free, "unload models", room for another model) reach it:
    `release()` runs when the manager unloads it. It counts no bytes, so nothing is unloaded to make room for it.
    A new registration under the same name replaces the last. Standalone: nothing to register (the workers stop
    with the process)."""
    if not IN_COMFYUI:
        return

    class Outside(_model_patcher.ModelPatcher):
        def detach(self, unpatch_all=True):
            # Our reference stays until the next registration under `name` replaces it: ComfyUI holds patchers
            # weakly, and a patcher collected now would drop out of the list its manager is walking. (`release`
            # belongs to this registration: run again when it is collected, it stops nothing that came later.)
            release()
            return super().detach(unpatch_all)

    model = type("OpenReelMultiGPUWorkers", (torch.nn.Module,), {})()
    patcher = Outside(model, load_device=torch_device(), offload_device=offload_device(), size=0)
    _OUTSIDE[name] = patcher
    _mm.load_models_gpu([patcher], force_full_load=True)


def _unload(patcher) -> None:
    """Unload one registered model the manager's own way: asked for all the memory it can free (as its own
    `unload_all_models` asks), `free_memory` unloads every model on the device that is not in `keep_loaded` and
    drops it from its list; every model but this one is kept. (A `LoadedModel`'s `model_unload` alone would leave
    an entry in that list that only the manager may remove.)"""
    others = [_mm.LoadedModel(p) for p in _mm.loaded_models() if p is not None and p is not patcher]
    _mm.free_memory(1e30, patcher.load_device, keep_loaded=others)


def _on(t: torch.Tensor, device: torch.device) -> bool:
    return t.device.type == device.type and (device.index is None or t.device.index == device.index)


def _tensors(module: torch.nn.Module) -> list[tuple[torch.nn.Module, str, torch.Tensor]]:
    """(owner, name, tensor) of every parameter and buffer of `module`, the parameters' data as they are now."""
    return [(owner, name, t.data if isinstance(t, torch.nn.Parameter) else t)
            for owner in module.modules() for table in (owner._parameters, owner._buffers)
            for name, t in table.items() if t is not None]


def _stamp(owner: torch.nn.Module, name: str) -> tuple[int, int] | None:
    """What a tensor on the GPU was right after loading: its storage and its in-place version counter."""
    t = owner._parameters.get(name, owner._buffers.get(name))
    return None if t is None else (t.data_ptr(), t._version)


def forget_host_copies(module: torch.nn.Module) -> None:
    """Call before changing a model's weights in place: the next offload copies them instead of putting back the
    host tensors kept from its load (an in-place write through `.data` leaves no trace to check)."""
    module.__dict__.pop("_openreel_host", None)


def _back_to_host_copies(module: torch.nn.Module) -> int:
    """Standalone offload without copying: the host tensors the module was loaded from were kept; each GPU tensor
    nothing changed since (same storage, no in-place write, `forget_host_copies` not called) gets its host tensor
    back. Returns how many were put back; the rest (changed, or made on the GPU) are for the caller to copy.
    Per tensor, because a part written in place on every call (block swap's ring) must not cost the copy of the
    whole resident model (17.8 GiB of a 14B expert under a 24 GB plan: 16 s at every Wan2.2 switch)."""
    kept = module.__dict__.pop("_openreel_host", None) or ()
    back = 0
    for owner, name, host, stamp in kept:
        if _stamp(owner, name) != stamp:
            continue
        param = owner._parameters.get(name)
        if param is not None and torch._has_compatible_shallow_copy_type(param, host):
            param.data = host
        elif param is not None:  # as Module.to does where the tensor kinds differ
            owner._parameters[name] = torch.nn.Parameter(host, param.requires_grad)
        else:
            owner._buffers[name] = host
        back += 1
    return back


def offload_model(module: torch.nn.Module) -> None:
    """Move `module` back to the offload device (e.g. the expert that is done), freeing its VRAM; inside ComfyUI
    the model manager unloads it and stops holding it."""
    patcher = module.__dict__.get("_openreel_patcher")
    _RESIDENT.pop(id(module), None)
    if IN_COMFYUI and patcher is not None:
        _unload(patcher)
    else:
        _back_to_host_copies(module)
        module.to(offload_device())  # whatever is still on the GPU
    empty_cache()


@contextmanager
def placed(module: torch.nn.Module, memory_required: int = 0):
    """Run a block with `module` on the compute device (through the memory manager), then offload it."""
    device = load_model(module, memory_required)
    try:
        yield device
    finally:
        offload_model(module)


# ----------------------------------------------------------------------------------------- interrupts
def throw_if_interrupted() -> None:
    """Call between model calls: raises ComfyUI's interrupt exception, or `Interrupted` standalone."""
    if IN_COMFYUI:
        _mm.throw_exception_if_processing_interrupted()
        return
    if _settings.interrupt.is_set():
        _settings.interrupt.clear()
        raise Interrupted("interrupted by the user")


def request_interrupt() -> None:
    """Standalone only (e.g. the runner's Ctrl-C handler): stop at the next model call."""
    _settings.interrupt.set()


# ----------------------------------------------------------------------------------------- progress
class Progress:
    """One bar per node run: ComfyUI's websocket progress inside ComfyUI, tqdm on a terminal otherwise."""

    def __init__(self, total: int, desc: str = "OpenReel"):
        self.total = int(total)
        self.value = 0
        self._start = time.monotonic()
        if IN_COMFYUI:
            self._bar = _comfy_utils.ProgressBar(self.total)
            self._tqdm = None
        else:
            from tqdm.auto import tqdm

            self._bar = None
            self._tqdm = tqdm(total=self.total, desc=desc, leave=False, dynamic_ncols=True)

    def update(self, n: int = 1, preview=None) -> None:
        """Advance by `n`; `preview` is a PIL image shown as the node's live preview inside ComfyUI."""
        self.value = min(self.total, self.value + n)
        if self._bar is not None:
            self._bar.update_absolute(self.value, self.total, ("JPEG", preview, 512) if preview is not None else None)
        else:
            self._tqdm.update(n)

    def describe(self, text: str) -> None:
        """Where the run is, in words: the bar's label on a terminal; inside ComfyUI the text shown on the node
        (ComfyUI's progress-text message, where this ComfyUI has it), with the time left estimated from the bar."""
        if self._tqdm is not None:
            self._tqdm.set_description(text, refresh=True)
            return
        elapsed = time.monotonic() - self._start
        if self.value:
            left = int(elapsed / self.value * (self.total - self.value))
            text += f" · about {left // 60} min {left % 60:02d} s left"
        try:
            from comfy_execution.utils import get_executing_context
            from server import PromptServer
        except ImportError:  # an older ComfyUI: the bar alone
            return
        context = get_executing_context()
        if context is not None:
            PromptServer.instance.send_progress_text(text, context.node_id)

    def set_total(self, total: int) -> None:
        """Correct the total once it is known (e.g. after a model was loaded and its call pattern chosen)."""
        self.total = int(total)
        if self._bar is not None:
            self._bar.update_absolute(self.value, self.total)
        else:
            self._tqdm.total = self.total
            self._tqdm.refresh()

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ----------------------------------------------------------------------------------------- folders
def set_models_dir(path: str | os.PathLike | None) -> None:
    """Standalone only: the folder holding diffusion_models/, text_encoders/, vae/, clip_vision/, loras/."""
    _settings.models_dir = None if path is None else Path(path)


def set_output_dir(path: str | os.PathLike | None) -> None:
    """Standalone only: where saved videos go."""
    _settings.output_dir = None if path is None else Path(path)


def set_input_dir(path: str | os.PathLike | None) -> None:
    """Standalone only: where input images and videos are read from."""
    _settings.input_dir = None if path is None else Path(path)


def models_dir() -> Path:
    if IN_COMFYUI:
        return Path(_folder_paths.models_dir)
    if _settings.models_dir is not None:
        return _settings.models_dir
    if os.environ.get("OPENREEL_MODELS"):
        return Path(os.environ["OPENREEL_MODELS"])
    pack = Path(__file__).resolve().parent
    if pack.parent.name == "custom_nodes" and (pack.parent.parent / "models").is_dir():
        return pack.parent.parent / "models"  # a ComfyUI install's models, used by the headless runner
    return Path.home() / "openreel-models"


def model_folders(kind: str) -> list[Path]:
    """Every folder searched for models of `kind` (one of MODEL_KINDS)."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model folder kind {kind!r}; expected one of {MODEL_KINDS}")
    if IN_COMFYUI:
        return [Path(p) for p in _folder_paths.get_folder_paths(kind)]
    root = models_dir()
    return [root / kind] + [root / legacy for legacy in _LEGACY_FOLDERS.get(kind, ())]


def comfy_package_dir() -> Path | None:
    """ComfyUI's `comfy/` folder (it bundles tokenizers): the running ComfyUI's, or standalone the enclosing
    install's when the pack sits in `custom_nodes/`; None without one."""
    if IN_COMFYUI:
        return Path(_mm.__file__).resolve().parent
    pack = Path(__file__).resolve().parent
    folder = pack.parent.parent / "comfy"
    return folder if pack.parent.name == "custom_nodes" and folder.is_dir() else None


def list_models(kind: str) -> list[str]:
    """Model files of `kind` as names relative to their folder ('/'-separated), sorted."""
    if IN_COMFYUI:
        return sorted(_folder_paths.get_filename_list(kind))
    names = set()
    for folder in model_folders(kind):
        if not folder.is_dir():
            continue
        for path in folder.rglob("*"):
            if path.is_file() and path.suffix.lower() in _MODEL_EXTENSIONS:
                names.add(path.relative_to(folder).as_posix())
    return sorted(names)


def model_path(kind: str, name: str) -> Path:
    """Full path of model `name` of `kind`; a clear error naming the folders searched if it is absent."""
    if IN_COMFYUI:
        full = _folder_paths.get_full_path(kind, name)
        if full is not None:
            return Path(full)
    else:
        candidate = Path(name)
        if candidate.is_absolute() and candidate.exists():
            return candidate
        for folder in model_folders(kind):
            if (folder / name).exists():
                return folder / name
    searched = ", ".join(str(f) for f in model_folders(kind))
    raise InputError(f"model file {name!r} was not found in the {kind} folders ({searched})",
                     "put it in one of them or pick another file")


def output_dir() -> Path:
    """Folder for saved outputs (created on demand)."""
    if IN_COMFYUI:
        path = Path(_folder_paths.get_output_directory())
    elif _settings.output_dir is not None:
        path = _settings.output_dir
    else:
        path = Path(os.environ.get("OPENREEL_OUTPUT", "output"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def input_dir() -> Path:
    """Folder of user inputs (images, videos)."""
    if IN_COMFYUI:
        return Path(_folder_paths.get_input_directory())
    if _settings.input_dir is not None:
        return _settings.input_dir
    return Path(os.environ.get("OPENREEL_INPUT", "input"))
