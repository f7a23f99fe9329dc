"""SFDA, batched (reference: :mod:`ncti_jax.reference.sfda`).

Two fits of the shrinkage Fisher classifier ``p(c | x) = softmax_c(x^T S^-1 mu_c -
mu_c^T S^-1 mu_c / 2 + log pi_c)`` with ``S = (1 - lam) Sw + lam tr(Sw) / D I`` (``Sw``
the prior-weighted within-class covariance, ``D`` the model's TRUE width
``stats.n_cols``): the first on the features, the second on the self-challenging
mixture ``q_c(x) x + (1 - q_c(x)) nu_c`` (``q`` the second softmax of the first
fit's probabilities, ``nu_c`` the mean of the other classes' means). SFDA is the
mean probability of the true class under the second fit.

The shrinkage ``lam = max(exp(-5 rho), 1e-10)`` comes from the original's estimate
``rho`` of the top eigenvalue of ``Sw``: a fixed 2 x 3 steps of power iteration
from ``Sw 1`` (no convergence test, as in the original), shared by both fits.

Numerics: everything is computed on :attr:`ModelStats.unit_centred`, the centred features
divided by a power of two. The classifier's softmax is invariant under a
translation of the features (the extra logit ``x^T S^-1 t + t^T S^-1 t / 2`` is
the same for every class) and the mixture is translation equivariant, so centring
changes nothing; ``S`` is homogeneous in ``Sw``, so only ``rho`` needs the
scale back (``rho = scale^2 rho_scaled``). Padded columns stay zero in the
features, the means and the mixture; the power iteration never leaves the true
columns; the padded block of ``S`` is ``lam tr(Sw) / D I`` with the true ``D``,
decoupled from the rest: the value is padding invariant.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..reference import sfda as ref
from . import Metric

# Features whose spread is below this many ulps of their largest |mean| are constant.
CONSTANT_ULPS = 64
# Float32's smallest ridge, relative to ||Sw||_F: its rounding level (see
# fisher_probabilities). 16 eps tr(Sw) cost up to 8e-5 relative on 1e18-scaled features
# (shrinkage at its 1e-10 floor); 4 eps ||Sw||_F costs 4e-6 and low-rank Sw still factor.
RIDGE32 = 4 * float(np.finfo(np.float32).eps)


def _class_means(x: jax.Array, stats) -> jax.Array:
    sums = jax.ops.segment_sum(x, stats.codes, num_segments=stats.n_classes)
    return sums / stats.counts[:, None]


def _within_covariance(x: jax.Array, means: jax.Array, stats) -> jax.Array:
    """``sum_c pi_c cov_c`` (biased class covariances) = within-class scatter / N, from the
    class-centred rows (no cancellation against the total)."""
    xw = x - means[stats.codes]
    return xw.T @ xw / stats.n


def top_eigenvalue_estimate(sw: jax.Array, start: jax.Array) -> jax.Array:
    """The original's power-iteration estimate ``|Sw^(2k+1) 1| / |Sw^(2k) 1|``, ``k`` =
    :data:`ncti_jax.reference.sfda.POWER_ITERATIONS` (fixed: the original never tests
    convergence); ``start`` is the true columns' indicator (the ones vector)."""
    v = start
    for _ in range(2 * ref.POWER_ITERATIONS):
        v = sw @ v
        v = v / jnp.linalg.norm(v)
    return jnp.linalg.norm(sw @ v)


