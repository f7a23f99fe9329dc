"""GBC, batched (reference: :mod:`ncti_jax.reference.gbc`, its defaults).

The reference's defaults are the authors' experiment pipeline: an exact PCA of the
features to ``k' = min(64, N - 1, D)`` directions (less any at the rounding level),
then one spherical Gaussian per class, with the original repository's single
log-determinant term (``variant="repository"``)::

    v_c = mean_k max(var_k(z | c), 1e-4),   s = (v_c + v_c') / 2,
    D_B = |mu_c - mu_c'|^2 / (8 s) + 1/2 [log s - (log v_c + log v_c') / 2],
    GBC = - sum_{c != c'} exp(-D_B).

The true width enters only through ``k'`` (``n_cols``): padded columns are zero-variance
directions that the PCA drops, and the mean over directions runs over the kept ones.
The diagonal Gaussians and the exact spherical distance (reference options) are not
batched.

Route: the PCA is the direct SVD :attr:`ncti_jax._stats.ModelStats.unit_svd`, shared with
TransRate (a formed float32 scatter resolves variances only to ``eps * variance_0``: with
massive activations it could not tell directions of variance 0.03 from null ones and
dropped five of 48 that the reference keeps). The directions kept are those the reference
keeps, ``variance > 16 eps max(variance_0, max mean^2)`` with float64's ``eps`` (in float32
also above ``64 eps32^2 variance_0``, where its SVD leaves null directions).
Directions beyond ``k'`` or below that floor are zeroed and excluded from the means over
directions. The features are divided by a power of two first; the absolute variance floor
``1e-4`` is carried into those units (and clamped into the dtype's range: floored variances
then tie, as they do in the reference). Distances between class means come from their (C, C) Gram (the means are
offsets from the global mean, so ``|mu_c|^2 + |mu_c'|^2 - 2 mu_c.mu_c'`` loses only
``eps |mu|^2 / (8 s)`` in ``D_B``), not a (C, C, k) stack of differences.

Besides ``value``, the kernel returns ``log_overlap = log(sum_{c != c'} exp(-D_B))``
(``value = -exp(log_overlap)``): GBC of well separated classes underflows (it reaches
-1e-200 in float64 and rounds to -0.0 in float32 from about -1e-45), its log does not.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..reference import gbc as ref
from . import Metric

PCA_COMPONENTS = 64  # the pipeline's gbc.pca_reduction
VARIANCE_FLOOR = ref.VARIANCE_FLOOR


def principal_projection(stats, n_components: int) -> tuple[jax.Array, jax.Array]:
    """The scaled features on their top principal directions, as the reference's PCA keeps them.

    Returns:
      z: (N, k) projection of :attr:`~ncti_jax._stats.ModelStats.unit_centred`, ``k =
        min(n_components, N - 1, D)`` static; columns not kept are zero.
      keep: (k,) bool, the directions kept: within ``min(n_components, N - 1, n_cols)`` and
        with a variance above the rounding level.
    """
    n = stats.n
    k = min(n_components, n - 1, stats.width)
    s, v = stats.unit_svd
    var = s[:k] ** 2 / (n - 1)
    z = stats.unit_centred @ v[:, :k]
    # The reference's float64 floor: 16 eps of the top variance or of the largest squared
    # mean (which centring rounds against), in the same units. A float32 SVD leaves null
    # directions at (eps32 s_max)^2, above that: 64 eps32^2 variance_0 too. (Not the
    # reference's eps mean^2 in float32 eps: the features are centred twice, and with
    # column offsets of 1e4 that would drop real directions of variance 1e-5.)
    mean_sq = jnp.max((stats.mean / stats.scale) ** 2)
    eps64, eps = float(np.finfo(np.float64).eps), float(np.finfo(stats.dtype).eps)
    floor = jnp.maximum(16 * eps64 * jnp.maximum(var[0], mean_sq), 64 * eps**2 * var[0])
    k_model = jnp.minimum(min(n_components, n - 1), stats.n_cols)
    keep = (jnp.arange(k) < k_model) & (var > floor)
    return jnp.where(keep, z, 0.0), keep


def gbc(stats) -> dict:
    z, keep = principal_projection(stats, PCA_COMPONENTS)
    dtype, c = z.dtype, stats.n_classes
    counts = stats.counts[:, None]
    means = jax.ops.segment_sum(z, stats.codes, num_segments=c) / counts  # (C, k)
    dev = z - means[stats.codes]
    var = jax.ops.segment_sum(dev * dev, stats.codes, num_segments=c) / counts
    # The absolute floor 1e-4 in units of scale**2, clamped into the range where the sums
    # below stay finite (the scaled variances are at most D: a floor far above that floors
    # every variance, and they all tie at the clamp as they do at the floor).
    info = jnp.finfo(dtype)
    floor = jnp.clip(
        VARIANCE_FLOOR / (stats.scale * stats.scale), info.tiny, info.max / (4 * z.shape[1])
    )
    # Spherical: the mean over the kept directions (none kept, constant features: NaN, as
    # the reference's mean over an empty axis).
    v = jnp.sum(jnp.where(keep, jnp.maximum(var, floor), 0.0), axis=1) / jnp.sum(keep)
    sq_norm = jnp.sum(means * means, axis=1)
    sq_dist = jnp.maximum(sq_norm[:, None] + sq_norm[None, :] - 2.0 * (means @ means.T), 0.0)
    s = (v[:, None] + v[None, :]) / 2
    log_v = jnp.log(v)
    dist = sq_dist / (8 * s) + 0.5 * (jnp.log(s) - (log_v[:, None] + log_v[None, :]) / 2)
    # c == c' excluded, not subtracted (1 + tiny loses tiny), as in the reference.
    other = ~jnp.eye(c, dtype=bool)
    value = -jnp.sum(jnp.where(other, jnp.exp(-dist), 0.0))
    log_overlap = jax.nn.logsumexp(jnp.where(other, -dist, -jnp.inf))
    return {"value": value, "log_overlap": log_overlap}


def _ref(features, labels, logits=None) -> float:
    return ref.gbc(features, labels)


METRICS = (
    Metric(
        "gbc",
        gbc,
        _ref,
        fields=("value", "log_overlap"),
        summary="GBC (Pándy et al. 2022): Bhattacharyya overlap of per-class Gaussians after PCA-64",
    ),
)
