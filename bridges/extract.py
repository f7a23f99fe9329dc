"""One pass over the data, every batch fed to every model; features to JAX or a store.

Images are decoded once per sample; each distinct preprocessing (the paper's
224 x 224 for every model by default, or each weights' own transforms with
``preprocess="native"``) is applied to the decoded image once, and every model
that shares it sees the same batch. On CUDA: channels_last, pinned memory,
non-blocking copies and optional bf16 autocast. Features stay on the device
when they fit and are handed to JAX through DLPack (:mod:`ncti_jax.bridges.dlpack`).

Feature stores (what ``ncti score`` reads): ``<model>.npy`` (N, D) float32 +
``labels.npy`` + ``meta.json``; every file is written atomically, and a re-run
skips the models already stored with the same settings. ``meta.json`` records the
exact sample list (dataset, split, subsampling, SHA-256 of the ordered sample
identities): a run on other samples is refused rather than mixed in. Extraction
is resumable: the models being extracted are flushed every ``flush_every``
seconds and on Ctrl-C into ``.partial/`` (which ``ncti score`` does not read), and
a re-run of the same extraction starts from the last flushed row.

With source logits (``with_logits``; LEEP, NCE and ETran's energy score need them),
each model's own classifier is applied to the features it has just computed, in the
same pass, and ``logits/<model>.npy`` (N, S) float32 is stored beside ``<model>.npy``
(in ``.partial/logits/`` while unfinished); a model stored without logits is
extracted again by a run that asks for them.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from ncti_jax.io import LOGITS_DIR, atomic_open, atomic_write_text

from . import defaults
from .datasets import dataset_labels, describe_samples, same_samples, sample_record
from .models import (
    ModelSpec,
    check_model_names,
    check_weights,
    load_model,
    load_model_with_head,
    transform_for,
)

META_FILE = "meta.json"
PARTIAL_DIR = ".partial"  # features of an unfinished extraction: <model>.npy + progress.json
PROGRESS_FILE = "progress.json"
_MAX_PENDING_ROWS = 4096  # rows kept on the device between two flushes, at most


class _MultiTransform(Dataset):
    """(image, label) -> ({transform key: tensor}, label): one decode, every preprocessing."""

    def __init__(self, base: Dataset, transforms: Mapping[str, Callable]):
        self.base = base
        self.transforms = dict(transforms)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        image, label = self.base[i]
        if hasattr(image, "convert"):
            image = image.convert("RGB")
        return {key: t(image) for key, t in self.transforms.items()}, label


@dataclasses.dataclass
class Extraction:
    """Features of every model, on ``device``, in sample order; and the labels."""

    features: dict[str, torch.Tensor]
    labels: np.ndarray
    seconds: float
    device: str

    start: int = 0  # rows resumed from an interrupted run (not extracted now)
    # Source logits (N, S) of the models given a head; empty without ``heads``.
    logits: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)

    @property
    def images_per_second(self) -> float:
        done = len(self.labels) - self.start
        return done / self.seconds if self.seconds else float("nan")


class ExtractionInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`extract_to_store`, raised once the rows done were flushed."""

    def __init__(self, store: Path, done: int, total: int):
        super().__init__(f"{store}: interrupted after {done}/{total} images")
        self.store, self.done, self.total = store, done, total


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA device.")
    return dev


