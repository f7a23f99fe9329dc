"""Target datasets: the paper's torchvision datasets by name, or any ImageFolder.

Images are returned undecoded-to-tensor (PIL) so that one decode can feed every
model's preprocessing (see :mod:`ncti_jax.bridges.extract`). Nothing is downloaded unless
``download=True`` is asked for.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numpy as np
import torchvision
from torch.utils.data import Dataset, Subset

from .images import per_class_indices, sample_digest


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """How to build one of the paper's target datasets with torchvision."""

    builder: Callable[..., Any]
    split_kwargs: dict[str, Any]
    manual: str = ""  # non-empty: torchvision cannot download it; how to get it


def _voc2007(root, download, **kw):
    return torchvision.datasets.VOCDetection(
        root, year="2007", image_set="trainval", download=download
    )


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(torchvision.datasets.CIFAR10, {"train": True}),
    "cifar100": DatasetInfo(torchvision.datasets.CIFAR100, {"train": True}),
    "aircraft": DatasetInfo(torchvision.datasets.FGVCAircraft, {"split": "trainval"}),
    "caltech101": DatasetInfo(
        torchvision.datasets.Caltech101,
        {},
        manual="its Google Drive download often fails; place 101_ObjectCategories.tar.gz and "
        "Annotations.tar under ROOT/caltech101/",
    ),
    "cars": DatasetInfo(
        torchvision.datasets.StanfordCars,
        {"split": "train"},
        manual="the original download is gone; place the Stanford Cars devkit, cars_train/ and "
        "cars_train_annos.mat under ROOT/stanford_cars/",
    ),
    "dtd": DatasetInfo(torchvision.datasets.DTD, {"split": "train"}),
    "flowers": DatasetInfo(torchvision.datasets.Flowers102, {"split": "train"}),
    "food": DatasetInfo(torchvision.datasets.Food101, {"split": "train"}),
    "pets": DatasetInfo(torchvision.datasets.OxfordIIITPet, {"split": "trainval"}),
    "sun397": DatasetInfo(torchvision.datasets.SUN397, {}),
    "voc2007": DatasetInfo(
        _voc2007,
        {},
        manual="multi-label; each image is labelled with the class of its largest object",
    ),
}


class VOCLargestObject(Dataset):
    """VOC detection images, each labelled with the class of its largest object."""

    def __init__(self, voc):
        self.voc = voc
        names = sorted({o["name"] for i in range(len(voc)) for o in _objects(voc, i)})
        self.classes = names
        self.targets = [names.index(_largest(voc, i)) for i in range(len(voc))]

    def __len__(self):
        return len(self.voc)

    def __getitem__(self, i):
        return self.voc[i][0], self.targets[i]


def _objects(voc, i):
    objects = voc.parse_voc_xml(ElementTree.parse(voc.annotations[i]).getroot())
    return objects["annotation"]["object"]


def _largest(voc, i):
    def area(o):
        b = o["bndbox"]
        return (int(b["xmax"]) - int(b["xmin"])) * (int(b["ymax"]) - int(b["ymin"]))

    return max(_objects(voc, i), key=area)["name"]


def load_dataset(name: str, root: str | Path | None = None, *, download: bool = False) -> Dataset:
    """A dataset of (PIL image, int label) pairs.

    Args:
      name: one of :data:`DATASETS`, or ``"imagefolder"`` (``root`` is then the folder
        of ``<class>/<image>`` files), or a path to such a folder.
      root: where torchvision finds (or, with ``download``, puts) the data.
      download: let torchvision download the data (needs network access).
    """
    if name == "imagefolder" or (name not in DATASETS and Path(name).is_dir()):
        folder = Path(root if name == "imagefolder" else name)
        if not folder.is_dir():
            raise FileNotFoundError(f"image folder {folder} does not exist.")
        return torchvision.datasets.ImageFolder(str(folder))
    if name not in DATASETS:
        raise ValueError(
            f"unknown dataset {name!r}; known: {sorted(DATASETS)}, 'imagefolder', "
            "or the path of an ImageFolder directory."
        )
    if root is None:
        raise ValueError(f"dataset {name!r} needs --data-root (where torchvision keeps it).")
    info = DATASETS[name]
    root = Path(root)
    try:
        ds = info.builder(str(root), download=download, **info.split_kwargs)
    except RuntimeError as err:
        hint = (
            f" Note: {info.manual}."
            if info.manual
            else " Pass --download on a machine with network access, or copy the data there."
        )
        raise FileNotFoundError(f"dataset {name!r} not found under {root} ({err}).{hint}") from None
    return VOCLargestObject(ds) if name == "voc2007" else ds


