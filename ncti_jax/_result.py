"""The result of scoring a zoo: its types, the zoo-wide normalisation and the status flags.

:func:`finish` turns the kernel's per-model :class:`ncti_jax._kernel.RawComponents`
into an :class:`NCTIResult`: it normalises the components over the models that
have them all (:func:`normalise_zoo`, the only place NCTI's formula lives), sets
each model's :class:`Status` and warns once per kind of flag, naming the models.
"""

from __future__ import annotations

import dataclasses
import enum
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.typing import ArrayLike

from ._kernel import SOLVERS, RawComponents
from ._pca import FALLBACK
from ._validate import Labels

# Models named in one warning before "and N more".
_NAMED = 5


class Status(enum.IntFlag):
    """Per-model flags of a result; 0 means nothing to report."""

    OK = 0
    K_REDUCED = 1  # n_components was reduced to min(N - 1, D_m)
    RANK_DEFICIENT = 2  # fewer principal directions with variance than n_components
    NO_VARIANCE = 4  # constant features: no direction with variance; LDA reduces to the priors
    SINGLETON_CLASS = 8  # a class has a single sample (zoo-wide)
    CONSTANT_COMPONENT = 16  # a component is equal across the zoo and normalises to 0
    NON_FINITE = 32  # a raw component is undefined (NaN or infinite): the model is unranked
    # the device path's top-k eigensolver could not certify the kept PCA subspace (not
    # converged, or too small a gap after it): the model was recomputed with the exact eigh
    EIGENSOLVER_FALLBACK = 64


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class NCTIResult:
    """NCTI of a zoo: host (NumPy) arrays of shape (M,), in the order of ``models``.

    Raw components keep the computation dtype; normalised ones and the score are
    float64.

    Attributes:
      models: model names.
      etf: nuclear norm of the centred LDA projection (svd solver: scikit-learn's
        1/N within-class convention). Higher: closer to a simplex ETF.
      ncc: mean LDA probability of the true class. Higher: nearest-centre
        classification works.
      vc: log of the summed per-class nuclear norms of the probability rows.
        Lower: within-class variability has collapsed.
      etf_norm, ncc_norm, vc_norm: the components min-max normalised over the zoo
        (0 for a component that is the same for every model).
      ncti: ``etf_norm + ncc_norm - vc_norm``; higher is better.
      ranking: model indices, best first (``models[ranking[0]]`` is the pick);
        unranked models (``Status.NON_FINITE``, score NaN) come last.
      solver: the LDA solver used, ``"svd"`` or ``"eigen"`` (shrinkage).
      shrinkage: the shrinkage rule's ``t = max(exp(-sum of top-32 variances), 1e-10)``.
      pca_rank: principal directions kept: ``min(n_components, N - 1, D)``, fewer
        when the features are rank deficient.
      status: bit flags, see :class:`Status`.
      eigen_residual, eigen_gap: the device path's top-k PCA eigensolver's certificate
        (:func:`ncti_jax._topk.certificate`): the largest residual
        ``||C v - lambda v|| / lambda_1`` over the kept directions and the relative gap
        after the last one; 0 and 1 where the PCA was solved exactly (host path, full
        ``eigh``); a model that fell back keeps the top-k solver's values.
    """

    models: tuple[str, ...] = dataclasses.field(metadata={"static": True})
    etf: np.ndarray
    ncc: np.ndarray
    vc: np.ndarray
    etf_norm: np.ndarray
    ncc_norm: np.ndarray
    vc_norm: np.ndarray
    ncti: np.ndarray
    ranking: np.ndarray
    solver: np.ndarray
    shrinkage: np.ndarray
    pca_rank: np.ndarray
    status: np.ndarray
    eigen_residual: np.ndarray
    eigen_gap: np.ndarray

    def best(self) -> str:
        """The name of the best-ranked model."""
        return self.models[int(self.ranking[0])]

    def ranked(self) -> np.ndarray:
        """(M,) bool: the models with a score (the others are flagged ``NON_FINITE``)."""
        return np.isfinite(self.ncti)

    def to_records(self) -> list[dict[str, Any]]:
        """One dict of plain Python values per model, best first.

        Unranked models come last with ``rank`` and ``ncti`` None, as are any raw or
        normalised components that are undefined: the records hold no NaN or
        infinity, so their JSON is strict.
        """
        records = []
        ranked = self.ranked()
        for rank, i in enumerate(np.asarray(self.ranking).tolist(), start=1):
            records.append(
                {
                    "model": self.models[i],
                    "rank": rank if ranked[i] else None,
                    "ncti": _finite_or_none(self.ncti[i]),
                    "etf": _finite_or_none(self.etf[i]),
                    "ncc": _finite_or_none(self.ncc[i]),
                    "vc": _finite_or_none(self.vc[i]),
                    "etf_norm": _finite_or_none(self.etf_norm[i]),
                    "ncc_norm": _finite_or_none(self.ncc_norm[i]),
                    "vc_norm": _finite_or_none(self.vc_norm[i]),
                    "solver": str(self.solver[i]),
                    "shrinkage": _finite_or_none(self.shrinkage[i]),
                    "pca_rank": int(self.pca_rank[i]),
                    "status": [f.name for f in Status if f and int(self.status[i]) & f],
                }
            )
        return records


