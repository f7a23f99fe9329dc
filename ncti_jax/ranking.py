"""How good is a ranking? Rank correlations and top-k scores against ground truth.

Every metric takes ``scores`` (higher = predicted better) and ``truth`` (e.g.
fine-tune accuracies, higher = better) of shape (..., M) and returns shape (...):
a leading batch axis (datasets, bootstrap resamples) is computed at once. The
correlations use the O(M^2) pairwise definitions, which for zoos of tens or
hundreds of models are exact, simple and fast in NumPy.

- :func:`weighted_tau`: ``scipy.stats.weightedtau`` with its defaults (additive
  hyperbolic weigher, the average over the lexicographic ranks by (x, y) and by
  (y, x)), ties handled the same way. The paper's metric.
- :func:`kendall_tau` (tau-b), :func:`pearson`, :func:`spearman`.
- :func:`top_k_relative_accuracy`: the best truth among the top-k ranked models
  over the best truth overall.
- :func:`recall_at_k`: the share of the truly best k models found in the top k.
- :func:`bootstrap`: percentile confidence intervals, resampling models.

Example:
  >>> from ncti_jax import ranking
  >>> round(float(ranking.weighted_tau([3.0, 2.0, 1.0], [90.0, 95.0, 80.0])), 4)
  0.1818
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from typing import Any

import numpy as np

Metric = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _pair(scores: Any, truth: Any) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(scores, dtype=np.float64)
    y = np.asarray(truth, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"scores and truth must have the same shape; got {x.shape} and {y.shape}.")
    if x.ndim == 0 or x.shape[-1] < 2:
        raise ValueError(f"need at least 2 models to compare rankings; got shape {x.shape}.")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("scores and truth must be finite.")
    return x, y


def _upper(m: int) -> np.ndarray:
    return np.triu(np.ones((m, m), dtype=bool), k=1)


def _signs(v: np.ndarray) -> np.ndarray:
    """(..., M, M) sign(v_i - v_j)."""
    return np.sign(v[..., :, None] - v[..., None, :])


def _weighted_tau_ranked(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Weighted tau with the decreasing lexicographic rank by (x, y)."""
    m = x.shape[-1]
    perm = np.lexsort((y, x), axis=-1)  # increasing by x, then y; stable
    rank = np.empty_like(perm)
    np.put_along_axis(rank, perm[..., ::-1], np.broadcast_to(np.arange(m), perm.shape), axis=-1)
    weight = 1.0 / (1.0 + rank)
    pair = (weight[..., :, None] + weight[..., None, :]) * _upper(m)
    sx, sy = _signs(x), _signs(y)
    total = pair.sum(axis=(-2, -1))
    tied_x = (pair * (sx == 0)).sum(axis=(-2, -1))
    tied_y = (pair * (sy == 0)).sum(axis=(-2, -1))
    tied_both = (pair * ((sx == 0) & (sy == 0))).sum(axis=(-2, -1))
    discordant = (pair * (sx * sy < 0)).sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        tau = ((total - (tied_y + tied_x - tied_both)) - 2.0 * discordant) / (
            np.sqrt(total - tied_x) * np.sqrt(total - tied_y)
        )
    tau = np.where((total - tied_x > 0) & (total - tied_y > 0), tau, np.nan)
    return np.clip(tau, -1.0, 1.0)


def weighted_tau(scores: Any, truth: Any) -> np.ndarray:
    """Weighted Kendall tau, as ``scipy.stats.weightedtau(scores, truth)``.

    NaN where either input is constant.
    """
    x, y = _pair(scores, truth)
    return (_weighted_tau_ranked(x, y) + _weighted_tau_ranked(y, x)) / 2


