"""What a model file (or a folder of them) is, in words: the `inspect` command's answer for every kind of file."""
from __future__ import annotations

from pathlib import Path

from ..errors import DetectionError
from .checkpoint import open_checkpoint
from .identify import identify

MODEL_EXTENSIONS = (".safetensors", ".sft", ".pth", ".pt", ".ckpt", ".bin")


def _one_model_folder(folder: Path) -> bool:
    """A folder that is one model (a shard index or a diffusers config beside its weights)."""
    return any(folder.glob("*.index.json")) or (folder / "config.json").is_file()


def _lines_or_none(path: Path) -> list[str]:
    """`inspect_path` of one entry of a folder; a subfolder without models adds nothing."""
    try:
        return inspect_path(path)
    except DetectionError:
        if path.is_dir():
            return []
        raise


def inspect_path(path: str | Path) -> list[str]:
    """Lines that say what `path` holds; a folder of separate models gets a paragraph per model."""
    path = Path(path)
    if path.is_dir() and not _one_model_folder(path):
        lines = [line for p in sorted(path.iterdir()) if p.is_dir() or p.suffix.lower() in MODEL_EXTENSIONS
                 for line in _lines_or_none(p)]
        if not lines:
            raise DetectionError(f"{path} holds no model files", "point at a weights file or a model's folder")
        return lines
    ckpt = open_checkpoint(path)
    found = identify(ckpt)
    if found is None:
        sample = ", ".join(sorted(ckpt.keys())[:5])
        raise DetectionError(f"{ckpt.name} is no model file OpenReel knows (first keys: {sample})",
                             "OpenReel reads Wan, SkyReels-V2 and HunyuanVideo DiTs, their VAEs, umT5, "
                             "LLaVA-Llama-3 and CLIP-L text encoders, and CLIP ViT-H/14 vision files")
    lines = [f"{ckpt.name}: {found.what}"]
    if found.kind == "dit" and found.family is not None:
        spec = found.family.describe(found.family.normalize(ckpt))
        lines.append(f"  {spec.description}; task {spec.task}, latent format {spec.latent_format}"
                     + (", needs CLIP vision" if spec.needs_clip else ""))
    elif found.kind == "vae" and found.family is not None:
        config = found.family.describe(found.family.normalize(ckpt))
        lines.append(f"  latent format {found.family.latent_format(config)}")
    elif found.kind == "text_encoder":
        from .text_encoder import inspect_text_encoder

        lines.append(f"  {inspect_text_encoder(path)[2].description}")
    elif found.kind == "clip_vision":
        from .clip_vision import inspect_clip_vision

        lines.append(f"  {inspect_clip_vision(path)[1].description}")
    dtypes = sorted({str(ckpt.dtype(k)).removeprefix("torch.") for k in ckpt.keys()})
    lines.append(f"  {len(ckpt.files)} file(s), {len(ckpt)} tensors ({', '.join(dtypes)})"
                 + ("" if found.runnable else "; recognized, not runnable yet"))
    lines.append(f"  {found.todo[:1].upper()}{found.todo[1:]}")
    return lines
