"""Ragged zoo -> one stacked (M, N, D_max) array, and the label bookkeeping.

Zero columns are exact padding: they have zero mean and zero variance, so PCA
never selects them ahead of a real direction, and the kernels mask them out by
the per-model component count.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._validate import Labels


def stack_zoo(
    arrays: Sequence[Any],
    dtype: np.dtype,
    *,
    d_max: int | None = None,
    n_models: int | None = None,
    n: int | None = None,
) -> jax.Array | np.ndarray:
    """Stacks per-model (N, D_m) features into (n_models, N, d_max), zero-padded, in ``dtype``.

    ``d_max`` defaults to the widest of ``arrays``, ``n_models`` to their number:
    models beyond ``arrays`` are all-zero dummies (``n`` gives N when there are no
    arrays at all).

    Device arrays stay on their device; host arrays (memory-mapped files too) are
    copied once into one host buffer, and not at all when nothing needs padding.
    """
    d_max = d_max or max(int(x.shape[1]) for x in arrays)
    n_models = n_models or len(arrays)
    n = int(arrays[0].shape[0]) if arrays else int(n)
    if arrays and all(isinstance(x, jax.Array) for x in arrays):
        padded = [jnp.pad(x.astype(dtype), ((0, 0), (0, d_max - x.shape[1]))) for x in arrays]
        dummies = [jnp.zeros((n, d_max), dtype)] * (n_models - len(arrays))
        return jnp.stack(padded + dummies)
    if n_models == 1 and int(arrays[0].shape[1]) == d_max:  # nothing to pad: no copy
        return np.asarray(arrays[0], dtype)[None]
    out = np.zeros((n_models, n, d_max), dtype=dtype)
    for i, x in enumerate(arrays):
        host = np.asarray(jax.device_get(x)) if isinstance(x, jax.Array) else x
        out[i, :, : host.shape[1]] = host  # one read of each (possibly memory-mapped) file
    return out


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ClassBucket:
    """Classes of similar size, their sample indices padded to the largest of them.

    Attributes:
      index: (G, B) sample indices of each of the bucket's G classes, padded with 0.
      mask: (G, B) which entries of ``index`` are real samples.
    """

    index: jax.Array
    mask: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ClassLayout:
    """Device-side label arrays shared by every model.

    Attributes:
      codes: (N,) int32 class of each sample.
      counts: (C,) samples per class, in the computation dtype.
      buckets: the classes grouped by size (sizes in ``(2**(j-1), 2**j]``), each
        padded to its own largest class: the per-class blocks of all buckets hold
        at most 2 N rows, whatever the class sizes (one head class and a long tail
        of singletons no longer pad every class to the head's size).
    """

    codes: jax.Array
    counts: jax.Array
    buckets: tuple[ClassBucket, ...]


def size_buckets(counts: np.ndarray) -> list[np.ndarray]:
    """Class indices grouped by ``ceil(log2(count))``, smallest classes first."""
    groups = np.ceil(np.log2(np.maximum(counts, 1))).astype(np.int64)
    return [np.flatnonzero(groups == g) for g in np.unique(groups)]


def class_layout(labels: Labels, dtype: np.dtype) -> ClassLayout:
    order = np.argsort(labels.codes, kind="stable")
    counts = labels.counts
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    buckets = []
    for classes in size_buckets(counts):
        b = int(counts[classes].max())
        pos = np.arange(b)[None, :]
        mask = pos < counts[classes, None]
        index = np.where(mask, order[np.minimum(starts[classes, None] + pos, len(order) - 1)], 0)
        buckets.append(ClassBucket(jnp.asarray(index, dtype=jnp.int32), jnp.asarray(mask)))
    return ClassLayout(
        codes=jnp.asarray(labels.codes, dtype=jnp.int32),
        counts=jnp.asarray(counts, dtype=dtype),
        buckets=tuple(buckets),
    )
