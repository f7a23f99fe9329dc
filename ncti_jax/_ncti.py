"""NCTI: the three components of one model, vmapped over the zoo, and the zoo score."""

from __future__ import annotations

import dataclasses
import enum
import functools
import warnings
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from . import _validate
from ._lda import ClassStats, lda_eigen, lda_svd
from ._linalg import target_platform
from ._nuclear import nuclear_norm
from ._pad import ClassLayout, class_layout, stack_zoo
from ._pca import pca_project

# The authors' branch rule: the svd solver when the shrinkage clamps at this floor.
SHRINKAGE_FLOOR = 1e-10
# Explained variances summed in the shrinkage rule.
SHRINKAGE_TOP = 32


class Status(enum.IntFlag):
    """Per-model flags of a result; 0 means nothing to report."""

    OK = 0
    K_REDUCED = 1  # n_components was reduced to min(N - 1, D_m)
    RANK_DEFICIENT = 2  # fewer principal directions with variance than n_components
    NO_VARIANCE = 4  # constant features: no direction with variance; LDA reduces to the priors
    SINGLETON_CLASS = 8  # a class has a single sample (zoo-wide)
    CONSTANT_COMPONENT = 16  # a component is equal across the zoo and normalises to 0
    NON_FINITE = 32  # a raw component came out NaN or infinite; the score is NaN


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RawComponents:
    """Per-model outputs of the compiled kernel; every field has shape (M,) or (M, 3)."""

    components: jax.Array  # (M, 3): etf, ncc, vc
    pca_rank: jax.Array  # (M,) principal directions kept
    shrinkage: jax.Array  # (M,) the rule's shrinkage t
    eigen_solver: jax.Array  # (M,) True where the eigen (shrinkage) solver was used


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
      ranking: model indices, best first (``models[ranking[0]]`` is the pick).
      solver: 0 where LDA used the svd solver, 1 where the shrinkage-eigen solver.
      shrinkage: the shrinkage rule's ``t = max(exp(-sum of top-32 variances), 1e-10)``.
      n_components: principal directions kept (``min(k, N - 1, D)``, fewer when
        the features are rank deficient).
      status: bit flags, see :class:`Status`.
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
    n_components: np.ndarray
    status: np.ndarray

    def best(self) -> str:
        """The name of the best-ranked model."""
        return self.models[int(self.ranking[0])]

    def to_records(self) -> list[dict[str, Any]]:
        """One dict of plain Python values per model, best first."""
        records = []
        for rank, i in enumerate(np.asarray(self.ranking).tolist(), start=1):
            records.append(
                {
                    "model": self.models[i],
                    "rank": rank,
                    "ncti": float(self.ncti[i]),
                    "etf": float(self.etf[i]),
                    "ncc": float(self.ncc[i]),
                    "vc": float(self.vc[i]),
                    "etf_norm": float(self.etf_norm[i]),
                    "ncc_norm": float(self.ncc_norm[i]),
                    "vc_norm": float(self.vc_norm[i]),
                    "solver": "eigen" if int(self.solver[i]) else "svd",
                    "shrinkage": float(self.shrinkage[i]),
                    "n_components": int(self.n_components[i]),
                    "status": [f.name for f in Status if f and int(self.status[i]) & f],
                }
            )
        return records


