"""PARC, batched (reference: :mod:`ncti_jax.reference.parc`).

``PARC = 100 * Pearson(ranks of F[i<j], [y_i != y_j])`` with ``F = 1 - corr`` of the
rows of the standardised exact PCA scores ``Z`` (``k = min(32, N - 1, D)``
directions, ``D`` the model's TRUE width, less directions of rounding-level
variance).

Static shapes: ``Z`` has ``K = min(32, N - 1, padded D)`` columns and a mask of the
kept ones (``j < min(32, N - 1, n_cols)`` and a variance above the reference's
rounding floor); masked columns are zero and excluded from the row means. The PCA
is the direct SVD of :attr:`ModelStats.unit_centred` (the centred features over a
power of two, shared with other metrics; the reference takes the eigendecomposition
of the formed scatter when ``N >= D``, an SVD otherwise: the same directions, and
the SVD resolves small ones to ``eps * s_max`` rather than ``eps * s_max**2``), with
scikit-learn's signs (largest |loading| of each direction positive; the row
correlations of the standardised ``Z`` depend on them).

The ranks (ties averaged, as ``scipy.stats.rankdata``) come from one sort of the
N x N dissimilarities with the lower triangle and diagonal set to ``+inf`` (they
sort past the ``M = N (N - 1) / 2`` real pairs, so no (M,) index constants), the
"different label" indicator carried along; tie groups by a cumulative max/min of
their boundaries. Cost O(N^2 log N) time, O(N^2) memory per model.

Subsampling (the reference draws a seeded, class-stratified sample when
N > :data:`ncti_jax.reference.parc.MAX_SAMPLES`): the sample depends on the labels
alone, so it is drawn once for the whole zoo on the host by :func:`sample_rows`,
and the driver runs this kernel on those rows of every model (features and
labels). The kernel itself refuses N above the cap at trace time rather than
score a different sample than the reference.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..reference import parc as ref
from ..reference.ncti import remap_labels
from . import Metric


def sample_rows(labels, max_samples: int = ref.MAX_SAMPLES, seed: int = 0) -> np.ndarray | None:
    """The rows PARC scores: None when all of them (N <= ``max_samples``), else the
    reference's seeded, class-stratified sample (sorted indices), the same for every model.

    The driver runs the ``"parc"`` kernel on ``features[rows]`` and ``labels[rows]``.
    """
    y, n_classes = remap_labels(labels)
    if y.shape[0] <= max_samples:
        return None
    return ref.stratified_subsample(y, n_classes, max_samples, seed)


def _principal_scores(stats) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(z (N, K), variances (K,), axes (D, K))``: exact PCA scores of
    :attr:`ModelStats.unit_centred`, variances (in its units) decreasing, before the
    sign convention; from the shared direct SVD (:attr:`ModelStats.unit_svd`)."""
    k = min(ref.N_DIMS, stats.n - 1, stats.width)
    s, v = stats.unit_svd
    axes = v[:, :k]
    return stats.unit_centred @ axes, s[:k] ** 2 / (stats.n - 1), axes


def _kept(stats, variances: jax.Array) -> jax.Array:
    """(K,) bool: the directions the reference keeps."""
    k_true = jnp.minimum(min(ref.N_DIMS, stats.n - 1), stats.n_cols)
    eps = float(jnp.finfo(stats.dtype).eps)
    if stats.dtype == jnp.float64:
        # The reference's floor, in scaled units: 16 eps max(top variance, max mean^2).
        mean2 = jnp.max((stats.mean / stats.scale) ** 2)
        floor = 16 * eps * jnp.maximum(variances[0], mean2)
    else:
        # Directions with less than ~eps of the top variance carry mostly the rounding
        # of float32 rows; the reference's mean term (a float64 rounding level) would
        # drop real directions of offset features at float32's eps.
        floor = 16 * eps * variances[0]
    return (jnp.arange(variances.shape[0]) < k_true) & (variances > floor)


