"""LogME in plain NumPy/SciPy, float64, one model at a time.

LogME (You et al., ICML 2021; the fixed-point algorithm of "Ranking and Tuning Pre-trained
Models", arXiv 2110.10545) fits, for each class ``c``, a Bayesian linear regression of the
indicator ``y = 1[label == c]`` on the (N, D) features ``F`` (prior ``w ~ N(0, I / alpha)``,
noise ``N(0, 1 / beta)``), maximises its evidence over ``(alpha, beta)``, and averages the
maximum log evidence per sample over the classes::

    LogME = (1 / C) sum_c L_c(alpha_c, beta_c) / N,
    L(alpha, beta) = log N(y; 0, F F^T / alpha + I / beta)
                   = D/2 log alpha + N/2 log beta - 1/2 logdet(alpha I_D + beta F^T F)
                     - beta/2 ||y - F m||^2 - alpha/2 ||m||^2 - N/2 log(2 pi),
    m = (F^T F + t I)^{-1} F^T y,   t = alpha / beta.

With ``sigma_i`` the eigenvalues of ``F^T F`` (all ``D`` of them, zeros included) and
``w = V^T F^T y`` the label's coordinates in its eigenbasis::

    gamma = sum_i sigma_i / (sigma_i + t),   ||m||^2 = sum_i w_i^2 / (sigma_i + t)^2,
    ||y - F m||^2 = ||y||^2 - sum_i w_i^2 (sigma_i + 2 t) / (sigma_i + t)^2,
    L = N/2 log beta - 1/2 sum_i log1p(sigma_i / t) - beta/2 ||y - F m||^2
        - alpha/2 ||m||^2 - N/2 log(2 pi).

The fixed point (MacKay's updates) starts at ``alpha = beta = 1`` and repeats
``alpha <- gamma / (||m||^2 + epsilon)``, ``beta <- (N - gamma) / (||y - F m||^2 + epsilon)``
(``m`` at the current ``t``) until ``t`` moves by at most ``tol`` relative, at most
``max_iter`` times; the evidence is then taken at the last ``(alpha, beta)`` with the
``||m||^2`` and residual of the last step's ``t`` (before its update), as the original
does. Defaults are the original's: ``max_iter=11``, ``tol=1e-3``, ``epsilon=1e-5``. With
``epsilon=0`` and a tight ``tol`` it converges to a stationary point of ``L`` (tested
against the Gaussian log density directly).

Source of truth: thuml/LogME ``LogME.py``, ``LogME._fit_fixed_point``. Two routes, as there:
``solver="gram"`` eigendecomposes the ``D x D`` Gram matrix ``F^T F`` (the original's
``N > D`` branch, its ``truncated_svd``), ``solver="svd"`` takes the thin SVD of ``F`` (its
``N <= D`` branch); ``"auto"`` picks as the original does. Here the Gram route works with
``w`` (no division by tiny singular values) and the SVD route with ``x = U^T y`` and the
residual outside ``U``'s span, so both are stable on rank-deficient features and agree.

**Deviation (a bug of the original; ``variant="paper"``, the default, corrects it).** The
original's evidence is ``D/2 log alpha - 1/2 sum_{i<=k} log(alpha + beta sigma_i) + ...`` over
the ``k`` singular values of its SVD: ``k = min(N, D)``. When ``N < D`` the log determinant
``log det(alpha I_D + beta F^T F)`` thus misses ``(D - N) log alpha`` and its evidence exceeds
the marginal likelihood by ``(D - N) / 2 log alpha`` per class (before the division by ``N``),
a bias that depends on ``D`` (so on the model, and on any zero padding). Its ICML-version code
(``_fit_icml``: all ``D`` eigenvalues of ``F^T F``) does not have it. ``variant="paper"``
uses the full log determinant (the formula above); ``variant="thuml"`` adds the original's
``max(D - N, 0) / 2 log alpha``. The two agree when ``N >= D``, the usual case (and the
fixed points are the same in both).

A quirk of the original's ``N > D`` branch, not reproduced: it drops singular values below
``1e-10``, computed as square roots of the Gram matrix's eigenvalues. Rank-deficient features
(collinear or zero columns) have rounding-level eigenvalues ``~ eps * sigma_max``, which pass
that floor unless ``sigma_max`` is below ``~1e-4``, so in practice it keeps all ``D`` and its
evidence is the marginal likelihood; only for features that small (e.g. 200 x 50 features of
rank 30 at scale 1e-6: -1.1218 there against -0.8667 here) does it drop them and add
``(D - k) / 2 log alpha`` as above, by accident of scale. Both variants here keep every
direction (a near-zero ``sigma_i`` adds ``log1p(sigma_i / t) ~ 0``, continuously).

Zero-padded columns: ``variant="paper"`` is invariant (the evidence involves ``F`` only
through ``F^T F``'s non-zero spectrum; a zero eigenvalue adds ``log1p(0) = 0``), so it needs
no width. ``variant="thuml"`` depends on ``D`` when ``N < D``: pass the model's true width
as ``n_cols`` and it reproduces the original on the unpadded features. (The original
itself, on features zero-padded from ``D`` to ``D' > N``, moves by
``(D' - max(D, N)) / 2 log alpha`` per class, before the division by ``N``.)

Labels are any hashable values (``remap_labels``); the original takes ``C = max + 1``, so a
label in ``0..C-1`` without samples would add an all-zero target's evidence to the mean.

The original's stopping rule (``tol=1e-3``, 11 steps) leaves the fixed point unconverged at
a visible level: with ``tol=1e-14`` the score of small random inputs moves by ~1e-4
relative when ``N > D`` (200 x 16, 12 x 4) and by up to 3e-2 on a tiny ``N < D`` one
(6 x 10). Kept as the default, for parity; the JAX kernel must use the same rule.

Checked against thuml/LogME ``LogME.py`` (``_fit_fixed_point`` with its ``truncated_svd``,
transcribed outside the repository) on random inputs (Gaussian and non-negative class-shifted
features, scale 0.05 to 5), N in {40, 200, 1000}, D in {8, 64, 300}, C in {2, 5, 10}, two
draws each, two seeds (108 inputs): max rel diff of the score 1.6e-13 for N > D (both
variants; 6.1e-14 through the other solver) and 2.2e-12 for N <= D (``variant="thuml"``; with
the SVD or the Gram solver alike). ``variant="paper"`` differs there by the documented term
(up to 100% on these inputs).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.linalg

from .ncti import remap_labels

MAX_ITER = 11  # the original's loop: "should converge after at most 10 steps"
TOL = 1e-3  # relative change of t = alpha / beta
EPSILON = 1e-5  # added to the denominators of the updates


@dataclasses.dataclass(frozen=True)
class LogMEFit:
    """Per-class results, arrays of shape (C,) in the order of the sorted labels."""

    evidence: np.ndarray  # maximum log evidence / N
    alpha: np.ndarray
    beta: np.ndarray
    n_iter: np.ndarray  # fixed-point steps taken

    @property
    def score(self) -> float:
        return float(np.mean(self.evidence))


def _spectrum(x: np.ndarray, targets: np.ndarray, solver: str):
    """(sigma descending, w = V^T F^T Y (k, C), x2 = (U^T Y)^2 or None, residual outside U)."""
    if solver == "gram":
        sigma, v = scipy.linalg.eigh(x.T @ x)
        sigma, v = np.clip(sigma[::-1], 0.0, None), v[:, ::-1]
        return sigma, v.T @ (x.T @ targets), None, None
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    proj = u.T @ targets
    outside = np.clip(np.sum(targets**2, axis=0) - np.sum(proj**2, axis=0), 0.0, None)
    return s**2, s[:, None] * proj, proj**2, outside


def logme_fit(
    features: np.ndarray,
    labels,
    *,
    variant: str = "paper",
    n_cols: int | None = None,
    solver: str = "auto",
    max_iter: int = MAX_ITER,
    tol: float = TOL,
    epsilon: float = EPSILON,
) -> LogMEFit:
    """LogME's per-class fixed points and evidences for (N, D) features (see the module doc).

    ``variant``: ``"paper"`` (the marginal likelihood; padding-invariant) or ``"thuml"`` (the
    repository's evidence). ``n_cols``: the true width of zero-padded features (``"thuml"``
    only; the paper variant does not depend on it). ``solver``: ``"auto"``, ``"gram"`` or
    ``"svd"``.
    """
    if variant not in ("paper", "thuml"):
        raise ValueError(f"variant must be 'paper' or 'thuml', got {variant!r}")
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {x.shape}")
    n = x.shape[0]
    d = x.shape[1] if n_cols is None else int(n_cols)
    y, n_classes = remap_labels(labels)
    if y.shape[0] != n:
        raise ValueError(f"{y.shape[0]} labels for {n} samples")
    if solver == "auto":
        solver = "gram" if n > d else "svd"
    if solver not in ("gram", "svd"):
        raise ValueError(f"solver must be 'auto', 'gram' or 'svd', got {solver!r}")
    targets = np.eye(n_classes)[y]  # (N, C) indicators
    sigma, w, x2, outside = _spectrum(x, targets, solver)

    evidence, alphas, betas, steps = (np.zeros(n_classes) for _ in range(4))
    for c in range(n_classes):
        if x2 is None:  # Gram route: the residual from w
            yy = float(np.sum(targets[:, c]))  # ||y||^2 of an indicator
            wc2 = w[:, c] ** 2

            def residual(t, wc2=wc2, yy=yy):
                return yy - np.sum(wc2 * (sigma + 2 * t) / (sigma + t) ** 2)

        else:  # SVD route: the shrunk part in U's span, plus the part outside it

            def residual(t, x2c=x2[:, c], out=outside[c]):
                return np.sum(x2c * (t / (t + sigma)) ** 2) + out

        alpha, beta, m2, res2, steps[c] = _fixed_point(
            sigma, w[:, c] ** 2, residual, n, max_iter, tol, epsilon
        )
        log_evidence = (
            n / 2 * np.log(beta)
            - 0.5 * np.sum(np.log1p(sigma * beta / alpha))
            - beta / 2 * res2
            - alpha / 2 * m2
            - n / 2 * np.log(2 * np.pi)
        )
        if variant == "thuml":  # the original's log det misses D - min(N, D) terms log(alpha)
            log_evidence += max(d - n, 0) / 2 * np.log(alpha)
        evidence[c], alphas[c], betas[c] = log_evidence / n, alpha, beta
    return LogMEFit(evidence, alphas, betas, steps.astype(int))


def _fixed_point(sigma, w2, residual, n, max_iter, tol, epsilon):
    """MacKay's updates from alpha = beta = 1, the original's stopping rule.

    Returns (alpha, beta, ||m||^2, ||y - F m||^2, steps), the last two at the ``t`` of the
    last step (before its update), as the original evaluates its evidence.
    """
    alpha = beta = 1.0
    step = 0
    while step < max_iter:
        step += 1
        t = alpha / beta
        gamma = np.sum(sigma / (sigma + t))
        m2 = np.sum(w2 / (sigma + t) ** 2)
        res2 = residual(t)
        alpha = gamma / (m2 + epsilon)
        beta = (n - gamma) / (res2 + epsilon)
        if abs(alpha / beta - t) / t <= tol:
            break
    return alpha, beta, m2, res2, step


def logme(features: np.ndarray, labels, **options) -> float:
    """LogME of (N, D) features: the mean over classes of the maximum log evidence per sample.

    Keyword options as :func:`logme_fit` (``variant``, ``n_cols``, ``solver``, ``max_iter``,
    ``tol``, ``epsilon``).
    """
    return logme_fit(features, labels, **options).score
