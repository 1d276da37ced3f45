"""Read weights from every layout users have, lazily, without unpickling anything.

Layouts: a single safetensors file (memory-mapped); sharded safetensors with an `*.index.json`
(picked by any shard, by the index, or by the folder); a diffusers folder (`config.json` + weights);
`.pth`/`.pt`/`.ckpt`/`.bin` through `torch.load(weights_only=True)`; HunyuanVideo's official fp8 pair
(`*_fp8.pt` with its per-layer scales in `*_fp8_map.pt` beside it), whose scales appear as `<layer>.scale_weight`
as in ComfyUI's fp8_scaled files. A `Checkpoint` is a name → tensor view that can be re-keyed (prefix stripping,
key maps, tensors joined from several sources) without touching the data; tensors are read on `get`.
"""
from __future__ import annotations

import json
import pickle
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

from ..errors import CheckpointError
from ..models.common.ops import FP8_DTYPES

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
SHARD_PATTERN = re.compile(r"^(?P<stem>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})(?P<suffix>\.\w+)$")

_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: torch.dtype


class Checkpoint:
    """A lazy mapping from tensor names to tensors stored in one or more files."""

    def __init__(self, files: tuple[Path, ...], infos: dict[str, TensorInfo],
                 readers: dict[str, Callable[[], torch.Tensor]], config: dict | None = None):
        self.files = files
        self._infos = infos
        self._readers = readers
        self.config = config  # config.json of a diffusers/official folder, if one lies beside the weights

    def __contains__(self, key: str) -> bool:
        return key in self._infos

    def __len__(self) -> int:
        return len(self._infos)

    def keys(self) -> list[str]:
        return list(self._infos)

    def info(self, key: str) -> TensorInfo:
        return self._infos[key]

    def shape(self, key: str) -> tuple[int, ...]:
        return self._infos[key].shape

    def dtype(self, key: str) -> torch.dtype:
        return self._infos[key].dtype

    def get(self, key: str) -> torch.Tensor:
        """The tensor as stored (file dtype, host memory; memory-mapped where the format allows)."""
        return self._readers[key]()

    @property
    def name(self) -> str:
        return self.files[0].name if len(self.files) == 1 else f"{self.files[0].parent.name}/ ({len(self.files)} files)"

    def renamed(self, rename: Callable[[str], str | None]) -> "Checkpoint":
        """A view with every key passed through `rename` (None drops the key)."""
        infos, readers = {}, {}
        for key, info in self._infos.items():
            new = rename(key)
            if new is None:
                continue
            if new in infos:
                raise CheckpointError(f"{self.name}: two tensors map to the name {new!r}",
                                      "the file mixes two key layouts; re-export it in one layout")
            infos[new] = info
            if key in self._readers:
                readers[new] = self._readers[key]
        return Checkpoint(self.files, infos, readers, self.config)

    def strip_prefix(self, prefix: str) -> "Checkpoint":
        """Drop `prefix` from keys that have it; other keys are kept unchanged."""
        if not prefix:
            return self
        return self.renamed(lambda k: k[len(prefix):] if k.startswith(prefix) else k)

    def combined(self, plan: dict[str, tuple[tuple[str, ...], Callable[..., torch.Tensor]]]) -> "Checkpoint":
        """A view in which each key of `plan` reads its source keys and passes their tensors, in order, to its
        function (e.g. `torch.cat` of q, k and v into one qkv weight); the source keys leave the view, every other
        key stays. Shapes and dtypes come from running the functions on meta tensors: nothing is read here."""
        infos = dict(self._infos)
        readers = dict(self._readers)
        used = {source for sources, _ in plan.values() for source in sources}
        missing = sorted(used - self._infos.keys())
        if missing:
            raise CheckpointError(f"{self.name} lacks {', '.join(missing[:3])}",
                                  "the file is incomplete or not a full model; download it again")
        for source in used:
            infos.pop(source)
            readers.pop(source, None)
        for key, (sources, join) in plan.items():
            if key in infos:
                raise CheckpointError(f"{self.name}: two tensors map to the name {key!r}",
                                      "the file mixes two key layouts; re-export it in one layout")
            metas = [torch.empty(self._infos[s].shape, dtype=self._infos[s].dtype, device="meta") for s in sources]
            out = join(*metas)
            infos[key] = TensorInfo(tuple(out.shape), out.dtype)
            readers[key] = lambda sources=sources, join=join: join(*(self.get(s) for s in sources))
        return Checkpoint(self.files, infos, readers, self.config)