def model_components(
    x: jax.Array, n_valid_components: jax.Array, n_cols: jax.Array, layout: ClassLayout, *, k: int
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """NCTI's three raw components for one model.

    Args:
      x: (N, D) features, zero-padded columns allowed.
      n_valid_components: scalar ``min(k, N - 1, D_model)``.
      n_cols: scalar ``D_model``, the columns of ``x`` that are not padding.
      layout: the labels' device arrays.
      k: static output width of the PCA.

    Returns:
      (3,) etf, ncc, vc; the PCA rank kept; the shrinkage; whether the eigen
      solver was selected.
    """
    c = layout.counts.shape[0]
    z, variances, mask = pca_project(x, n_valid_components, n_cols, k)
    shrinkage = jnp.maximum(jnp.exp(-jnp.sum(variances[:SHRINKAGE_TOP])), SHRINKAGE_FLOOR)
    # Compare with the floor as rounded to this dtype, as the authors' code does in float64.
    use_eigen = shrinkage > jnp.asarray(SHRINKAGE_FLOOR, x.dtype)

    stats = ClassStats(z, layout.codes, layout.counts)
    pca_rank = jnp.sum(mask)
    n_out = jnp.minimum(c - 1, pca_rank)
    proj_svd, dec_svd = lda_svd(z, stats, n_out)
    proj_eig, dec_eig = lda_eigen(z, mask, stats, n_out, shrinkage)
    projection = jnp.where(use_eigen, proj_eig, proj_svd)
    decision = jnp.where(use_eigen, dec_eig, dec_svd)

    etf = nuclear_norm(projection - jnp.mean(projection, axis=0))
    log_p = jax.nn.log_softmax(decision, axis=1)
    ncc = jnp.mean(jnp.exp(jnp.take_along_axis(log_p, layout.codes[:, None], axis=1)))
    probs = jnp.exp(log_p)
    blocks = jnp.where(layout.block_mask[..., None], probs[layout.block_index], 0.0)
    vc = jnp.log(jnp.sum(jax.vmap(nuclear_norm)(blocks)))
    return jnp.stack([etf, ncc, vc]), pca_rank, shrinkage, use_eigen


@functools.partial(jax.jit, static_argnames=("k", "precision", "platform"))
def zoo_components(
    x: jax.Array,
    n_valid_components: jax.Array,
    n_cols: jax.Array,
    layout: ClassLayout,
    *,
    k: int,
    precision: str,
    platform: str,
) -> RawComponents:
    """:func:`model_components` vmapped over the model axis of ``x`` (M, N, D).

    ``platform`` is the backend ``x`` lives on: the linear algebra is traced for
    it (see :mod:`ncti_jax._linalg`).
    """
    kernel = functools.partial(model_components, k=k)
    with jax.default_matmul_precision(precision), target_platform(platform):
        outs = jax.vmap(kernel, in_axes=(0, 0, 0, None))(x, n_valid_components, n_cols, layout)
    return RawComponents(*outs)


def normalise_zoo(etf: ArrayLike, ncc: ArrayLike, vc: ArrayLike) -> tuple[np.ndarray, ...]:
    """Min-max normalised components and NCTI from raw components, e.g. to merge zoos.

    Host-side and float64: M numbers per component. A component that is equal
    for every model normalises to 0.

    Args:
      etf, ncc, vc: (M,) raw components of the models to rank together.

    Returns:
      etf_norm, ncc_norm, vc_norm, ncti, each an (M,) float64 NumPy array.

    Example:
      >>> import ncti_jax
      >>> *_, score = ncti_jax.normalise_zoo([1.0, 3.0], [0.5, 0.9], [2.0, 1.0])
      >>> score.tolist()  # etf and ncc best for the second model, vc best for it too
      [-1.0, 2.0]
    """
    raw = np.stack(
        [np.asarray(jax.device_get(v), np.float64).reshape(-1) for v in (etf, ncc, vc)], axis=1
    )
    lo, hi = raw.min(axis=0), raw.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    norm = np.where(hi > lo, (raw - lo) / span, 0.0)
    return norm[:, 0], norm[:, 1], norm[:, 2], norm[:, 0] + norm[:, 1] - norm[:, 2]


def score_zoo(
    features: Mapping[str, ArrayLike] | ArrayLike,
    labels: ArrayLike,
    *,
    n_components: int = 64,
    precision: str | jax.lax.Precision = "highest",
    dtype: Any = None,
    names: Any = None,
    progress: bool = False,
) -> NCTIResult:
    """Scores a zoo of models with NCTI, all models in one compiled call.

    Args:
      features: ``{model name: (N, D_m) array}`` (D may differ between models) or a
        stacked (M, N, D) array. NumPy (memory-mapped too) or JAX arrays, any real
        dtype; the same N samples, in the same order, for every model.
      labels: (N,) or (N, 1) class labels: integers, strings or whole-number floats.
      n_components: PCA dimension ``k`` (64 in the paper).
      precision: matmul precision, ``"highest"`` (exact float32, the default),
        ``"high"`` (TF32 / bf16x3 on accelerators) or ``"default"``.
      dtype: computation dtype, float32 (default) or float64 (needs x64 enabled).
      names: model names for a stacked array.
      progress: show a progress bar over the models (needs tqdm; CPU runs score
        one model at a time).

    Returns:
      An :class:`NCTIResult`.

    Raises:
      ValueError, TypeError: on bad input, before anything is traced, naming the
        model or argument at fault.

    Example:
      >>> import numpy as np, ncti_jax
      >>> rng = np.random.default_rng(0)
      >>> y = rng.integers(0, 3, 300)
      >>> feats = {"a": rng.normal(size=(300, 16)) + y[:, None],
      ...          "b": rng.normal(size=(300, 8))}
      >>> ncti_jax.score_zoo(feats, y).best()
      'a'
    """
    k_req = _validate.check_n_components(n_components)
    precision = _validate.resolve_precision(precision)
    dt = _validate.resolve_dtype(dtype)
    lab = _validate.check_labels(labels)
    model_names, arrays = _validate.check_features(features, lab.n_samples, names)
    dims = {name: int(x.shape[1]) for name, x in zip(model_names, arrays, strict=True)}
    k_eff = _validate.effective_components(k_req, lab.n_samples, dims)
    _validate.warn_singleton_classes(lab)

    k = max(k_eff.values())
    d_max = max(dims.values())
    platform = _platform(arrays)
    layout = class_layout(lab, dt)
    opts = {"k": k, "precision": precision, "platform": platform}
    # On a CPU every large op already uses all cores: scoring one model at a time
    # (zero-padded to one shape, so one compilation) costs the same time and holds
    # one model's temporaries instead of the whole zoo's. Elsewhere the zoo is one
    # vmapped call.
    chunk = 1 if platform == "cpu" else len(arrays)
    parts = []
    for start in _progress(range(0, len(arrays), chunk), progress and chunk == 1, len(arrays)):
        names = model_names[start : start + chunk]
        parts.append(
            zoo_components(
                stack_zoo(arrays[start : start + chunk], dt, d_max=d_max),
                jnp.asarray([k_eff[m] for m in names], jnp.int32),
                jnp.asarray([dims[m] for m in names], jnp.int32),
                layout,
                **opts,
            )
        )
    raw = jax.tree.map(lambda *leaves: jnp.concatenate(leaves), *parts)
    return _finish(model_names, raw, k_eff, k_req, lab)


def _platform(arrays) -> str:
    """The backend the zoo will be scored on: that of device arrays, else the default."""
    for a in arrays:
        if isinstance(a, jax.Array):
            return next(iter(a.devices())).platform
    return jax.default_backend()


def _progress(iterable, enabled: bool, total: int):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, unit="model", desc="scoring")


