"""ETran (energy + LDA classification score) in plain NumPy/SciPy, float64.

Source of truth: mgholamikn/ETran — ``metrics.py`` (``Energy_Score``, ``LDA_Score`` and its
class ``LDA``), ``evaluate_metric.py`` (what each part is fed) and ``tw.py`` (how the parts
are combined); paper: Gholami et al., "ETran: Energy-Based Transferability Estimation",
ICCV 2023 (classification: energy score + LDA-based classification score). Written from
the math; no code of the original is used.

ETran ranks a zoo; it is not a per-model number. Per model ``m``:

- energy score ``E_m``: per sample ``e_i = log sum_k exp(v_ik)`` over the columns of a
  matrix ``v`` (N, K); ``E_m`` = mean of the ``n_keep`` lowest ``e_i`` (``tail="bot"``, the
  repository's choice) or highest (``"top"``): ``percent`` per cent of the samples (0.5 %,
  the repository's setting), ``n_keep = floor(r N / 1000)`` for ``"bot"`` and
  ``ceil(r N / 1000)`` for ``"top"`` with ``r = round(10 percent)`` (the original's
  slice ``[-r*N//1000:]`` floors a negative number: kept as is);
  The paper's energy is that of the source model's logits; ``evaluate_metric.py``
  passes the penultimate *features* (the input of the classifier head) instead. Both are
  accepted: pass the source logits, or the features to reproduce the repository;
- LDA classification score ``L_m = (1/N) sum_i p(y_i | x_i)`` of a linear Gaussian
  classifier ``p(c | x) = softmax_c(x^T W mu_c - mu_c^T W mu_c / 2 + log pi_c)`` fitted on
  the same features:
  * ``lda="fisher"`` (default): ``W = S^-1``, ``S`` the shrunk within-class covariance
    ``(1 - t) Sw + t tr(Sw)/D I``, ``t = max(exp(-5 rho), 1e-10)``, ``rho`` the power
    estimate of Sw's top eigenvalue: the regularised Fisher classifier the code builds
    (the same as SFDA's, :func:`ncti_jax.reference.sfda.fisher_probabilities`);
  * ``lda="repository"``: ``W = I``, what the committed code actually computes. It
    takes the eigenvectors ``V`` of ``inv(S) @ Sb`` with ``np.linalg.eigh``, which
    silently reads only the lower triangle of that *non-symmetric* matrix and returns an
    orthonormal basis, so ``V V^T = I`` and the coefficients are the class means
    themselves: shrinkage and covariance drop out (a nearest-class-mean softmax with
    identity covariance). The published ETran numbers come from this;

and over the zoo (``tw.py``): ``ETran_m = 0.15 minmax(E)_m + 0.85 minmax(L)_m``.

Parameters (keyword arguments, the repository's values as defaults): ``percent`` 0.5,
``tail`` ``"bot"``, ``lda`` ``"fisher"`` (``"repository"`` for the committed code's
numbers), ``energy_weight`` 0.15, ``dim``/``dims`` the true feature widths.

Zero-padded columns: the energy of a matrix with ``P`` extra zero columns gains ``P``
terms ``exp(0) = 1`` inside the log-sum-exp, so it is *not* invariant: pass ``dim``, the
true width, and only the first ``dim`` columns enter (the engine pads trailing columns).
The repository LDA uses only inner products with class means: invariant. The Fisher
LDA depends on D through ``tr(Sw)/D``: pass ``dim`` as for SFDA.

Differences from the original:
- ``n_keep >= 1``: with ``r N < 1000`` (fewer than 200 samples at 0.5 %) the original
  keeps no sample for ``"bot"`` and its mean is NaN; here the lowest sample is kept;
- ``percent`` is rounded to a tenth (the original truncates ``percent * 10`` in
  floating point, so 2.3 gives 2.2 per cent);
- min-max of a constant vector is 0 (the original divides 0 by 0);
- labels remapped to ``0..C-1``; float64 (the original's energy runs in the features'
  float32 under torch).

Checked against mgholamikn/ETran ``metrics.py``/``tw.py`` (transcribed outside this
repository, torch's logsumexp replaced by SciPy's) on random inputs: energy max rel diff
0 (bit-identical; 16 matrices, N in 200..3000, K in 10..1000, both tails, percent 0.5
and 5), LDA (``lda="repository"``) max rel diff 1.3e-16 over 16 inputs (N in 100..600,
D in 5..80, C in 2..12, scales 0.05..5), the zoo combination max rel diff 0 on 8 zoos of
5..11 models. ``lda="fisher"`` against the eigen-solver classifier the code intended
(``scipy.linalg.eigh(Sb, S)``, as in TencentARC/SFDA's ``SFDA`` class): max rel diff
1.7e-16 over 12 inputs of the same sizes.
"""