def _finite_or_none(value: Any) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def normalise_zoo(
    etf: ArrayLike, ncc: ArrayLike, vc: ArrayLike, *, rtol: float | None = None
) -> tuple[np.ndarray, ...]:
    """Min-max normalised components and NCTI from raw components, e.g. to merge zoos.

    Host-side and float64: M numbers per component. A component whose spread over
    the zoo is at most ``rtol`` times its largest magnitude is equal for every model
    up to rounding and normalises to 0 (min-max would stretch rounding noise to the
    whole [0, 1] range).

    Args:
      etf, ncc, vc: (M,) raw components of the models to rank together.
      rtol: the spread taken as equal (default: 16 eps of the inputs' floating
        dtype, float64 for other inputs).

    Returns:
      etf_norm, ncc_norm, vc_norm, ncti, each an (M,) float64 NumPy array.

    Example:
      >>> import ncti_jax
      >>> *_, score = ncti_jax.normalise_zoo([1.0, 3.0], [0.5, 0.9], [2.0, 1.0])
      >>> score.tolist()  # etf and ncc best for the second model, vc best for it too
      [-1.0, 2.0]
    """
    values = [np.asarray(jax.device_get(v)) for v in (etf, ncc, vc)]
    if rtol is None:
        dtypes = [v.dtype if np.issubdtype(v.dtype, np.floating) else np.float64 for v in values]
        rtol = 16 * max(float(np.finfo(d).eps) for d in dtypes)
    raw = np.stack([v.astype(np.float64).reshape(-1) for v in values], axis=1)
    lo, hi = raw.min(axis=0), raw.max(axis=0)
    varies = ~_equal_up_to(raw, rtol)
    span = np.where(varies, hi - lo, 1.0)
    norm = np.where(varies, (raw - lo) / span, 0.0)
    return norm[:, 0], norm[:, 1], norm[:, 2], norm[:, 0] + norm[:, 1] - norm[:, 2]


def _equal_up_to(raw: np.ndarray, rtol: float) -> np.ndarray:
    """(3,) bool: the components of (M, 3) ``raw`` whose spread is at most ``rtol``
    times their largest magnitude (exactly equal ones included)."""
    return raw.max(axis=0) - raw.min(axis=0) <= rtol * np.abs(raw).max(axis=0)


