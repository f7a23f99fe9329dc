"""The Hugging Face hub cache, without torch: where a repository's files are, and fetching them.

Both extraction paths read hub weights through here: the torch bridge's timm and
``hf:`` entries (:mod:`ncti_jax.bridges.hub`) and the JAX-native path's
``model.safetensors`` (:mod:`ncti_jax.bridges.jax_pipeline`). huggingface_hub is
imported when a function is called; without it, the error names the extras that
install it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _hub() -> Any:
    try:
        import huggingface_hub
    except ImportError as err:
        raise ValueError(
            f"huggingface_hub is not installed ({err}); pip install 'ncti-jax[hf]' (torch) "
            "or 'ncti-jax[flax]' (JAX)."
        ) from None
    return huggingface_hub


def offline() -> bool:
    """``HF_HUB_OFFLINE``, as huggingface_hub reads it."""
    return bool(_hub().constants.HF_HUB_OFFLINE)


def repo_dir(repo: str) -> Path:
    """A model repository's folder in the cache (its files under ``snapshots/<revision>/``)."""
    return Path(_hub().constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"


def cached(repo: str, files: Sequence[str], revision: str | None = None) -> Path | None:
    """The first of ``files`` that the cache holds for ``repo``, or None."""
    hub = _hub()
    for name in files:
        path = hub.try_to_load_from_cache(repo, name, revision=revision)
        if isinstance(path, str):
            return Path(path)
    return None


def download(repo: str, files: Sequence[str], revision: str | None = None) -> str | None:
    """Downloads the first of ``files`` the repository has (and a sharded index's shards)
    into the cache; returns why a download failed (offline, no such repository), or None."""
    hub = _hub()
    for name in files:
        try:
            path = hub.hf_hub_download(repo, name, revision=revision)
        except hub.errors.EntryNotFoundError:
            continue
        except Exception as err:  # offline, unknown repo, HTTP errors
            return f"{type(err).__name__}: {str(err).splitlines()[0]}"
        if name.endswith(".index.json"):
            shards = json.loads(Path(path).read_text(encoding="utf-8"))["weight_map"].values()
            for shard in sorted(set(shards)):
                hub.hf_hub_download(repo, shard, revision=revision)
        return None
    return None
