"""H-score and the Ledoit-Wolf shrinkage H-score, batched (reference: :mod:`ncti_jax.reference.hscore`).

Both come from the eigendecomposition of the total scatter ``S_t = V diag(lam) V^T``
(:attr:`ncti_jax._stats.ModelStats.scatter_eigh`) and the between-class rows
``B`` (``S_b = B^T B``): with ``q_i = ||B v_i||^2 / lam_i``,

    H   = sum_{lam_i > rcond lam_0} q_i,
    H_a = (1 - a) / (N - 1) sum_i lam_i q_i / ((1 - a) lam_i / N + a mu),

``mu = tr(S_t) / (N D)`` with the model's true ``D`` and ``a`` the Ledoit-Wolf
shrinkage. The reference takes the SVD of the centred features instead; in
float32 the eigenvalues of a formed scatter are accurate to ``eps * lam_0``, so
directions below that are dropped here (``RCOND32``) where the reference keeps
them down to ``1e-15``.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ..reference import hscore as ref
from . import Metric

# Float32 eigenvalues of a formed scatter are rounding below ~eps * lam_0: drop them.
RCOND32 = 64 * float(np.finfo(np.float32).eps)


def _cutoff(stats) -> float:
    return ref.RCOND if stats.dtype == jnp.float64 else RCOND32


def _projections(stats) -> tuple:
    """(eigenvalues, ``||B v_i||^2``) of the total scatter."""
    lam, v = stats.scatter_eigh
    return lam, jnp.sum((stats.between @ v) ** 2, axis=0)


def h_score(stats) -> dict:
    lam, bv = _projections(stats)
    keep = lam > _cutoff(stats) * lam[0]
    return {"value": jnp.sum(jnp.where(keep, bv / jnp.where(keep, lam, 1.0), 0.0))}


def ledoit_wolf(stats) -> jnp.ndarray:
    """Ledoit-Wolf shrinkage of the ML covariance ``S_t / N``, with the true width."""
    n, d = stats.n, stats.n_cols.astype(stats.dtype)
    eig = stats.scatter_eigh[0] / n
    mu = jnp.sum(eig) / d
    frob2 = jnp.sum(eig**2)
    d2 = (frob2 - d * mu**2) / d
    row4 = jnp.sum(jnp.sum(stats.centred**2, axis=1) ** 2) / n
    b2 = jnp.minimum((row4 - frob2) / (n * d), d2)
    return jnp.where(b2 == 0, 0.0, b2 / jnp.where(d2 == 0, 1.0, d2))


def shrinkage_h_score(stats) -> dict:
    lam, bv = _projections(stats)
    n, d = stats.n, stats.n_cols.astype(stats.dtype)
    a = ledoit_wolf(stats)
    mu = jnp.sum(lam) / (n * d)
    denom = (1.0 - a) * lam / n + a * mu
    top = jnp.maximum(denom[0], a * mu)
    keep = (denom > _cutoff(stats) * top) & (lam > 0)
    q = bv / jnp.where(lam > 0, lam, 1.0)
    terms = jnp.where(keep, lam * q / jnp.where(keep, denom, 1.0), 0.0)
    return {"value": (1.0 - a) / (n - 1) * jnp.sum(terms), "shrinkage": a}


def _ref_h(features, labels, logits=None) -> float:
    return ref.h_score(features, labels)


def _ref_shrunk(features, labels, logits=None) -> float:
    return ref.shrinkage_h_score(features, labels)


METRICS = (
    Metric(
        "hscore",
        h_score,
        _ref_h,
        summary="H-score (Bao et al. 2019): tr(pinv(cov f) cov E[f|y])",
    ),
    Metric(
        "hscore_shrinkage",
        shrinkage_h_score,
        _ref_shrunk,
        fields=("value", "shrinkage"),
        summary="H-score with Ledoit-Wolf shrinkage (Ibrahim et al. 2021)",
    ),
)
