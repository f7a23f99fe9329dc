"""Framework bridges: torchvision, timm and Hugging Face models -> penultimate features -> JAX.

Installed as ``ncti_jax.bridges`` (the ``torch`` extra). torch is imported by these
modules (but for the flax ones, which import it only to read a torch checkpoint) and
nowhere else in the project; importing this package itself imports
nothing heavy: :func:`rank_zoo`, :func:`extract_zoo` and :class:`ZooFeatures` are
imported from :mod:`ncti_jax.bridges.pipeline` on first use.

- :mod:`ncti_jax.bridges.pipeline`: images to ranking in one call (:func:`rank_zoo`).
- :mod:`ncti_jax.bridges.zoo`: zoo declarations (presets, zoo files, ``timm:`` / ``hf:``
  entries); imports no torch.
- :mod:`ncti_jax.bridges.models`: zoo models cut at the penultimate layer; weights,
  checkpoints, preprocessing (torchvision here, timm and Hugging Face in
  :mod:`ncti_jax.bridges.hub`).
- :mod:`ncti_jax.bridges.datasets`: the paper's target datasets, ImageFolder, subsampling.
- :mod:`ncti_jax.bridges.extract`: one pass over the data for the whole zoo; feature stores.
- :mod:`ncti_jax.bridges.dlpack`: zero-copy torch -> JAX handoff.
- :mod:`ncti_jax.bridges.features`: :class:`ZooFeatures`, what either backend extracts.
- :mod:`ncti_jax.bridges.images`: image folders decoded and preprocessed without torch.
- :mod:`ncti_jax.bridges.jax_extract`: the JAX-native extraction, data parallel over a mesh.
- :mod:`ncti_jax.bridges.cli`: ``ncti extract``, ``ncti rank`` and ``ncti demo``.
- :mod:`ncti_jax.bridges.flax_models`: flax (NNX) ports of the ResNets and ViTs, for the
  JAX-native path (no torch).
- :mod:`ncti_jax.bridges.convert`: torchvision / timm / Hugging Face weights -> those ports
  (safetensors read without torch), cached with orbax.
"""

from __future__ import annotations

import importlib

_EXPORTS = {"rank_zoo": ".pipeline", "extract_zoo": ".pipeline", "ZooFeatures": ".features"}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