def kendall_tau(scores: Any, truth: Any) -> np.ndarray:
    """Kendall tau-b, as ``scipy.stats.kendalltau``. NaN where an input is constant."""
    x, y = _pair(scores, truth)
    upper = _upper(x.shape[-1])
    sx, sy = _signs(x) * upper, _signs(y) * upper
    num = (sx * sy).sum(axis=(-2, -1))
    den = np.sqrt((sx * sx).sum(axis=(-2, -1)) * (sy * sy).sum(axis=(-2, -1)))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xc = x - x.mean(axis=-1, keepdims=True)
    yc = y - y.mean(axis=-1, keepdims=True)
    den = np.sqrt((xc * xc).sum(axis=-1) * (yc * yc).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.where(den > 0, (xc * yc).sum(axis=-1) / np.where(den > 0, den, 1.0), np.nan)
    return np.clip(r, -1.0, 1.0)


def pearson(scores: Any, truth: Any) -> np.ndarray:
    """Pearson correlation. NaN where an input is constant."""
    return _pearson(*_pair(scores, truth))


def average_ranks(v: np.ndarray) -> np.ndarray:
    """1-based ranks along the last axis, ties averaged (``scipy.stats.rankdata``)."""
    s = _signs(v)
    return (s > 0).sum(axis=-1) + ((s == 0).sum(axis=-1) + 1) / 2.0


def spearman(scores: Any, truth: Any) -> np.ndarray:
    """Spearman rank correlation (Pearson of average ranks)."""
    x, y = _pair(scores, truth)
    return _pearson(average_ranks(x), average_ranks(y))


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores; ties go to the earlier model."""
    return np.argsort(-scores, axis=-1, kind="stable")[..., :k]


def _check_k(k: int, m: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= m:
        raise ValueError(f"k must be an integer in [1, {m}] (the number of models); got {k!r}.")
    return int(k)


def top_k_relative_accuracy(scores: Any, truth: Any, k: int = 1) -> np.ndarray:
    """Best truth among the top-``k`` ranked models over the best truth overall."""
    x, y = _pair(scores, truth)
    k = _check_k(k, x.shape[-1])
    picked = np.take_along_axis(y, _top_k(x, k), axis=-1).max(axis=-1)
    return picked / y.max(axis=-1)


def recall_at_k(scores: Any, truth: Any, k: int = 3) -> np.ndarray:
    """Share of the ``k`` truly best models that are among the top-``k`` ranked."""
    x, y = _pair(scores, truth)
    k = _check_k(k, x.shape[-1])
    ranked, best = _top_k(x, k), _top_k(y, k)
    hits = (ranked[..., :, None] == best[..., None, :]).any(axis=-1).sum(axis=-1)
    return hits / k


METRICS: dict[str, Metric] = {
    "weighted_tau": weighted_tau,
    "kendall_tau": kendall_tau,
    "pearson": pearson,
    "spearman": spearman,
    "top1_rel_acc": lambda s, t: top_k_relative_accuracy(s, t, 1),
    "top3_rel_acc": lambda s, t: top_k_relative_accuracy(s, t, min(3, np.shape(s)[-1])),
    "recall_at_3": lambda s, t: recall_at_k(s, t, min(3, np.shape(s)[-1])),
}


def bootstrap(
    metric: Metric,
    scores: Any,
    truth: Any,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile confidence interval of ``metric`` over models resampled with replacement.

    All resamples are evaluated as one batch. Resamples where the metric is
    undefined (e.g. every drawn model has the same truth) are left out.
    """
    x, y = _pair(scores, truth)
    if x.ndim != 1:
        raise ValueError("bootstrap takes one ranking (1-D scores and truth).")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1); got {confidence}.")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.shape[0], size=(n_resamples, x.shape[0]))
    values = np.asarray(metric(x[idx], y[idx]), dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(values, [alpha, 1 - alpha])
    return float(lo), float(hi)


def evaluate(
    scores: Any, truth: Any, *, n_resamples: int = 1000, seed: int = 0
) -> dict[str, float]:
    """Every metric of :data:`METRICS` for one ranking, and a bootstrap interval of wtau."""
    out = {name: float(f(scores, truth)) for name, f in METRICS.items()}
    lo, hi = bootstrap(weighted_tau, scores, truth, n_resamples=n_resamples, seed=seed)
    out["weighted_tau_ci_low"], out["weighted_tau_ci_high"] = lo, hi
    return out


# ---- ground truth tables shipped with the package ---------------------------------------


def finetune_accuracy() -> dict[str, Any]:
    """The published fine-tune accuracy tables: ``{group: {dataset: {model: accuracy}}}``.

    group1: 11 ImageNet-supervised torchvision models x 11 datasets; group2: 12
    self-supervised ResNet-50 models x 13 datasets. 0 marks an entry the source
    left unmeasured.
    """
    text = resources.files("ncti_jax.data").joinpath("finetune_accuracy.json").read_text("utf-8")
    return {k: v for k, v in json.loads(text).items() if k != "description"}


def published_truth(spec: str) -> dict[str, float]:
    """Fine-tune accuracies for ``"group:dataset"``, e.g. ``"group1:cifar10"``.

    Unmeasured (0) entries are left out.
    """
    tables = finetune_accuracy()
    group, _, dataset = spec.partition(":")
    if group not in tables:
        raise ValueError(f"unknown ground-truth group {group!r}; known: {sorted(tables)}.")
    if dataset not in tables[group]:
        raise ValueError(
            f"no {group} accuracies for dataset {dataset!r}; known: {sorted(tables[group])}."
        )
    return {m: float(a) for m, a in tables[group][dataset].items() if a != 0}


def published_wtau() -> dict[str, dict[str, float]]:
    """The published weighted Kendall tau of LEEP, LogME, NLEEP, PARC and SFDA against the
    group1 fine-tune accuracies, ``{metric: {dataset: tau}}``: the table of the SFDA
    repository's README (source in ``ncti_jax/data/published_wtau_sfda_group1.json``)."""
    text = (
        resources.files("ncti_jax.data")
        .joinpath("published_wtau_sfda_group1.json")
        .read_text("utf-8")
    )
    return json.loads(text)["weighted_tau"]
