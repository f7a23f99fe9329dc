"""NLEEP (Gaussian-mixture LEEP), batched (reference: :mod:`ncti_jax.reference.nleep`).

The reference's pipeline, each step with static shapes:

1. PCA to 80% explained variance. The number of kept directions ``k`` depends on the
   data, so the projection has the static width ``W = min(N, D)`` (padded ``D``) and the
   columns past ``k`` are zero; every later step masks them (a Gaussian's covariance is
   the identity there: no log-determinant, no Mahalanobis term, ``k`` in the
   normalising constant).
2. k-means++ seeding (greedy, ``2 + floor(ln K)`` trials, the reference's draws), then
   Lloyd's iterations, then EM for a full-covariance mixture of ``K = 5 C`` Gaussians
   from the hard k-means labels, with the reference's regularisation, tolerances and
   iteration caps.
3. LEEP over the mixture's posteriors.

The iterations are ``lax.while_loop``\\ s bounded by the reference's ``max_iter`` whose
predicate is the reference's stopping rule: vmapped over models, a converged model's
state is frozen (JAX selects its old carry) while the others go on, and the loop ends
once every model has stopped, so each model's result is the reference's early stop,
without paying ``max_iter`` iterations when none needs them.

Seeding: the k-means++ draws do not depend on the data, so :func:`seeding_draws` takes
them from the reference's own generator (``np.random.default_rng(seed)``, in the order it
takes them) while tracing; they are constants of the compiled kernel (no host round trip,
the same for every model). The kernel's seeding is then the reference's and its value
the reference's for the same seed (0), rounding apart: the registered reference is the
oracle. Only where every sample already sits on a centre (fewer distinct samples than
5C) does the reference switch to integer draws, and the two seedings part.
NLEEP itself varies with the seed (the k-means start): over seeds 0-9 on the tiny
regimes its standard deviation is 0.01-0.04 (range up to 0.14) for models between chance
and full separation, enough to swap models whose values are that close.

Scale: the features are centred, then divided by a power of two near their largest
entry (exact) and the regularisation ``reg_covar`` by its square, so float32 neither
overflows (features ~1e18) nor underflows (~1e-20) in products, and every posterior,
k-means decision and convergence test is the unscaled one's. What float32 cannot do is
resolve ``reg_covar`` itself where it is below the float32 rounding of a component's
covariance (a component with fewer distinct points than ``k`` directions, on features of
large spread: the massive and low-rank regimes): the Cholesky then fails (NaN) or, where
it gets through, the value can be off by up to ~1e-2 with nothing to show it. So the
engine computes NLEEP in float64 whatever the run's dtype (``Metric.dtype``; a
separate compiled call under ``jax.enable_x64``). Float64 resolves it except at ~1e18,
where the reference's Cholesky fails too (NaN, the same models).

Memory: the responsibilities are (N, K); each EM step forms the K (W, W) covariances
a chunk of components at a time (``_CHUNK``), never an (N, K, W) array whole. Cost: each
EM step is ``2 K N W^2`` (covariances and Mahalanobis terms) at the static width ``W``,
where the reference pays ``k^2``; the triangular inverses are plain JAX (see
:func:`_lower_inverse`), the Choleskys ``stats.linalg``'s.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from ..reference import nleep as ref
from . import Metric

SEED = 0
# Elements of the (chunk, N, W) centred copies of the data one EM step holds at once.
_CHUNK = 1 << 22


def _power_of_two_unit(xc: jax.Array) -> jax.Array:
    """``2**e`` near ``max |xc|``: dividing by it is exact and brings the data to ~1."""
    top = jnp.max(jnp.abs(xc))
    _, e = jnp.frexp(jnp.where(top > 0, top, 1.0))
    return jnp.ldexp(jnp.ones((), xc.dtype), e)


def principal_scores(stats, explained_variance: float = ref.EXPLAINED_VARIANCE):
    """The centred, power-of-two scaled features on their leading principal directions.

    Returns:
      ``(z, k, unit)``: ``z`` (N, W) scores, ``W = min(N, D)``, zero past column ``k``,
      the fewest directions whose cumulative explained-variance ratio exceeds
      ``explained_variance`` (as the reference counts them); the true scores are
      ``unit * z``.
    """
    xc = stats.centred
    unit = _power_of_two_unit(xc)
    xs = xc / unit
    n, d = xs.shape
    width = min(n, d)
    if n < d:  # static: the (N, N) Gram is the smaller eigenproblem; scores = U sqrt(lam)
        lam, u = stats.linalg.eigh(xs @ xs.T)
        lam, u = jnp.maximum(lam[::-1], 0.0), u[:, ::-1]
        scores = u[:, :width] * jnp.sqrt(lam[:width])
    else:
        lam, v = stats.linalg.eigh(xs.T @ xs)
        lam, v = jnp.maximum(lam[::-1], 0.0), v[:, ::-1]
        scores = xs @ v[:, :width]
    ratio = jnp.cumsum(lam) / jnp.sum(lam)
    n_true = jnp.minimum(n, stats.n_cols)  # the reference's SVD has min(N, D_m) values
    k = jnp.minimum(jnp.sum(ratio[:width] <= explained_variance) + 1, n_true)
    z = jnp.where(jnp.arange(width) < k, scores, 0.0)
    return z, k, unit


def _sq_distances(z: jax.Array, sq: jax.Array, centres: jax.Array) -> jax.Array:
    """(N, K) squared distances by the reference's expansion, clipped at 0."""
    d2 = sq[:, None] - 2.0 * z @ centres.T + jnp.sum(centres**2, axis=1)[None, :]
    return jnp.maximum(d2, 0.0)


