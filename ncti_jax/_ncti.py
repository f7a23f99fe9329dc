"""NCTI of one model, vmapped over blocks of models split over devices, and the zoo score."""

from __future__ import annotations

import dataclasses
import enum
import functools
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.typing import ArrayLike

from . import _shard, _validate
from ._checkpoint import Checkpoint, content_digest
from ._lda import ClassStats, lda_eigen, lda_svd
from ._linalg import singular_values, target_platform
from ._nuclear import nuclear_norm
from ._pad import ClassLayout, class_layout, stack_zoo
from ._pca import mask_components, pca_project
from ._plan import Plan, make_plan
from ._stream import device_pca, host_pca
from .defaults import CHUNK_ROWS, N_COMPONENTS

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
    NON_FINITE = 32  # a raw component is undefined (NaN or infinite): the model is unranked


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
      ranking: model indices, best first (``models[ranking[0]]`` is the pick);
        unranked models (``Status.NON_FINITE``, score NaN) come last.
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
                    "solver": "eigen" if int(self.solver[i]) else "svd",
                    "shrinkage": _finite_or_none(self.shrinkage[i]),
                    "n_components": int(self.n_components[i]),
                    "status": [f.name for f in Status if f and int(self.status[i]) & f],
                }
            )
        return records


def _finite_or_none(value: Any) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def model_components(
    x: jax.Array, n_valid_components: jax.Array, n_cols: jax.Array, layout: ClassLayout, *, k: int
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """NCTI's three raw components for one model, from its features.

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
    return _components(*pca_project(x, n_valid_components, n_cols, k), layout)


def projected_components(
    z: jax.Array,
    evals: jax.Array,
    scale: jax.Array,
    floors: jax.Array,
    n_valid_components: jax.Array,
    layout: ClassLayout,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """:func:`model_components` from a PCA done elsewhere (:mod:`ncti_jax._stream`).

    Args:
      z: (N, k) centred features divided by ``scale``, projected on their top-``k``
        principal directions.
      evals: (k,) the matching eigenvalues of the centred scatter, decreasing.
      scale: scalar, the power of two the features were divided by.
      floors: (k,) the rounding level of each eigenvalue (:func:`ncti_jax._pca.rounding_floors`).
      n_valid_components: scalar ``min(k, N - 1, D_model)``; columns beyond it are ignored.
      layout: the labels' device arrays.
    """
    return _components(*mask_components(z, evals, floors, n_valid_components), scale, layout)


def shrinkage_rule(variances: jax.Array, scale: jax.Array) -> jax.Array:
    """The authors' ``t = max(exp(-sum of the top-32 variances), 1e-10)``.

    ``variances`` are those of the features divided by ``scale``; the product is
    taken in an order that neither overflows nor underflows before it must.
    """
    top = jnp.sum(variances[:SHRINKAGE_TOP]) * scale * scale
    return jnp.maximum(jnp.exp(-top), SHRINKAGE_FLOOR)


def _components(
    z: jax.Array, variances: jax.Array, mask: jax.Array, scale: jax.Array, layout: ClassLayout
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    c = layout.counts.shape[0]
    shrinkage = shrinkage_rule(variances, scale)
    # Compare with the floor as rounded to this dtype, as the authors' code does in float64.
    use_eigen = shrinkage > jnp.asarray(SHRINKAGE_FLOOR, z.dtype)

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
    vc = jnp.log(class_nuclear_norms(log_p, layout))
    return jnp.stack([etf, ncc, vc]), pca_rank, shrinkage, use_eigen


def class_nuclear_norms(log_p: jax.Array, layout: ClassLayout) -> jax.Array:
    """``sum_c ||P[y == c]||_*`` from the (N, C) log-probabilities.

    Probabilities below ``eps**2`` are set to zero first: together they move the
    sum by less than ``N * sqrt(C) * eps**2``, far below rounding, and they are
    what made float32 eigensolvers return NaN (entries down to 1e-38, squares
    and products subnormal). Classes are taken bucket by bucket
    (:class:`ncti_jax._pad.ClassLayout`): one row is its own norm; a block of
    fewer rows than classes goes through a direct SVD (the Gram route
    over-counted nearly rank-deficient wide blocks by 1e-4); a tall one through
    its C x C Gram.
    """
    c = log_p.shape[1]
    probs = jnp.exp(log_p)
    probs = jnp.where(probs < jnp.finfo(probs.dtype).eps ** 2, 0.0, probs)
    total = jnp.zeros((), probs.dtype)
    for bucket in layout.buckets:
        rows = bucket.index.shape[1]
        blocks = jnp.where(bucket.mask[..., None], probs[bucket.index], 0.0)
        if rows == 1:
            norms = jnp.linalg.norm(blocks[:, 0], axis=1)
        elif rows < c:
            norms = jnp.sum(jax.vmap(singular_values)(blocks), axis=1)
        else:
            norms = jax.vmap(nuclear_norm)(blocks)
        total = total + jnp.sum(norms)
    return total


@functools.partial(jax.jit, static_argnames=("k", "precision", "platform", "host_solve", "mesh"))
def zoo_components(
    x: jax.Array,
    n_valid_components: jax.Array,
    n_cols: jax.Array,
    layout: ClassLayout,
    *,
    k: int,
    precision: str,
    platform: str,
    host_solve: bool | None = None,
    mesh: Mesh | None = None,
) -> RawComponents:
    """:func:`model_components` vmapped over the model axis of ``x`` (M, N, D).

    ``platform`` is the backend ``x`` lives on: the linear algebra is traced for
    it, and ``host_solve`` says where the PCA's eigenproblems are solved (see
    :func:`ncti_jax._linalg.target_platform`). With a ``mesh``, the model axis is
    split over its devices (M a multiple of their count).
    """
    kernel = jax.vmap(functools.partial(model_components, k=k), in_axes=(0, 0, 0, None))
    return _run_models(
        kernel, (x, n_valid_components, n_cols), layout, precision, platform, host_solve, mesh
    )


@functools.partial(jax.jit, static_argnames=("precision", "platform", "host_solve", "mesh"))
def zoo_projected_components(
    z: jax.Array,
    evals: jax.Array,
    scale: jax.Array,
    floors: jax.Array,
    n_valid_components: jax.Array,
    layout: ClassLayout,
    *,
    precision: str,
    platform: str,
    host_solve: bool | None = None,
    mesh: Mesh | None = None,
) -> RawComponents:
    """:func:`projected_components` vmapped over the model axis of ``z`` (M, N, k)."""
    kernel = jax.vmap(projected_components, in_axes=(0, 0, 0, 0, 0, None))
    per_model = (z, evals, scale, floors, n_valid_components)
    return _run_models(kernel, per_model, layout, precision, platform, host_solve, mesh)


def _run_models(kernel, per_model, layout, precision, platform, host_solve, mesh):
    def local(*args):
        with (
            jax.default_matmul_precision(precision),
            target_platform(platform, host_solve=host_solve),
        ):
            return RawComponents(*kernel(*args))

    if mesh is None:
        return local(*per_model, layout)
    return _shard.over_models(local, mesh, n_replicated=1)(*per_model, layout)


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
    features: Mapping[str, Any] | ArrayLike,
    labels: ArrayLike,
    *,
    n_components: int = N_COMPONENTS,
    precision: str | jax.lax.Precision = "highest",
    dtype: Any = None,
    names: Any = None,
    strategy: str = "auto",
    devices: Sequence[jax.Device] | None = None,
    memory_limit: int | None = None,
    chunk_rows: int = CHUNK_ROWS,
    checkpoint: str | os.PathLike | None = None,
    progress: bool = False,
) -> NCTIResult:
    """Scores a zoo of models with NCTI.

    Models are independent until the final min-max normalisation: they are
    scored in compiled calls over blocks of models, the model axis split over
    ``devices``, with the memory of each call planned ahead (see
    :mod:`ncti_jax._plan`).

    Args:
      features: ``{model name: (N, D_m) features}`` (D may differ between models)
        or a stacked (M, N, D) array. NumPy (memory-mapped too) or JAX arrays of
        any real dtype, or :class:`RowChunks` for features read in row blocks;
        the same N samples, in the same order, for every model.
      labels: (N,) or (N, 1) class labels: integers, strings or whole-number floats.
      n_components: PCA dimension ``k`` (64 in the paper).
      precision: matmul precision, ``"highest"`` (exact float32, the default),
        ``"high"`` (TF32 / bf16x3 on accelerators) or ``"default"``.
      dtype: computation dtype, float32 (default) or float64 (needs x64 enabled).
      names: model names for a stacked array.
      strategy: ``"fused"`` (whole models on the devices, one kernel),
        ``"streaming"`` (PCA from row chunks, then the kernel on the (N, k)
        projections) or ``"auto"`` (streaming on CPU; fused elsewhere when a
        model fits a device, else streaming). Both give the same result.
      devices: the devices to split the models over (default: every device,
        of every process when ``jax.distributed`` is initialised; then each
        process passes its own models and every process gets the whole zoo's result).
      memory_limit: bytes one device may use (default: what the device reports free).
      chunk_rows: rows per chunk when streaming.
      checkpoint: a directory to save finished models in (orbax); a rerun with the
        same arguments resumes from it.
      progress: show a progress bar over the models (needs tqdm).

    Returns:
      An :class:`NCTIResult`.

    Raises:
      ValueError, TypeError: on bad input, before anything is traced, naming the
        model or argument at fault.
      MemoryError: ``strategy="fused"`` and one model does not fit one device.
      CheckpointError: ``checkpoint`` holds another run's or a corrupt checkpoint.

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
    rows = _validate.check_positive_int(chunk_rows, "chunk_rows")
    devices = _validate.check_devices(devices)
    memory_limit = _validate.check_memory_limit(memory_limit)
    lab = _validate.check_labels(labels)
    model_names, arrays = _validate.check_features(features, lab.n_samples, names)
    dims = {name: int(x.shape[1]) for name, x in zip(model_names, arrays, strict=True)}
    k_eff = _validate.effective_components(k_req, lab.n_samples, dims)
    _validate.warn_singleton_classes(lab)
    ctx = _context(
        dict(zip(model_names, arrays, strict=True)),
        dims,
        k_eff,
        lab,
        dt,
        precision,
        strategy,
        devices,
        memory_limit,
        rows,
    )
    store = None
    if checkpoint is not None:
        where = os.fspath(checkpoint)
        if _shard.multi_process():
            where = os.path.join(where, f"process_{jax.process_index()}")
        store = Checkpoint(where, _fingerprint(ctx, lab, k_req))
    try:
        done = _run(ctx, store, progress)
    finally:
        if store is not None:
            store.close()
    return _gather_and_finish(model_names, done, k_eff, k_req, lab)


@dataclasses.dataclass(frozen=True)
class _Context:
    """What every compiled call of one :func:`score_zoo` run shares."""

    features: dict[str, Any]  # this process's models, in order
    k_eff: dict[str, int]
    dims: dict[str, int]
    k: int  # the zoo-wide (every process's) PCA width and feature width: static shapes
    d_max: int
    n: int
    dtype: np.dtype
    precision: str
    mesh: Mesh
    local_devices: list[jax.Device]
    rows: int
    layout: ClassLayout
    plan: Plan


def _context(features, dims, k_eff, lab, dt, precision, strategy, devices, memory_limit, rows):
    """The mesh, the shapes every process agrees on, and the memory plan; checks them."""
    mesh = _shard.model_mesh(devices)
    local_devices = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    if not local_devices:
        raise ValueError("devices: none of them belongs to this process.")
    if _shard.multi_process():
        _shard.check_same("labels", bytes.fromhex(content_digest(lab.codes)))
    k = _shard.agree_max(max(k_eff.values()))
    d_max = _shard.agree_max(max(dims.values()))
    plan = make_plan(
        strategy,
        device=local_devices[0],
        n_local_devices=len(local_devices),
        n_models=len(features),
        n=lab.n_samples,
        d_max=d_max,
        k=k,
        n_classes=lab.n_classes,
        itemsize=dt.itemsize,
        memory_limit=memory_limit,
        widest=max(dims, key=dims.get),
    )
    if plan.strategy == "fused" and plan.host_solve and mesh.devices.size > 1 and dt == np.float32:
        raise ValueError(
            "strategy='fused' on several CPU devices needs dtype=float64: in float32 its "
            "eigensolver runs in host callbacks, which hang XLA:CPU when several CPU devices "
            "run at once. Use strategy='streaming' (the CPU default)."
        )
    layout = _shard.replicate(class_layout(lab, dt), mesh)
    return _Context(
        features,
        k_eff,
        dims,
        k,
        d_max,
        lab.n_samples,
        dt,
        precision,
        mesh,
        local_devices,
        rows,
        layout,
        plan,
    )


def _run(ctx: _Context, store: Checkpoint | None, progress: bool) -> dict[str, dict[str, Any]]:
    """Every local model's raw components, restoring and saving them through ``store``."""
    done = store.restore() if store is not None else {}
    todo = [m for m in ctx.features if m not in done]
    per_call = ctx.plan.models_per_call
    n_calls = _shard.agree_max(-(-len(todo) // per_call))  # every process makes every call
    bar = _progress(progress, len(ctx.features), initial=len(ctx.features) - len(todo))
    try:
        for call in range(n_calls):
            batch = todo[call * per_call : (call + 1) * per_call]
            # Read back at once: overlapping the next model's host BLAS with this
            # call oversubscribes the cores (measured 10% slower on 2 cores).
            out = _shard.local_rows(_score_call(ctx, batch))
            for j, name in enumerate(batch):
                done[name] = {f: getattr(out, f)[j] for f in _RAW_FIELDS}
            if store is not None and batch:
                store.save(done)
            if bar is not None:
                bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()
    return done


_RAW_FIELDS = tuple(f.name for f in dataclasses.fields(RawComponents))


def _score_call(ctx: _Context, batch: list[str]) -> RawComponents:
    """Dispatches one compiled call on ``batch``, padded with dummy models."""
    pad = ctx.plan.models_per_call - len(batch)
    n_valid = np.array([ctx.k_eff[m] for m in batch] + [0] * pad, np.int32)
    opts = {
        "precision": ctx.precision,
        "platform": ctx.local_devices[0].platform,
        "host_solve": ctx.plan.host_solve,
        "mesh": ctx.mesh,
    }
    if ctx.plan.strategy == "fused":
        arrays = [ctx.features[m] for m in batch]
        x = stack_zoo(arrays, ctx.dtype, d_max=ctx.d_max, n_models=len(batch) + pad, n=ctx.n)
        cols = np.array([ctx.dims[m] for m in batch] + [0] * pad, np.int32)
        out = zoo_components(
            _shard.put_models(x, ctx.mesh),
            _shard.put_models(n_valid, ctx.mesh),
            _shard.put_models(cols, ctx.mesh),
            ctx.layout,
            k=ctx.k,
            **opts,
        )
    else:
        m_all = len(batch) + pad
        z = np.zeros((m_all, ctx.n, ctx.k), ctx.dtype)
        evals = np.zeros((m_all, ctx.k), ctx.dtype)
        scale = np.ones(m_all, ctx.dtype)
        floors = np.ones((m_all, ctx.k), ctx.dtype)  # dummies: nothing above the floor
        for j, name in enumerate(batch):
            kj = ctx.k_eff[name]
            if ctx.plan.host_solve:
                zj, top = host_pca(name, ctx.features[name], kj, ctx.dtype, rows=ctx.rows)
            else:
                device = ctx.local_devices[j % len(ctx.local_devices)]
                zj, top = device_pca(
                    name,
                    ctx.features[name],
                    kj,
                    ctx.dtype,
                    rows=ctx.rows,
                    device=device,
                    precision=ctx.precision,
                )
            z[j, :, :kj] = np.asarray(zj)
            evals[j, :kj] = np.asarray(top.evals)
            scale[j] = top.scale
            floors[j, :kj] = np.asarray(top.floors)
        out = zoo_projected_components(
            *(_shard.put_models(a, ctx.mesh) for a in (z, evals, scale, floors, n_valid)),
            ctx.layout,
            **opts,
        )
    return out


def _fingerprint(ctx: _Context, labels: _validate.Labels, k_req: int) -> dict[str, Any]:
    return {
        "models": {
            m: [ctx.n, ctx.dims[m], content_digest(x, ctx.rows)] for m, x in ctx.features.items()
        },
        "labels_digest": content_digest(labels.codes),
        "n_components": k_req,
        "k": ctx.k,
        "dtype": str(ctx.dtype),
        "precision": ctx.precision,
    }


def _progress(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, unit="model", desc="scoring")


def _gather_and_finish(
    model_names: tuple[str, ...],
    done: dict[str, dict[str, np.ndarray]],
    k_eff: dict[str, int],
    k_req: int,
    labels: _validate.Labels,
) -> NCTIResult:
    """Every process's raw components (in process order), normalised as one zoo."""
    local = {f: np.stack([np.asarray(done[m][f]) for m in model_names]) for f in _RAW_FIELDS}
    local["k_eff"] = np.array([k_eff[m] for m in model_names], np.int32)
    all_names = _shard.allgather_names(model_names)
    if len(all_names) > 1:
        width = max(len(n) for n in all_names)
        for f, a in local.items():
            padded = np.zeros((width, *a.shape[1:]), a.dtype)
            padded[: a.shape[0]] = a
            rows = _shard.allgather(padded)
            local[f] = np.concatenate([rows[p, : len(n)] for p, n in enumerate(all_names)])
        model_names = tuple(m for names in all_names for m in names)
        if len(set(model_names)) != len(model_names):
            dup = sorted({m for m in model_names if model_names.count(m) > 1})
            raise ValueError(f"model names must be unique across processes; repeated: {dup}.")
    k_eff = dict(zip(model_names, local.pop("k_eff").tolist(), strict=True))
    return _finish(model_names, RawComponents(**local), k_eff, k_req, labels)


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
                stacklevel=4,
            )
        elif s & Status.RANK_DEFICIENT:
            warnings.warn(
                f"model {name!r}: only {int(r)} of {k_eff[name]} principal "
                "directions have variance.",
                UserWarning,
                stacklevel=4,
            )
        if s & Status.NON_FINITE:
            warnings.warn(
                f"model {name!r} is unranked: a raw component is undefined (NaN or infinite); "
                "it is left out of the zoo's normalisation.",
                UserWarning,
                stacklevel=4,
            )
    if constant.any():
        which = [c for c, flag in zip(("etf", "ncc", "vc"), constant, strict=True) if flag]
        warnings.warn(
            f"component(s) {which} are equal for every model"
            f"{' (a zoo of one model)' if len(models) == 1 else ''}; "
            "they normalise to 0.",
            UserWarning,
            stacklevel=4,
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
