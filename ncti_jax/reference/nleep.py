"""NLEEP (Gaussian-mixture LEEP) in plain NumPy/SciPy, float64, seeded.

Source of truth: TencentARC/SFDA ``metrics.py`` (``NLEEP``; the NCTI authors' repository
ships an NLEEP too, not compared here); paper: Li et al., "Ranking Neural Checkpoints", CVPR 2021 (NLEEP), after
Nguyen et al., "LEEP", ICML 2020. Written from the math; no code of the original is used,
and no scikit-learn: the PCA, k-means and EM below are this module's own.

Algorithm, features ``X`` (N, D), labels ``y`` in ``0..C-1``:

1. PCA: keep the ``k`` leading principal directions, ``k`` the smallest count whose
   cumulative explained-variance ratio exceeds ``explained_variance`` (0.8), as
   scikit-learn's ``PCA(n_components=0.8)`` picks it; ``Z`` = the centred projection.
2. A Gaussian mixture with ``K = component_ratio * C`` components (5C), full covariances,
   fitted to ``Z`` by EM with scikit-learn's ``GaussianMixture`` defaults the original
   relies on: ``reg_covar = 1e-6`` added to every covariance's diagonal, ``tol = 1e-3`` on
   the change of the mean log-likelihood, ``max_iter = 100``, one initialisation from the
   hard labels of k-means (k-means++ seeding with ``2 + floor(ln K)`` local trials,
   Lloyd's iterations to ``max_iter = 300`` / ``tol = 1e-4`` times the mean feature
   variance, like scikit-learn's ``KMeans``). The original passes no ``random_state``:
   its scores change from run to run; here ``seed`` fixes the k-means seeding, and the
   EM itself is deterministic.
3. LEEP on the mixture's posteriors ``phi_i`` (N, K): ``P(y, z) = (1/N) sum_{i: y_i = y}
   phi_iz``, ``P(y | z) = P(y, z) / P(z)``, ``p_i = sum_z phi_iz P(y_i | z)``.
4. ``variant="paper"`` (default): ``NLEEP = (1/N) sum_i log p_i``, the definition of both
   papers. ``variant="repository"``: ``(1/N) sum_i p_i``, what ``metrics.py`` computes
   (it drops the log). Both are in (-inf, 0] and (0, 1] respectively; the ranking of a
   zoo may differ between them (the mean of logs punishes a few badly explained samples
   far more).

Parameters (keyword arguments of :func:`nleep`, the original's values as defaults):
``component_ratio`` 5, ``explained_variance`` 0.8, ``seed`` 0 (k-means++ seeding),
``variant`` ``"paper"``, ``max_iter`` 100, ``tol`` 1e-3, ``reg_covar`` 1e-6;
``init_indices`` (default None): start the k-means from those samples instead of the
seeded k-means++ (a start given by another implementation, whatever its PCA's signs).

Zero-padded columns change nothing: they add no variance, so the PCA projection and
everything after it are the same; the metric never uses D.

Differences from the original:
- seeded (the original's GaussianMixture has ``random_state=None``);
- labels remapped to ``0..C-1`` (the original indexes classes by raw label value);
- a component with zero total posterior (``P(z) = 0``, possible when every posterior
  underflows) makes the original's ``P(y | z)`` 0/0 = NaN and its score NaN; here such a
  component contributes nothing (its posteriors are all zero anyway);
- the k-means is this module's, so for a given seed its partition is not scikit-learn's
  (scikit-learn's random stream cannot be reproduced without copying it): parity is
  checked from a matched initialisation, see below.

Checked against TencentARC/SFDA/metrics.py (``NLEEP``, transcribed outside this
repository; its GaussianMixture given this module's k-means initialisation as
``weights_init``/``means_init``/``precisions_init``, its PCA scikit-learn's) on random
inputs, 24 of them (N in 150..500, D in 10..64, C in 2..6 so K = 10..30 components, the
PCA keeping 3..8 directions; weakly and well separated classes): max rel diff 8.3e-15
(repository variant) and 4.6e-12 (paper variant, the transcription with the log added;
five well separated inputs score 0 up to rounding there, abs diff 5.3e-17).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.linalg
import scipy.special

from .ncti import remap_labels

COMPONENT_RATIO = 5
EXPLAINED_VARIANCE = 0.8
GMM_MAX_ITER = 100
GMM_TOL = 1e-3
REG_COVAR = 1e-6
KMEANS_MAX_ITER = 300
KMEANS_TOL = 1e-4
VARIANTS = ("paper", "repository")


def pca_explained(x: np.ndarray, explained_variance: float = EXPLAINED_VARIANCE) -> np.ndarray:
    """Centred projection on the fewest leading principal directions whose cumulative
    explained-variance ratio exceeds ``explained_variance``."""
    x = np.asarray(x, dtype=np.float64)
    xc = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    ratio = np.cumsum(s**2) / np.sum(s**2)
    k = min(int(np.searchsorted(ratio, explained_variance, side="right")) + 1, len(s))
    return xc @ vt[:k].T


def _sq_distances(z: np.ndarray, centres: np.ndarray) -> np.ndarray:
    d2 = (z**2).sum(axis=1)[:, None] - 2.0 * z @ centres.T + (centres**2).sum(axis=1)[None, :]
    return np.maximum(d2, 0.0)


def kmeans_plusplus(z: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy k-means++ seeding: (k, d) initial centres."""
    n = z.shape[0]
    trials = 2 + int(np.log(k))
    centres = [z[rng.integers(n)]]
    closest = _sq_distances(z, centres[0][None])[:, 0]
    for _ in range(1, k):
        total = closest.sum()
        if total <= 0:  # fewer distinct points than clusters: any point will do
            candidates = rng.integers(n, size=trials)
        else:
            cdf = np.cumsum(closest)
            candidates = np.searchsorted(cdf, rng.random(trials) * total)
            candidates = np.minimum(candidates, n - 1)
        cand_d2 = np.minimum(closest[None, :], _sq_distances(z, z[candidates]).T)
        best = int(np.argmin(cand_d2.sum(axis=1)))
        centres.append(z[candidates[best]])
        closest = cand_d2[best]
    return np.stack(centres)