def seeding_draws(seed: int, n: int, n_clusters: int) -> tuple[int, np.ndarray]:
    """The reference's k-means++ random draws for ``seed``: the first centre's index and
    the (K - 1, trials) uniforms, in the order it takes them from its generator.

    They do not depend on the data, so they are made while tracing (constants of the
    compiled kernel, no host round trip), and the kernel's seeding is the reference's.
    """
    rng = np.random.default_rng(seed)
    trials = 2 + int(np.log(n_clusters))
    first = int(rng.integers(n))
    draws = np.array([rng.random(trials) for _ in range(n_clusters - 1)])
    return first, draws.reshape(n_clusters - 1, trials)


def kmeans_plusplus(z: jax.Array, first, draws) -> jax.Array:
    """Greedy k-means++ seeding as the reference's, from its draws
    (:func:`seeding_draws`): (K,) indices of the chosen samples.

    Where every sample already sits on a centre (fewer distinct samples than clusters)
    the reference draws integers instead of uniforms, which shifts its stream: here
    the uniform picks the sample ``floor(u N)``, and the two seedings part from there.
    """
    n = z.shape[0]
    sq = jnp.sum(z**2, axis=1)
    draws = jnp.asarray(draws, z.dtype)
    closest = _sq_distances(z, sq, z[first][None])[:, 0]

    def step(closest, u):
        total = jnp.sum(closest)
        # NumPy's searchsorted (side="left"): how many cumulative sums lie below.
        below = jnp.cumsum(closest)[None, :] < (u * total)[:, None]
        drawn = jnp.sum(below, axis=1)
        anywhere = jnp.floor(u * n).astype(drawn.dtype)
        picks = jnp.minimum(jnp.where(total > 0, drawn, anywhere), n - 1)
        cand = jnp.minimum(closest[None, :], _sq_distances(z, sq, z[picks]).T)
        best = jnp.argmin(jnp.sum(cand, axis=1))
        return cand[best], picks[best]

    _, rest = jax.lax.scan(step, closest, draws)
    first = jnp.asarray(first, jnp.int32)
    return jnp.concatenate([first[None], rest.astype(jnp.int32)])