def extract_features(
    models: Mapping[str, nn.Module],
    dataset: Dataset,
    transforms: Mapping[str, tuple[str, Callable]],
    *,
    batch_size: int = defaults.BATCH_SIZE,
    device: str | torch.device = defaults.DEVICE,
    num_workers: int = 0,
    bf16: bool = False,
    keep_on_device: bool | None = None,
    progress: bool = True,
    heads: Mapping[str, nn.Module] | None = None,
) -> Extraction:
    """Runs every model over ``dataset`` in one pass.

    Args:
      models: ``{name: eval-mode model cut at its penultimate layer}``.
      dataset: (PIL image or tensor, label) pairs.
      transforms: ``{name: (preprocessing key, transform)}``; models with the same
        key share one preprocessed batch.
      batch_size, num_workers: DataLoader settings.
      device: "auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
      bf16: bfloat16 autocast on CUDA (features are stored in float32).
      keep_on_device: keep features on the device (default: when they fit in half
        the free device memory); otherwise they are gathered in host memory.
      heads: ``{name: the model's classifier}`` (:func:`~.models.load_model_with_head`)
        for the models whose source logits are wanted: ``head(features)``, in the
        same pass, in :attr:`Extraction.logits`.
    """
    dev = _device(device)
    cuda = dev.type == "cuda"
    n = len(dataset)
    buffers: dict[str, torch.Tensor] = {}
    logit_buffers: dict[str, torch.Tensor] = {}
    labels = np.empty(n, dtype=np.int64)
    bar = _progress(n, progress)
    start, pos = time.perf_counter(), 0

    def gather(into: dict[str, torch.Tensor], name: str, rows: torch.Tensor) -> None:
        if name not in into:
            on_device = keep_on_device
            if on_device is None:
                on_device = _fits(dev, n, rows.shape[1], len(models))
            into[name] = torch.empty(
                (n, rows.shape[1]),
                dtype=torch.float32,
                device=dev if on_device else "cpu",
                pin_memory=cuda and not on_device,
            )
        into[name][pos : pos + len(rows)].copy_(rows, non_blocking=cuda)

    with torch.inference_mode():
        for y, out, logits in _batches(
            models, dataset, transforms, dev, batch_size, num_workers, bf16, heads
        ):
            b = len(y)
            labels[pos : pos + b] = y
            for name, feats in out.items():
                gather(buffers, name, feats)
            for name, rows in logits.items():
                gather(logit_buffers, name, rows)
            pos += b
            bar.update(b)
    if cuda:
        torch.cuda.synchronize(dev)
    bar.close()
    return Extraction(buffers, labels, time.perf_counter() - start, str(dev), logits=logit_buffers)


def _device(device: str | torch.device) -> torch.device:
    return device if isinstance(device, torch.device) else pick_device(str(device))


def _batches(
    models: Mapping[str, nn.Module],
    dataset: Dataset,
    transforms: Mapping[str, tuple[str, Callable]],
    dev: torch.device,
    batch_size: int,
    num_workers: int,
    bf16: bool,
    heads: Mapping[str, nn.Module] | None = None,
) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
    """Yields ``(labels, {name: (b, D) float32 features on dev}, {name: (b, S) float32
    logits on dev})`` per batch, in order; logits of the models in ``heads`` only, each
    its head applied to the features the model has just computed."""
    heads = heads or {}
    cuda = dev.type == "cuda"
    layout = torch.channels_last if cuda else torch.contiguous_format
    keys = {key: t for key, t in transforms.values()}
    loader = DataLoader(
        _MultiTransform(dataset, keys),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=cuda,
        persistent_workers=False,
    )
    for model in models.values():
        model.to(dev, memory_format=layout)
    for head in heads.values():
        head.to(dev)
    for batch, y in loader:
        out, logits = {}, {}
        with torch.inference_mode():
            inputs = {
                key: x.to(dev, non_blocking=cuda, memory_format=layout) for key, x in batch.items()
            }
            for name, model in models.items():
                x = inputs[transforms[name][0]]
                try:
                    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16 and cuda):
                        feats = model(x)
                        if name in heads:
                            logits[name] = heads[name](feats).reshape(len(y), -1).float()
                except RuntimeError as err:
                    if "size" not in str(err).lower():
                        raise
                    raise ValueError(
                        f"model {name!r} cannot take {tuple(x.shape[-2:])} images "
                        f"({str(err).splitlines()[0]}); use a larger --image-size "
                        "(inception_v3 needs at least 75)."
                    ) from None
                out[name] = feats.reshape(len(y), -1).float()
        yield np.asarray(y), out, logits


def _fits(dev: torch.device, n: int, d: int, n_models: int) -> bool:
    if dev.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(dev)
    return 4 * n * d * n_models < free // 2


def _progress(
    total: int, enabled: bool, *, unit: str = "img", desc: str = "extracting", initial: int = 0
):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm comes with the torch extra
        enabled = False
    if not enabled:

        class _Null:
            def update(self, n):
                pass

            def close(self):
                pass

        return _Null()
    return tqdm(
        total=total,
        initial=initial,
        unit=unit,
        unit_scale=unit == "img",
        desc=desc,
        smoothing=0.1,
    )


