"""Synthetic zoos that look like penultimate-layer features.

Non-negative (post-ReLU), class-clustered, with a decaying within-class spectrum
(so the top-k principal subspace is well separated from the rest) and a
different degree of collapse per model.
"""

from __future__ import annotations

import numpy as np


def labels(rng: np.random.Generator, n: int, n_classes: int) -> np.ndarray:
    """Labels with every class present, in random order."""
    y = np.concatenate([np.arange(n_classes), rng.integers(0, n_classes, n - n_classes)])
    return rng.permutation(y)


def model_features(
    rng: np.random.Generator, y: np.ndarray, dim: int, collapse: float, *, latent: int = 96
) -> np.ndarray:
    """(N, dim) float32 features; larger ``collapse`` = classes further apart."""
    n, n_classes = y.shape[0], int(y.max()) + 1
    centres = rng.gamma(1.5, 1.0, size=(n_classes, latent))
    scales = 1.0 / np.sqrt(np.arange(1, latent + 1))  # decaying within-class spectrum
    codes = collapse * centres[y] + rng.normal(size=(n, latent)) * scales
    mixing = np.abs(rng.normal(size=(latent, dim))) / np.sqrt(latent)
    x = codes @ mixing + 0.05 * rng.normal(size=(n, dim))
    return np.maximum(x, 0.0).astype(np.float32)


def zoo(
    rng: np.random.Generator,
    *,
    n: int,
    n_classes: int,
    dims: tuple[int, ...],
    collapse: tuple[float, ...] | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``({name: features}, labels)`` with one model per entry of ``dims``."""
    y = labels(rng, n, n_classes)
    if collapse is None:
        collapse = tuple(np.geomspace(0.01, 0.25, len(dims)))
    feats = {
        f"model_{i}_d{d}": model_features(rng, y, d, c)
        for i, (d, c) in enumerate(zip(dims, collapse, strict=True))
    }
    return feats, y
