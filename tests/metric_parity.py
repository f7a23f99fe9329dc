"""What every metric's parity tests share: run kernels on a ragged zoo, compare with the reference.

``kernel_values`` runs :func:`ncti_jax._batch.zoo_metrics` on a ``{model: (N, D_m)}`` zoo
zero-padded to its widest model (so every call also tests padding invariance: the
reference always sees the unpadded features), with the CPU's linear algebra.
"""

from __future__ import annotations

import itertools

import jax.numpy as jnp
import numpy as np

from ncti_jax import _batch, metrics
from ncti_jax._linalg import Linalg
from ncti_jax._pad import class_layout, stack_zoo
from ncti_jax._validate import check_labels

# Models per kernel call in these tests (the zoo's own, repeated): one compile per shape.
MODELS_PER_CALL = 6


def kernel_values(
    names,
    feats: dict[str, np.ndarray],
    y,
    *,
    dtype=np.float64,
    logits: dict[str, np.ndarray] | None = None,
    pad: int = 0,
    field: str = "value",
) -> dict[str, np.ndarray]:
    """``{metric: (M,) values}`` of ``names`` from the batched kernels (``pad`` extra
    zero columns beyond the widest model)."""
    names = (names,) if isinstance(names, str) else tuple(names)
    lab = check_labels(y)
    # Repeat the zoo's models up to MODELS_PER_CALL (results of the copies dropped), so that
    # zoos of the same N, D and C share one compiled call whatever their number of models.
    order = [m for _, m in zip(range(max(MODELS_PER_CALL, len(feats))), itertools.cycle(feats))]
    arrays = [feats[m] for m in order]
    d_max = max(a.shape[1] for a in arrays) + pad
    x = stack_zoo(arrays, np.dtype(dtype), d_max=d_max)
    cols = np.array([a.shape[1] for a in arrays], np.int32)
    lg = n_lg = None
    if logits is not None:
        s_max = max(logits[m].shape[1] for m in feats) + pad
        lg = np.zeros((len(arrays), lab.n_samples, s_max), dtype)
        for j, m in enumerate(order):
            lg[j, :, : logits[m].shape[1]] = logits[m]
        n_lg = np.array([logits[m].shape[1] for m in order], np.int32)
    out = _batch.zoo_metrics(
        jnp.asarray(x),
        jnp.asarray(cols),
        None if lg is None else jnp.asarray(lg),
        None if n_lg is None else jnp.asarray(n_lg),
        class_layout(lab, np.dtype(dtype)),
        names=names,
        precision="highest",
        linalg=Linalg.for_platform("cpu"),
    )
    return {name: np.asarray(out[name][field], np.float64)[: len(feats)] for name in names}


def reference_values(name: str, feats, y, logits=None) -> np.ndarray:
    ref = metrics.get(name).reference
    return np.array(
        [
            ref(np.asarray(x, np.float64), y, None if logits is None else logits[m])
            for m, x in feats.items()
        ]
    )


def rel_err(got: np.ndarray, want: np.ndarray) -> float:
    """Largest ``|got - want| / max(|want|, 1e-12)`` over the models."""
    return float(np.max(np.abs(got - want) / np.maximum(np.abs(want), 1e-12)))
