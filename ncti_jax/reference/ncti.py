"""NCTI in plain NumPy/SciPy, float64, one model at a time.

The oracle for the tests and the baseline for the benchmarks. It follows the
algorithm of ``docs/algorithm.md`` step by step and takes a different numerical
route from the JAX engine wherever that is cheap (SVDs of the data instead of Gram matrices,
explicit per-class covariances, data-dependent slicing instead of masks), so
the two check each other.

Example:
  >>> import numpy as np
  >>> from ncti_jax import reference
  >>> rng = np.random.default_rng(0)
  >>> y = rng.integers(0, 3, 200)
  >>> comps = reference.model_components(rng.normal(size=(200, 16)) + y[:, None], y)
  >>> comps.solver
  'svd'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import scipy.linalg
import scipy.special

TOL = 1e-4  # scikit-learn's LinearDiscriminantAnalysis tol
SHRINKAGE_FLOOR = 1e-10
SHRINKAGE_TOP = 32
NO_SCATTER = 16  # the eigen LDA is undefined below this many eps of within / total scatter


@dataclasses.dataclass(frozen=True)
class ReferenceComponents:
    """NCTI's raw components of one model, and how they were obtained."""

    etf: float
    ncc: float
    vc: float
    solver: str  # "svd" or "eigen"
    shrinkage: float
    pca_rank: int  # principal directions kept


@dataclasses.dataclass(frozen=True)
class ReferenceResult:
    """NCTI of a zoo: arrays of shape (M,) in the order of ``models``."""

    models: tuple[str, ...]
    etf: np.ndarray
    ncc: np.ndarray
    vc: np.ndarray
    etf_norm: np.ndarray
    ncc_norm: np.ndarray
    vc_norm: np.ndarray
    ncti: np.ndarray
    ranking: np.ndarray  # model indices, best first
    solver: tuple[str, ...]
    shrinkage: np.ndarray
    pca_rank: np.ndarray


def remap_labels(labels) -> tuple[np.ndarray, int]:
    """Labels -> (codes in 0..C-1 by sorted unique value, C)."""
    y = np.asarray(labels).reshape(-1)
    classes, codes = np.unique(y, return_inverse=True)
    return codes.reshape(-1), len(classes)


