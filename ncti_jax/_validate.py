"""Host-side checks that run before anything is traced.

Every error names the model, file or argument at fault. Nothing here imports
torch, and nothing here runs a compiled kernel: value checks on device arrays
(NaN/inf counts) are small reductions dispatched on their own.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._stream import RowChunks

_PRECISIONS = {
    "default": "default",
    "high": "high",
    "highest": "highest",
    "fastest": "default",
    "bfloat16": "default",
    "tensorfloat32": "high",
    "float32": "highest",
}

# Rows checked at a time for NaN/inf on host arrays, so a memory-mapped feature
# file is scanned without materialising an (N, D) boolean mask.
_FINITE_CHUNK_ROWS = 8192


@dataclasses.dataclass(frozen=True)
class Labels:
    """Labels remapped to ``0..C-1`` by sorted unique value.

    Attributes:
      codes: (N,) int32 class index of each sample.
      classes: (C,) the original label values, sorted; ``classes[codes]`` is the input.
      counts: (C,) int64 samples per class.
    """

    codes: np.ndarray
    classes: np.ndarray
    counts: np.ndarray

    @property
    def n_samples(self) -> int:
        return int(self.codes.shape[0])

    @property
    def n_classes(self) -> int:
        return int(self.counts.shape[0])


def check_labels(labels: Any, *, what: str = "labels") -> Labels:
    """Validates labels and remaps them to ``0..C-1``.

    Accepts integers, booleans, strings, and floats that are whole numbers; a
    shape of (N,) or (N, 1).
    """
    if isinstance(labels, jax.Array):
        labels = np.asarray(jax.device_get(labels))
    y = np.asarray(labels)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"{what} must have shape (N,) or (N, 1); got shape {y.shape}.")
    if y.shape[0] < 2:
        raise ValueError(f"{what}: NCTI needs at least 2 samples; got {y.shape[0]}.")
    kind = y.dtype.kind
    if kind == "f" or y.dtype == jnp.bfloat16:
        y = y.astype(np.float64)
        bad = ~np.isfinite(y)
        if bad.any():
            raise ValueError(f"{what} contain {int(bad.sum())} NaN or infinite value(s).")
        frac = y != np.round(y)
        if frac.any():
            i = int(np.flatnonzero(frac)[0])
            raise ValueError(
                f"{what} are floats that are not whole numbers ({int(frac.sum())} of them, "
                f"e.g. {float(y[i])!r} at index {i}); pass integer or string class labels."
            )
        y = y.astype(np.int64)
    elif kind == "c":
        raise TypeError(f"{what} must be integers, strings or whole-number floats; got complex.")
    elif kind == "O":
        missing = [
            i for i, v in enumerate(y.tolist()) if v is None or (isinstance(v, float) and v != v)
        ]
        if missing:
            raise ValueError(
                f"{what} contain {len(missing)} missing value(s) (None or NaN), e.g. at index "
                f"{missing[0]}."
            )
        try:
            classes, codes = np.unique(y, return_inverse=True)
        except TypeError as err:
            raise TypeError(f"{what} mix types that cannot be sorted: {err}") from None
        return _labels_from(classes, codes, what)
    elif kind not in "biuUS":
        raise TypeError(f"{what} have unsupported dtype {y.dtype}.")
    classes, codes = np.unique(y, return_inverse=True)
    return _labels_from(classes, codes, what)


def _labels_from(classes: np.ndarray, codes: np.ndarray, what: str) -> Labels:
    codes = codes.reshape(-1).astype(np.int32)
    counts = np.bincount(codes, minlength=classes.shape[0]).astype(np.int64)
    n, c = codes.shape[0], classes.shape[0]
    if c < 2:
        raise ValueError(
            f"{what} hold a single class ({classes[0]!r}); NCTI needs at least 2 classes."
        )
    if n < c + 1:
        raise ValueError(
            f"{what}: {n} samples for {c} classes; NCTI (LDA) needs at least classes + 1 samples."
        )
    return Labels(codes=codes, classes=classes, counts=counts)


def check_feature_array(name: str, x: Any, n_samples: int) -> tuple[int, int]:
    """Checks one model's features; returns its shape (N, D). Raises naming ``name``."""
    shape = getattr(x, "shape", None)
    dtype = getattr(x, "dtype", None)
    if shape is None or dtype is None:
        try:
            arr = np.asarray(x)
        except Exception as err:  # pragma: no cover - exotic inputs
            raise TypeError(f"model {name!r}: features are not an array ({err}).") from None
        shape, dtype = arr.shape, arr.dtype
    if len(shape) != 2:
        raise ValueError(
            f"model {name!r}: features must have shape (N, D); got shape {tuple(shape)}."
        )
    n, d = int(shape[0]), int(shape[1])
    if n != n_samples:
        raise ValueError(
            f"model {name!r}: features have {n} samples but the labels have {n_samples}; "
            "every model must be scored on the same samples in the same order."
        )
    if d < 1:
        raise ValueError(f"model {name!r}: features have no columns (shape {tuple(shape)}).")
    dt = np.dtype(dtype)
    if not (
        np.issubdtype(dt, np.floating)
        or np.issubdtype(dt, np.integer)
        or dt == np.bool_
        or dt == jnp.bfloat16
    ):
        raise TypeError(f"model {name!r}: features must be real numbers; got dtype {dt}.")
    return n, d