def lloyd(
    z: jax.Array,
    centres: jax.Array,
    k: jax.Array,
    max_iter: int = ref.KMEANS_MAX_ITER,
    tol: float = ref.KMEANS_TOL,
) -> jax.Array:
    """Lloyd's k-means from ``centres`` with the reference's stopping rules: (N,) labels."""
    n_clusters = centres.shape[0]
    sq = jnp.sum(z**2, axis=1)
    # tol times the mean variance of the k kept columns (the others are zero).
    var = jnp.mean((z - jnp.mean(z, axis=0)) ** 2, axis=0)
    threshold = tol * jnp.sum(var) / k
    labels0 = jnp.full(z.shape[0], -1, jnp.int32)

    def body(state):
        i, centres, labels, _ = state
        d2 = _sq_distances(z, sq, centres)
        new = jnp.argmin(d2, axis=1).astype(jnp.int32)
        same = jnp.all(new == labels)
        onehot = jax.nn.one_hot(new, n_clusters, dtype=z.dtype)
        counts = jnp.sum(onehot, axis=0)
        means = (onehot.T @ z) / jnp.maximum(counts, 1.0)[:, None]
        # An emptied cluster moves to the point farthest from its centre (the reference's).
        far = jnp.argmax(jnp.take_along_axis(d2, new[:, None], axis=1)[:, 0])
        moved = jnp.where(counts[:, None] > 0, means, z[far][None, :])
        shift = jnp.sum((moved - centres) ** 2)
        return (
            i + 1,
            jnp.where(same, centres, moved),
            jnp.where(same, labels, new),
            same | (shift <= threshold),
        )

    def running(state):
        i, _, _, done = state
        return (i < max_iter) & ~done

    state = (jnp.zeros((), jnp.int32), centres, labels0, jnp.zeros((), bool))
    _, centres, _, _ = jax.lax.while_loop(running, body, state)
    return jnp.argmin(_sq_distances(z, sq, centres), axis=1)


def _lower_inverse(chol: jax.Array) -> jax.Array:
    """``chol^{-1}`` of a lower-triangular matrix by forward substitution, row by row.

    The reference's ``solve_triangular(chol, I)`` in plain JAX: XLA:CPU's triangular
    solve costs milliseconds per small matrix inside the vmapped EM loop (5C of them per
    step), ten times the Cholesky itself; this is W vectorised steps, no LAPACK call.
    """
    width = chol.shape[-1]
    eye = jnp.eye(width, dtype=chol.dtype)

    def row(j, inv):
        # Rows >= j of ``inv`` are still zero, so ``chol[j] @ inv`` sums over i < j.
        return inv.at[j].set((eye[j] - chol[j] @ inv) / chol[j, j])

    return jax.lax.fori_loop(0, width, row, jnp.zeros_like(chol))


def gaussian_mixture(
    stats,
    z: jax.Array,
    k: jax.Array,
    labels: jax.Array,
    n_components: int,
    reg_covar: jax.Array,
    max_iter: int = ref.GMM_MAX_ITER,
    tol: float = ref.GMM_TOL,
):
    """EM for a full-covariance mixture from hard ``labels``, with the reference's rules.

    Returns:
      ``(posteriors, lower_bound, n_iter)``: (N, K) posteriors under the final
      parameters, the mean log-likelihood (in the units of ``z``) at the last E-step of
      the reference's loop, and the number of its steps.
    """
    n, width = z.shape
    active = jnp.arange(width) < k
    # The identity on the masked block: no log-determinant there, no Mahalanobis term.
    diagonal = jnp.diag(jnp.where(active, reg_covar, 1.0))
    const = k.astype(z.dtype) * math.log(2 * math.pi)
    empty = 10 * jnp.finfo(z.dtype).eps  # an empty component stays finite
    chunk = max(1, min(n_components, _CHUNK // (n * width)))

    def component(r):
        """M-step of one component from its responsibilities (N,), and its log-density."""
        nk = jnp.sum(r) + empty
        mean = r @ z / nk
        diff = z - mean  # zero in the masked columns
        cov = (r[:, None] * diff).T @ diff / nk + diagonal
        chol = stats.linalg.cholesky(cov)
        maha = jnp.sum((diff @ _lower_inverse(chol).T) ** 2, axis=1)
        log_det = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol)))
        return nk, -0.5 * (const + log_det + maha)

    def log_joint(resp):
        """(N, K) ``log w_j + log N(z_i | mu_j, Sigma_j)`` of the M-step from ``resp``."""
        if chunk >= n_components:
            nk, log_density = jax.vmap(component)(resp.T)
        else:
            nk, log_density = jax.lax.map(component, resp.T, batch_size=chunk)
        return log_density.T + jnp.log(nk / jnp.sum(nk))

    # One step is M-step, E-step: the reference's loop (E, M) shifted by one, so the
    # mixture is traced once. The step after the reference's last (``stop``) only turns
    # its M-step's parameters into the posteriors returned; its bound is not kept.
    def body(state):
        i, resp, bound, stop, _ = state
        joint = log_joint(resp)
        norm = jax.nn.logsumexp(joint, axis=1)
        new_bound = jnp.mean(norm)
        # NaN (a covariance that is not positive definite) stops too: it stays NaN.
        converged = (jnp.abs(new_bound - bound) < tol) | jnp.isnan(new_bound)
        return (
            i + jnp.where(stop, 0, 1),
            jnp.exp(joint - norm[:, None]),
            jnp.where(stop, bound, new_bound),
            stop | converged | (i + 1 >= max_iter),
            stop,
        )

    def running(state):
        return ~state[4]

    resp = jax.nn.one_hot(labels, n_components, dtype=z.dtype)
    false = jnp.zeros((), bool)
    state = (jnp.zeros((), jnp.int32), resp, jnp.array(-jnp.inf, z.dtype), false, false)
    n_iter, posteriors, bound, _, _ = jax.lax.while_loop(running, body, state)
    return posteriors, bound, n_iter