def lloyd(
    z: np.ndarray,
    centres: np.ndarray,
    max_iter: int = KMEANS_MAX_ITER,
    tol: float = KMEANS_TOL,
) -> np.ndarray:
    """Lloyd's k-means from ``centres``; returns the hard labels (N,).

    Stops when the labels no longer change or the centres move by less than
    ``tol * mean feature variance`` (sum of squared shifts); an emptied cluster is moved
    to the point farthest from its centre.
    """
    centres = centres.copy()
    k = centres.shape[0]
    threshold = tol * np.mean(np.var(z, axis=0))
    labels = None
    for _ in range(max_iter):
        d2 = _sq_distances(z, centres)
        new_labels = np.argmin(d2, axis=1)
        if labels is not None and np.array_equal(new_labels, labels):
            break
        labels = new_labels
        new_centres = centres.copy()
        counts = np.bincount(labels, minlength=k)
        for c in range(k):
            if counts[c]:
                new_centres[c] = z[labels == c].mean(axis=0)
            else:
                far = int(np.argmax(d2[np.arange(len(z)), labels]))
                new_centres[c] = z[far]
        shift = np.sum((new_centres - centres) ** 2)
        centres = new_centres
        if shift <= threshold:
            break
    return np.argmin(_sq_distances(z, centres), axis=1)


@dataclasses.dataclass(frozen=True)
class Mixture:
    """A fitted full-covariance Gaussian mixture and the posteriors of its data."""

    weights: np.ndarray  # (K,)
    means: np.ndarray  # (K, d)
    covariances: np.ndarray  # (K, d, d), reg_covar included
    posteriors: np.ndarray  # (N, K) under the final parameters
    lower_bound: float  # mean log-likelihood at the last E-step of the loop
    n_iter: int
    converged: bool


def gaussian_parameters(z: np.ndarray, resp: np.ndarray, reg_covar: float = REG_COVAR):
    """M-step: (weights, means, covariances) from responsibilities (N, K)."""
    nk = resp.sum(axis=0) + 10 * np.finfo(np.float64).eps  # an empty component stays finite
    means = resp.T @ z / nk[:, None]
    d = z.shape[1]
    covs = np.empty((len(nk), d, d))
    for j in range(len(nk)):
        diff = z - means[j]
        covs[j] = (resp[:, j, None] * diff).T @ diff / nk[j] + reg_covar * np.eye(d)
    return nk / nk.sum(), means, covs


