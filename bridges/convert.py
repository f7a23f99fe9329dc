"""torch / timm / Hugging Face weights -> the flax models of :mod:`ncti_jax.bridges.flax_models`.

Conversion is exact: each torch tensor lands in one flax parameter, transposed
where the layouts differ (conv OIHW -> HWIO, linear (out, in) -> (in, out)),
BatchNorm's running statistics included, Hugging Face's separate q/k/v stacked
into the fused projection. Every key of the source state dict must be used
(BatchNorm's ``num_batches_tracked`` and a Hugging Face ViT's pooler, which the
features do not go through, are the only ones skipped) and every parameter filled: otherwise one
error lists every missing, unexpected and wrongly shaped key.

Files are read without torch where they can be (:func:`read_safetensors`); a
torch checkpoint (:func:`read_torch_checkpoint`) imports torch only then.
Converted parameters are cached with orbax (:func:`save_converted` /
:func:`load_converted`), keyed by a digest of their source (:func:`file_digest`
of the weights file, or anything that names a random initialisation).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ncti_jax.io import atomic_write_text

from .flax_models import (
    ArchSpec,
    Preprocess,
    ResNetConfig,
    ViTConfig,
    abstract_model,
    resolve,
)

CACHE_SCHEMA = "ncti-jax/flax-params/v1"
_META = "meta.json"
_PARAMS = "params"
_SKIPPED_SUFFIXES = (".num_batches_tracked",)


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One flax parameter and the torch key(s) it comes from (several are stacked along
    their first axis: Hugging Face's q, k, v); ``kind`` says how it is laid out."""

    path: tuple[str | int, ...]
    keys: tuple[str, ...]
    kind: str  # "conv" (OIHW -> HWIO), "linear" ((out, in) -> (in, out)) or "copy"


def _linear(path: tuple, prefix: str) -> Iterator[_Entry]:
    yield _Entry((*path, "kernel"), (f"{prefix}.weight",), "linear")
    yield _Entry((*path, "bias"), (f"{prefix}.bias",), "copy")


def _norm(path: tuple, prefix: str, *, batch: bool = False) -> Iterator[_Entry]:
    yield _Entry((*path, "scale"), (f"{prefix}.weight",), "copy")
    yield _Entry((*path, "bias"), (f"{prefix}.bias",), "copy")
    if batch:
        yield _Entry((*path, "mean"), (f"{prefix}.running_mean",), "copy")
        yield _Entry((*path, "var"), (f"{prefix}.running_var",), "copy")


def _resnet_entries(config: ResNetConfig) -> Iterator[_Entry]:
    """torchvision's (and timm's) ResNet keys."""
    yield _Entry(("conv1", "kernel"), ("conv1.weight",), "conv")
    yield from _norm(("bn1",), "bn1", batch=True)
    convs = 2 if config.block == "basic" else 3
    for stage, count in enumerate(config.layers, 1):
        for i in range(count):
            path, prefix = (f"layer{stage}", i), f"layer{stage}.{i}"
            for c in range(1, convs + 1):
                yield _Entry((*path, f"conv{c}", "kernel"), (f"{prefix}.conv{c}.weight",), "conv")
                yield from _norm((*path, f"bn{c}"), f"{prefix}.bn{c}", batch=True)
            if i == 0 and (stage > 1 or config.block == "bottleneck"):
                down = (*path, "downsample")
                yield _Entry((*down, "conv", "kernel"), (f"{prefix}.downsample.0.weight",), "conv")
                yield from _norm((*down, "bn"), f"{prefix}.downsample.1", batch=True)
    yield from _linear(("head",), "fc")