def leep_terms(posteriors: jax.Array, stats) -> jax.Array:
    """(N,) ``p(y_i | x_i) = sum_z phi_iz P(y_i | z)`` (a component with ``P(z) = 0``
    contributes nothing, as in the reference)."""
    joint = stats.onehot.T @ posteriors / stats.n  # (C, K)
    marginal = jnp.sum(joint, axis=0)
    live = marginal > 0
    conditional = jnp.where(live, joint / jnp.where(live, marginal, 1.0), 0.0)
    return jnp.sum(posteriors * conditional[stats.codes], axis=1)


def fit(
    stats,
    *,
    seed: int = SEED,
    component_ratio: int = ref.COMPONENT_RATIO,
    reg_covar: float = ref.REG_COVAR,
) -> dict:
    """Every step's result for one model: the kernel's fields plus ``init`` (K,), the
    samples the k-means started from (what the parity tests hand the reference)."""
    n_components = component_ratio * stats.n_classes
    z, k, unit = principal_scores(stats)
    init = kmeans_plusplus(z, *seeding_draws(seed, stats.n, n_components))
    labels = lloyd(z, z[init], k)
    # (sqrt(reg) / unit)^2: unit^2 alone under- or overflows float32 at scales 1e-20, 1e18.
    reg_scaled = (math.sqrt(reg_covar) / unit) ** 2
    posteriors, bound, n_iter = gaussian_mixture(stats, z, k, labels, n_components, reg_scaled)
    p = leep_terms(posteriors, stats)
    dtype = stats.dtype
    return {
        "value": jnp.mean(jnp.log(p)),
        "likelihood": jnp.mean(p),
        # The mixture's mean log-likelihood in the features' own units.
        "log_likelihood": bound - k.astype(dtype) * jnp.log(unit),
        "pca_components": k.astype(dtype),
        "em_iterations": n_iter.astype(dtype),
        "init": init,
    }


def nleep(stats) -> dict:
    """NLEEP (the papers' mean log-likelihood) and the raw quantities behind it."""
    out = fit(stats)
    del out["init"]
    return out


def _ref_nleep(features, labels, logits=None) -> float:
    return ref.nleep(features, labels)


METRICS = (
    Metric(
        "nleep",
        nleep,
        _ref_nleep,
        fields=("value", "likelihood", "log_likelihood", "pca_components", "em_iterations"),
        dtype="float64",
        summary="NLEEP (Li et al. 2021): LEEP over a 5C-Gaussian mixture on 80%-variance PCA "
        "(seeded k-means; the value varies with the seed)",
    ),
)
