"""ETran's per-model parts, batched, and its zoo-level combination (reference:
:mod:`ncti_jax.reference.etran`, paper settings: the source logits' energy and the
shrunk Fisher LDA).

ETran ranks a zoo; it is not a number of one model. The kernel returns each model's
two parts and :attr:`Metric.combine` makes the values on the host, with the
reference's rule ``0.15 minmax(E) + 0.85 minmax(L)`` over the models scored together
(:func:`ncti_jax.reference.etran.etran_combine`): a model's ETran depends on the
other models of the call, so a zoo must be combined once, over all of its models.

- Energy ``E``: ``e_i = logsumexp_z logits[i, z]`` over the real source classes
  (padded ones are ``-inf`` in :attr:`ncti_jax._stats.ModelStats.logits`, adding
  ``exp(-inf) = 0``), and ``E`` the mean of the ``n_keep`` lowest ``e_i``, ``n_keep =
  max(1, floor(5 N / 1000))`` (0.5 % of the samples; static since N is).
- LDA score ``L = 1/N sum_i p(y_i | x_i)`` of the classifier ``p(c | x) =
  softmax_c(x^T S^-1 mu_c - mu_c^T S^-1 mu_c / 2 + log pi_c)`` with the shrunk
  within-class covariance ``S = (1 - t) Sw + t tr(Sw) / D I``, ``Sw`` the within-class
  scatter over N, ``t = max(exp(-5 rho), 1e-10)`` and ``rho`` the reference's power
  estimate of ``Sw``'s top eigenvalue (3 double steps from ``Sw 1``), ``D`` the
  model's true width ``n_cols``. (SFDA's first step is this classifier.)

Numerics, where they differ from the reference's direct formula (same function):

- the features are centred by their column means before anything is formed: the
  softmax over classes is unchanged by a common shift of ``x`` and every ``mu_c``
  (the shift only adds terms independent of ``c``), and offsets of 1e4 no longer
  cancel inside ``x^T S^-1 mu_c``;
- the centred features are scaled by a power of two ``2^-k`` bringing their largest
  entry into [1/2, 1): ``S`` is homogeneous of degree 2 in the features, so the
  classifier is unchanged exactly, while ``Sw`` no longer overflows (1e18 features)
  or flushes to zero (1e-20) in float32; ``rho`` is returned to the input's units
  by ``ldexp(rho, 2k)`` before the shrinkage rule reads it (an overflow to ``inf``
  gives ``t = 1e-10``, as the true ``rho`` would);
- padded columns get an identity block in ``S`` (they are decoupled from the real
  columns and their means are 0, so they add nothing), not ``t tr(Sw)/D``, which
  could be 0;
- wide models (N < D, a static choice): every ``x_i - m``, every ``mu_c - m`` and
  the range of ``Sw`` lie in the row space of the centred features, an invariant
  subspace of ``S``, so the classifier is solved exactly in an orthonormal basis of
  it (the right singular vectors of the centred features): N x N instead of D x D;
- float32 only: where ``S`` at the shrinkage floor ``t = 1e-10`` is singular to
  float32 precision (``Sw`` rank-deficient: N < D, dead ReLU units, low rank) its
  Cholesky fails; only then the ridge is raised to ``64 eps rho`` (the smallest a
  float32 factorisation resolves). The directions ``Sw`` lacks still dominate the
  classifier, so ``L`` moves little (measured <= 1e-5 relative on the rank-deficient
  regimes) where the plain float32 solve would be NaN.

A zero within-class scatter (every class a single repeated point) has no classifier:
the reference's power estimate divides 0 by 0 and its Cholesky refuses the NaN; the
kernel's ``L`` is NaN (the energy is still computed).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..reference import etran as ref
from ..reference import sfda as ref_sfda
from . import Metric

# The smallest ridge, relative to Sw's top eigenvalue, a float32 Cholesky resolves.
RIDGE32 = 64 * float(np.finfo(np.float32).eps)


def energy_keep(n: int, percent: float = ref.ENERGY_PERCENT) -> int:
    """How many of the ``n`` lowest energies are averaged (the reference's ``"bot"`` rule)."""
    return max(1, round(percent * 10) * n // 1000)


def energy(stats) -> jax.Array:
    """Mean of the ``energy_keep(N)`` lowest log-sum-exps of the real source logits."""
    e = jax.nn.logsumexp(stats.logits, axis=1)
    return jnp.mean(jnp.sort(e)[: energy_keep(stats.n)])


def _power_estimate(matvec, v: jax.Array) -> jax.Array:
    """The reference's top-eigenvalue estimate of a symmetric PSD ``a`` (given as
    ``matvec(v) = a @ v``): ``|a^(2k+1) 1| / |a^(2k) 1|`` after ``2k`` normalised
    products from ``v = 1`` (k = 3)."""
    for _ in range(2 * ref_sfda.POWER_ITERATIONS):  # static count, as the reference's
        v = matvec(v)
        v = v / jnp.linalg.norm(v)
    return jnp.linalg.norm(matvec(v))


def fisher_true_class_probs(stats) -> tuple[jax.Array, jax.Array]:
    """(N,) ``p(y_i | x_i)`` of the shrunk Fisher classifier fitted on the features, and
    its shrinkage ``t`` (see the module notes for the centring, the scaling and the
    basis of the wide case)."""
    n = stats.n
    xc = stats.centred
    # 2^-k with the largest |entry| in [1/2, 1) (an all-zero matrix keeps k = 0).
    _, k = jnp.frexp(jnp.max(jnp.abs(xc)))
    xs = jnp.ldexp(xc, -k)
    means = jax.ops.segment_sum(xs, stats.codes, num_segments=stats.n_classes)
    means = means / stats.counts[:, None]  # (C, D) class means of the scaled features
    xw = xs - means[stats.codes]  # Sw = xw^T xw / N = sum_c pi_c cov_c, scaled by 4^-k
    trace = jnp.sum(xw**2) / n
    # No within-class scatter beyond the rounding of the class means (the rule of
    # NCTI's shrinkage LDA, ncti_jax._lda.NO_SCATTER): no classifier.
    no_scatter = trace <= 16 * jnp.finfo(stats.dtype).eps * jnp.sum(xs**2) / n
    ones = jnp.ones(stats.width, stats.dtype)  # padded entries meet zero columns of Sw
    if n < stats.width:
        # Wide (N < D, static): x_i - m, mu_c - m and the range of Sw all lie in the
        # row space of the centred features, which S maps into itself (S = a Sw + b I):
        # the classifier is exact in an orthonormal basis q (D, N) of that space, an
        # N x N system instead of D x D.
        sw_rho = _power_estimate(lambda v: xw.T @ (xw @ v) / n, ones)
        q = stats.linalg.svd(xs)[1][:, :n]
        xs, means, xw = xs @ q, means @ q, xw @ q
        sw = (xw.T @ xw) / n
        real = jnp.ones((n, n), bool)
    else:
        sw = (xw.T @ xw) / n
        sw_rho = _power_estimate(lambda v: sw @ v, ones)
        # Padded columns get an identity block: decoupled, and their means are 0.
        real = stats.col_mask[:, None] & stats.col_mask[None, :]
    rho = jnp.ldexp(sw_rho, 2 * k)
    t = jnp.maximum(jnp.exp(-5.0 * rho), ref_sfda.SHRINKAGE_FLOOR)
    ridge = t * trace / stats.n_cols.astype(stats.dtype)
    eye = jnp.eye(sw.shape[0], dtype=stats.dtype)
    s = jnp.where(real, (1.0 - t) * sw + ridge * eye, eye)
    chol = stats.linalg.cholesky(s)
    if stats.dtype == jnp.float32:
        # The floor t = 1e-10 is below float32's resolution of S: where Sw is
        # rank-deficient (N < D, dead ReLU units) the Cholesky fails (NaN). Only
        # there, raise the ridge to the smallest one float32 resolves.
        failed = ~jnp.all(jnp.isfinite(chol))
        retry = stats.linalg.cholesky(s + jnp.where(real, RIDGE32 * sw_rho, 0.0) * eye)
        chol = jnp.where(failed, retry, chol)
    coef = stats.linalg.cho_solve(chol, means.T)  # (D, C) = S^-1 M^T
    log_prior = jnp.log(stats.counts / n)
    logits = xs @ coef - 0.5 * jnp.sum(means.T * coef, axis=0) + log_prior
    log_p = jax.nn.log_softmax(logits, axis=1)
    p_true = jnp.exp(jnp.take_along_axis(log_p, stats.codes[:, None], axis=1)[:, 0])
    # No within-class scatter: no classifier (the reference divides 0 by 0). Said
    # explicitly: rounding leaves a scatter of ~eps^2, and XLA:CPU's batched matmuls may
    # skip the zero operands a NaN would otherwise have to pass through.
    return jnp.where(no_scatter, jnp.nan, p_true), t


def etran_parts(stats) -> dict:
    p_true, _ = fisher_true_class_probs(stats)
    return {"energy": energy(stats), "lda": jnp.mean(p_true)}


def _combine(fields) -> np.ndarray:
    return ref.etran_combine(
        np.asarray(fields["energy"], np.float64), np.asarray(fields["lda"], np.float64)
    )


def _ref_parts(features, labels, logits=None) -> tuple[float, float]:
    """The reference's ``(energy, lda)`` of one model, in the kernel's field order (ETran
    itself exists only over a zoo: :func:`ncti_jax.reference.etran.etran_zoo`)."""
    if logits is None:
        # The reference would take the features' energy (the repository's choice),
        # not the paper's logits energy the kernel computes.
        raise ValueError("ETran (paper) needs the source classifier's logits")
    return ref.etran_parts(features, labels, logits)


METRICS = (
    Metric(
        "etran",
        etran_parts,
        _ref_parts,
        fields=("energy", "lda"),
        needs_logits=True,
        summary="ETran (Gholami et al. 2023): 0.15 minmax(logits energy) + 0.85 minmax(LDA score)",
        combine=_combine,
    ),
)