def _vit_entries(config: ViTConfig) -> Iterator[_Entry]:
    """The ViT keys of ``config.layout``: torchvision, timm or Hugging Face."""
    if config.layout == "torchvision":
        names = {
            "patch": "conv_proj", "cls": "class_token", "pos": "encoder.pos_embedding",
            "block": "encoder.layers.encoder_layer_{}", "norm1": "ln_1", "norm2": "ln_2",
            "proj": "self_attention.out_proj", "fc1": "mlp.0", "fc2": "mlp.3",
            "norm": "encoder.ln", "head": "heads.head",
        }  # fmt: skip
    elif config.layout == "timm":
        names = {
            "patch": "patch_embed.proj", "cls": "cls_token", "pos": "pos_embed",
            "block": "blocks.{}", "norm1": "norm1", "norm2": "norm2", "proj": "attn.proj",
            "fc1": "mlp.fc1", "fc2": "mlp.fc2", "norm": "norm", "head": "head",
        }  # fmt: skip
    else:  # Hugging Face: ViTForImageClassification nests the encoder under vit.
        vit = "vit." if config.num_classes else ""
        names = {
            "patch": f"{vit}embeddings.patch_embeddings.projection",
            "cls": f"{vit}embeddings.cls_token",
            "pos": f"{vit}embeddings.position_embeddings",
            "block": f"{vit}encoder.layer.{{}}", "norm1": "layernorm_before",
            "norm2": "layernorm_after", "proj": "attention.output.dense",
            "fc1": "intermediate.dense", "fc2": "output.dense",
            "norm": f"{vit}layernorm", "head": "classifier",
        }  # fmt: skip
    yield _Entry(("patch_embed", "kernel"), (f"{names['patch']}.weight",), "conv")
    yield _Entry(("patch_embed", "bias"), (f"{names['patch']}.bias",), "copy")
    yield _Entry(("cls_token",), (names["cls"],), "copy")
    yield _Entry(("pos_embed",), (names["pos"],), "copy")
    for i in range(config.depth):
        path, prefix = ("blocks", i), names["block"].format(i)
        yield from _norm((*path, "norm1"), f"{prefix}.{names['norm1']}")
        yield from _norm((*path, "norm2"), f"{prefix}.{names['norm2']}")
        attn = (*path, "attn", "qkv")
        if config.layout == "torchvision":
            qkv = f"{prefix}.self_attention.in_proj"
            yield _Entry((*attn, "kernel"), (f"{qkv}_weight",), "linear")
            yield _Entry((*attn, "bias"), (f"{qkv}_bias",), "copy")
        elif config.layout == "timm":
            yield from _linear(attn, f"{prefix}.attn.qkv")
        else:
            qkv = tuple(f"{prefix}.attention.attention.{p}" for p in ("query", "key", "value"))
            yield _Entry((*attn, "kernel"), tuple(f"{k}.weight" for k in qkv), "linear")
            yield _Entry((*attn, "bias"), tuple(f"{k}.bias" for k in qkv), "copy")
        yield from _linear((*path, "attn", "proj"), f"{prefix}.{names['proj']}")
        yield from _linear((*path, "mlp", "fc1"), f"{prefix}.{names['fc1']}")
        yield from _linear((*path, "mlp", "fc2"), f"{prefix}.{names['fc2']}")
    yield from _norm(("norm",), names["norm"])
    if config.num_classes:
        yield from _linear(("head",), names["head"])


def _entries(spec: ArchSpec) -> list[_Entry]:
    if isinstance(spec.config, ResNetConfig):
        return list(_resnet_entries(spec.config))
    return list(_vit_entries(spec.config))


def _skipped(key: str, spec: ArchSpec) -> bool:
    """Source keys that carry nothing the eval-mode features need."""
    if key.endswith(_SKIPPED_SUFFIXES):
        return True
    # A Hugging Face ViT's pooler (tanh(dense(CLS))) is not the classifier's input.
    return spec.source == "hf" and key.startswith(("pooler.", "vit.pooler."))


def expected_keys(spec: ArchSpec) -> set[str]:
    """The source state-dict keys :func:`convert` needs for ``spec``."""
    return {key for entry in _entries(spec) for key in entry.keys}


def _source_shape(kind: str, shape: tuple[int, ...], parts: int) -> tuple[int, ...]:
    """The torch shape of each of ``parts`` source tensors of a flax parameter ``shape``."""
    if kind == "conv":  # HWIO -> OIHW
        shape = (shape[3], shape[2], shape[0], shape[1])
    elif kind == "linear":
        shape = (shape[1], shape[0])
    return (shape[0] // parts, *shape[1:])


def _to_flax(kind: str, arrays: list[Any]) -> jax.Array:
    """The flax parameter from its source tensor(s): jnp throughout, so that a conversion
    also runs under ``jax.eval_shape`` on shapes alone."""
    array = jnp.concatenate([jnp.asarray(a, jnp.float32) for a in arrays], axis=0)
    if kind == "conv":
        return array.transpose(2, 3, 1, 0)
    if kind == "linear":
        return array.T
    return array


def _abstract(spec: ArchSpec) -> tuple[nnx.GraphDef, nnx.State]:
    """The model's structure and parameter shapes, without initialising anything."""
    return nnx.split(abstract_model(spec))


def _filled(graphdef: nnx.GraphDef, state: nnx.State, values: Mapping[tuple, Any]) -> nnx.Module:
    pure = nnx.to_pure_dict(state)
    for path, value in values.items():
        holder = pure
        for part in path[:-1]:
            holder = holder[part]
        holder[path[-1]] = value
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)


