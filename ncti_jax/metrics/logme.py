"""LogME, batched (reference: :mod:`ncti_jax.reference.logme`, ``variant="paper"``).

For each class ``c`` LogME fits a Bayesian linear regression of the indicator
``y_c`` on the features ``F`` and takes its maximum log evidence per sample; the
score is the mean over classes. Every class shares one spectrum: the eigenvalues
``sigma_i`` of the uncentred Gram ``F^T F`` and the targets' coordinates
``w = V^T F^T Y`` in its eigenbasis (the indicators' right-hand sides ``F^T Y``
are the class sums). MacKay's fixed point then runs on all classes at once, a
vector of ``C`` states, for the reference's ``MAX_ITER`` steps, each class frozen
by a mask once the reference would have stopped (``t = alpha / beta`` moved by at
most ``TOL`` relative), so the result is the reference's early stop.

Routes (static, from the padded shape and dtype):

* ``N < D``: the SVD of ``F^T`` (the reference's ``N <= D`` route), whose right
  singular vectors are ``F``'s complete ``N x N`` left basis ``U``: ``w_i^2 =
  sigma_i (U^T y)_i^2`` and the residual is ``sum_i (U^T y)_i^2 (t / (sigma_i +
  t))^2``, free of cancellation; zero-padded columns are zero rows, unseen.
* ``N >= D``, float64: the eigendecomposition of the ``D x D`` Gram ``F^T F`` (the
  reference's ``N > D`` route and residual formula ``||y||^2 - sum_i w_i^2
  (sigma_i + 2 t) / (sigma_i + t)^2``).
* ``N >= D``, float32: the SVD of ``F`` instead of the Gram. The Gram is uncentred
  (LogME has no intercept), so a column offset of 1e4 (regime "massive") puts a
  ``N * 1e8`` eigenvalue beside ``O(N)`` ones (``sigma_max / sigma_min ~ 1e9``); a
  float32 eigendecomposition of the formed Gram resolves eigenvalues only to
  ``eps32 * sigma_max``, so the small directions are noise (their residual went
  negative and the score NaN), while the SVD resolves singular values to
  ``eps32 * sqrt(sigma_max)``: 1e-3 relative on that regime.

In every route eigenvalues beyond the rank bound ``min(N, D_m)`` (zero-padded
columns) and below a rounding floor (:data:`RCOND_EIGH`, :func:`_svd_floor`) are
set to exactly 0 with their ``w``: the paper variant is invariant to zero
directions (``log1p(0) = 0``), and rounding must not pose as a tiny real direction.

Scale: LogME is not scale invariant (the start ``alpha = beta = 1`` and the
``epsilon`` in the updates are in the features' units), so the kernel keeps the
reference's trajectory but works on ``G = F / s``, ``s`` a power of two near
``max |F|`` (exact, and the Gram neither overflows at 1e18 nor underflows at
1e-20 in float32). In ``G``'s units ``sigma_G = sigma / s^2``, ``w_G = w / s``,
``t_G = t / s^2``, ``alpha_G = alpha / s^2`` (``beta``, ``gamma``, the residual
and ``alpha ||m||^2`` are unit-free) and ``alpha``'s update reads
``gamma / (||m_G||^2 + epsilon s^2)``. The first step, at ``t = 1``, i.e.
``t_G = 1 / s^2`` (out of float32's range for ``s`` far from 1), is evaluated in
a form that stays finite on either side: with ``u = s^2``, the features' units
(``u sigma_G``) when ``u <= 1``, the scaled ones at ``t_G = 1 / u`` when ``u > 1``.

Float64 matches the reference to rounding on every regime (the reference's own
Gram limits "massive" to ~1e-8); float32 errors per regime are in the tests'
module notes.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from ..reference import logme as ref
from . import Metric

# Eigenvalues below these fractions of the largest are rounding, set to exactly 0: a
# formed Gram's (float64) resolve ``eps * sigma_max``, an SVD's singular values
# ``eps * sqrt(sigma_max)``. The reference keeps them, which is harmless while ``t``
# is far above rounding; where epsilon pins ``alpha`` (features ~1e18: ``t ~ 1e6``
# against ``eps * sigma_max ~ 1e25``) a rounding eigenvalue (a dead ReLU column) counts
# as a full direction, and its score is rounding (measured: -9.27 where its value on
# the same features without the zero column is -2.65).
RCOND_EIGH = 64 * float(np.finfo(np.float64).eps)


def _svd_floor(stats) -> float:
    return (64 * float(np.finfo(stats.dtype).eps)) ** 2


def _pow2_exponent(x: jax.Array) -> jax.Array:
    """``e`` with ``max |x| / 2^e`` in ``[0.5, 1)`` (0 for all-zero features)."""
    return jnp.frexp(jnp.max(jnp.abs(x)))[1]


def _spectrum(stats, xs: jax.Array, inv_s: jax.Array):
    """``(sigma (k,), w^2 (k, C), x^2 (k, C) or None)`` of the scaled features ``xs``.

    ``sigma`` decreasing, zero (with its ``w^2``) beyond the rank bound ``min(N, D_m)``
    and below the rounding floor: rounding that a tiny ``t`` would count in full. ``x^2``, the targets'
    squared coordinates in a complete left eigenbasis, comes with the ``N x N``
    route, whose residual is summed from it; None for the ``D x D`` routes.
    """
    n, width = xs.shape
    if n < width:  # static: the smaller problem, blind to padded columns
        # Right singular vectors of xs^T: the left ones of xs, (N, N), complete.
        sv, u = stats.linalg.svd(xs.T)
        x2 = (u.T @ stats.onehot) ** 2
        sigma = sv**2
        w2 = sigma[:, None] * x2
    elif stats.dtype == jnp.float64:
        # The reference's route: the Gram's eigenvalues, exact to eps64 * sigma_max.
        evals, v = stats.linalg.eigh(xs.T @ xs)
        sigma = jnp.maximum(evals[::-1], 0.0)
        w2 = (v[:, ::-1].T @ (stats.class_sums.T * inv_s)) ** 2
        x2 = None
    else:
        # float32: a formed Gram resolves eigenvalues only to eps32 * sigma_max, which
        # the small directions of offset features (regime "massive": sigma_max / sigma
        # ~ 1e9) are below; the SVD of the features resolves their square roots to
        # eps32 * sqrt(sigma_max).
        sv, v = stats.linalg.svd(xs)
        sigma = sv**2
        w2 = (v.T @ (stats.class_sums.T * inv_s)) ** 2
        x2 = None
    floor = (
        RCOND_EIGH if x2 is None and stats.dtype == jnp.float64 else _svd_floor(stats)
    ) * sigma[0]
    real = (jnp.arange(sigma.shape[0]) < jnp.minimum(n, stats.n_cols)) & (sigma > floor)
    sigma = jnp.where(real, sigma, 0.0)
    return sigma, jnp.where(real[:, None], w2, 0.0), x2


def _moments(sigma, w2, x2, yy, t):
    """``(gamma, ||m||^2, ||y - F m||^2)`` per class at ``t`` (C,), in one unit system.

    A zero ``sigma_i`` contributes its ``t -> 0`` limit, so ``t`` may underflow to 0
    (the first step's ``1 / s^2`` for float32 features beyond ``2^63``).
    """
    sig = sigma[:, None]
    st = sig + t
    pos = st > 0
    st = jnp.where(pos, st, 1.0)
    gamma = jnp.sum(jnp.where(pos, sig / st, 0.0), axis=0)
    wt = jnp.where(pos, w2 / st, 0.0)  # not w2 / st^2: st^2 underflows where t does
    m2 = jnp.sum(wt / st, axis=0)
    if x2 is None:  # D x D route: the reference's Gram-route formula
        res2 = yy - jnp.sum(wt * ((sig + 2 * t) / st), axis=0)
    else:  # N x N route: a complete eigenbasis, nothing outside it
        res2 = jnp.sum(x2 * jnp.where(pos, t / st, 1.0) ** 2, axis=0)
    return gamma, m2, res2


def _first_step(sigma, w2, x2, yy, n, e):
    """The first update, from ``alpha = beta = 1`` in the features' units (``t = 1``).

    Returns ``(alpha_G, beta, t_F, alpha ||m||^2, ||y - F m||^2)``, (C,) each. At
    ``t = 1``, ``sigma_F / t = 2^(2e) sigma_G`` leaves float32's range on either side
    for ``|e| > 63``: features at most 1 in size (``e <= 0``) are evaluated in their
    own units (``sigma_F`` may flush to 0, and ``alpha_G`` is formed from
    ``sum sigma_G / (sigma_F + 1)``, as ``gamma`` itself may underflow), larger ones
    in ``G``'s units at ``t_G = 2^(-2e)`` (which may flush to 0; ``alpha_G`` is
    ``alpha_F`` times ``2^-e`` twice).
    """
    eps = ref.EPSILON
    one = jnp.ones((), sigma.dtype)
    ones = jnp.ones_like(yy)
    u, r, r1 = jnp.ldexp(one, 2 * e), jnp.ldexp(one, -2 * e), jnp.ldexp(one, -e)
    sf = u * sigma
    g_lo, m2_lo, res_lo = _moments(sf, u * w2, x2, yy, ones)
    g_hi, m2_hi, res_hi = _moments(sigma, w2, x2, yy, r * ones)
    m2_hi = r * m2_hi  # in the features' units
    small = e <= 0
    gamma, m2, res2 = (
        jnp.where(small, lo, hi) for lo, hi in ((g_lo, g_hi), (m2_lo, m2_hi), (res_lo, res_hi))
    )
    alpha_f = gamma / (m2 + eps)
    alpha_g = jnp.where(small, jnp.sum(sigma / (sf + 1.0)) / (m2 + eps), alpha_f * r1 * r1)
    beta = (n - gamma) / (res2 + eps)
    return alpha_g, beta, alpha_f / beta, alpha_f * m2, res2


def logme(stats) -> dict:
    """LogME of one model: ``{"value", "alpha", "beta"}`` (``alpha`` and ``beta`` the
    means over classes of the fitted precisions, ``alpha`` in the features' units)."""
    n = stats.n
    e = _pow2_exponent(stats.x)
    one = jnp.ones((), stats.dtype)
    s, inv_s = jnp.ldexp(one, e), jnp.ldexp(one, -e)
    sigma, w2, x2 = _spectrum(stats, stats.x * inv_s, inv_s)
    yy = stats.counts  # ||y_c||^2 of an indicator
    eps_g = ref.EPSILON * s * s  # alpha's epsilon in G's units (no s^2: it may overflow)

    alpha, beta, t_f, am2, res2 = _first_step(sigma, w2, x2, yy, n, e)
    active = jnp.abs(t_f - 1.0) > ref.TOL  # the reference's stop after its first step

    def step(_, state):
        alpha, beta, am2, res2, active = state
        t = alpha / beta
        gamma, m2, new_res2 = _moments(sigma, w2, x2, yy, t)
        new_alpha = gamma / (m2 + eps_g)
        new_beta = (n - gamma) / (new_res2 + ref.EPSILON)
        moved = jnp.abs(new_alpha / new_beta - t) / t > ref.TOL

        def keep(new, old):
            return jnp.where(active, new, old)

        return (
            keep(new_alpha, alpha),
            keep(new_beta, beta),
            keep(new_alpha * m2, am2),
            keep(new_res2, res2),
            active & moved,
        )

    alpha, beta, am2, res2, _ = jax.lax.fori_loop(
        1, ref.MAX_ITER, step, (alpha, beta, am2, res2, active)
    )
    # The evidence at the last (alpha, beta), with ||m||^2 and the residual of the last
    # step's t, as the reference.
    t = alpha / beta
    evidence = (
        n / 2 * jnp.log(beta)
        - 0.5 * jnp.sum(jnp.log1p(sigma[:, None] / t), axis=0)
        - beta / 2 * res2
        - am2 / 2
        - n / 2 * math.log(2 * math.pi)
    ) / n
    return {
        "value": jnp.mean(evidence),
        "alpha": jnp.mean(alpha * s * s),
        "beta": jnp.mean(beta),
    }


def _reference(features, labels, logits=None) -> float:
    return ref.logme(features, labels)


METRICS = (
    Metric(
        "logme",
        logme,
        _reference,
        fields=("value", "alpha", "beta"),
        summary="LogME (You et al. 2021): maximum evidence of a Bayesian linear regression",
    ),
)
