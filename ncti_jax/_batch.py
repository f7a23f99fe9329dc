"""The metrics' kernels of one model, compiled over batches of models and devices.

:func:`zoo_metrics` builds one :class:`ncti_jax._stats.ModelStats` per model,
runs every requested metric's kernel on it (statistics they share are traced
once), vmaps that over the batch's model axis and splits the batch over a
device mesh, like NCTI's :func:`ncti_jax._kernel.zoo_components`.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
from jax.sharding import Mesh

from . import _shard, metrics
from ._linalg import Linalg
from ._pad import ClassLayout
from ._stats import ModelStats


def model_metrics(
    x: jax.Array,
    n_cols: jax.Array,
    logits: jax.Array | None,
    n_logits: jax.Array | None,
    layout: ClassLayout,
    *,
    names: tuple[str, ...],
    linalg: Linalg,
) -> dict[str, dict[str, jax.Array]]:
    """``{metric: {field: scalar}}`` for one model's (N, D) features (and (N, S) logits)."""
    stats = ModelStats(x, n_cols, layout, linalg, logits, n_logits)
    return {name: metrics.get(name).kernel(stats) for name in names}


def zoo_metrics(
    x: jax.Array,
    n_cols: jax.Array,
    logits: jax.Array | None,
    n_logits: jax.Array | None,
    layout: ClassLayout,
    *,
    names: tuple[str, ...],
    **static,
) -> dict[str, dict[str, jax.Array]]:
    """:func:`model_metrics` vmapped over the model axis of ``x`` (M, N, D) (and of
    ``logits`` (M, N, S), or None when no metric needs them): ``{metric: {field: (M,)}}``.

    The labels' per-class blocks (``layout.buckets``, whose shapes follow the class
    sizes) reach the compiled call only when a metric reads them
    (``Metric.class_blocks``): the others compile once per (M, N, D, C), whatever the
    labels. ``static``: ``precision``, ``linalg`` and ``mesh`` of :func:`_zoo_metrics`.
    """
    if not any(metrics.get(name).class_blocks for name in names):
        layout = dataclasses.replace(layout, buckets=())
    return _zoo_metrics(x, n_cols, logits, n_logits, layout, names=names, **static)


@functools.partial(jax.jit, static_argnames=("names", "precision", "linalg", "mesh"))
def _zoo_metrics(
    x: jax.Array,
    n_cols: jax.Array,
    logits: jax.Array | None,
    n_logits: jax.Array | None,
    layout: ClassLayout,
    *,
    names: tuple[str, ...],
    precision: str,
    linalg: Linalg,
    mesh: Mesh | None = None,
) -> dict[str, dict[str, jax.Array]]:
    kernel = functools.partial(model_metrics, names=names, linalg=linalg)
    batched = jax.vmap(kernel, in_axes=(0, 0, 0, 0, None))

    def local(*args):
        with jax.default_matmul_precision(precision):
            return batched(*args)

    if mesh is None:
        return local(x, n_cols, logits, n_logits, layout)
    return _shard.over_models(local, mesh, n_replicated=1)(x, n_cols, logits, n_logits, layout)