def pca(x: np.ndarray, n_components: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact PCA: (N, k') projection and its k' explained variances, decreasing.

    ``k' = min(n_components, N - 1, D)``, less any direction whose variance is at
    the rounding level (constant features keep none).
    """
    x = np.asarray(x, dtype=np.float64)
    n, d = x.shape
    k = min(n_components, n - 1, d)
    mean = x.mean(axis=0)
    xc = x - mean
    if n >= d:
        evals, evecs = scipy.linalg.eigh(xc.T @ xc, subset_by_index=(d - k, d - 1))
        evals, evecs = evals[::-1], evecs[:, ::-1]
        variances = np.clip(evals, 0.0, None) / (n - 1)
        z = xc @ evecs
    else:
        _, s, vt = np.linalg.svd(xc, full_matrices=False)
        variances = s[:k] ** 2 / (n - 1)
        z = xc @ vt[:k].T
    floor = 16 * np.finfo(np.float64).eps * max(variances[0] if k else 0.0, np.max(mean**2))
    keep = variances > floor
    return z[:, keep], variances[keep]


def _class_means(z: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    return np.stack([z[y == c].mean(axis=0) for c in range(n_classes)])


def lda_svd(z: np.ndarray, y: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's svd solver: (transform, decision function)."""
    n, k = z.shape
    priors = np.bincount(y, minlength=n_classes) / n
    means = _class_means(z, y, n_classes)
    xbar = priors @ means
    within = z - means[y]
    std = within.std(axis=0)
    std[std == 0] = 1.0
    _, s, vt = scipy.linalg.svd(np.sqrt(1.0 / n) * (within / std), full_matrices=False)
    rank = int(np.sum(s > TOL))
    w1 = (vt[:rank] / std).T / s[:rank]
    between = (np.sqrt(n * priors / (n_classes - 1)) * (means - xbar).T).T @ w1
    _, s2, vt2 = scipy.linalg.svd(between, full_matrices=False)
    rank2 = int(np.sum(s2 > TOL * s2[0])) if s2.size else 0
    scalings = w1 @ vt2[:rank2].T
    projection = (z - xbar) @ scalings
    coef = (means - xbar) @ scalings
    decision = projection @ coef.T - 0.5 * np.sum(coef**2, axis=1) + np.log(priors)
    return projection[:, : min(n_classes - 1, k)], decision


def _cov(a: np.ndarray) -> np.ndarray:
    centred = a - a.mean(axis=0)
    return centred.T @ centred / a.shape[0]


def lda_eigen(
    z: np.ndarray, y: np.ndarray, n_classes: int, shrinkage: float
) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's eigen solver with fixed shrinkage: (transform, decision function).

    scikit-learn solves ``eigh(Sb, Sw)`` with ``Sb = St - Sw``. We solve
    ``eigh(M, Sw)`` with ``M = cov_t - (mu_t / mu_w) cov_w`` (``mu`` = trace / k):
    ``Sb = (1 - t) M + (mu_t / mu_w - 1) Sw``, so the eigenvectors and their order
    are the same for every ``t < 1``, and at ``t == 1`` (features so small that
    the shrinkage rule gives exactly 1, where ``Sb`` is a multiple of ``Sw`` and
    scikit-learn's basis is arbitrary) ``M`` gives the limit ``t -> 1``.
    """
    n, k = z.shape
    priors = np.bincount(y, minlength=n_classes) / n
    means = _class_means(z, y, n_classes)
    cov_w = sum(priors[c] * _cov(z[y == c]) for c in range(n_classes))
    cov_t = _cov(z)
    mu_w, mu_t = np.trace(cov_w) / k, np.trace(cov_t) / k
    if mu_t > 0 and mu_w <= NO_SCATTER * np.finfo(np.float64).eps * mu_t:
        # No class has a spread above rounding: Sw shrinks to zero with its own trace and
        # the LDA is undefined (scikit-learn raises); the components are NaN.
        nan = np.full((n, min(n_classes - 1, k)), np.nan)
        return nan, np.full((n, n_classes), np.nan)
    sw = (1.0 - shrinkage) * cov_w + shrinkage * mu_w * np.eye(k)
    m = cov_t - (mu_t / mu_w) * cov_w if mu_w > 0 else cov_t - sw
    evals, evecs = scipy.linalg.eigh(m, sw)
    evecs = evecs[:, np.argsort(evals)[::-1]]
    coef = means @ evecs @ evecs.T
    decision = z @ coef.T - 0.5 * np.sum(means * coef, axis=1) + np.log(priors)
    return (z @ evecs)[:, : min(n_classes - 1, k)], decision


def nuclear_norm(a: np.ndarray) -> float:
    return float(np.sum(np.linalg.svd(a, compute_uv=False))) if a.size else 0.0


def model_components(x, labels, n_components: int = 64) -> ReferenceComponents:
    """NCTI's raw components (etf, ncc, vc) of one model's (N, D) features."""
    y, n_classes = remap_labels(labels)
    n = y.shape[0]
    z, variances = pca(x, n_components)
    shrinkage = max(float(np.exp(-np.sum(variances[:SHRINKAGE_TOP]))), SHRINKAGE_FLOOR)
    solver = "svd" if shrinkage == SHRINKAGE_FLOOR else "eigen"
    if z.shape[1] == 0:  # no variance: LDA has nothing to project; it predicts the priors
        priors = np.bincount(y, minlength=n_classes) / n
        projection = np.zeros((n, 0))
        decision = np.broadcast_to(np.log(priors), (n, n_classes))
    elif solver == "svd":
        projection, decision = lda_svd(z, y, n_classes)
    else:
        projection, decision = lda_eigen(z, y, n_classes, shrinkage)
    if not np.isfinite(decision).all():  # the LDA is undefined (see lda_eigen)
        return ReferenceComponents(np.nan, np.nan, np.nan, solver, shrinkage, int(z.shape[1]))
    etf = nuclear_norm(projection - projection.mean(axis=0))
    probs = scipy.special.softmax(decision, axis=1)
    ncc = float(np.mean(probs[np.arange(n), y]))
    vc = float(np.log(sum(nuclear_norm(probs[y == c]) for c in range(n_classes))))
    return ReferenceComponents(etf, ncc, vc, solver, shrinkage, int(z.shape[1]))


def min_max(values: np.ndarray) -> np.ndarray:
    """Min-max normalisation of a (M,) vector; a constant vector maps to 0."""
    values = np.asarray(values, dtype=np.float64)
    span = values.max() - values.min()
    return np.zeros_like(values) if span == 0 else (values - values.min()) / span


def score_zoo(
    features: Mapping[str, np.ndarray], labels, n_components: int = 64
) -> ReferenceResult:
    """NCTI of a zoo given as ``{model name: (N, D_m) features}``."""
    models = tuple(features)
    comps = [model_components(features[m], labels, n_components) for m in models]
    etf, ncc, vc = (np.array([getattr(c, f) for c in comps]) for f in ("etf", "ncc", "vc"))
    etf_n, ncc_n, vc_n = min_max(etf), min_max(ncc), min_max(vc)
    ncti = etf_n + ncc_n - vc_n
    return ReferenceResult(
        models=models,
        etf=etf,
        ncc=ncc,
        vc=vc,
        etf_norm=etf_n,
        ncc_norm=ncc_n,
        vc_norm=vc_n,
        ncti=ncti,
        ranking=np.lexsort((np.arange(len(models)), -ncti)),
        solver=tuple(c.solver for c in comps),
        shrinkage=np.array([c.shrinkage for c in comps]),
        pca_rank=np.array([c.pca_rank for c in comps]),
    )