def split_of(name: str) -> str:
    """The split a dataset name reads (what the feature store records)."""
    if name not in DATASETS:
        return "all images of the folder"
    kwargs = DATASETS[name].split_kwargs
    if name == "voc2007":
        return "trainval"
    return str(kwargs.get("split", "train" if kwargs.get("train") else "all"))


def dataset_labels(ds: Dataset) -> np.ndarray:
    """Labels of every sample, without decoding images where the dataset allows it."""
    base, indices = (ds.dataset, ds.indices) if isinstance(ds, Subset) else (ds, None)
    for attr in ("targets", "_labels", "labels", "y", "_samples"):
        values = getattr(base, attr, None)
        if values is not None:
            if attr == "_samples":
                values = [s[1] for s in values]
            labels = np.asarray(values).reshape(-1)
            break
    else:
        labels = np.asarray([base[i][1] for i in range(len(base))])
    return labels if indices is None else labels[np.asarray(indices)]


class PerClassSubset(Subset):
    """A :class:`Subset` that remembers how it was drawn (feature stores record it)."""

    def __init__(self, dataset: Dataset, indices: list[int], samples_per_class: int, seed: int):
        super().__init__(dataset, indices)
        self.samples_per_class = samples_per_class
        self.seed = seed


def subsample_per_class(ds: Dataset, samples_per_class: int, seed: int = 0) -> PerClassSubset:
    """At most ``samples_per_class`` samples of each class, drawn with ``seed``, in index order."""
    keep = per_class_indices(dataset_labels(ds), samples_per_class, seed)
    return PerClassSubset(ds, keep, samples_per_class, seed)


def sample_ids(ds: Dataset) -> tuple[str, list[str]] | None:
    """What identifies each sample, in order: ``(kind, ids)``, or None if unknown.

    An image folder's samples are their paths relative to the folder; a
    torchvision dataset's, their indices; a :class:`Subset`'s, its base's at its
    indices. Other datasets (arbitrary wrappers) cannot be identified.
    """
    if isinstance(ds, Subset):
        base = sample_ids(ds.dataset)
        return None if base is None else (base[0], [base[1][i] for i in ds.indices])
    if isinstance(ds, torchvision.datasets.DatasetFolder):
        return "relative paths", [
            os.path.relpath(path, ds.root).replace(os.sep, "/") for path, _ in ds.samples
        ]
    if isinstance(ds, (torchvision.datasets.VisionDataset, VOCLargestObject)):
        return "indices", [str(i) for i in range(len(ds))]
    return None


def sample_record(ds: Dataset, name: str) -> dict[str, Any]:
    """The sample list a feature store records: dataset, split, subsampling, digest.

    ``digest`` is the SHA-256 of the ordered sample identities (:func:`sample_ids`),
    None for a dataset that cannot be identified.
    """
    ids = sample_ids(ds)
    kind, digest = None, None
    if ids is not None:
        kind, digest = ids[0], sample_digest(ids[1])
    return {
        "dataset": name,
        "split": split_of(name),
        "samples_per_class": getattr(ds, "samples_per_class", None),
        "seed": getattr(ds, "seed", None),
        "n_samples": len(ds),
        "identity": kind,
        "digest": digest,
    }


def same_samples(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two :func:`sample_record` describe the same samples in the same order.

    A record without digest (an unidentified dataset) is compared on the rest.
    """
    keys = ["dataset", "split", "n_samples"]
    if a.get("digest") is not None and b.get("digest") is not None:
        keys += ["identity", "digest"]
    return all(a.get(k) == b.get(k) for k in keys)


def describe_samples(record: dict[str, Any]) -> str:
    """``<cifar10 (train), seed 0, 10 per class, 100 samples, digest 1f2e3d4c5b6a>``."""
    if record.get("samples_per_class") is None:
        drawn = "all samples"
    else:
        drawn = f"seed {record.get('seed')}, {record['samples_per_class']} per class"
    digest = record.get("digest")
    return (
        f"<{record.get('dataset')} ({record.get('split')}), {drawn}, "
        f"{record.get('n_samples')} samples, digest {digest[:12] if digest else 'unknown'}>"
    )