# ---- feature stores --------------------------------------------------------------------


def _atomic_save(path: Path, array: np.ndarray) -> None:
    with atomic_open(path, "wb") as f:
        np.save(f, array, allow_pickle=False)


def _atomic_json(path: Path, doc: Any) -> None:
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n")


def read_meta(store: Path) -> dict[str, Any]:
    path = store / META_FILE
    if not path.exists():
        return {"models": {}}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: corrupt store metadata ({err}).") from None


def stored_models(
    store: Path,
    specs: Sequence[ModelSpec],
    settings: Mapping[str, Any],
    *,
    with_logits: bool = False,
) -> set[str]:
    """Models of ``specs`` already in ``store`` with these settings and weights (and
    their source logits, ``with_logits``)."""
    entries = read_meta(store).get("models", {})
    return {
        s.name
        for s in specs
        if (store / f"{s.name}.npy").exists()
        and s.name in entries
        and all(
            entries[s.name].get(k) == v
            for k, v in {**settings, "weights": _weights_label(s)}.items()
        )
        and (
            not with_logits
            or (entries[s.name].get("logits") and (store / LOGITS_DIR / f"{s.name}.npy").exists())
        )
    }


def claim_store(store: Path, record: Mapping[str, Any]) -> None:
    """Refuses ``store`` if it holds features of other samples than ``record``'s
    (:func:`ncti_jax.bridges.datasets.sample_record`); records them in an empty store.

    A store written before sample lists were recorded cannot be checked: extending
    it is refused (``ncti score`` still reads it).
    """
    meta = read_meta(store)
    held = meta.get("samples")
    holds = bool(meta.get("models")) or any(
        p.exists() for p in (store / "labels.npy", store / PARTIAL_DIR / PROGRESS_FILE)
    )
    if not holds:
        _atomic_json(store / META_FILE, {**meta, "samples": dict(record)})
    elif held is None:
        raise ValueError(
            f"store {store} was written before stores recorded their samples (no sample "
            "digest in its meta.json), so this run cannot be checked against it; "
            "'ncti score' still reads it, but extract into another --out."
        )
    elif not same_samples(held, record):
        raise ValueError(
            f"store {store} holds samples of {describe_samples(held)}; this run has "
            f"{describe_samples(record)}; use another --out."
        )
    elif held.get("digest") is None or record.get("digest") is None:
        warnings.warn(
            f"store {store}: samples of {describe_samples(record)} cannot be identified "
            "(not an image folder or torchvision dataset); only their count and labels "
            "were checked.",
            UserWarning,
            stacklevel=3,
        )