def convert(
    arch: str,
    state: Mapping[str, np.ndarray],
    *,
    config: Mapping[str, Any] | None = None,
    source: str | os.PathLike | None = None,
) -> nnx.Module:
    """The flax model of ``arch`` with the weights of a torchvision / timm / Hugging Face
    state dict (arrays keyed as the torch model's ``state_dict``; Hugging Face's as in its
    files, what ``save_pretrained`` writes and the hub holds:
    ``vit.encoder.layer.N.attention.attention.query.weight``, not the names transformers 5
    uses in memory).

    The number of classes and a ViT's image size follow the state's classifier and
    position embedding (``config`` as in :func:`~ncti_jax.bridges.flax_models.resolve`
    otherwise; an ``hf:`` model's config.json is needed).

    ``source``, the file the state was read from, is named in errors.

    Raises:
      ValueError: keys missing or unexpected, or tensors of the wrong shape: all of
        them in one message naming ``source`` (the file) or ``arch``.
    """
    where = f"{source} ({arch!r})" if source is not None else f"model {arch!r}"
    spec = resolve(arch, config=_shape_overrides(arch, state, config))
    graphdef, abstract = _abstract(spec)
    shapes = {path: var.shape for path, var in nnx.to_flat_state(abstract)}
    entries = _entries(spec)
    wanted = {key for entry in entries for key in entry.keys}
    missing = sorted(wanted - set(state))
    unexpected = sorted(k for k in set(state) - wanted if not _skipped(k, spec))
    wrong, values = [], {}
    for entry in entries:
        if any(key not in state for key in entry.keys):
            continue
        expected = _source_shape(entry.kind, shapes[entry.path], len(entry.keys))
        bad = [
            f"{key} {tuple(np.shape(state[key]))} (expected {expected})"
            for key in entry.keys
            if tuple(np.shape(state[key])) != expected
        ]
        wrong += bad
        if not bad:
            values[entry.path] = _to_flax(entry.kind, [state[key] for key in entry.keys])
    if missing or unexpected or wrong:
        raise ValueError(
            f"{where}: the weights do not match {arch!r}: "
            + "; ".join(
                f"{len(items)} {what}: {', '.join(items)}"
                for what, items in (
                    ("missing keys", missing),
                    ("unexpected keys", unexpected),
                    ("tensors of the wrong shape", wrong),
                )
                if items
            )
            + "."
        )
    unfilled = sorted(set(shapes) - set(values))
    if unfilled:  # a port whose key map misses a parameter: a bug here, not in the file
        raise RuntimeError(f"model {arch!r}: conversion leaves {unfilled} unset.")
    return _filled(graphdef, abstract, values)