def finish(
    models: Sequence[str],
    raw: RawComponents,
    max_components: Mapping[str, int],
    n_components: int,
    labels: Labels,
) -> NCTIResult:
    """Normalises on the host, sets status flags and warns about them (once per kind).

    Args:
      models: every model's name, in the order of ``raw``'s rows.
      raw: the kernel's outputs for them (host or device arrays).
      max_components: each model's ``min(n_components, N - 1, D)``.
      n_components: the PCA dimension asked for.
      labels: the checked labels.
    """
    raw = jax.device_get(raw)
    comps = np.asarray(raw.components, dtype=np.float64)
    finite = np.isfinite(comps).all(axis=1)
    status = np.zeros(len(models), np.int32)
    cap = np.array([max_components[m] for m in models])
    rank = np.asarray(raw.pca_rank).astype(np.int32)
    status[cap < n_components] |= Status.K_REDUCED
    status[(rank < cap) & (rank > 0)] |= Status.RANK_DEFICIENT
    status[rank == 0] |= Status.NO_VARIANCE
    if (labels.counts == 1).any():
        status |= Status.SINGLETON_CLASS
    status[~finite] |= Status.NON_FINITE
    status[np.asarray(raw.eigensolver) == FALLBACK] |= Status.EIGENSOLVER_FALLBACK

    norm = np.full((len(models), 4), np.nan)
    constant = np.zeros(3, bool)
    if finite.any():
        rtol = 16 * float(np.finfo(raw.components.dtype).eps)
        norm[finite] = np.stack(normalise_zoo(*comps[finite].T, rtol=rtol), axis=1)
        constant = _equal_up_to(comps[finite], rtol)
        if constant.any():
            status[finite] |= Status.CONSTANT_COMPONENT
    ncti = norm[:, 3]
    order = np.lexsort((np.arange(len(models)), -np.nan_to_num(ncti, nan=-np.inf)))
    _warn_flags(models, status, rank, cap, n_components, labels.n_samples, constant)

    raw_dtype = raw.components.dtype
    return NCTIResult(
        models=tuple(models),
        etf=np.asarray(raw.components[:, 0], raw_dtype),
        ncc=np.asarray(raw.components[:, 1], raw_dtype),
        vc=np.asarray(raw.components[:, 2], raw_dtype),
        etf_norm=norm[:, 0],
        ncc_norm=norm[:, 1],
        vc_norm=norm[:, 2],
        ncti=ncti,
        ranking=order.astype(np.int64),
        solver=np.asarray(SOLVERS)[np.asarray(raw.solver, np.int64)],
        shrinkage=np.asarray(raw.shrinkage, raw_dtype),
        pca_rank=rank,
        status=status,
        eigen_residual=np.asarray(raw.residual, np.float64),
        eigen_gap=np.asarray(raw.gap, np.float64),
    )


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_NAMED])
    return shown if len(items) <= _NAMED else f"{shown} and {len(items) - _NAMED} more"


def _models(count: int) -> str:
    return f"{count} model{'s' if count != 1 else ''}"


def _warn_flags(models, status, rank, cap, n_components, n_samples, constant) -> None:
    """One warning per kind of flag, naming the first models that carry it."""

    def reduced(i):
        why = "N - 1" if cap[i] == n_samples - 1 else "D"
        return f"{models[i]!r} to {cap[i]} ({why} = {cap[i]})"

    kinds = (  # flag, the headline for "{count} models", each model's entry
        (Status.K_REDUCED, f"n_components reduced from {n_components} for {{}}", reduced),
        (
            Status.NO_VARIANCE,
            "{} with features of no variance (constant or all zero), whose LDA reduces to "
            "the class priors",
            lambda i: repr(models[i]),
        ),
        (
            Status.RANK_DEFICIENT,
            "only some principal directions have variance for {}",
            lambda i: f"{models[i]!r} ({int(rank[i])} of {int(cap[i])})",
        ),
        (
            Status.NON_FINITE,
            "{} unranked: a raw component is undefined (NaN or infinite), so they are left "
            "out of the zoo's normalisation",
            lambda i: repr(models[i]),
        ),
    )
    messages = []
    for flag, headline, entry in kinds:
        flagged = [entry(i) for i in range(len(models)) if status[i] & flag]
        if flagged:
            messages.append(f"{headline.format(_models(len(flagged)))}: {_listing(flagged)}.")
    if constant.any():
        which = [c for c, flag in zip(("etf", "ncc", "vc"), constant, strict=True) if flag]
        messages.append(
            f"component(s) {which} are equal for every model (up to rounding)"
            f"{' (a zoo of one model)' if len(models) == 1 else ''}; they normalise to 0."
        )
    for message in messages:
        warnings.warn(message, UserWarning, stacklevel=4)


