"""Exact top-k PCA of one model's (zero-padded) features, on static shapes.

Features are centred and then divided by a power of two near their largest
absolute value (exact in floating point) before any product is formed, so every
scale float32 holds, 1e-20 to 1e18, gives the same projection and no square
under- or overflows. The scale comes back with the result: only the shrinkage
rule depends on the features' scale (:func:`ncti_jax._ncti.shrinkage_rule`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ._linalg import covariance_top_eigh, solves_in_float64, top_eigh


def power_of_two_scale(m):
    """The power of two ``2**e >= m`` nearest above ``m > 0`` (1 for ``m == 0``);
    NumPy in, NumPy out (the host path), JAX otherwise."""
    xp = np if isinstance(m, (np.ndarray, np.generic)) else jnp
    _, e = xp.frexp(m)
    return xp.where(m > 0, xp.ldexp(xp.ones_like(m), xp.minimum(e, 127)), 1.0)


def chunk_scale(block, shift):
    """The scale of a streamed model, from its first row chunk: a power of two near the
    largest ``|block - shift|``, or ``|block|`` if the chunk is constant, or 1."""
    xp = np if isinstance(block, np.ndarray) else jnp
    dev = xp.max(xp.abs(block - shift))
    return power_of_two_scale(xp.where(dev > 0, dev, xp.max(xp.abs(block))))


def pca_project(
    x: jax.Array, n_valid_components: jax.Array, n_cols: jax.Array, k: int
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Projects centred, rescaled features on their top-``k`` principal directions.

    The subspace is exact: the top eigenvectors of the D x D covariance when
    N >= D, of the N x N Gram of the samples otherwise (the choice is static, on
    shapes); see :func:`ncti_jax._linalg.top_eigh` for how they are solved.

    Args:
      x: (N, D) features; padded columns are zero.
      n_valid_components: scalar, ``min(k, N - 1, D_model)`` for this model.
      n_cols: scalar, ``D_model``: the columns of ``x`` that are not padding.
      k: static number of output columns (the zoo-wide maximum).

    Returns:
      ``(z, variances, mask, scale)`` as :func:`mask_components`, for the features
      divided by ``scale``.
    """
    n, d = x.shape
    eps = jnp.finfo(x.dtype).eps
    mean = jnp.mean(x, axis=0)
    xc = x - mean
    scale = power_of_two_scale(jnp.max(jnp.abs(xc)))
    xc = xc / scale
    # Centring by a rounded mean leaves each column off by about eps * |mean|.
    col_sq = jnp.sum(xc * xc, axis=0) + n * (eps * mean / scale) ** 2
    if n >= d:
        evals, evecs = covariance_top_eigh(xc, n_cols, k)
        z = xc @ evecs
        floors = rounding_floors(evals, x.dtype, col_sq=col_sq, evecs=evecs)
    else:
        evals, evecs = top_eigh(xc @ xc.T, k)
        z = evecs * jnp.sqrt(jnp.clip(evals, 0.0))
        floors = rounding_floors(evals, x.dtype, col_sq=col_sq)
    return (*mask_components(z, evals, floors, n_valid_components), scale)


def rounding_floors(
    evals: jax.Array,
    dtype,
    *,
    col_sq: jax.Array,
    evecs: jax.Array | None = None,
    solve_dtype=None,
) -> jax.Array:
    """Eigenvalues of a scatter at or below these are rounding noise: (k,) floors.

    A scatter summed in ``dtype`` has entry errors of about
    ``eps * sqrt(col_sq_i * col_sq_j)`` (``col_sq``: each column's sum of squares
    as the summation saw it), so the eigenvalue along a unit vector ``v`` is off
    by about ``eps * (sum_j |v_j| sqrt(col_sq_j))**2``: small along directions
    that avoid the large columns (a few columns with offsets of 1e4 and a 30x
    spread leave the others resolved to 1e-7 of the largest variance). Without
    ``evecs`` (a Gram of the samples) the bound is ``eps * sum(col_sq)``. The
    eigensolver adds about ``eps * lambda_max`` in its own dtype (``solve_dtype``:
    float64 on the host path, the computation dtype on accelerators); twice that
    is the floor (16 times dropped real directions at 1e-6 of the largest that a
    float32 ``eigh`` resolved to 1e-6 relative on the massive-activation regime).
    """
    xp = np if isinstance(evals, np.ndarray) else jnp  # the host path stays in NumPy
    eps = np.finfo(dtype).eps
    solve_eps = np.finfo(solve_dtype or solve_dtype_for(dtype)).eps
    root = xp.sqrt(col_sq)
    spread = xp.sum(col_sq) if evecs is None else (xp.abs(evecs).T @ root) ** 2
    return xp.maximum(16 * eps * spread, 2 * solve_eps * evals[0])


def solve_dtype_for(dtype):
    return jnp.float64 if solves_in_float64() else dtype


def mask_components(
    z: jax.Array, evals: jax.Array, floors: jax.Array, n_valid_components: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Keeps the principal directions that carry variance; zeroes the others.

    Args:
      z: (N, k) projection on the top-``k`` directions, decreasing variance.
      evals: (k,) eigenvalues of the centred scatter ``xc.T @ xc``, decreasing.
      floors: (k,) the rounding level of each eigenvalue (:func:`rounding_floors`).
      n_valid_components: scalar, ``min(k, N - 1, D_model)``.

    Returns:
      z: (N, k) projection; columns that are masked out are exactly zero.
      variances: (k,) explained variances ``s_i**2 / (N - 1)``, decreasing; zero
        where masked.
      mask: (k,) bool, the components that are kept: within
        ``n_valid_components`` and above the rounding level of the computation (a
        model with constant features keeps none).
    """
    n, k = z.shape
    mask = (jnp.arange(k) < n_valid_components) & (evals > floors)
    variances = jnp.clip(evals, 0.0) / (n - 1)
    z = jnp.where(mask, z, 0.0)
    return z, jnp.where(mask, variances, 0.0), mask
