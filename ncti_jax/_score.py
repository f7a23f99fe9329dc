"""``score_zoo``: validate, plan, score the models call by call, gather, finish.

The driver of one run, on the host. Everything it decides up front lives in a
:class:`_Run`: the checked inputs, the device mesh, the shapes every process
agrees on and the :class:`ncti_jax._plan.Plan`. Each compiled call then scores
one batch of models (:func:`_score_batch`), finished models are checkpointed,
and :func:`ncti_jax._result.finish` normalises the whole zoo.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh
from jax.typing import ArrayLike

from . import _shard, _validate
from ._batch import zoo_metrics
from ._checkpoint import Checkpoint, content_digest
from ._kernel import RAW_FIELDS, RawComponents, zoo_components, zoo_projected_components
from ._linalg import Linalg
from ._pad import ClassLayout, class_layout, stack_zoo
from ._pca import FALLBACK
from ._plan import Plan, device_budget, format_bytes, make_plan, metrics_bytes
from ._result import MetricResult, NCTIResult, ZooMetrics, finish
from ._stream import RowChunks, device_pca, host_pca
from .defaults import CHUNK_ROWS, EIGENSOLVERS, N_COMPONENTS, PRECISIONS, STRATEGIES


def score_zoo(
    features: Mapping[str, Any] | ArrayLike,
    labels: ArrayLike,
    *,
    n_components: int = N_COMPONENTS,
    precision: str | jax.lax.Precision = PRECISIONS[0],
    dtype: Any = None,
    names: Any = None,
    strategy: str = STRATEGIES[0],
    eigensolver: str = EIGENSOLVERS[0],
    devices: Sequence[jax.Device] | None = None,
    memory_limit: int | None = None,
    chunk_rows: int = CHUNK_ROWS,
    checkpoint: str | os.PathLike | None = None,
    progress: bool = False,
) -> NCTIResult:
    """Scores a zoo of models with NCTI.

    Models are independent until the final min-max normalisation: they are
    scored in compiled calls over batches of models, the model axis split over
    ``devices``, with the memory of each call planned ahead (see
    :mod:`ncti_jax._plan`).

    Args:
      features: ``{model name: (N, D_m) features}`` (D may differ between models)
        or a stacked (M, N, D) array. NumPy (memory-mapped too) or JAX arrays of
        any real dtype, or :class:`RowChunks` for features read in row chunks;
        the same N samples, in the same order, for every model.
      labels: (N,) or (N, 1) class labels: integers, strings or whole-number floats.
      n_components: PCA dimension asked for (64 in the paper); each model gets
        ``min(n_components, N - 1, D_m)``.
      precision: matmul precision, ``"highest"`` (exact float32, the default),
        ``"high"`` (TF32 / bf16x3 on accelerators) or ``"default"``.
      dtype: computation dtype, float32 (default) or float64 (needs x64 enabled).
      names: model names for a stacked array.
      strategy: ``"fused"`` (whole models on the devices, one kernel),
        ``"streaming"`` (PCA from row chunks, then the kernel on the (N, k)
        projections) or ``"auto"`` (streaming on CPU; fused elsewhere when a
        model fits a device, else streaming). Both give the same result.
      eigensolver: how the accelerators' fused PCA solves its eigenproblem:
        ``"topk"`` (default: a certified top-k solver; a model it cannot certify is
        recomputed with the full ``eigh`` and flagged ``EIGENSOLVER_FALLBACK``),
        ``"topk-tf32"`` / ``"topk-bf16"`` (its scatter from TF32 / bfloat16
        operands, refined on the exact one) or ``"eigh"``. The CPU's host path
        always solves the top-k eigenpairs exactly in float64.
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
    n_components = _validate.check_n_components(n_components)
    run = _prepare(
        features,
        labels,
        n_components=n_components,
        precision=_validate.resolve_precision(precision),
        dtype=_validate.resolve_dtype(dtype),
        names=names,
        strategy=strategy,
        eigensolver=_validate.check_choice(eigensolver, "eigensolver", EIGENSOLVERS),
        devices=_validate.check_devices(devices),
        memory_limit=_validate.check_memory_limit(memory_limit),
        rows=_validate.check_positive_int(chunk_rows, "chunk_rows"),
    )
    return _score_ncti(run, checkpoint, progress)


