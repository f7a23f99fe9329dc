"""Exact top-k PCA of one model's (zero-padded) features, on static shapes.

Features are centred and then divided by a power of two near their largest
absolute value (exact in floating point) before any product is formed, so every
scale float32 holds, 1e-20 to 1e18, gives the same projection and no square
under- or overflows. The scale comes back with the result: only the shrinkage
rule depends on the features' scale (:func:`ncti_jax._kernel.shrinkage_rule`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from . import _topk
from ._linalg import Linalg


def power_of_two_scale(m):
    """The power of two ``2**e >= m`` nearest above ``m > 0`` (1 for ``m == 0``);
    NumPy in, NumPy out (the host path), JAX otherwise."""
    xp = np if isinstance(m, (np.ndarray, np.generic)) else jnp
    _, e = xp.frexp(m)
    return xp.where(m > 0, xp.ldexp(xp.ones_like(m), xp.minimum(e, 127)), 1.0)


def chunk_scale(chunk, shift):
    """The scale of a streamed model, from its first row chunk: a power of two near the
    largest ``|chunk - shift|``, or ``|chunk|`` if the chunk is constant, or 1."""
    xp = np if isinstance(chunk, np.ndarray) else jnp
    dev = xp.max(xp.abs(chunk - shift))
    return power_of_two_scale(xp.where(dev > 0, dev, xp.max(xp.abs(chunk))))


def pca_project(
    x: jax.Array, max_components: jax.Array, n_cols: jax.Array, k: int, linalg: Linalg
) -> tuple[jax.Array, ...]:
    """Projects centred, rescaled features on their top-``k`` principal directions.

    The subspace is exact: the top eigenvectors of the D x D covariance when
    N >= D, of the N x N Gram of the samples otherwise (the choice is static, on
    shapes); see :meth:`ncti_jax._linalg.Linalg.top_eigh` for how they are solved,
    or :mod:`ncti_jax._topk` on the device path with ``linalg.eigensolver`` a top-k
    solver, which certifies its result.

    Args:
      x: (N, D) features; padded columns are zero.
      max_components: scalar, ``min(n_components, N - 1, D_model)`` for this model.
      n_cols: scalar, ``D_model``: the columns of ``x`` that are not padding.
      k: static number of output columns (the zoo-wide maximum of ``max_components``).
      linalg: how the linear algebra is traced.

    Returns:
      ``(z, variances, mask, scale)`` as :func:`mask_components`, for the features
      divided by ``scale``, then the eigensolver's ``(residual, gap, code)``
      (:func:`ncti_jax._topk.certificate`; 0, 1 and ``EIGH`` for an exact solve).
    """
    n, d = x.shape
    eps = jnp.finfo(x.dtype).eps
    mean = jnp.mean(x, axis=0)
    xc = x - mean
    scale = power_of_two_scale(jnp.max(jnp.abs(xc)))
    xc = xc / scale
    # Centring by a rounded mean leaves each column off by about eps * |mean|.
    col_sq = jnp.sum(xc * xc, axis=0) + n * (eps * mean / scale) ** 2
    solve_dtype = linalg.solve_dtype(x.dtype)
    if linalg.topk:
        return _topk_project(xc, col_sq, max_components, n_cols, k, linalg, scale)
    if n >= d:
        evals, evecs = linalg.covariance_top_eigh(xc, n_cols, k)
        z = xc @ evecs
        floors = rounding_floors(evals, x.dtype, solve_dtype, col_sq, evecs)
    else:
        evals, evecs = linalg.top_eigh(xc @ xc.T, k)
        z = evecs * jnp.sqrt(jnp.clip(evals, 0.0))
        floors = rounding_floors(evals, x.dtype, solve_dtype, col_sq)
    exact = (jnp.zeros((), x.dtype), jnp.ones((), x.dtype), jnp.int32(EIGH))
    return (*mask_components(z, evals, floors, max_components), scale, *exact)


# Codes of the eigensolver a model's PCA took (``RawComponents.eigensolver``).
EIGH, TOPK, FALLBACK = 0, 1, 2


def _topk_project(xc, col_sq, max_components, n_cols, k, linalg, scale):
    """:func:`pca_project` through the certified top-k solver: its code is ``TOPK``
    when the kept subspace is certified, else ``FALLBACK`` (the driver then
    recomputes the model with the exact ``eigh``)."""
    evals, evecs, floors, residual, gap, certified, _ = topk_pca(
        xc, col_sq, max_components, n_cols, k, linalg
    )
    z = evecs * jnp.sqrt(jnp.clip(evals, 0.0)) if xc.shape[0] < xc.shape[1] else xc @ evecs
    code = jnp.where(certified, TOPK, FALLBACK).astype(jnp.int32)
    return (*mask_components(z, evals, floors, max_components), scale, residual, gap, code)


def topk_pca(
    xc: jax.Array,
    col_sq: jax.Array,
    max_components: jax.Array,
    n_cols: jax.Array,
    k: int,
    linalg: Linalg,
) -> tuple[jax.Array, ...]:
    """The top-``k`` eigenpairs of the scatter of centred, rescaled features ``xc``
    (N, D) (of their N x N Gram when N < D) by :func:`ncti_jax._topk.topk_eigh`, with
    its certificate.

    Returns:
      ``(evals (k,), evecs (D or N, k), floors (k,), residual, gap, certified,
      iterations)``: the eigenpairs (decreasing), their rounding floors
      (:func:`rounding_floors`), and :func:`ncti_jax._topk.certificate` of the
      directions kept.
    """
    n, d = xc.shape
    dtype = xc.dtype
    wide = n < d

    def floors_of(evals, evecs):
        return rounding_floors(evals, dtype, dtype, col_sq, None if wide else evecs)

    def kept(evals, evecs):
        return (jnp.arange(k) < max_components) & (evals > floors_of(evals, evecs))

    a = xc.T if wide else xc
    mode = linalg.gram_precision
    row_mask = None if wide else jnp.arange(d) < n_cols
    theta, vecs, res, iters = _topk.topk_eigh(
        _topk.gram(a, mode), k, kept, linalg, row_mask=row_mask
    )
    if mode != "highest":
        theta, vecs, res, more = _topk.refine(a, vecs, k, kept, linalg)
        iters = iters + more
    evals, evecs = theta[:k], vecs[:, :k]
    residual, gap, certified = _topk.certificate(theta, res, kept(evals, evecs))
    return evals, evecs, floors_of(evals, evecs), residual, gap, certified, iters


def rounding_floors(
    evals: jax.Array,
    dtype,
    solve_dtype,
    col_sq: jax.Array,
    evecs: jax.Array | None = None,
) -> jax.Array:
    """Eigenvalues of a scatter at or below these are rounding noise: (k,) floors.

    A scatter summed in ``dtype`` has entry errors of about
    ``eps * sqrt(col_sq_i * col_sq_j)`` (``col_sq``: each column's sum of squares
    as the summation saw it), so the eigenvalue along a unit vector ``v`` is off
    by about ``eps * (sum_j |v_j| sqrt(col_sq_j))**2``: small along directions
    that avoid the large columns (a few columns with offsets of 1e4 and a 30x
    spread leave the others resolved to 1e-7 of the largest variance). Without
    ``evecs`` (a Gram of the samples) the bound is ``eps * sum(col_sq)``. Either
    bound is taken 16 times over. The eigensolver adds about ``eps * lambda_max``
    in its own dtype (``solve_dtype``: float64 on the host path, the computation
    dtype on accelerators); twice that is its floor (16 times dropped real
    directions at 1e-6 of the largest that a float32 ``eigh`` resolved to 1e-6
    relative on the massive-activation regime).
    """
    xp = np if isinstance(evals, np.ndarray) else jnp  # the host path stays in NumPy
    eps = np.finfo(dtype).eps
    solve_eps = np.finfo(solve_dtype).eps
    root = xp.sqrt(col_sq)
    spread = xp.sum(col_sq) if evecs is None else (xp.abs(evecs).T @ root) ** 2
    return xp.maximum(16 * eps * spread, 2 * solve_eps * evals[0])


def mask_components(
    z: jax.Array, evals: jax.Array, floors: jax.Array, max_components: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Keeps the principal directions that carry variance; zeroes the others.

    Args:
      z: (N, k) projection on the top-``k`` directions, decreasing variance.
      evals: (k,) eigenvalues of the centred scatter ``xc.T @ xc``, decreasing.
      floors: (k,) the rounding level of each eigenvalue (:func:`rounding_floors`).
      max_components: scalar, ``min(n_components, N - 1, D_model)``.

    Returns:
      z: (N, k) projection; columns that are masked out are exactly zero.
      variances: (k,) explained variances ``s_i**2 / (N - 1)``, decreasing; zero
        where masked.
      mask: (k,) bool, the components that are kept: within
        ``max_components`` and above the rounding level of the computation (a
        model with constant features keeps none).
    """
    n, k = z.shape
    mask = (jnp.arange(k) < max_components) & (evals > floors)
    variances = jnp.clip(evals, 0.0) / (n - 1)
    z = jnp.where(mask, z, 0.0)
    return z, jnp.where(mask, variances, 0.0), mask
