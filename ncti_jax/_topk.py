"""A certified top-k symmetric eigensolver for the device path's PCA.

A full ``eigh`` of the D x D covariance costs O(D^3) and was the slowest and least
accurate step of the accelerator kernel (222 ms for 11 matrices of 2048 x 2048 on
an H100). PCA keeps at most 64 directions, so this module finds only those, by
block subspace iteration with Rayleigh-Ritz, in O(D^2 b) work per iteration for a
block of ``b = k + p`` columns:

* one product ``C @ Q`` per iteration; the Ritz vectors' products come for free
  from it (``C (Q U) = (C Q) U``), and so do their residuals ``C x - theta x``;
* the filter is a shifted power step ``(C - s) x`` with ``s`` half the smallest
  Ritz value of the block (the degree-1 Chebyshev filter of ``[0, 2 s]``): each
  wanted direction gains ``(lambda_j - s) / (lambda_{b+1} - s)`` on the rest per
  iteration; the columns are scaled to unit norm before orthonormalising, so a
  steep spectrum (1e-7 of the largest variance kept) does not make the block
  ill-conditioned;
* orthonormalisation goes through (b, b) matrices only: shifted Cholesky-QR then
  Cholesky-QR twice (Fukaya et al. 2020, stable up to a condition number of
  1/eps), never a QR of the tall block (a vmapped QR of tall blocks compiled
  for 7+ minutes on an H100);
* a ``while_loop`` bounded by ``max_iters`` that stops once every kept
  direction's residual is below the tolerance or has stopped falling (vmapped,
  it runs until the slowest model of the batch stops; the others keep their
  converged state).

The result is certified, not hoped for: each model carries its largest residual
``max_j ||C v_j - lambda_j v_j|| / lambda_1`` over the kept directions and the
relative gap ``(lambda_r - lambda_{r+1}) / lambda_1`` after the last one kept;
by Davis-Kahan the kept subspace is off by at most about
``||R||_F / (gap * lambda_1)`` (``R``: the kept residuals). A model whose
residuals are above the rounding floor (not converged) or whose bound is above
:data:`SUBSPACE_TOL` (a gap that leaves the subspace ill-defined) is recomputed
by the driver with the exact ``eigh`` (a second compiled call on those models
only: ``lax.cond`` under ``vmap`` would run both branches).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

# Extra block columns beyond k: the convergence rate is (lambda_{k+p+1} / lambda_k) per
# iteration, shifted; 32 columns beyond 64 converge a 1/i spectrum in 15-16 iterations.
OVERSAMPLE = 32
# Iterations before giving up (the model then falls back to the exact eigh).
MAX_ITERS = 60
# Iterations on the exact scatter after a TF32 / bfloat16 one (each about 2 b / D of the
# scatter's cost).
REFINE_ITERS = 12
# Iterations stop when every kept residual is below RESIDUAL_TOL eps times lambda_1, or
# when the largest one no longer falls by STALL per iteration (the rounding floor of the
# dtype, a few eps; a full float32 eigh's residuals are of the same order).
RESIDUAL_TOL = 4
STALL = 0.9
# A model is certified when every kept residual is below RESIDUAL_CERT eps times
# lambda_1 (converged to the rounding floor) and the Davis-Kahan bound on its kept
# subspace, ||R||_F / (gap * lambda_1), is below SUBSPACE_TOL (a gap that small beside
# the residuals leaves the subspace ill-defined). At the floor this bound is what the
# exact float32 eigh's own residuals give: on the regimes of ncti_jax.regimes, models
# certified at these settings were as close to the float64 reference as the full eigh
# (benchmarks/eigensolver.py).
RESIDUAL_CERT = 32
SUBSPACE_TOL = 0.05


def gram(a: jax.Array, mode: str) -> jax.Array:
    """``a.T @ a`` at the precision of ``mode``: "highest" (exact float32 products),
    "tf32" (operands rounded to TF32's 10-bit mantissa, as NVIDIA tensor cores do) or
    "bf16" (operands rounded to bfloat16, float32 sums)."""
    if mode == "highest":
        return jnp.matmul(a.T, a, precision=jax.lax.Precision.HIGHEST)
    if mode == "bf16":
        b = a.astype(jnp.bfloat16)
        return jnp.matmul(b.T, b, preferred_element_type=a.dtype)
    if mode == "tf32":
        t = round_tf32(a)
        return jnp.matmul(t.T, t, precision=jax.lax.Precision.HIGHEST)
    raise ValueError(f"gram precision must be 'highest', 'tf32' or 'bf16'; got {mode!r}.")


def round_tf32(a: jax.Array) -> jax.Array:
    """float32 values rounded to nearest (ties away) at TF32's 10 mantissa bits: the
    operands a tensor core multiplies, emulated exactly on any backend."""
    bits = jax.lax.bitcast_convert_type(a.astype(jnp.float32), jnp.uint32)
    rounded = (bits + jnp.uint32(1 << 12)) & jnp.uint32(0xFFFFE000)
    return jax.lax.bitcast_convert_type(rounded, jnp.float32).astype(a.dtype)


def _orthonormalise(y: jax.Array, linalg) -> jax.Array:
    """An orthonormal basis of the columns of ``y`` (D, b), through (b, b) matrices:
    shifted Cholesky-QR, then Cholesky-QR twice."""
    d, b = y.shape
    eps = jnp.finfo(y.dtype).eps
    eye = jnp.eye(b, dtype=y.dtype)
    for shifted in (True, False, False):
        g = y.T @ y
        g = (g + g.T) / 2
        if shifted:
            g = g + 11 * (d * b + b * (b + 1)) * eps * jnp.trace(g) * eye
        chol = linalg.cholesky(g)
        y = y @ linalg.solve_triangular(chol, eye, lower=True).T
    return y


def _rayleigh_ritz(q: jax.Array, cq: jax.Array, linalg):
    """Ritz values (decreasing), vectors and their products with C, from an orthonormal
    block ``q`` and ``cq = C @ q``."""
    h = q.T @ cq
    theta, u = linalg.eigh((h + h.T) / 2)
    theta, u = theta[::-1], u[:, ::-1]
    return theta, q @ u, cq @ u


def certificate(
    theta: jax.Array, residuals: jax.Array, kept: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(residual, gap, certified)`` of a model from its Ritz values (b,), decreasing,
    their residual norms (b,) and the kept directions (k,) bool (a prefix).

    residual: ``max_j ||C v_j - theta_j v_j|| / theta_1`` over the kept directions;
    gap: ``(theta_r - theta_{r+1} - ||res_{r+1}||) / theta_1`` after the last kept one
    (the next Ritz value moved up by its own residual, where an eigenvalue must lie);
    certified: every kept residual is at the rounding floor (:data:`RESIDUAL_CERT`) and
    the kept subspace is within :data:`SUBSPACE_TOL` by Davis-Kahan (the Frobenius norm
    of the kept residuals over ``gap * theta_1``), or nothing is kept.
    """
    k = kept.shape[0]
    top = jnp.maximum(theta[0], jnp.finfo(theta.dtype).tiny)
    r = jnp.sum(kept)
    kept_res = jnp.where(kept, residuals[:k], 0.0)
    residual = jnp.max(kept_res) / top
    b = theta.shape[0]
    last = jnp.maximum(r - 1, 0)
    # r == b only when the block is the whole space (b == D): nothing lies beyond but 0.
    following = jnp.where(
        r < b, theta[jnp.minimum(r, b - 1)] + residuals[jnp.minimum(r, b - 1)], 0.0
    )
    gap = (theta[last] - following) / top
    bound = jnp.linalg.norm(kept_res) / top / jnp.maximum(gap, 0.0)
    converged = residual <= RESIDUAL_CERT * jnp.finfo(theta.dtype).eps
    certified = (r == 0) | ((gap > 0) & converged & (bound <= SUBSPACE_TOL))
    return residual, gap, certified


def topk_eigh(
    c: jax.Array | Callable[[jax.Array], jax.Array],
    k: int,
    kept_fn: Callable[[jax.Array, jax.Array], jax.Array],
    linalg,
    *,
    row_mask: jax.Array | None = None,
    start: jax.Array | None = None,
    oversample: int = OVERSAMPLE,
    max_iters: int = MAX_ITERS,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """The top-``k`` eigenpairs of a symmetric positive semi-definite ``c`` by subspace
    iteration (see the module notes).

    Args:
      c: (D, D) symmetric PSD matrix (a centred scatter or Gram), or the function
        ``q -> C @ q`` of one (then ``start`` is required).
      k: static number of eigenpairs.
      kept_fn: ``(evals (k,), evecs (D, k)) -> (k,) bool``, the directions the caller
        keeps (within its cap, above its rounding floors); only they must converge.
      linalg: how the small (b, b) problems are solved (:class:`ncti_jax._linalg.Linalg`).
      row_mask: (D,) bool, the coordinates that are not padding (the start block is
        zero elsewhere, so are the eigenvectors).
      start: (D, b) the starting block (default: random, ``b = min(k + oversample, D)``).
      oversample, max_iters: block columns beyond ``k``; iterations at most.

    Returns:
      ``(theta, x, residuals, iters)``: the block's Ritz values (b,), decreasing, its
      Ritz vectors (D, b), their residual norms ``||c x - theta x||`` (b,), and the
      iterations taken.
    """
    apply = c if callable(c) else c.__matmul__
    if start is None:
        d = c.shape[0]
        start = jax.random.normal(jax.random.PRNGKey(0), (d, min(k + oversample, d)), c.dtype)
        if row_mask is not None:
            start = jnp.where(row_mask[:, None], start, 0.0)
    b = start.shape[1]
    dtype = start.dtype
    q = _orthonormalise(start, linalg)

    def ritz(q):
        theta, x, cx = _rayleigh_ritz(q, apply(q), linalg)
        return theta, x, cx, jnp.linalg.norm(cx - x * theta, axis=0)

    def worst(theta, x, res):  # the largest kept residual, relative to theta_1
        kept = kept_fn(theta[:k], x[:, :k])
        top = jnp.maximum(theta[0], jnp.finfo(theta.dtype).tiny)
        return jnp.max(jnp.where(kept, res[:k], 0.0)) / top

    def cond(state):
        it, before, now = state[0], state[1], state[2]
        stalled = now > STALL * before  # at float32's rounding floor
        done = now <= RESIDUAL_TOL * jnp.finfo(dtype).eps
        return (it < max_iters) & ~done & ~stalled

    def body(state):
        it, _, now, theta, x, cx, _ = state
        y = cx - (theta[b - 1] / 2) * x
        y = y / jnp.maximum(jnp.linalg.norm(y, axis=0), jnp.finfo(y.dtype).tiny)
        theta, x, cx, res = ritz(_orthonormalise(y, linalg))
        return it + 1, now, worst(theta, x, res), theta, x, cx, res

    theta, x, cx, res = ritz(q)
    inf = jnp.asarray(jnp.inf, dtype)
    state = (jnp.int32(1), inf, worst(theta, x, res), theta, x, cx, res)
    it, _, _, theta, x, _, res = jax.lax.while_loop(cond, body, state)
    return theta, x, res, it


def refine(
    a: jax.Array, x: jax.Array, k: int, kept_fn, linalg, *, max_iters: int = REFINE_ITERS
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """The block ``x`` (D, b) from a low-precision scatter, iterated on the exact one
    ``a.T @ a`` applied as ``a.T @ (a @ q)`` at full precision (O(N D b) per iteration,
    not the O(N D^2) of the scatter) until converged, as :func:`topk_eigh` (whose
    returns these are): the residuals certified are then those of the exact operator.
    One Rayleigh-Ritz step alone left residuals at the low precision's rounding (TF32:
    5e-4 of lambda_1), which no model could be certified with."""
    hi = jax.lax.Precision.HIGHEST

    def apply(q):
        return jnp.matmul(a.T, jnp.matmul(a, q, precision=hi), precision=hi)

    return topk_eigh(apply, k, kept_fn, linalg, start=x, max_iters=max_iters)