def _shape_overrides(
    arch: str, state: Mapping[str, np.ndarray], config: Mapping[str, Any] | None
) -> dict[str, Any]:
    """``config`` completed from the state: the classifier's size (torchvision / timm) and
    a ViT's image size from its position embedding (torchvision / timm), so that weights
    made for another size convert to the model they fit."""
    out = dict(config or {})
    if arch.startswith("hf:"):
        return out
    spec = resolve(arch, config=out)
    head = "fc.weight" if isinstance(spec.config, ResNetConfig) else None
    if isinstance(spec.config, ViTConfig):
        head = "heads.head.weight" if spec.source == "torchvision" else "head.weight"
        pos = "encoder.pos_embedding" if spec.source == "torchvision" else "pos_embed"
        if pos in state and np.ndim(state[pos]) == 3:
            grid = math.isqrt(np.shape(state[pos])[1] - 1)
            out.setdefault("image_size", grid * spec.config.patch_size)
    if head in state and np.ndim(state[head]) == 2:
        out["num_classes"] = int(np.shape(state[head])[0])
    return out


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The tensors of a safetensors file as NumPy arrays (no torch)."""
    from safetensors.numpy import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist.")
    try:
        return load_file(path)
    except Exception as err:  # safetensors' own errors: header, unknown dtype, truncation
        raise ValueError(f"{path}: not a readable safetensors file ({err}).") from None


def read_torch_checkpoint(
    path: str | os.PathLike, arch: str | None = None, *, config: Mapping[str, Any] | None = None
) -> dict[str, np.ndarray]:
    """The tensors of a torch checkpoint as NumPy arrays, loaded safely
    (``weights_only=True``; torch imported only here).

    A state dict nested under ``state_dict`` / ``model`` is unwrapped, and with ``arch``
    wrapper prefixes (``module.``, ``encoder_q.``, ...) are stripped as
    :func:`ncti_jax.bridges.models.strip_prefixes` does, against the keys ``arch``
    expects (so that torchvision ViT's own ``encoder.*`` keys stay). Floating tensors
    come back as float32.
    """
    import torch

    from .models import _unwrap_state_dict, strip_prefixes

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist.")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"{path}: not a loadable checkpoint ({type(err).__name__}: {err})."
        ) from None
    state = _unwrap_state_dict(raw, path)
    if arch is not None:
        spec = resolve(arch, config=config)
        state = strip_prefixes(state, expected_keys(spec))
    return {
        key: (value.float() if value.is_floating_point() else value).numpy()
        for key, value in state.items()
    }


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a weights file: the ``source_digest`` of its converted cache."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _checkpointer() -> Any:
    import orbax.checkpoint as ocp

    return ocp.StandardCheckpointer()


def save_converted(model: nnx.Module, directory: str | os.PathLike, *, source_digest: str) -> None:
    """Saves ``model``'s parameters with orbax under ``directory``, atomically.

    Written into a temporary directory beside it, then renamed into place (an older
    cache there is replaced): a reader finds the complete cache or none. The arch,
    the model's config and ``source_digest`` are recorded beside the parameters.
    """
    directory = Path(directory).absolute()
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        checkpointer = _checkpointer()
        checkpointer.save(tmp / _PARAMS, nnx.to_pure_dict(nnx.state(model)))
        checkpointer.wait_until_finished()
        meta = {
            "schema": CACHE_SCHEMA,
            "arch": model.arch,
            "source_digest": source_digest,
            "kind": type(model.config).__name__,
            "config": dataclasses.asdict(model.config),
            "preprocess": dataclasses.asdict(model.preprocess),
        }
        atomic_write_text(tmp / _META, json.dumps(meta, indent=1))
        _replace_dir(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_dir(new: Path, target: Path) -> None:
    """Renames ``new`` to ``target``, moving an existing ``target`` aside first (a
    directory cannot be replaced by a rename) and deleting it after."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
        os.replace(target, old / "cache")
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def load_converted(
    arch: str, directory: str | os.PathLike, *, source_digest: str
) -> nnx.Module | None:
    """The model saved by :func:`save_converted` in ``directory``, or None when there is
    no cache, or one of another arch, another source digest or another schema (the
    caller converts again and overwrites it)."""
    directory = Path(directory).absolute()
    try:
        meta = json.loads((directory / _META).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (
        not isinstance(meta, dict)
        or meta.get("schema") != CACHE_SCHEMA
        or meta.get("arch") != arch
        or meta.get("source_digest") != source_digest
    ):
        return None
    spec = _spec_from_meta(arch, meta)
    graphdef, abstract = _abstract(spec)
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), nnx.to_pure_dict(abstract)
    )
    restored = _checkpointer().restore(directory / _PARAMS, target)
    nnx.replace_by_pure_dict(abstract, restored)
    return nnx.merge(graphdef, abstract)


def _spec_from_meta(arch: str, meta: Mapping[str, Any]) -> ArchSpec:
    kinds: dict[str, Callable[..., Any]] = {"ResNetConfig": ResNetConfig, "ViTConfig": ViTConfig}
    fields = dict(meta["config"])
    if "layers" in fields:
        fields["layers"] = tuple(fields["layers"])
    preprocess = dict(meta["preprocess"])
    return ArchSpec(
        arch=arch,
        source=arch.partition(":")[0] if ":" in arch else "torchvision",
        config=kinds[meta["kind"]](**fields),
        preprocess=Preprocess(
            int(preprocess["size"]), tuple(preprocess["mean"]), tuple(preprocess["std"])
        ),
    )