# ----------------------------------------------------------------------------------------- safetensors
def _read_safetensors_header(path: Path) -> tuple[dict, dict]:
    """Parse and validate a safetensors header: (tensor entries, metadata). Detects truncated files."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{path.name} is not a safetensors file (only {size} bytes)",
                                  "the download is incomplete; download the file again")
        (header_len,) = struct.unpack("<Q", raw)
        if header_len > min(size - 8, 100_000_000):
            raise CheckpointError(f"{path.name} is not a valid safetensors file (header length {header_len})",
                                  "the file is damaged or of another format; download it again")
        header = json.loads(fh.read(header_len))
    metadata = header.pop("__metadata__", None) or {}
    data_end = max((entry["data_offsets"][1] for entry in header.values()), default=0)
    if 8 + header_len + data_end > size:
        raise CheckpointError(
            f"{path.name} is truncated: it should hold {8 + header_len + data_end:,} bytes but has {size:,}",
            "the download stopped early; download the file again")
    return header, metadata


def _open_safetensors(paths: Iterable[Path]) -> tuple[dict, dict]:
    from safetensors import safe_open

    infos, readers = {}, {}
    for path in paths:
        header, _ = _read_safetensors_header(path)
        handle_box: list = []

        def reader(key: str, path=path, box=handle_box) -> torch.Tensor:
            if not box:  # one mmap handle per file, opened on first use and kept by the readers
                box.append(safe_open(str(path), framework="pt", device="cpu"))
            return box[0].get_tensor(key)

        for key, entry in header.items():
            dtype = _ST_DTYPES.get(entry["dtype"])
            if dtype is None:
                raise CheckpointError(f"{path.name}: tensor {key!r} has unsupported dtype {entry['dtype']}",
                                      "convert the file to bf16, fp16, fp32 or fp8 safetensors")
            if key in infos:
                raise CheckpointError(f"tensor {key!r} appears in more than one shard ({path.name})",
                                      "the shard set is mixed up; keep only the shards of one index")
            infos[key] = TensorInfo(tuple(entry["shape"]), dtype)
            readers[key] = lambda key=key, reader=reader: reader(key)
    return infos, readers


# ----------------------------------------------------------------------------------------- pickle (.pth)
_STATE_DICT_WRAPPERS = ("state_dict", "module", "model", "model_state_dict", "ema")


def _open_pickle(path: Path) -> tuple[dict, dict]:
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) serialization cannot be memory-mapped
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refuses anything but tensors and plain containers
        raise CheckpointError(f"{path.name} holds Python objects other than weights, so it was not read",
                              "OpenReel never unpickles code; use a safetensors version of the file") from exc
    except Exception as exc:
        raise CheckpointError(f"{path.name} could not be read ({type(exc).__name__}: {exc})",
                              "the file is damaged or not a PyTorch weights file; download it again") from exc
    if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for wrapper in _STATE_DICT_WRAPPERS:  # e.g. HunyuanVideo's {"module": state_dict}
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path.name} does not hold a state dict (found {type(obj).__name__})",
                              "use a weights file (safetensors or a .pth state dict)")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    infos = {k: TensorInfo(tuple(v.shape), v.dtype) for k, v in tensors.items()}
    readers = {k: (lambda v=v: v) for k, v in tensors.items()}
    return infos, readers


# ----------------------------------------------------------------------------------------- layouts
def _index_for(path: Path) -> Path | None:
    """The `*.index.json` that lists `path` as one of its shards, if any lies beside it."""
    for index in sorted(path.parent.glob("*.index.json")):
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError):
            continue
        if path.name in set(weight_map.values()):
            return index
    return None


def _files_of_index(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"{index.name} is not a valid shard index ({exc})",
                              "download the index json again") from exc
    files = [index.parent / name for name in dict.fromkeys(weight_map.values())]
    missing = [f.name for f in files if not f.exists()]
    if missing:
        raise CheckpointError(f"{index.name} lists shards that are missing: {', '.join(missing)}",
                              f"download every shard into {index.parent}")
    return files


def _weights_in_folder(folder: Path) -> list[Path]:
    indexes = sorted(folder.glob("*.safetensors.index.json")) or sorted(folder.glob("*.index.json"))
    if indexes:
        return _files_of_index(indexes[0])
    for suffixes in (SAFETENSORS_SUFFIXES, PICKLE_SUFFIXES):
        files = sorted(p for p in folder.iterdir() if p.suffix in suffixes and not _is_fp8_map(p))
        fp8 = [p for p in files if p.name.endswith(FP8_PAIR_SUFFIX) and p.with_name(_full_name(p)) in files]
        if fp8:  # HunyuanVideo's transformers/ folder: the model and its fp8 version side by side
            raise CheckpointError(f"folder {folder} holds two versions of one model ({_full_name(fp8[0])} and "
                                  f"{fp8[0].name})", "pick one of the two files instead of the folder")
        if files:
            return files
    raise CheckpointError(f"folder {folder} holds no weights files",
                          "point at a folder with safetensors (and config.json) or at a weights file")


def resolve_files(path: Path) -> list[Path]:
    """All files that make up the checkpoint `path` names (a file, a shard, an index, or a folder)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist", "check the file name and the models folder")
    if path.is_dir():
        return _weights_in_folder(path)
    if path.name.endswith(".index.json"):
        return _files_of_index(path)
    index = _index_for(path)
    if index is not None:
        return _files_of_index(index)
    if SHARD_PATTERN.match(path.name):
        raise CheckpointError(f"{path.name} is one shard of a sharded checkpoint, but no *.index.json beside it lists it",
                              "put the index json and every shard in the same folder")
    return [path]


