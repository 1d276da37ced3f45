"""Every model family OpenReel knows, registered in one place; the loaders and samplers look families up here."""
from __future__ import annotations

from ..handles import DiTSpec
from .common.family import DIT_FAMILIES, VAE_FAMILIES, DiTFamily, VAEFamily
from .hunyuan import family as _hunyuan  # noqa: F401  (each family module registers itself)
from .hunyuan import latents as _hunyuan_vae  # noqa: F401
from .stepvideo import family as _stepvideo  # noqa: F401
from .stepvideo import latents as _stepvideo_vae  # noqa: F401
from .wan import family as _wan  # noqa: F401


def family_of(spec: DiTSpec) -> DiTFamily:
    """The adapter of the family that made `spec`."""
    return DIT_FAMILIES[spec.family]


def vae_family_of(handle) -> VAEFamily:
    """The adapter of the VAE family of a `VAEHandle`."""
    return VAE_FAMILIES[handle.family]


def dit_families() -> list[DiTFamily]:
    return list(DIT_FAMILIES.values())


def vae_families() -> list[VAEFamily]:
    return list(VAE_FAMILIES.values())