def _score_ncti(run: _Run, checkpoint, progress: bool) -> NCTIResult:
    """NCTI of the prepared zoo: batches of models, checkpointed, gathered, finished."""
    store = None
    if checkpoint is not None:
        store = Checkpoint(_process_dir(checkpoint), _fingerprint(run), fields=RAW_FIELDS)
    try:
        done = _score_models(run, store, progress)
    finally:
        if store is not None:
            store.close()
    local = {f: np.stack([np.asarray(done[m][f]) for m in run.features]) for f in RAW_FIELDS}
    local["max_components"] = np.array([run.max_components[m] for m in run.features], np.int32)
    models, fields = _shard.gather_models(tuple(run.features), local)
    max_components = dict(zip(models, fields.pop("max_components").tolist(), strict=True))
    return finish(models, RawComponents(**fields), max_components, run.n_components, run.labels)


def _process_dir(checkpoint: str | os.PathLike, *sub: str) -> str:
    """This process's checkpoint directory (each process saves its own models)."""
    where = os.path.join(os.fspath(checkpoint), *sub)
    if _shard.multi_process():
        where = os.path.join(where, f"process_{jax.process_index()}")
    return where


@dataclasses.dataclass(frozen=True)
class _Run:
    """What every compiled call of one :func:`score_zoo` run shares."""

    features: dict[str, Any]  # this process's models, in order
    labels: _validate.Labels
    n_components: int
    max_components: dict[str, int]  # min(n_components, N - 1, D_m) per model
    dims: dict[str, int]
    k: int  # the zoo-wide (every process's) PCA width and feature width: static shapes
    d_max: int
    dtype: np.dtype
    precision: str
    mesh: Mesh
    local_devices: list[jax.Device]
    rows: int
    layout: ClassLayout
    plan: Plan

    @property
    def n(self) -> int:
        return self.labels.n_samples


def _prepare(
    features,
    labels,
    *,
    n_components,
    precision,
    dtype,
    names,
    strategy,
    devices,
    memory_limit,
    rows,
    eigensolver=EIGENSOLVERS[0],
) -> _Run:
    """Checks the inputs, builds the mesh, agrees on shapes across processes, plans."""
    lab = _validate.check_labels(labels)
    model_names, arrays = _validate.check_features(features, lab.n_samples, names)
    dims = {name: int(x.shape[1]) for name, x in zip(model_names, arrays, strict=True)}
    max_components = {m: min(n_components, lab.n_samples - 1, d) for m, d in dims.items()}
    _validate.warn_singleton_classes(lab, stacklevel=4)
    mesh = _shard.model_mesh(devices)
    local_devices = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    if not local_devices:
        raise ValueError("devices: none of them belongs to this process.")
    if _shard.multi_process():
        _shard.check_same("labels", bytes.fromhex(content_digest(lab.codes)))
    k = _shard.agree_max(max(max_components.values()))
    d_max = _shard.agree_max(max(dims.values()))
    plan = make_plan(
        strategy,
        device=local_devices[0],
        n_local_devices=len(local_devices),
        n_devices=mesh.devices.size,
        n_models=len(model_names),
        n=lab.n_samples,
        d_max=d_max,
        k=k,
        n_classes=lab.n_classes,
        dtype=dtype,
        memory_limit=memory_limit,
        widest=max(dims, key=dims.get),
        eigensolver=eigensolver,
    )
    return _Run(
        features=dict(zip(model_names, arrays, strict=True)),
        labels=lab,
        n_components=n_components,
        max_components=max_components,
        dims=dims,
        k=k,
        d_max=d_max,
        dtype=dtype,
        precision=precision,
        mesh=mesh,
        local_devices=local_devices,
        rows=rows,
        layout=_shard.replicate(class_layout(lab, dtype), mesh),
        plan=plan,
    )