from __future__ import annotations

import numpy as np
import scipy.special

from .ncti import min_max, remap_labels
from .sfda import POWER_ITERATIONS, fisher_probabilities

ENERGY_PERCENT = 0.5
ENERGY_TAIL = "bot"
ENERGY_WEIGHT = 0.15
LDA_VARIANTS = ("fisher", "repository")


def energy_score(
    values: np.ndarray,
    *,
    percent: float = ENERGY_PERCENT,
    tail: str = ENERGY_TAIL,
    dim: int | None = None,
) -> float:
    """Mean log-sum-exp over the ``percent`` % lowest (``"bot"``) or highest (``"top"``)
    samples of an (N, K) matrix (source logits, or features as the repository does).

    ``dim``: only the first ``dim`` columns are real (the rest is zero padding).
    """
    if tail not in ("bot", "top"):
        raise ValueError(f"tail must be 'bot' or 'top', not {tail!r}")
    v = np.asarray(values, dtype=np.float64)
    if dim is not None:
        v = v[:, :dim]
    e = np.sort(scipy.special.logsumexp(v, axis=1))
    share = round(percent * 10) * len(e)  # samples x tenths of a per cent
    n_keep = max(1, share // 1000 if tail == "bot" else -(-share // 1000))
    return float(np.mean(e[:n_keep] if tail == "bot" else e[-n_keep:]))


def lda_score(
    features: np.ndarray,
    labels,
    *,
    lda: str = "fisher",
    dim: int | None = None,
    power_iterations: int | None = POWER_ITERATIONS,
) -> float:
    """ETran's classification score: mean probability of the true class under the
    ``lda`` classifier (``"fisher"``: shrunk within-class covariance; ``"repository"``:
    identity covariance, the committed code's numbers)."""
    if lda not in LDA_VARIANTS:
        raise ValueError(f"lda must be one of {LDA_VARIANTS}, not {lda!r}")
    x = np.asarray(features, dtype=np.float64)
    y, n_classes = remap_labels(labels)
    n = len(y)
    if lda == "fisher":
        p, _ = fisher_probabilities(x, y, n_classes, None, dim, power_iterations)
    else:
        priors = np.bincount(y, minlength=n_classes) / n
        means = np.stack([x[y == c].mean(axis=0) for c in range(n_classes)])
        logits = x @ means.T - 0.5 * np.sum(means**2, axis=1) + np.log(priors)
        p = scipy.special.softmax(logits, axis=1)
    return float(np.mean(p[np.arange(n), y]))


def etran_parts(
    features: np.ndarray,
    labels,
    logits: np.ndarray | None = None,
    *,
    lda: str = "fisher",
    dim: int | None = None,
    percent: float = ENERGY_PERCENT,
    tail: str = ENERGY_TAIL,
) -> tuple[float, float]:
    """One model's ``(energy, lda)`` parts. The energy is that of ``logits`` (the source
    classifier's outputs, (N, K), never padded) when given, else of ``features`` (as the
    repository's ``evaluate_metric.py`` does; ``dim`` drops their zero padding)."""
    if logits is None:
        energy = energy_score(features, percent=percent, tail=tail, dim=dim)
    else:
        energy = energy_score(logits, percent=percent, tail=tail)
    return energy, lda_score(features, labels, lda=lda, dim=dim)


def etran_combine(energy, lda, *, energy_weight: float = ENERGY_WEIGHT) -> np.ndarray:
    """ETran of a zoo from its (M,) energy and LDA parts: ``w minmax(E) + (1 - w)
    minmax(L)`` (``w = 0.15``); higher is better."""
    return energy_weight * min_max(energy) + (1.0 - energy_weight) * min_max(lda)


def etran_zoo(features, labels, logits=None, **params) -> np.ndarray:
    """ETran of a zoo: ``features`` ``{model: (N, D_m)}``, optional ``logits``
    ``{model: (N, K_m)}``; returns (M,) scores in the order of ``features``.

    ``params``: ``lda``, ``percent``, ``tail`` (per model, see :func:`etran_parts`),
    ``energy_weight`` (see :func:`etran_combine`), ``dims`` ``{model: true width}``.
    """
    weight = params.pop("energy_weight", ENERGY_WEIGHT)
    dims = params.pop("dims", {})
    parts = np.array(
        [
            etran_parts(
                features[m],
                labels,
                None if logits is None else logits[m],
                dim=dims.get(m),
                **params,
            )
            for m in features
        ]
    )
    return etran_combine(parts[:, 0], parts[:, 1], energy_weight=weight)
