"""H-score and the shrinkage (Ledoit-Wolf) H-score in plain NumPy, float64, one model at a time.

**H-score** (Bao et al., ICIP 2019)::

    H = tr( pinv(cov(f)) cov(E[f | y]) ) = tr( pinv(S_t) S_b )

with ``S_t = Xc^T Xc`` the total and ``S_b = sum_c n_c (mu_c - mu)(mu_c - mu)^T`` the
between-class scatter of the centred features ``Xc`` (the two covariances share their
normalisation, which cancels). Source of truth: TLlib ``tllib/ranking/hscore.py``
(``h_score``), which forms both ``D x D`` covariances and takes ``pinv(cov(f), rcond=1e-15)``.

Route taken here (a different one): the thin SVD ``Xc = U s V^T``. Since ``S_b = Xc^T P Xc``
with ``P`` the projector onto the span of the class indicators,
``tr(pinv(S_t) S_b) = sum_i q_i`` over the kept directions, where
``q_i = sum_c (1_c . u_i)^2 / n_c`` is the squared norm of the projection of the left
singular vector ``u_i`` onto the class indicators. A direction is kept when its variance
``s_i^2`` exceeds ``rcond * s_0^2``: the same cutoff as the original's ``pinv(cov(f), rcond)``,
but applied to variances computed from the data (rounding at ``eps^2`` of the top one) instead
of to the eigenvalues of a formed covariance (rounding at ``eps``).

**Shrinkage H-score** (Ibrahim et al., NeurIPS 2021, "Newer is not always better"; the
``regularized_h_score`` of TLlib's ``hscore.py``; the ``HScore`` estimator of
flairNLP/transformer-ranker ``transformer_ranker/estimators/hscore.py``)::

    H_a = (1 - a) tr( pinv((1 - a) S + a mu I) S_b / (N - 1) )

with ``S = Xc^T Xc / N`` the maximum-likelihood covariance, ``mu = tr(S) / D`` and ``a`` the
Ledoit-Wolf shrinkage (scikit-learn's ``ledoit_wolf_shrinkage``)::

    a = min(b2, d2) / d2   (0 when d2 == 0),
    d2 = ||S - mu I||_F^2 / D,
    b2 = (sum_k ||x_k||^4 / N - ||S||_F^2) / (N D)      (x_k the centred rows).

Here everything comes from the singular values ``s`` and the row norms: ``S``'s eigenvalues
are ``s_i^2 / N`` on the row space of ``Xc``, where ``S_b`` lives, so
``H_a = (1 - a) / (N - 1) * sum_i s_i^2 q_i / ((1 - a) s_i^2 / N + a mu)``.

Differences from / quirks of the originals (all reproduced, none changes a ranking):

- Both originals mix normalisations: ``S`` divides by ``N`` (scikit-learn's / their
  empirical covariance), ``cov(E[f|y])`` by ``N - 1`` (``np.cov``). So at ``a = 0`` the
  shrinkage H-score is ``N / (N - 1)`` times the H-score, not the H-score. Kept for parity.
- When ``d2 == 0`` (``S`` is a multiple of the identity, e.g. ``D == 1``) scikit-learn (TLlib)
  gives ``a = 0``; transformer-ranker divides by zero (``a = 1``, score 0, or NaN). We follow
  scikit-learn.
- transformer-ranker takes classes as ``labels == i`` for ``i < number of distinct labels``
  (labels with gaps lose classes); TLlib's ``C = max + 1`` gives NaN means for absent classes.
  Here labels are any hashable values, remapped with ``remap_labels``.
- On rank-deficient features (``N <= D``, collinear columns) both routes drop the null
  directions (the original by its ``rcond``, here with a wider margin); for generic features
  with ``N <= D`` the H-score is exactly ``C - 1``: the features span every centred labelling.

Zero-padded columns: the H-score is invariant (padding adds zero singular values). The
shrinkage H-score depends on ``D`` through ``mu`` and the shrinkage, so pass the model's true
width as ``n_cols``: the padded block of ``(1 - a) S + a mu I`` is then ``a mu I``, which
``S_b`` (zero there) never sees, and the score equals the unpadded one.

Checked against the originals (transcribed outside the repository) on random inputs
(Gaussian and non-negative, random mixing and scale), N in {50, 200, 1000},
D in {5, 40, 100, 300} with N > D, C in {2, 5, 10}, two draws each: max rel diff 8.4e-9
(TLlib ``h_score``; its ``pinv`` of the formed covariance loses digits on ill-conditioned
mixings), 1.4e-12 (TLlib ``regularized_h_score``), 1.1e-13 (transformer-ranker ``HScore``),
5.8e-15 (the shrinkage vs scikit-learn's ``ledoit_wolf_shrinkage``); and on N <= D or
collinear inputs (N, D, C) = (50, 100, 3), (100, 300, 5), (200, 70, 4): 6e-14 or better.
"""