def count_nonfinite(x: Any) -> int:
    """Number of NaN/inf entries, scanning host arrays in row chunks."""
    if isinstance(x, jax.Array):
        if not jnp.issubdtype(x.dtype, jnp.floating):
            return 0
        return int(jnp.size(x) - jnp.count_nonzero(jnp.isfinite(x)))
    arr = np.asarray(x)
    if not (np.issubdtype(arr.dtype, np.floating) or arr.dtype == jnp.bfloat16):
        return 0
    bad = 0
    for start in range(0, arr.shape[0], _FINITE_CHUNK_ROWS):
        chunk = np.asarray(
            arr[start : start + _FINITE_CHUNK_ROWS],
            dtype=np.float32 if arr.dtype.itemsize <= 4 else arr.dtype,
        )
        # One cheap pass: the column sums are finite unless a value is NaN/inf (or they
        # overflow, which the exact count below then settles).
        if not np.isfinite(chunk.sum(axis=0)).all():
            bad += int(chunk.size - np.count_nonzero(np.isfinite(chunk)))
    return bad


def check_features(
    features: Any, n_samples: int, names: Any = None
) -> tuple[tuple[str, ...], list[Any]]:
    """Splits the zoo into (names, per-model arrays) and checks every model."""
    if isinstance(features, Mapping):
        if names is not None:
            raise ValueError(
                "names= is only used with a stacked (M, N, D) array; "
                "a mapping already names its models."
            )
        if len(features) == 0:
            raise ValueError("features: the zoo is empty; pass at least one model.")
        model_names = tuple(str(k) for k in features)
        arrays = list(features.values())
    else:
        shape = getattr(features, "shape", None)
        if shape is None:
            raise TypeError(
                "features must be a mapping {model name: (N, D) array} or a stacked "
                f"(M, N, D) array; got {type(features).__name__}."
            )
        if len(shape) != 3:
            raise ValueError(
                f"stacked features must have shape (M, N, D); got shape {tuple(shape)}."
            )
        if shape[0] == 0:
            raise ValueError("features: the zoo is empty (M = 0).")
        if names is None:
            model_names = tuple(f"model_{i}" for i in range(shape[0]))
        else:
            model_names = tuple(str(n) for n in names)
            if len(model_names) != shape[0]:
                raise ValueError(f"names has {len(model_names)} entries for {shape[0]} models.")
        arrays = [features[i] for i in range(shape[0])]
    if len(set(model_names)) != len(model_names):
        dup = sorted({n for n in model_names if model_names.count(n) > 1})
        raise ValueError(f"model names must be unique; repeated: {dup}.")
    for name, x in zip(model_names, arrays, strict=True):
        check_feature_array(name, x, n_samples)
        if isinstance(x, RowChunks):
            continue  # checked chunk by chunk as they are read
        bad = count_nonfinite(x)
        if bad:
            raise ValueError(f"model {name!r}: features contain {bad} NaN or infinite value(s).")
    return model_names, arrays


def resolve_dtype(dtype: Any) -> np.dtype:
    """The computation dtype: float32 unless float64 is asked for (needs x64)."""
    dt = np.dtype("float32" if dtype is None else dtype)
    if dt not in (np.dtype("float32"), np.dtype("float64")):
        raise ValueError(f"dtype must be float32 or float64 (the computation dtype); got {dt}.")
    if dt == np.float64 and not jax.config.read("jax_enable_x64"):
        raise ValueError(
            "dtype=float64 needs 64-bit JAX: run under `with jax.enable_x64(True):` "
            "or set JAX_ENABLE_X64=1 before importing jax."
        )
    return dt