def extract_to_store(
    specs: Sequence[ModelSpec],
    dataset: Dataset,
    store: str | os.PathLike,
    *,
    dataset_name: str,
    preprocess: str = defaults.PREPROCESS[0],
    image_size: int = defaults.IMAGE_SIZE,
    flush_every: float = 60.0,
    log: Callable[[str], None] | None = None,
    with_logits: bool = False,
    **kwargs: Any,
) -> tuple[list[str], Extraction | None]:
    """Extracts the models of ``specs`` not yet in ``store`` and writes them.

    Returns the names extracted now (the others were already stored) and the
    extraction (None if there was nothing to do). ``kwargs`` go to
    :func:`extract_features`.

    Refuses a store of other samples (:func:`claim_store`) and checks every
    model's weights before extracting. The models being extracted are flushed to
    ``store/.partial/`` every ``flush_every`` seconds and when interrupted (Ctrl-C
    then raises :class:`ExtractionInterrupted`); the same call resumes from the last
    flushed row. A dataset whose samples cannot be identified
    (:func:`ncti_jax.bridges.datasets.sample_ids`) is extracted in one go, without flushes.
    ``log``, when given, is told which models are already stored, before extracting.

    ``with_logits`` also stores each model's source logits, its own classifier
    applied to its features in the same pass, as ``store/logits/<model>.npy``
    (N, S) float32; a model stored without them is extracted again. A model's
    features are never left beside logits of another extraction of it: the old
    logits file is removed before the new features are written.
    """
    store = Path(store)
    check_model_names([s.name for s in specs], f"store {store}")
    store.mkdir(parents=True, exist_ok=True)
    record = sample_record(dataset, dataset_name)
    claim_store(store, record)
    labels = dataset_labels(dataset)
    labels_path = store / "labels.npy"
    if labels_path.exists():
        existing = np.load(labels_path, allow_pickle=False)
        if existing.shape != labels.shape or not np.array_equal(existing, labels):
            raise ValueError(
                f"{labels_path}: holds other samples than this dataset "
                f"({dataset_name!r}, {len(labels)} samples); use another --out."
            )
    settings = {
        "dataset": dataset_name,
        "split": record["split"],
        "preprocess": preprocess,
        "image_size": image_size,
        "n_samples": len(labels),
    }
    done = stored_models(store, specs, settings, with_logits=with_logits)
    todo = [s for s in specs if s.name not in done]
    if done and log is not None:
        log(f"already stored, skipped: {', '.join(s.name for s in specs if s.name in done)}")
    if not todo:
        return [], None
    check_weights(todo)
    heads = None
    if with_logits:
        loaded = {s.name: load_model_with_head(s) for s in todo}
        models = {name: model for name, (model, _) in loaded.items()}
        heads = {name: head for name, (_, head) in loaded.items()}
    else:
        models = {s.name: load_model(s) for s in todo}
    transforms = {s.name: transform_for(s, preprocess, image_size) for s in todo}
    entries = {s.name: {**settings, "arch": s.arch, "weights": _weights_label(s)} for s in todo}
    if with_logits:
        for entry in entries.values():
            entry["logits"] = True
    if record["digest"] is None:
        result = extract_features(models, dataset, transforms, heads=heads, **kwargs)
        if not np.array_equal(result.labels, labels):
            raise RuntimeError("the data loader returned labels out of order; nothing was written.")
    else:
        result = _extract_resumable(
            store,
            models,
            dataset,
            transforms,
            labels,
            record,
            entries,
            flush_every,
            heads=heads,
            **kwargs,
        )
    _atomic_save(labels_path, labels)
    for s in todo:
        # Logits of an earlier extraction of this model go first: a crash at any point
        # leaves the model's logits missing or matching its features, never stale.
        (store / LOGITS_DIR / f"{s.name}.npy").unlink(missing_ok=True)
        _atomic_save(store / f"{s.name}.npy", result.features[s.name].cpu().numpy())
        source = {}
        if with_logits:
            _atomic_save(store / LOGITS_DIR / f"{s.name}.npy", result.logits[s.name].cpu().numpy())
            source = {"source_classes": int(result.logits[s.name].shape[1])}
        meta = read_meta(store)
        meta.setdefault("models", {})[s.name] = {
            **entries[s.name],
            **source,
            "dim": int(result.features[s.name].shape[1]),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        _atomic_json(store / META_FILE, meta)
    shutil.rmtree(store / PARTIAL_DIR, ignore_errors=True)
    return [s.name for s in todo], result


def _extract_resumable(
    store: Path,
    models: Mapping[str, nn.Module],
    dataset: Dataset,
    transforms: Mapping[str, tuple[str, Callable]],
    labels: np.ndarray,
    record: Mapping[str, Any],
    entries: Mapping[str, Any],
    flush_every: float,
    *,
    batch_size: int = 64,
    device: str | torch.device = "auto",
    num_workers: int = 0,
    bf16: bool = False,
    keep_on_device: bool | None = None,  # unused: features are gathered in .partial/ files
    progress: bool = True,
    heads: Mapping[str, nn.Module] | None = None,
) -> Extraction:
    """:func:`extract_features` from the last flushed row, flushing to ``store/.partial/``
    (source logits of the models in ``heads`` to ``store/.partial/logits/``)."""
    partial, n = store / PARTIAL_DIR, len(labels)
    start, arrays = _resume(partial, record, entries, n)
    if not start:
        shutil.rmtree(partial, ignore_errors=True)
    dev = _device(device)
    # Batches not yet flushed: (first row, {file key: rows}), keys as in _partial_keys.
    pending: list[tuple[int, dict[str, torch.Tensor]]] = []
    pos = start

    def flush() -> None:
        _flush(partial, arrays, pending, pos, record, entries)
        pending.clear()

    bar = _progress(n, progress, initial=start)
    began = flushed = time.perf_counter()
    try:
        remaining = Subset(dataset, range(start, n))
        batches = _batches(models, remaining, transforms, dev, batch_size, num_workers, bf16, heads)
        for y, out, logits in batches:
            if not np.array_equal(y, labels[pos : pos + len(y)]):
                raise RuntimeError(f"the data loader returned labels out of order at row {pos}.")
            pending.append((pos, {**out, **{_logits_key(k): v for k, v in logits.items()}}))
            pos += len(y)
            bar.update(len(y))
            if (
                time.perf_counter() - flushed >= flush_every
                or pos - pending[0][0] >= _MAX_PENDING_ROWS
            ):
                flush()
                flushed = time.perf_counter()
        flush()
    except BaseException as err:  # keep what was done: the re-run resumes from it
        flush()
        if isinstance(err, KeyboardInterrupt):
            raise ExtractionInterrupted(store, pos, n) from None
        raise
    finally:
        bar.close()
    features = {name: torch.from_numpy(np.array(arrays[name])) for name in models}
    logits = {name: torch.from_numpy(np.array(arrays[_logits_key(name)])) for name in heads or {}}
    return Extraction(
        features, labels, time.perf_counter() - began, str(dev), start=start, logits=logits
    )


def _logits_key(name: str) -> str:
    """The ``.partial/`` file key of a model's logits: ``logits/<model>`` (model names
    hold no ``/``, :func:`~.models.check_model_names`)."""
    return f"{LOGITS_DIR}/{name}"


def _partial_keys(entries: Mapping[str, Any]) -> list[str]:
    """The ``.partial/<key>.npy`` files of an extraction: each model's features, and the
    logits of the models extracted with them."""
    return [*entries, *(_logits_key(k) for k, e in entries.items() if e.get("logits"))]


def _resume(
    partial: Path, record: Mapping[str, Any], entries: Mapping[str, Any], n: int
) -> tuple[int, dict[str, np.ndarray]]:
    """Rows flushed by an earlier run of the same extraction, and their files (r+)."""
    try:
        progress = json.loads((partial / PROGRESS_FILE).read_text(encoding="utf-8"))
        same = progress["digest"] == record["digest"] and progress["n_samples"] == n
        if not same or any(progress["models"].get(k) != v for k, v in entries.items()):
            return 0, {}
        rows = int(progress["rows"])
        arrays = {k: np.load(partial / f"{k}.npy", mmap_mode="r+") for k in _partial_keys(entries)}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return 0, {}
    if not 0 < rows <= n or any(a.shape[0] != n or a.ndim != 2 for a in arrays.values()):
        return 0, {}
    return rows, arrays


def _flush(
    partial: Path,
    arrays: dict[str, np.ndarray],
    pending: Sequence[tuple[int, Mapping[str, torch.Tensor]]],
    rows: int,
    record: Mapping[str, Any],
    entries: Mapping[str, Any],
) -> None:
    """Writes ``pending`` batches into ``partial/<key>.npy``, then records ``rows`` done.

    The progress record is replaced atomically after the rows reach the files, so a
    run killed at any point resumes from rows that were written.
    """
    partial.mkdir(exist_ok=True)
    for pos, out in pending:
        for name, feats in out.items():
            if name not in arrays:
                (partial / name).parent.mkdir(exist_ok=True)
                arrays[name] = np.lib.format.open_memmap(
                    partial / f"{name}.npy",
                    mode="w+",
                    dtype=np.float32,
                    shape=(record["n_samples"], feats.shape[1]),
                )
            arrays[name][pos : pos + len(feats)] = feats.cpu().numpy()
    for array in arrays.values():
        array.flush()
    _atomic_json(
        partial / PROGRESS_FILE,
        {
            "digest": record["digest"],
            "n_samples": record["n_samples"],
            "rows": rows,
            "models": entries,
        },
    )


def _weights_label(spec: ModelSpec) -> str:
    if spec.checkpoint:
        return f"checkpoint:{spec.checkpoint}"
    return f"random, seed {spec.seed}" if spec.weights is None else str(spec.weights)