# ----------------------------------------------------------------------------------------- HunyuanVideo's fp8 pair
FP8_PAIR_SUFFIX = "_fp8.pt"       # e.g. mp_rank_00_model_states_fp8.pt
FP8_MAP_SUFFIX = "_fp8_map.pt"    # its scales: {"double_blocks.0.img_attn_qkv": scale, ...}


def _is_fp8_map(path: Path) -> bool:
    return path.name.endswith(FP8_MAP_SUFFIX)


def _full_name(fp8_file: Path) -> str:
    return fp8_file.name[: -len(FP8_PAIR_SUFFIX)] + ".pt"


def _fp8_map_scales(weights: Path, infos: dict) -> tuple[dict, dict]:
    """The per-layer weight scales of an official fp8 file (`<stem>_fp8.pt`) from `<stem>_fp8_map.pt` beside it,
    as `<layer>.scale_weight` tensors (HunyuanVideo dequantizes W = weight · scale); empty for other files."""
    if not weights.name.endswith(FP8_PAIR_SUFFIX) or not any(i.dtype in FP8_DTYPES for i in infos.values()):
        return {}, {}
    scale_file = weights.with_name(weights.name[: -len(".pt")] + "_map.pt")
    if not scale_file.exists():
        raise CheckpointError(f"{weights.name} holds fp8 weights whose scales are in {scale_file.name}, which is not "
                              f"beside it", f"download {scale_file.name} into {weights.parent}")
    infos, readers = _open_pickle(scale_file)
    return ({f"{layer}.scale_weight": info for layer, info in infos.items()},
            {f"{layer}.scale_weight": reader for layer, reader in readers.items()})


def open_checkpoint(path: str | Path) -> Checkpoint:
    """Open any supported layout; reads only headers until tensors are asked for."""
    if _is_fp8_map(Path(path)):
        partner = Path(path).name[: -len(FP8_MAP_SUFFIX)] + FP8_PAIR_SUFFIX
        raise CheckpointError(f"{Path(path).name} holds only the weight scales of an fp8 checkpoint",
                              f"pick {partner}, the weights file beside it")
    files = resolve_files(Path(path))
    suffixes = {f.suffix for f in files}
    if suffixes <= set(SAFETENSORS_SUFFIXES):
        infos, readers = _open_safetensors(files)
    elif len(files) == 1 and files[0].suffix in PICKLE_SUFFIXES:
        infos, readers = _open_pickle(files[0])
        scale_infos, scale_readers = _fp8_map_scales(files[0], infos)
        infos.update(scale_infos)
        readers.update(scale_readers)
    elif suffixes <= set(PICKLE_SUFFIXES):
        infos, readers = {}, {}
        for f in files:
            i, r = _open_pickle(f)
            infos.update(i)
            readers.update(r)
    else:
        raise CheckpointError(f"unsupported weights file type {sorted(suffixes)} ({files[0].name})",
                              "use .safetensors, or a .pth/.pt state dict")
    if not infos:
        raise CheckpointError(f"{files[0].name} holds no tensors", "the file is empty or damaged; download it again")
    config_path = files[0].parent / "config.json"
    config = None
    if config_path.exists():
        try:
            config = json.loads(config_path.read_text())
        except ValueError:
            config = None
    return Checkpoint(tuple(files), infos, readers, config)


def is_companion_file(name: str) -> bool:
    """True for a file that is part of a checkpoint another file names: shard 2..N of a sharded set, or the scale
    map of an official fp8 file. Model lists show only the file a user picks."""
    match = SHARD_PATTERN.match(Path(name).name)
    return (bool(match) and int(match["index"]) != 1) or _is_fp8_map(Path(name))


def remapped(ckpt: Checkpoint, plan: dict[str, tuple[str, Callable[[torch.Tensor], torch.Tensor] | None,
                                                      tuple[int, ...] | None]]) -> Checkpoint:
    """A view whose key k reads source key plan[k][0], through the transform plan[k][1], with shape plan[k][2]."""
    infos, readers = {}, {}
    for key, (source, transform, shape) in plan.items():
        info = ckpt.info(source)
        infos[key] = TensorInfo(tuple(shape) if shape is not None else info.shape, info.dtype)
        if transform is None:
            readers[key] = lambda source=source: ckpt.get(source)
        else:
            readers[key] = lambda source=source, transform=transform: transform(ckpt.get(source))
    return Checkpoint(ckpt.files, infos, readers, ckpt.config)


def layer_count(keys: Sequence[str], pattern: str) -> int:
    found = [int(m.group(1)) for k in keys if (m := re.match(pattern, k))]
    return 1 + max(found) if found else 0


def config_value(ckpt: Checkpoint, width: int, name: str):
    """`name` from the config.json beside the weights (its `vision_config`, else its top level), if that config
    describes a model of this `width`: a config.json of another model in the same folder is ignored."""
    config = ckpt.config or {}
    for scope in (config.get("vision_config") or {}, config):
        if scope.get(name) is not None and scope.get("hidden_size", scope.get("d_model", width)) == width:
            return scope[name]
    return None
