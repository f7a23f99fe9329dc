"""One pass over the data, every batch fed to every model; features to JAX or a store.

Images are decoded once per sample; each distinct preprocessing (the paper's
224 x 224 for every model by default, or each weights' own transforms with
``preprocess="native"``) is applied to the decoded image once, and every model
that shares it sees the same batch. On CUDA: channels_last, pinned memory,
non-blocking copies and optional bf16 autocast. Features stay on the device
when they fit and are handed to JAX through DLPack (:mod:`bridges.dlpack`).

Feature stores (what ``ncti score`` reads): ``<model>.npy`` (N, D) float32 +
``labels.npy`` + ``meta.json``; every file is written atomically, and a re-run
skips the models already stored with the same settings.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ncti_jax.io import atomic_open, atomic_write_text

from .datasets import dataset_labels, split_of
from .models import ModelSpec, load_model, native_transform, paper_transform

META_FILE = "meta.json"


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

    @property
    def images_per_second(self) -> float:
        return len(self.labels) / self.seconds if self.seconds else float("nan")


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA device.")
    return dev


def transform_for(spec: ModelSpec, preprocess: str, image_size: int):
    if preprocess == "paper":
        return "paper", paper_transform(image_size)
    if preprocess == "native":
        return f"native:{spec.arch}:{spec.weights}", native_transform(spec)
    raise ValueError(f"preprocess must be 'paper' or 'native'; got {preprocess!r}.")


def extract_features(
    models: Mapping[str, nn.Module],
    dataset: Dataset,
    transforms: Mapping[str, tuple[str, Callable]],
    *,
    batch_size: int = 64,
    device: str | torch.device = "auto",
    num_workers: int = 0,
    bf16: bool = False,
    keep_on_device: bool | None = None,
    progress: bool = True,
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
    """
    dev = pick_device(str(device)) if not isinstance(device, torch.device) else device
    cuda = dev.type == "cuda"
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
        model.to(dev, memory_format=torch.channels_last if cuda else torch.contiguous_format)
    n = len(dataset)
    buffers: dict[str, torch.Tensor] = {}
    labels = np.empty(n, dtype=np.int64)
    bar = _progress(n, progress)
    start, pos = time.perf_counter(), 0
    with torch.inference_mode():
        for batch, y in loader:
            b = len(y)
            labels[pos : pos + b] = np.asarray(y)
            inputs = {
                key: x.to(
                    dev,
                    non_blocking=cuda,
                    memory_format=torch.channels_last if cuda else torch.contiguous_format,
                )
                for key, x in batch.items()
            }
            for name, model in models.items():
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16 and cuda):
                    out = model(inputs[transforms[name][0]])
                out = out.reshape(b, -1).float()
                if name not in buffers:
                    on_device = keep_on_device
                    if on_device is None:
                        on_device = _fits(dev, n, out.shape[1], len(models))
                    buffers[name] = torch.empty(
                        (n, out.shape[1]),
                        dtype=torch.float32,
                        device=dev if on_device else "cpu",
                        pin_memory=cuda and not on_device,
                    )
                buffers[name][pos : pos + b].copy_(out, non_blocking=cuda)
            pos += b
            bar.update(b)
    if cuda:
        torch.cuda.synchronize(dev)
    bar.close()
    return Extraction(buffers, labels, time.perf_counter() - start, str(dev))


def _fits(dev: torch.device, n: int, d: int, n_models: int) -> bool:
    if dev.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(dev)
    return 4 * n * d * n_models < free // 2


def _progress(total: int, enabled: bool, *, unit: str = "img", desc: str = "extracting"):
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
    return tqdm(total=total, unit=unit, unit_scale=unit == "img", desc=desc, smoothing=0.1)


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


def stored_models(store: Path, specs: Sequence[ModelSpec], settings: Mapping[str, Any]) -> set[str]:
    """Models of ``specs`` already in ``store`` with these settings and weights."""
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
    }


def extract_to_store(
    specs: Sequence[ModelSpec],
    dataset: Dataset,
    store: str | os.PathLike,
    *,
    dataset_name: str,
    preprocess: str = "paper",
    image_size: int = 224,
    **kwargs: Any,
) -> tuple[list[str], Extraction | None]:
    """Extracts the models of ``specs`` not yet in ``store`` and writes them.

    Returns the names extracted now (the others were already stored) and the
    extraction (None if there was nothing to do). ``kwargs`` go to
    :func:`extract_features`.
    """
    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
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
        "split": split_of(dataset_name),
        "preprocess": preprocess,
        "image_size": image_size,
        "n_samples": len(labels),
    }
    done = stored_models(store, specs, settings)
    todo = [s for s in specs if s.name not in done]
    if not todo:
        return [], None
    models = {s.name: load_model(s) for s in todo}
    transforms = {s.name: transform_for(s, preprocess, image_size) for s in todo}
    result = extract_features(models, dataset, transforms, **kwargs)
    if not np.array_equal(result.labels, labels):
        raise RuntimeError("the data loader returned labels out of order; nothing was written.")
    _atomic_save(labels_path, labels)
    for s in todo:
        _atomic_save(store / f"{s.name}.npy", result.features[s.name].cpu().numpy())
        meta = read_meta(store)
        meta.setdefault("models", {})[s.name] = {
            **settings,
            "arch": s.arch,
            "weights": _weights_label(s),
            "dim": int(result.features[s.name].shape[1]),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        _atomic_json(store / META_FILE, meta)
    return [s.name for s in todo], result


def _weights_label(spec: ModelSpec) -> str:
    return f"checkpoint:{spec.checkpoint}" if spec.checkpoint else str(spec.weights)