def fisher_probabilities(x: jax.Array, stats, shrinkage: jax.Array | None) -> tuple:
    """SFDA's regularised Fisher classifier fitted and applied to ``x`` (N, D) (centred
    and scaled features, or their mixture): ``(p (N, C), shrinkage)``.

    ``shrinkage=None`` picks it from ``Sw`` as the original does (``rho`` back in the
    features' own scale).
    """
    means = _class_means(x, stats)
    sw = _within_covariance(x, means, stats)
    if shrinkage is None:
        rho_scaled = top_eigenvalue_estimate(sw, stats.col_mask.astype(x.dtype))
        # Two factors of the scale, not its square: in float32 scale**2 under- or
        # overflows where the product still makes sense (exp(-5 rho) is 1 or 0 there).
        rho = rho_scaled * stats.scale * stats.scale
        shrinkage = jnp.maximum(jnp.exp(-5.0 * rho), ref.SHRINKAGE_FLOOR)
    d = stats.n_cols.astype(x.dtype)
    trace = jnp.trace(sw)
    ridge = shrinkage * trace / d
    if x.dtype != jnp.float64:
        # The 1e-10 floor of the shrinkage is below float32's resolution of a formed Sw
        # (eps * its top eigenvalue, bounded by the Frobenius norm): a rank-deficient Sw
        # (N < D, low-rank features) would fail the Cholesky or amplify the rounding of
        # the features in its null space. Raising the ridge to that level only touches
        # directions float32 cannot resolve.
        ridge = jnp.maximum(ridge, RIDGE32 * jnp.sqrt(jnp.sum(sw**2)))
    s = (1.0 - shrinkage) * sw + ridge * jnp.eye(x.shape[1], dtype=x.dtype)
    coef = stats.linalg.cho_solve(stats.linalg.cholesky(s), means.T)  # (D, C) = S^-1 M^T
    priors = stats.counts / stats.n
    logits = x @ coef - 0.5 * jnp.sum(means.T * coef, axis=0) + jnp.log(priors)
    return jax.nn.softmax(logits, axis=1), shrinkage


def _true_class(p: jax.Array, stats) -> jax.Array:
    return jnp.take_along_axis(p, stats.codes[:, None], axis=1)[:, 0]


def sfda(stats) -> dict:
    if stats.n_classes < 2:  # static: the reference raises; no mixture is defined
        nan = jnp.full((), jnp.nan, stats.dtype)
        return {"value": nan, "shrinkage": nan}
    x = stats.unit_centred
    p, shrinkage = fisher_probabilities(x, stats, None)
    q = jax.nn.softmax(p, axis=1)  # the original's second softmax
    means = _class_means(x, stats)
    others = (jnp.sum(means, axis=0) - means) / (stats.n_classes - 1)
    w = _true_class(q, stats)[:, None]
    mixed = w * x + (1.0 - w) * others[stats.codes]
    p2, _ = fisher_probabilities(mixed, stats, shrinkage)
    # Constant features (S = 0 for every shrinkage) or Sw 1 = 0 (the power iteration
    # divides 0 by 0): the reference raises. Say NaN explicitly: XLA:CPU's batched
    # matmuls skip zero operands, so a NaN need not reach the value by itself. Constant
    # means: the spread is at the rounding level of the values (the centring of a
    # constant column leaves ~eps * |mean|, which the scaling would blow up to O(1)).
    spread = jnp.max(jnp.abs(stats.centred))
    ulp = float(jnp.finfo(stats.dtype).eps)
    constant = spread <= CONSTANT_ULPS * ulp * jnp.max(jnp.abs(stats.mean))
    sw_trace = jnp.sum((x - means[stats.codes]) ** 2)
    bad = constant | ~(sw_trace > 0) | ~jnp.isfinite(shrinkage)
    value = jnp.where(bad, jnp.nan, jnp.mean(_true_class(p2, stats)))
    return {"value": value, "shrinkage": jnp.where(bad, jnp.nan, shrinkage)}


def _ref_sfda(features, labels, logits=None) -> float:
    return ref.sfda(features, labels)


METRICS = (
    Metric(
        "sfda",
        sfda,
        _ref_sfda,
        fields=("value", "shrinkage"),
        summary="SFDA (Shao et al. 2022): self-challenging shrinkage Fisher classifier's mean p(y|x)",
    ),
)