def _row_directions(z: jax.Array, keep: jax.Array) -> jax.Array:
    """(N, K) rows of the standardised ``z`` centred and normalised over the kept columns
    (zero elsewhere): their inner products are the row correlations. NaN rows where the
    reference divides 0 by 0."""
    zc = z - jnp.mean(z, axis=0)
    std = jnp.sqrt(jnp.mean(zc**2, axis=0))
    zs = jnp.where(keep, zc / jnp.where(std > 0, std, 1.0), 0.0)
    rows = zs - jnp.sum(zs, axis=1, keepdims=True) / jnp.sum(keep)
    rows = jnp.where(keep, rows, 0.0)
    norms = jnp.linalg.norm(rows, axis=1, keepdims=True)
    # Explicit NaN (XLA:CPU's batched matmuls skip zero operands: a NaN row need not
    # reach every product by itself).
    return jnp.where(norms > 0, rows / jnp.where(norms > 0, norms, 1.0), jnp.nan)


def rank_correlation(f: jax.Array, codes: jax.Array) -> jax.Array:
    """Pearson correlation of the ranks of ``f[i<j]`` (ties averaged) with ``codes[i] !=
    codes[j]``; NaN when either side is constant or ``f`` has a NaN pair."""
    n = f.shape[0]
    m = n * (n - 1) // 2
    row, col = jnp.arange(n)[:, None], jnp.arange(n)[None, :]
    upper = row < col
    different = codes[:, None] != codes[None, :]
    key = jnp.where(upper, f, jnp.inf).reshape(-1)
    key, diff = jax.lax.sort((key, different.reshape(-1)), num_keys=1)
    idx = jnp.arange(n * n, dtype=jnp.int32)
    # Tie groups of the sorted keys: the first and last position of each element's group.
    starts = jnp.concatenate([jnp.array([True]), key[1:] != key[:-1]])
    ends = jnp.concatenate([key[1:] != key[:-1], jnp.array([True])])
    first = jax.lax.cummax(jnp.where(starts, idx, 0))
    last = jax.lax.cummin(jnp.where(ends, idx, n * n), reverse=True)
    # Average 1-based rank (first + last) / 2 + 1, less the mean rank (M + 1) / 2, times 2:
    # an exact integer whatever the dtype.
    valid = idx < m
    centred2 = jnp.where(valid, first + last + 1 - m, 0).astype(f.dtype)
    b = jnp.where(valid, diff, False).astype(f.dtype)
    # Sums of N x N terms: rows first, then the N row sums (float32 stays accurate).
    total = lambda v: jnp.sum(jnp.sum(v.reshape(n, n), axis=1))  # noqa: E731
    m1 = total(b)
    cov = total(centred2 * b)  # the centred ranks sum to zero: no mean of b needed
    var_r = total(centred2**2)
    var_b = m1 * (1.0 - m1 / m)
    denom = jnp.sqrt(var_r) * jnp.sqrt(var_b)
    corr = jnp.where(denom > 0, cov / jnp.where(denom > 0, denom, 1.0), jnp.nan)
    return jnp.where(jnp.any(jnp.isnan(f) & upper), jnp.nan, corr)


def parc(stats) -> dict:
    if stats.n > ref.MAX_SAMPLES:  # static
        raise ValueError(
            f"parc: N = {stats.n} > {ref.MAX_SAMPLES} samples; run it on the rows of "
            "ncti_jax.metrics.parc.sample_rows(labels), as the reference subsamples."
        )
    z, variances, axes = _principal_scores(stats)
    keep = _kept(stats, variances)
    # scikit-learn's signs: the largest |loading| of each direction positive.
    top = jnp.argmax(jnp.abs(axes), axis=0)
    z = z * jnp.sign(jnp.take_along_axis(axes, top[None, :], axis=0))
    rows = _row_directions(z, keep)
    f = 1.0 - jnp.clip(rows @ rows.T, -1.0, 1.0)
    value = 100.0 * rank_correlation(f, stats.codes)
    value = jnp.where(jnp.any(jnp.isnan(rows)), jnp.nan, value)
    return {"value": value, "n_components": jnp.sum(keep).astype(stats.dtype)}


def _ref_parc(features, labels, logits=None) -> float:
    return ref.parc(features, labels)


METRICS = (
    Metric(
        "parc",
        parc,
        _ref_parc,
        fields=("value", "n_components"),
        summary="PARC (Bolya et al. 2021): Spearman of feature vs label pair dissimilarities",
        sample=sample_rows,
        # The N x N dissimilarities, their sort and ranks: 17.5 N^2 bytes measured in float32.
        memory=lambda n, itemsize: 6 * itemsize * n * n,
    ),
)
