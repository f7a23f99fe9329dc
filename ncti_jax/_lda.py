"""Linear discriminant analysis of one model's PCA projection, on static shapes.

Both of scikit-learn's solvers that NCTI uses, with its semantics (priors = class
frequencies, the 1/N within-class convention of scikit-learn >= 1.9). Each
returns the projection ``L`` (N, k) with its unused columns exactly zero, and the
decision function (N, C). Data-dependent ranks are masks, never slices.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._linalg import Linalg
from ._nuclear import right_singular

# scikit-learn's LinearDiscriminantAnalysis(tol=1e-4): singular values of the
# within-class scaled data below TOL (absolute) and of the between-class
# matrix below TOL * largest are dropped.
TOL = 1e-4
# The eigen solver's LDA is undefined when the within-class scatter's trace is at most
# this many eps of the total's: no class has a spread above rounding.
NO_SCATTER = 16


class ClassStats:
    """Class means and priors of one projection (not a pytree; built inside the trace)."""

    def __init__(self, z: jax.Array, codes: jax.Array, counts: jax.Array):
        n = z.shape[0]
        self.n = n
        self.counts = counts
        self.priors = counts / n
        self.means = jax.ops.segment_sum(z, codes, num_segments=counts.shape[0]) / counts[:, None]
        self.xbar = self.priors @ self.means
        self.within = z - self.means[codes]  # each sample minus its class mean


def _rank_floor(dtype, k: int) -> float:
    # Singular values computed through a k x k Gram in this dtype cannot be told
    # apart from zero below about sqrt(k * eps) of the largest; in float64 this is
    # far below scikit-learn's tol and changes nothing.
    return float((k * jnp.finfo(dtype).eps) ** 0.5)


def lda_svd(
    z: jax.Array, stats: ClassStats, n_discriminants: jax.Array, linalg: Linalg
) -> tuple[jax.Array, jax.Array]:
    """scikit-learn's ``solver="svd"``.

    Masked PCA columns are zero in ``z``: their std is set to 1 and they add only
    zero singular values, which the rank masks drop, so no column mask is needed.

    Args:
      z: (N, k) projection, zero on masked columns.
      stats: class statistics of ``z``.
      n_discriminants: scalar, the transform columns to keep, ``min(C - 1, pca_rank)``.
      linalg: how the linear algebra is traced.
    """
    n, k = z.shape
    c = stats.counts.shape[0]
    dtype = z.dtype
    std = jnp.std(stats.within, axis=0)
    std = jnp.where(std == 0, 1.0, std)
    s, v = right_singular(stats.within / std / jnp.sqrt(jnp.asarray(n, dtype)), linalg)
    floor = _rank_floor(dtype, k) * jnp.max(s)
    keep = (s > TOL) & (s > floor)
    w1 = jnp.where(keep, v / std[:, None] / jnp.where(keep, s, 1.0), 0.0)

    centred_means = stats.means - stats.xbar
    weights = jnp.sqrt(n * stats.priors / max(c - 1, 1))
    # The (C, k) between-class matrix is small: a direct SVD resolves its singular values
    # to eps * s_max, so scikit-learn's relative TOL applies as it is. (Through its Gram,
    # a float32 floor of sqrt(k eps) = 1.5e-3 dropped a direction at 6e-4 that float64
    # keeps: etf fell by sqrt(N), one unit-variance column of the projection.)
    s2, v2 = linalg.svd((weights[:, None] * centred_means) @ w1)
    keep2 = (s2 > TOL * jnp.max(s2)) & (jnp.arange(k) < c - 1)
    scalings = w1 @ jnp.where(keep2, v2, 0.0)

    projection = (z - stats.xbar) @ scalings
    coef = centred_means @ scalings
    decision = projection @ coef.T - 0.5 * jnp.sum(coef * coef, axis=1) + jnp.log(stats.priors)
    projection = jnp.where(jnp.arange(k) < n_discriminants, projection, 0.0)
    return projection, decision


def lda_eigen(
    z: jax.Array,
    mask: jax.Array,
    stats: ClassStats,
    n_discriminants: jax.Array,
    shrinkage: jax.Array,
    linalg: Linalg,
) -> tuple[jax.Array, jax.Array]:
    """scikit-learn's ``solver="eigen"`` with a fixed ``shrinkage`` ``t``.

    scikit-learn solves ``Sb v = w Sw v`` with ``Sb = St - Sw`` and shrunk
    covariances ``(1 - t) cov + t (trace(cov) / k) I``. Shifting ``Sb`` by a
    multiple of ``Sw`` changes no eigenvector and keeps their order; with the
    shift ``(mu_t / mu_w - 1) Sw`` (``mu`` = trace / k) the isotropic parts cancel
    exactly and ``Sb - shift = (1 - t) M``, ``M = cov_t - (mu_t / mu_w) cov_w``.
    Solving with ``M`` keeps the eigenvectors accurate as ``t -> 1``, where ``Sb``
    tends to a multiple of ``Sw`` and ``eigh(Sb, Sw)`` loses them to rounding (and
    at ``t == 1`` returns an arbitrary basis). The reference solves the same form.

    The prior-weighted sum of per-class biased covariances equals the covariance
    of the within-class residuals, so no per-class loop is needed. Masked
    columns get ``Sw = 1`` and a diagonal of ``M`` below every real generalised
    eigenvalue: they sort last and give zero transform columns.
    """
    n, k = z.shape
    pca_rank = jnp.maximum(jnp.sum(mask), 1)
    eye = jnp.diag(mask.astype(z.dtype))
    off = jnp.diag((~mask).astype(z.dtype))

    centred = z - jnp.mean(z, axis=0)
    cov_w = stats.within.T @ stats.within / n
    cov_t = centred.T @ centred / n
    mu_w = jnp.trace(cov_w) / pca_rank
    mu_t = jnp.trace(cov_t) / pca_rank
    sw = (1.0 - shrinkage) * cov_w + shrinkage * mu_w * eye + off
    m = cov_t - (mu_t / jnp.where(mu_w > 0, mu_w, 1.0)) * cov_w
    m = m / jnp.maximum(jnp.linalg.norm(m), jnp.finfo(z.dtype).tiny)
    # |generalised eigenvalue| <= ||m||_2 / lambda_min(Sw) <= 1 / (t mu_w) on the real block.
    bound = 1.0 + 2.0 / jnp.maximum(shrinkage * mu_w, jnp.finfo(z.dtype).eps)
    m = m - bound * off

    chol = linalg.cholesky(sw)
    # A tiny shrinkage of a singular Sw (fewer residual degrees of freedom than k) leaves it
    # positive definite only below this dtype's rounding: the factorisation breaks down (NaN).
    # Then Sw gets a ridge at the rounding level, the least that makes the problem solvable.
    ridge = 16 * jnp.finfo(z.dtype).eps * jnp.max(jnp.diag(sw))
    chol = jnp.where(jnp.isfinite(chol).all(), chol, linalg.cholesky(sw + ridge * eye))
    a = linalg.solve_triangular(chol, linalg.solve_triangular(chol, m, lower=True).T, lower=True)
    _, u = linalg.eigh(a)
    evecs = linalg.solve_triangular(chol.T, u[:, ::-1], lower=False)  # descending eigenvalue

    projection = jnp.where(jnp.arange(k) < n_discriminants, z @ evecs, 0.0)
    coef = linalg.cho_solve(chol, stats.means.T).T  # means @ Sw^-1, (C, k)
    decision = z @ coef.T - 0.5 * jnp.sum(stats.means * coef, axis=1) + jnp.log(stats.priors)
    # Classes with no within-class scatter above rounding (every sample at its class mean)
    # shrink Sw to zero with its own trace: the LDA is undefined (etf -> infinity), and
    # scikit-learn fails. The model's components are NaN, so it is unranked.
    undefined = (mu_w <= NO_SCATTER * jnp.finfo(z.dtype).eps * mu_t) & (mu_t > 0)
    return jnp.where(undefined, jnp.nan, projection), jnp.where(undefined, jnp.nan, decision)