@dataclasses.dataclass(frozen=True)
class MetricResult:
    """One metric's values over a zoo: host (NumPy) arrays of shape (M,), in the order of
    ``models``.

    Attributes:
      metric: the metric's name.
      models: model names.
      values: the metric, float64; higher predicts better transfer; NaN for a model
        it is undefined for (unranked, ``Status.NON_FINITE``).
      fields: the kernel's raw per-model quantities (``{"value": ...}`` and any other).
      ranking: model indices, best first; unranked models last.
      status: bit flags, see :class:`Status`.
    """

    metric: str
    models: tuple[str, ...]
    values: np.ndarray
    fields: dict[str, np.ndarray]
    ranking: np.ndarray
    status: np.ndarray

    def best(self) -> str:
        """The name of the best-ranked model."""
        return self.models[int(self.ranking[0])]

    def ranked(self) -> np.ndarray:
        """(M,) bool: the models with a value."""
        return np.isfinite(self.values)

    def ranks(self) -> np.ndarray:
        """(M,) 1-based rank of each model (in ``models`` order); 0 for unranked ones."""
        out = np.zeros(len(self.models), np.int64)
        out[self.ranking] = np.arange(1, len(self.models) + 1)
        return np.where(self.ranked(), out, 0)

    def to_records(self) -> list[dict[str, Any]]:
        """One dict of plain Python values per model, best first (strict JSON: no NaN)."""
        ranked = self.ranked()
        records = []
        for rank, i in enumerate(np.asarray(self.ranking).tolist(), start=1):
            record = {"model": self.models[i], "rank": rank if ranked[i] else None}
            record[self.metric] = _finite_or_none(self.values[i])
            record.update(
                {f: _finite_or_none(v[i]) for f, v in self.fields.items() if f != "value"}
            )
            record["status"] = [f.name for f in Status if f and int(self.status[i]) & f]
            records.append(record)
        return records

    @classmethod
    def from_ncti(cls, result: NCTIResult) -> MetricResult:
        fields = {f: np.asarray(getattr(result, f), np.float64) for f in ("etf", "ncc", "vc")}
        return cls("ncti", result.models, result.ncti, fields, result.ranking, result.status)

    @classmethod
    def from_fields(
        cls, metric: Any, models: Sequence[str], raw: dict[str, np.ndarray], labels: Labels
    ) -> MetricResult:
        """A metric's result from its kernel's per-model ``raw`` fields (float64).

        Models with a non-finite field are unranked; a zoo-level metric
        (``metric.combine``) is combined over the others.
        """
        finite = np.all([np.isfinite(v) for v in raw.values()], axis=0)
        values = np.full(len(models), np.nan)
        if finite.any():
            values[finite] = metric.values({f: v[finite] for f, v in raw.items()})
        values[~np.isfinite(values)] = np.nan
        status = np.zeros(len(models), np.int32)
        if (labels.counts == 1).any():
            status |= Status.SINGLETON_CLASS
        status[~np.isfinite(values)] |= Status.NON_FINITE
        order = np.lexsort((np.arange(len(models)), -np.nan_to_num(values, nan=-np.inf)))
        unranked = [models[i] for i in range(len(models)) if not np.isfinite(values[i])]
        if unranked:
            warnings.warn(
                f"{metric.name}: {_models(len(unranked))} unranked, the metric is undefined "
                f"(NaN or infinite) for them: {_listing([repr(m) for m in unranked])}.",
                UserWarning,
                stacklevel=4,
            )
        return cls(metric.name, tuple(models), values, raw, order.astype(np.int64), status)


@dataclasses.dataclass(frozen=True)
class ZooMetrics:
    """Several metrics of one zoo (:func:`ncti_jax.score_metrics`).

    Attributes:
      models: model names, in input order (every result's ``models``).
      metrics: the metrics' names, in result order.
      results: ``{metric: MetricResult}``; also ``zoo_metrics[metric]``.
      ncti: NCTI's full result (components, normalisation, flags) when it was scored.
    """

    models: tuple[str, ...]
    metrics: tuple[str, ...]
    results: dict[str, MetricResult]
    ncti: NCTIResult | None = None

    def __getitem__(self, metric: str) -> MetricResult:
        try:
            return self.results[metric]
        except KeyError:
            raise KeyError(f"{metric!r} was not scored; scored: {list(self.metrics)}") from None

    def values(self) -> dict[str, np.ndarray]:
        """``{metric: (M,) values}`` in ``models`` order."""
        return {m: self.results[m].values for m in self.metrics}