from __future__ import annotations

import numpy as np

from .ncti import remap_labels

RCOND = 1e-15  # TLlib's pinv cutoff, relative to the largest variance


def _centred_svd(features) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centred features, left singular vectors, singular values) of ``features``."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {x.shape}")
    xc = x - x.mean(axis=0)
    u, s, _ = np.linalg.svd(xc, full_matrices=False)
    return xc, u, s


def _label_projections(u: np.ndarray, labels) -> np.ndarray:
    """``q_i = sum_c (1_c . u_i)^2 / n_c`` for each column ``u_i`` of ``u``."""
    y, n_classes = remap_labels(labels)
    if y.shape[0] != u.shape[0]:
        raise ValueError(f"{y.shape[0]} labels for {u.shape[0]} samples")
    sums = np.zeros((n_classes, u.shape[1]))
    np.add.at(sums, y, u)
    counts = np.bincount(y, minlength=n_classes)
    return np.sum(sums**2 / counts[:, None], axis=0)


def h_score(features: np.ndarray, labels, *, rcond: float = RCOND) -> float:
    """H-score ``tr(pinv(cov(f)) cov(E[f|y]))`` of (N, D) features; invariant to zero padding."""
    _, u, s = _centred_svd(features)
    variances = s**2
    keep = variances > rcond * variances[0] if variances.size and variances[0] > 0 else []
    return float(np.sum(_label_projections(u[:, keep], labels)))


def ledoit_wolf_shrinkage(features: np.ndarray, *, n_cols: int | None = None) -> float:
    """Ledoit-Wolf shrinkage of the covariance of (N, D) features (centred here).

    ``n_cols``: the true width when ``features`` carries zero-padded columns (default ``D``).
    """
    xc, _, s = _centred_svd(features)
    return _shrinkage(xc, s, xc.shape[1] if n_cols is None else n_cols)


def _shrinkage(xc: np.ndarray, s: np.ndarray, d: int) -> float:
    n = xc.shape[0]
    eig = s**2 / n  # eigenvalues of S on the row space; zero elsewhere
    mu = eig.sum() / d
    frob2 = np.sum(eig**2)  # ||S||_F^2
    d2 = (frob2 - d * mu**2) / d  # ||S - mu I||_F^2 / D
    b2 = (np.sum(np.sum(xc**2, axis=1) ** 2) / n - frob2) / (n * d)
    b2 = min(b2, d2)
    return 0.0 if b2 == 0 else float(b2 / d2)


def shrinkage_h_score(
    features: np.ndarray,
    labels,
    *,
    n_cols: int | None = None,
    shrinkage: float | None = None,
    rcond: float = RCOND,
) -> float:
    """Ledoit-Wolf shrinkage H-score of (N, D) features (TLlib's ``regularized_h_score``).

    ``n_cols``: the model's true width when ``features`` is zero-padded (default ``D``).
    ``shrinkage``: a fixed shrinkage in [0, 1] instead of the Ledoit-Wolf estimate.
    """
    xc, u, s = _centred_svd(features)
    n, d = xc.shape[0], xc.shape[1] if n_cols is None else n_cols
    a = _shrinkage(xc, s, d) if shrinkage is None else float(shrinkage)
    mu = np.sum(s**2) / (n * d)
    denom = (1.0 - a) * s**2 / n + a * mu  # eigenvalues of the shrunk covariance
    top = max(denom.max(initial=0.0), a * mu)  # the null space's eigenvalue is a * mu
    keep = denom > rcond * top if top > 0 else np.zeros(s.shape, bool)
    q = _label_projections(u[:, keep], labels)
    return float((1.0 - a) / (n - 1) * np.sum(s[keep] ** 2 * q / denom[keep]))
