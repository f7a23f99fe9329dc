"""Images without torch: an image folder's samples, decoded once, preprocessed in NumPy.

The JAX-native extraction (:mod:`ncti_jax.bridges.jax_extract`) reads its data
through this module, so a TPU VM needs only Pillow and NumPy to go from image
files to arrays. Everything here mirrors the torch path exactly:

- :func:`image_folder` lists the samples in torchvision ``ImageFolder``'s order
  (classes sorted by folder name, files by sorted walk, the same extensions), so
  that both paths see the same samples with the same labels and the same
  sample digest (a feature store records it);
- :func:`per_class_indices` is the draw of ``--samples-per-class`` that
  :func:`ncti_jax.bridges.datasets.subsample_per_class` makes too;
- :func:`paper_preprocess` is torchvision's ``Resize((s, s))`` (Pillow bilinear
  with its antialiasing), ``ToTensor`` and ``Normalize`` in the same float32
  operations, in NHWC: the two paths give the same input to the last bit.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

# torchvision.datasets.folder.IMG_EXTENSIONS (compared in lower case, as there).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class ImageFolder:
    """The samples of a ``<class>/<image>`` folder: paths and labels, in order."""

    root: Path
    classes: tuple[str, ...]
    paths: tuple[str, ...]  # relative to ``root``, with '/' separators
    labels: np.ndarray  # (N,) int64 class indices into ``classes``
    samples_per_class: int | None = None  # how :meth:`subsample` drew them, if it did
    seed: int | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def subsample(self, samples_per_class: int, seed: int = 0) -> ImageFolder:
        """At most ``samples_per_class`` samples of each class (:func:`per_class_indices`)."""
        keep = per_class_indices(self.labels, samples_per_class, seed)
        return dataclasses.replace(
            self,
            paths=tuple(self.paths[i] for i in keep),
            labels=self.labels[keep],
            samples_per_class=samples_per_class,
            seed=seed,
        )

    def record(self, name: str) -> dict:
        """The sample list a feature store records (as
        :func:`ncti_jax.bridges.datasets.sample_record` for the same folder)."""
        return {
            "dataset": name,
            "split": "all images of the folder",
            "samples_per_class": self.samples_per_class,
            "seed": self.seed,
            "n_samples": len(self),
            "identity": "relative paths",
            "digest": sample_digest(self.paths),
        }


def sample_digest(ids: Sequence[str]) -> str:
    """SHA-256 of an ordered list of sample identities: what a feature store records."""
    return hashlib.sha256("\0".join(ids).encode()).hexdigest()


def image_folder(root: str | os.PathLike) -> ImageFolder:
    """Lists a ``<class>/<image>`` folder as torchvision's ``ImageFolder`` does.

    Raises:
      FileNotFoundError: no such folder, no class folder, or a class without images.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist.")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if not classes:
        raise FileNotFoundError(f"image folder {root}: no class folder in it.")
    paths, labels, empty = [], [], []
    for index, name in enumerate(classes):
        found = 0
        for folder, _, files in sorted(os.walk(root / name, followlinks=True)):
            for file in sorted(files):
                if file.lower().endswith(IMAGE_EXTENSIONS):
                    path = os.path.relpath(os.path.join(folder, file), root)
                    paths.append(path.replace(os.sep, "/"))
                    labels.append(index)
                    found += 1
        if not found:
            empty.append(name)
    if empty:
        raise FileNotFoundError(
            f"image folder {root}: no image in the class folder(s) {', '.join(empty)} "
            f"(extensions {', '.join(IMAGE_EXTENSIONS)})."
        )
    return ImageFolder(root, tuple(classes), tuple(paths), np.asarray(labels, dtype=np.int64))


def per_class_indices(labels: np.ndarray, samples_per_class: int, seed: int = 0) -> list[int]:
    """At most ``samples_per_class`` indices of each class, drawn with ``seed``, sorted."""
    if samples_per_class < 1:
        raise ValueError(f"samples_per_class must be >= 1; got {samples_per_class}.")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        keep.extend(rng.choice(idx, size=min(samples_per_class, idx.size), replace=False).tolist())
    return sorted(keep)


def decode(path: str | os.PathLike) -> Image.Image:
    """One image file, decoded to RGB (the decode every preprocessing shares).

    Raises:
      ValueError: a file Pillow cannot read, named.
    """
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, Image.DecompressionBombError) as err:
        raise ValueError(f"{path}: not a readable image ({err}).") from None


def paper_preprocess(
    image: Image.Image,
    size: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> np.ndarray:
    """The paper's preprocessing of one decoded image: (size, size, 3) float32, NHWC.

    The same operations as ``Resize((size, size))``, ``ToTensor()`` and
    ``Normalize(mean, std)`` on a PIL image: Pillow's bilinear resize, division by
    255 and ``(x - mean) / std`` in float32.
    """
    resized = image.resize((size, size), Image.BILINEAR)
    x = np.asarray(resized, dtype=np.float32) / np.float32(255)
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