def _finish(
    models: tuple[str, ...],
    raw: RawComponents,
    k_eff: dict[str, int],
    k_req: int,
    labels: _validate.Labels,
) -> NCTIResult:
    """Normalises on the host, sets status flags and warns about them."""
    raw = jax.device_get(raw)
    comps = np.asarray(raw.components, dtype=np.float64)
    finite = np.isfinite(comps).all(axis=1)
    status = np.zeros(len(models), np.int32)
    k_arr = np.array([k_eff[m] for m in models])
    rank = np.asarray(raw.pca_rank)
    status[k_arr < k_req] |= Status.K_REDUCED
    status[(rank < k_arr) & (rank > 0)] |= Status.RANK_DEFICIENT
    status[rank == 0] |= Status.NO_VARIANCE
    if (labels.counts == 1).any():
        status |= Status.SINGLETON_CLASS
    status[~finite] |= Status.NON_FINITE

    norm = np.full_like(comps, np.nan)
    constant = np.zeros(3, bool)
    if finite.any():
        *parts, _ = normalise_zoo(*comps[finite].T)
        norm[finite] = np.stack(parts, axis=1)
        ok = comps[finite]
        constant = ok.max(axis=0) == ok.min(axis=0)
        if constant.any():
            status[finite] |= Status.CONSTANT_COMPONENT
    ncti = norm[:, 0] + norm[:, 1] - norm[:, 2]
    order = np.lexsort((np.arange(len(models)), -np.nan_to_num(ncti, nan=-np.inf)))

    for name, s, r in zip(models, status, rank, strict=True):
        if s & Status.NO_VARIANCE:
            warnings.warn(
                f"model {name!r}: features have no variance (constant or all zero); "
                "its LDA reduces to the class priors.",
                UserWarning,
                stacklevel=3,
            )
        elif s & Status.RANK_DEFICIENT:
            warnings.warn(
                f"model {name!r}: only {int(r)} of {k_eff[name]} principal "
                "directions have variance.",
                UserWarning,
                stacklevel=3,
            )
        if s & Status.NON_FINITE:
            warnings.warn(
                f"model {name!r}: a raw component is not finite; its NCTI is NaN.",
                UserWarning,
                stacklevel=3,
            )
    if constant.any():
        which = [c for c, flag in zip(("etf", "ncc", "vc"), constant, strict=True) if flag]
        warnings.warn(
            f"component(s) {which} are equal for every model"
            f"{' (a zoo of one model)' if len(models) == 1 else ''}; "
            "they normalise to 0.",
            UserWarning,
            stacklevel=3,
        )

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
        solver=np.asarray(raw.eigen_solver, np.int32),
        shrinkage=np.asarray(raw.shrinkage, raw_dtype),
        n_components=rank.astype(np.int32),
        status=status,
    )