def resolve_precision(precision: Any) -> str:
    """Normalises a matmul precision setting to 'default', 'high' or 'highest'."""
    if isinstance(precision, jax.lax.Precision):
        return {
            jax.lax.Precision.DEFAULT: "default",
            jax.lax.Precision.HIGH: "high",
            jax.lax.Precision.HIGHEST: "highest",
        }[precision]
    key = str(precision).lower()
    if key not in _PRECISIONS:
        raise ValueError(
            f"precision must be one of {sorted(set(_PRECISIONS.values()))} (or a "
            f"jax.lax.Precision); got {precision!r}."
        )
    return _PRECISIONS[key]


def check_choice(value: Any, what: str, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``, else a ValueError naming ``what``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{what} must be one of {list(choices)}; got {value!r}.")
    return value


def check_positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{what} must be a positive integer; got {value!r}.")
    return int(value)


def check_devices(devices: Any) -> list[jax.Device] | None:
    """``None`` or a non-empty sequence of ``jax.Device`` (not a platform name)."""
    if devices is None:
        return None
    if isinstance(devices, str) or not isinstance(devices, (list, tuple)):
        raise TypeError(
            f"devices must be a list of jax.Device (e.g. jax.devices('cpu')); got {devices!r}."
        )
    bad = [d for d in devices if not isinstance(d, jax.Device)]
    if bad or not devices:
        raise TypeError(
            f"devices must be a non-empty list of jax.Device (e.g. jax.devices('cpu')); "
            f"got {bad[:3] if bad else 'an empty list'}."
        )
    return list(devices)


def check_memory_limit(memory_limit: Any) -> int | None:
    """``None`` or a positive number of bytes (an int, not a string such as '1GB')."""
    if memory_limit is None:
        return None
    if isinstance(memory_limit, bool) or not isinstance(memory_limit, (int, np.integer, float)):
        raise TypeError(
            f"memory_limit must be a number of bytes (e.g. 12 * 2**30); got {memory_limit!r}. "
            "The CLI's --memory-limit takes sizes such as 12GiB."
        )
    if not memory_limit >= 1 or memory_limit != int(memory_limit):
        raise ValueError(
            f"memory_limit must be a positive whole number of bytes; got {memory_limit!r}."
        )
    return int(memory_limit)


def check_n_components(n_components: Any) -> int:
    if isinstance(n_components, bool) or not isinstance(n_components, (int, np.integer)):
        raise TypeError(f"n_components must be a positive integer; got {n_components!r}.")
    if n_components < 1:
        raise ValueError(f"n_components must be >= 1; got {n_components}.")
    return int(n_components)


def warn_singleton_classes(labels: Labels, *, stacklevel: int = 3) -> None:
    singles = labels.classes[labels.counts == 1]
    if singles.size:
        shown = ", ".join(repr(c.item() if hasattr(c, "item") else c) for c in singles[:5])
        more = "" if singles.size <= 5 else f" and {singles.size - 5} more"
        warnings.warn(
            f"{singles.size} class(es) have a single sample ({shown}{more}): they add no "
            "within-class scatter and look perfectly collapsed, which inflates etf.",
            UserWarning,
            stacklevel=stacklevel,
        )


def check_logits(
    logits: Any, models: tuple[str, ...], n_samples: int, needed_by: list[str]
) -> dict[str, Any] | None:
    """Checks the source classifiers' logits: ``{model: (N, S_m)}`` for every model.

    Returns None when no metric needs them (they are then ignored).

    Raises:
      ValueError: logits missing for a metric that needs them (naming every model
        without them), of the wrong shape, or with NaN or infinite values.
    """
    if not needed_by:
        return None
    if logits is None:
        raise ValueError(
            f"metric(s) {', '.join(needed_by)} need the source classifier's logits: pass "
            "logits={model: (N, S) array} (ncti extract --with-logits stores them)."
        )
    if not isinstance(logits, Mapping):
        raise TypeError(f"logits must be a mapping {{model: (N, S) array}}; got {type(logits)}.")
    missing = [m for m in models if m not in logits]
    if missing:
        raise ValueError(f"logits: none for model(s) {missing} (needed by {', '.join(needed_by)}).")
    out = {}
    for m in models:
        a = logits[m]
        if isinstance(a, jax.Array):
            a = np.asarray(jax.device_get(a))
        a = np.asarray(a)
        if a.ndim != 2 or a.shape[0] != n_samples or a.shape[1] < 1:
            raise ValueError(
                f"logits of model {m!r} have shape {a.shape}; expected ({n_samples}, S)."
            )
        if not np.issubdtype(a.dtype, np.floating):
            raise TypeError(f"logits of model {m!r} have dtype {a.dtype}; expected floats.")
        if count_nonfinite(a):
            raise ValueError(f"logits of model {m!r} contain NaN or infinite values.")
        out[m] = a
    return out