def _score_models(run: _Run, store: Checkpoint | None, progress: bool) -> dict[str, dict]:
    """Every local model's raw fields, restoring and saving them through ``store``."""
    done = store.restore() if store is not None else {}
    todo = [m for m in run.features if m not in done]
    per_call = run.plan.models_per_call
    n_calls = _shard.agree_max(-(-len(todo) // per_call))  # every process makes every call
    bar = _progress(progress, len(run.features), initial=len(run.features) - len(todo))
    try:
        for call in range(n_calls):
            batch = todo[call * per_call : (call + 1) * per_call]
            # Read back at once: overlapping the next model's host BLAS with this
            # call oversubscribes the cores (measured 10% slower on 2 cores).
            out = _shard.local_rows(_score_batch(run, batch))
            if run.plan.linalg.topk:
                out = _fall_back(run, batch, out)
            for j, name in enumerate(batch):
                done[name] = {f: getattr(out, f)[j] for f in RAW_FIELDS}
            if store is not None and batch:
                store.save(done)
            if bar is not None:
                bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()
    return done


def _fall_back(run: _Run, batch: list[str], out: RawComponents) -> RawComponents:
    """``out`` with the models the top-k eigensolver could not certify recomputed by
    the exact ``eigh`` in one more compiled call on just those models (padded to a
    multiple of the devices; every process makes the call, perhaps on dummies only).
    They keep the top-k solver's certificate and its ``FALLBACK`` code."""
    redo = [j for j in range(len(batch)) if int(out.eigensolver[j]) == FALLBACK]
    n_devices = len(run.local_devices)
    size = -(-_shard.agree_max(len(redo)) // n_devices) * n_devices
    if size == 0:
        return out
    exact = _shard.local_rows(
        _score_batch(run, [batch[j] for j in redo], linalg=run.plan.linalg.exact(), size=size)
    )
    fields = {f: np.array(getattr(out, f)) for f in RAW_FIELDS}
    for i, j in enumerate(redo):
        for f in ("components", "pca_rank", "shrinkage", "solver"):
            fields[f][j] = getattr(exact, f)[i]
    return RawComponents(**fields)


def _score_batch(
    run: _Run, batch: list[str], *, linalg: Linalg | None = None, size: int | None = None
) -> RawComponents:
    """One compiled call on ``batch``, padded with dummy models to ``size`` (the plan's
    models per call), with the plan's linear algebra unless ``linalg`` is given."""
    plan = run.plan
    pad = (size or plan.models_per_call) - len(batch)
    caps = np.array([run.max_components[m] for m in batch] + [0] * pad, np.int32)
    opts = {"precision": run.precision, "linalg": linalg or plan.linalg, "mesh": run.mesh}
    if plan.strategy == "fused":
        arrays = [run.features[m] for m in batch]
        x = stack_zoo(arrays, run.dtype, d_max=run.d_max, n_models=len(batch) + pad, n=run.n)
        cols = np.array([run.dims[m] for m in batch] + [0] * pad, np.int32)
        put = (_shard.put_models(a, run.mesh) for a in (x, caps, cols))
        return zoo_components(*put, run.layout, k=run.k, **opts)
    n_models = len(batch) + pad
    z = np.zeros((n_models, run.n, run.k), run.dtype)
    evals = np.zeros((n_models, run.k), run.dtype)
    scale = np.ones(n_models, run.dtype)
    floors = np.ones((n_models, run.k), run.dtype)  # dummies: nothing above the floor
    for j, name in enumerate(batch):
        cap = run.max_components[name]
        if plan.linalg.host_solve:
            zj, top = host_pca(name, run.features[name], cap, run.dtype, rows=run.rows)
        else:
            zj, top = device_pca(
                name,
                run.features[name],
                cap,
                run.dtype,
                rows=run.rows,
                linalg=plan.linalg,
                device=run.local_devices[j % len(run.local_devices)],
                precision=run.precision,
            )
        z[j, :, :cap] = np.asarray(zj)
        evals[j, :cap] = np.asarray(top.evals)
        scale[j] = top.scale
        floors[j, :cap] = np.asarray(top.floors)
    put = (_shard.put_models(a, run.mesh) for a in (z, evals, scale, floors, caps))
    return zoo_projected_components(*put, run.layout, **opts)


def _fingerprint(run: _Run) -> dict[str, Any]:
    return {
        "models": {
            m: [run.n, run.dims[m], content_digest(x, run.rows)] for m, x in run.features.items()
        },
        "labels_digest": content_digest(run.labels.codes),
        "n_components": run.n_components,
        "k": run.k,
        "dtype": str(run.dtype),
        "precision": run.precision,
        # the PCA eigensolver (its fields are saved too; the host path's is always "eigh")
        "eigensolver": run.plan.linalg.eigensolver,
    }


def _progress(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, unit="model", desc="scoring")


def score_metrics(
    features: Mapping[str, Any] | ArrayLike,
    labels: ArrayLike,
    *,
    metrics: str | Sequence[str] = ("ncti",),
    logits: Mapping[str, Any] | None = None,
    n_components: int = N_COMPONENTS,
    precision: str | jax.lax.Precision = PRECISIONS[0],
    dtype: Any = None,
    names: Any = None,
    strategy: str = STRATEGIES[0],
    eigensolver: str = EIGENSOLVERS[0],
    devices: Sequence[jax.Device] | None = None,
    memory_limit: int | None = None,
    chunk_rows: int = CHUNK_ROWS,
    checkpoint: str | os.PathLike | None = None,
    progress: bool = False,
) -> ZooMetrics:
    """Scores a zoo with several transferability metrics from one pass over its features.

    NCTI goes through :func:`score_zoo`'s engine (``n_components``, ``strategy`` and
    ``chunk_rows`` are its options). Every other metric's kernel
    (:mod:`ncti_jax.metrics`) runs in the same compiled call per batch of models, on
    statistics they share (:class:`ncti_jax._stats.ModelStats`), vmapped over the
    models and split over ``devices`` like NCTI; their calls hold whole models on
    the device (no row streaming yet).

    Args:
      features, labels, n_components, precision, dtype, names, strategy, eigensolver,
        devices, memory_limit, chunk_rows, progress: as for :func:`score_zoo`.
      metrics: metric names (see :data:`ncti_jax.metrics.NAMES`), a comma-separated
        string of them, or ``"all"`` (every implemented metric).
      logits: ``{model: (N, S_m) logits}`` of each model's source classifier on the
        same samples, for the metrics that need them (LEEP, NCE, ETran); S may
        differ between models. Probabilities can be passed as their logarithms.
      checkpoint: a directory to save finished models in (NCTI's steps, as
        :func:`score_zoo` saves them, and the other metrics' in its ``metrics``
        subdirectory); a rerun resumes both.

    Returns:
      A :class:`ZooMetrics`: one :class:`MetricResult` per metric, and NCTI's full
      :class:`NCTIResult` when NCTI is among them.

    Raises:
      ValueError, TypeError: on bad input (an unknown metric, a metric that needs
        logits without them, logits of the wrong shape), before anything is traced.
      MemoryError: one model does not fit one device for the metrics' kernels.

    Example:
      >>> import numpy as np, ncti_jax
      >>> rng = np.random.default_rng(0)
      >>> y = rng.integers(0, 3, 300)
      >>> feats = {"a": rng.normal(size=(300, 16)) + y[:, None],
      ...          "b": rng.normal(size=(300, 8))}
      >>> result = ncti_jax.score_metrics(feats, y, metrics="ncti,hscore")
      >>> [result[m].best() for m in result.metrics]
      ['a', 'a']
    """
    from . import metrics as registry

    chosen = registry.parse(metrics)
    others = tuple(m for m in chosen if m != "ncti")
    n_components = _validate.check_n_components(n_components)
    dtype = _validate.resolve_dtype(dtype)
    run = _prepare(
        features,
        labels,
        n_components=n_components,
        precision=_validate.resolve_precision(precision),
        dtype=dtype,
        names=names,
        strategy=strategy,
        eigensolver=_validate.check_choice(eigensolver, "eigensolver", EIGENSOLVERS),
        devices=_validate.check_devices(devices),
        memory_limit=_validate.check_memory_limit(memory_limit),
        rows=_validate.check_positive_int(chunk_rows, "chunk_rows"),
    )
    chunked = [m for m, x in run.features.items() if isinstance(x, RowChunks)]
    if others and chunked:
        raise TypeError(
            f"metrics {', '.join(others)} need whole feature arrays; model(s) {chunked[:5]} "
            "are RowChunks, which only NCTI streams. Pass arrays (memory-mapped .npy files "
            "are read once, in place)."
        )
    needs = [m for m in others if registry.get(m).needs_logits]
    source = _validate.check_logits(logits, tuple(run.features), run.n, needs)
    results: dict[str, MetricResult] = {}
    ncti = None
    if "ncti" in chosen:
        ncti = _score_ncti(run, checkpoint, progress)
        results["ncti"] = MetricResult.from_ncti(ncti)
    if others:
        results.update(_score_others(run, others, source, checkpoint, memory_limit, progress))
    models = next(iter(results.values())).models
    return ZooMetrics(models=models, metrics=tuple(results), results=results, ncti=ncti)


def _score_others(run, names, logits, checkpoint, memory_limit, progress) -> dict:
    """Every metric but NCTI: one compiled call per batch of models for all of them."""
    from . import metrics as registry

    fields = [(m, f) for m in names for f in registry.get(m).fields]
    groups = _groups(run, names)
    keys = [f"{m}__{f}" for m, f in fields]
    s_max = None
    if logits is not None:
        s_max = _shard.agree_max(max(int(a.shape[1]) for a in logits.values()))
    per_device = metrics_models_per_device(
        run, names, groups, s_max, memory_limit, widest=max(run.dims, key=run.dims.get)
    )
    per_call = per_device * len(run.local_devices)
    store = None
    if checkpoint is not None:
        fingerprint = {
            **_fingerprint(run),
            "metrics": list(names),
            "logits": _logit_digests(logits),
        }
        store = Checkpoint(_process_dir(checkpoint, "metrics"), fingerprint, fields=tuple(keys))
    try:
        done = store.restore() if store is not None else {}
        todo = [m for m in run.features if m not in done]
        n_calls = _shard.agree_max(-(-len(todo) // per_call))
        bar = _progress(progress, len(run.features), initial=len(run.features) - len(todo))
        for call in range(n_calls):
            batch = todo[call * per_call : (call + 1) * per_call]
            out = {}
            for group in groups:
                wide = group.dtype == np.float64
                with jax.enable_x64(True) if wide else contextlib.nullcontext():
                    if group.layout is None:
                        layout = class_layout(group.labels, group.dtype)
                        group.layout = _shard.replicate(layout, run.mesh)
                    call_out = _metrics_batch(run, group, batch, per_call, logits, s_max)
                    out.update(_shard.local_rows(call_out))
            for j, model in enumerate(batch):
                done[model] = {k: out[m][f][j] for k, (m, f) in zip(keys, fields, strict=True)}
            if store is not None and batch:
                store.save(done)
            if bar is not None:
                bar.update(len(batch))
        if bar is not None:
            bar.close()
    finally:
        if store is not None:
            store.close()
    local = {k: np.stack([np.asarray(done[m][k]) for m in run.features]) for k in keys}
    models, gathered = _shard.gather_models(tuple(run.features), local)
    out = {}
    for name in names:
        metric = registry.get(name)
        raw = {f: gathered[f"{name}__{f}"].astype(np.float64) for f in metric.fields}
        out[name] = MetricResult.from_fields(metric, models, raw, run.labels)
    return out


def metrics_models_per_device(
    run: _Run, names, groups, s_max: int | None, memory_limit, *, widest: str
) -> int:
    """Models per device per call for the metrics' kernels, from their memory estimate."""
    from . import metrics as registry

    itemsize = max(np.dtype(registry.get(m).dtype or run.dtype).itemsize for m in names)
    per_model = metrics_bytes(run.n, run.d_max, s_max or 0, run.labels.n_classes, itemsize)
    for group in groups:  # what a metric needs beyond that, on the rows it scores
        extra = [registry.get(m).memory for m in group.names if registry.get(m).memory]
        itemsize = group.dtype.itemsize
        per_model += sum(f(group.labels.n_samples, itemsize) for f in extra)
    budget = device_budget(run.local_devices[0], memory_limit)
    want = -(-max(len(run.features), 1) // len(run.local_devices))
    if budget is None:
        return want
    if per_model > budget:
        raise MemoryError(
            f"model {widest!r} (N = {run.n}, D = {run.d_max}) needs about "
            f"{format_bytes(per_model)} on one device for the metrics' kernels, more than "
            f"the {format_bytes(budget)} available; score fewer samples (or NCTI alone, "
            "which streams them)."
        )
    return max(1, min(want, budget // per_model))


@dataclasses.dataclass
class _Group:
    """Metrics that share one compiled call per batch: one dtype, the same rows."""

    names: tuple[str, ...]
    dtype: np.dtype
    rows: np.ndarray | None  # the rows scored (None: all of them)
    labels: _validate.Labels  # of those rows
    layout: ClassLayout | None = None  # on the mesh, made at the first call


def _groups(run: _Run, names: tuple[str, ...]) -> list[_Group]:
    """The run's metrics grouped by dtype (the run's, or float64 for a metric that needs
    it) and by the rows they score (all, or a metric's sample)."""
    from . import metrics as registry

    groups: dict[tuple, _Group] = {}
    for name in names:
        metric = registry.get(name)
        dtype = np.dtype(metric.dtype or run.dtype)
        rows = None if metric.sample is None else metric.sample(run.labels.codes)
        key = (dtype.str, None if rows is None else np.asarray(rows).tobytes())
        if key not in groups:
            labels = run.labels
            if rows is not None:
                rows = np.asarray(rows)
                labels = _validate.check_labels(run.labels.codes[rows])
            groups[key] = _Group((), dtype, rows, labels)
        groups[key].names += (name,)
    return list(groups.values())


def _metrics_batch(run, group: _Group, batch, per_call, logits, s_max):
    """One compiled call of the ``group``'s metrics on ``batch``, padded with dummies."""
    pad = per_call - len(batch)
    rows, n = group.rows, group.labels.n_samples

    def take(a):
        return a if rows is None else a[rows]

    arrays = [take(run.features[m]) for m in batch]
    x = stack_zoo(arrays, group.dtype, d_max=run.d_max, n_models=per_call, n=n)
    cols = np.array([run.dims[m] for m in batch] + [1] * pad, np.int32)
    lg = n_lg = None
    if logits is not None and any(metrics_need_logits(group.names)):
        source = [take(logits[m]) for m in batch]
        lg = stack_zoo(source, group.dtype, d_max=s_max, n_models=per_call, n=n)
        n_lg = np.array([logits[m].shape[1] for m in batch] + [1] * pad, np.int32)
    put = [None if a is None else _shard.put_models(a, run.mesh) for a in (x, cols, lg, n_lg)]
    return zoo_metrics(
        *put,
        group.layout,
        names=group.names,
        precision=run.precision,
        linalg=run.plan.linalg,
        mesh=run.mesh,
    )


def metrics_need_logits(names) -> list[bool]:
    from . import metrics as registry

    return [registry.get(m).needs_logits for m in names]


def _logit_digests(logits) -> dict[str, str] | None:
    if logits is None:
        return None
    return {m: content_digest(a) for m, a in logits.items()}
