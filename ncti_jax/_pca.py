"""Exact top-k PCA of one model's (zero-padded) features, on static shapes."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._linalg import covariance_top_eigh, top_eigh


def pca_project(
    x: jax.Array, n_valid_components: jax.Array, n_cols: jax.Array, k: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Projects centred features on their top-``k`` principal directions.

    The subspace is exact: the top eigenvectors of the D x D covariance when
    N >= D, of the N x N Gram of the samples otherwise (the choice is static, on
    shapes); see :func:`ncti_jax._linalg.top_eigh` for how they are solved.

    Args:
      x: (N, D) features; padded columns are zero.
      n_valid_components: scalar, ``min(k, N - 1, D_model)`` for this model.
      n_cols: scalar, ``D_model``: the columns of ``x`` that are not padding.
      k: static number of output columns (the zoo-wide maximum).

    Returns:
      z: (N, k) projection; columns that are masked out are exactly zero.
      variances: (k,) explained variances ``s_i**2 / (N - 1)``, decreasing; zero
        where masked.
      mask: (k,) bool, the components that are kept: within
        ``n_valid_components`` and with a variance above the rounding level of
        the computation (a model with constant features keeps none).
    """
    n, d = x.shape
    mean = jnp.mean(x, axis=0)
    xc = x - mean
    if n >= d:
        evals, evecs = covariance_top_eigh(xc, n_cols, k)
        z = xc @ evecs
    else:
        evals, evecs = top_eigh(xc @ xc.T, k)
        z = evecs * jnp.sqrt(jnp.clip(evals, 0.0))
    return mask_components(z, evals, jnp.max(mean * mean), n_valid_components)


def mask_components(
    z: jax.Array, evals: jax.Array, mean_sq: jax.Array, n_valid_components: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Keeps the principal directions that carry variance; zeroes the others.

    Args:
      z: (N, k) projection on the top-``k`` directions, decreasing variance.
      evals: (k,) eigenvalues of the centred scatter ``xc.T @ xc``, decreasing.
      mean_sq: scalar, the largest squared feature mean (sets the rounding level).
      n_valid_components: scalar, ``min(k, N - 1, D_model)``.

    Returns:
      ``(z, variances, mask)`` as documented in :func:`pca_project`.
    """
    n, k = z.shape
    variances = jnp.clip(evals, 0.0) / (n - 1)
    mask = (jnp.arange(k) < n_valid_components) & (
        variances > variance_floor(z.dtype, mean_sq, variances)
    )
    z = jnp.where(mask, z, 0.0)
    return z, jnp.where(mask, variances, 0.0), mask


def variance_floor(dtype: jnp.dtype, mean_sq: jax.Array, variances: jax.Array) -> jax.Array:
    """Variances at or below this are rounding noise of the computation.

    Centring leaves an error of about ``eps * |mean|`` per column and ``eigh`` an
    absolute error of about ``eps * lambda_max``; both are far below any variance
    that carries information, and a constant (or all-zero) model falls under it.
    """
    eps = jnp.finfo(dtype).eps
    return 16 * eps * jnp.maximum(variances[0], mean_sq)