def log_joint(z: np.ndarray, weights, means, covs) -> np.ndarray:
    """``log w_j + log N(z_i | mu_j, Sigma_j)``, (N, K), through Cholesky factors."""
    n, d = z.shape
    out = np.empty((n, len(weights)))
    for j in range(len(weights)):
        chol = scipy.linalg.cholesky(covs[j], lower=True)
        # The inverse factor once, then a product: solve_triangular with N right-hand
        # sides is needlessly slow in some LAPACK builds.
        inv_chol = scipy.linalg.solve_triangular(chol, np.eye(d), lower=True)
        sol = inv_chol @ (z - means[j]).T
        log_det = 2.0 * np.sum(np.log(np.diag(chol)))
        out[:, j] = -0.5 * (d * np.log(2 * np.pi) + log_det + np.sum(sol**2, axis=0))
    return out + np.log(weights)


def gaussian_mixture(
    z: np.ndarray,
    n_components: int,
    *,
    seed: int = 0,
    max_iter: int = GMM_MAX_ITER,
    tol: float = GMM_TOL,
    reg_covar: float = REG_COVAR,
    init_labels: np.ndarray | None = None,
    init_centres: np.ndarray | None = None,
) -> Mixture:
    """EM for a full-covariance Gaussian mixture, initialised from k-means labels.

    ``init_labels`` (N,) in ``0..n_components-1`` replaces the seeded k-means;
    ``init_centres`` (n_components, d) replaces only its k-means++ seeding (Lloyd's
    iterations start from them). The loop:
    E-step (mean log-likelihood ``L_t``), M-step; stop once ``|L_t - L_{t-1}| < tol``;
    the posteriors returned are those of the final parameters.
    """
    z = np.asarray(z, dtype=np.float64)
    if init_labels is None:
        if init_centres is None:
            init_centres = kmeans_plusplus(z, n_components, np.random.default_rng(seed))
        init_labels = lloyd(z, np.asarray(init_centres, dtype=np.float64))
    resp = np.eye(n_components)[init_labels]
    params = gaussian_parameters(z, resp, reg_covar)
    lower_bound, converged, n_iter = -np.inf, False, 0
    for n_iter in range(1, max_iter + 1):  # noqa: B007 (n_iter is reported)
        joint = log_joint(z, *params)
        norm = scipy.special.logsumexp(joint, axis=1)
        previous, lower_bound = lower_bound, float(np.mean(norm))
        params = gaussian_parameters(z, np.exp(joint - norm[:, None]), reg_covar)
        if abs(lower_bound - previous) < tol:
            converged = True
            break
    joint = log_joint(z, *params)
    posteriors = np.exp(joint - scipy.special.logsumexp(joint, axis=1)[:, None])
    return Mixture(*params, posteriors, lower_bound, n_iter, converged)


def leep_from_posteriors(posteriors: np.ndarray, y: np.ndarray, n_classes: int, variant: str):
    """LEEP of (N, Z) source posteriors for labels ``y`` in ``0..n_classes-1``."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, not {variant!r}")
    n = len(y)
    joint = np.zeros((n_classes, posteriors.shape[1]))
    np.add.at(joint, y, posteriors / n)
    marginal = joint.sum(axis=0)
    conditional = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)
    p = np.sum(posteriors * conditional[y], axis=1)  # p(y_i | x_i)
    return float(np.mean(np.log(p)) if variant == "paper" else np.mean(p))


def nleep(
    features: np.ndarray,
    labels,
    *,
    component_ratio: int = COMPONENT_RATIO,
    explained_variance: float = EXPLAINED_VARIANCE,
    seed: int = 0,
    variant: str = "paper",
    max_iter: int = GMM_MAX_ITER,
    tol: float = GMM_TOL,
    reg_covar: float = REG_COVAR,
    init_indices: np.ndarray | None = None,
) -> float:
    """NLEEP of one model's (N, D) features (higher: more transferable).

    ``variant="paper"``: mean log-likelihood of the labels (the papers' definition);
    ``"repository"``: mean likelihood, as ``metrics.py`` computes it.
    ``init_indices`` (``component_ratio * C``,) sample indices: the k-means starts from
    those samples' projections instead of its seeded k-means++ (``seed`` is then unused).
    Indices, not coordinates, because they mean the same start whatever signs or rotation
    another PCA gives its directions: how a differently seeded implementation (the JAX
    kernel, :mod:`ncti_jax.metrics.nleep`) is compared with this one from one start.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, not {variant!r}")
    y, n_classes = remap_labels(labels)
    z = pca_explained(features, explained_variance)
    mixture = gaussian_mixture(
        z,
        component_ratio * n_classes,
        seed=seed,
        max_iter=max_iter,
        tol=tol,
        reg_covar=reg_covar,
        init_centres=None if init_indices is None else z[np.asarray(init_indices)],
    )
    return leep_from_posteriors(mixture.posteriors, y, n_classes, variant)
