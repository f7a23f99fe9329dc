"""Top-k PCA from row chunks: two passes over features that never have to fit in memory.

Pass 1 accumulates the sufficient statistics of the PCA, pass 2 projects on the
top-``k`` principal directions; the rest of NCTI then runs on the (N, k)
projection (:func:`ncti_jax._kernel.projected_components`).

The statistics are accumulated about a fixed *shift*, the mean of the first
chunk: ``total = sum(x - shift)`` and ``scatter = sum((x - shift)(x - shift)^T)``.
The centred scatter is then ``scatter - count * d d^T`` with ``d = total / count``.
Because the shift is already close to the mean, ``d`` is small and the
subtraction loses almost nothing (unlike the textbook ``sum x x^T - N mu mu^T``
on non-negative, post-ReLU features).

Two flavours share that algebra:

* host (NumPy + BLAS ``syrk``), used on CPU, where XLA's dot reaches about half
  of OpenBLAS's rate (see :mod:`ncti_jax._linalg`): each chunk is centred into a
  reused buffer and added to the scatter in place, so one model costs one
  ``D x D`` accumulator and one chunk of memory beyond its features; the top-k
  eigenpairs are solved in float64;
* device (jitted ``jax.numpy``), used on accelerators for models that do not fit
  in device memory: chunks are padded to one shape with rows equal to the
  shift, which add exactly nothing, so every chunk reuses one compilation.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from scipy.linalg import blas

from ._linalg import Linalg
from ._pca import chunk_scale, rounding_floors
from .defaults import CHUNK_ROWS


class RowChunks:
    """One model's features as row chunks, for features that do not fit in memory.

    The engine reads the rows twice (mean and covariance, then the projection),
    so ``source`` is a callable that returns a *new* iterator of row chunks on
    each call, yielding the same rows in the same order (the order of the labels).

    Args:
      source: ``() -> iterable of (rows, D) arrays`` (NumPy or JAX).
      shape: ``(N, D)`` of the whole model.
      dtype: the dtype of the chunks.

    Example:
      >>> import numpy as np, ncti_jax
      >>> x = np.random.default_rng(0).normal(size=(100, 8)).astype(np.float32)
      >>> chunks = ncti_jax.RowChunks(lambda: (x[i : i + 32] for i in range(0, 100, 32)),
      ...                             shape=x.shape, dtype=x.dtype)
      >>> chunks.shape
      (100, 8)
    """

    def __init__(self, source: Callable[[], Iterable[Any]], *, shape: tuple[int, int], dtype: Any):
        if not callable(source):
            raise TypeError(
                "RowChunks needs a callable that returns a fresh iterator of row chunks "
                f"(the rows are read twice); got {type(source).__name__}."
            )
        self.source = source
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)

    def __repr__(self) -> str:
        return f"RowChunks(shape={self.shape}, dtype={self.dtype})"


def iter_rows(x: Any, rows: int) -> Iterator[Any]:
    """Row chunks of an array (sliced, so a memory-mapped file is read chunk by chunk)
    or of a :class:`RowChunks`."""
    if isinstance(x, RowChunks):
        yield from x.source()
    else:
        for start in range(0, int(x.shape[0]), rows):
            yield x[start : start + rows]


def _checked(name: str, chunks: Iterable[Any], d: int, n: int, *, check_finite: bool):
    """Row chunks as they come, checked for width, finiteness and the row total."""
    seen = 0
    for i, chunk in enumerate(chunks):
        shape = getattr(chunk, "shape", None)
        if shape is None or len(shape) != 2 or int(shape[1]) != d:
            raise ValueError(
                f"model {name!r}: row chunk {i} has shape {shape}; expected (rows, {d})."
            )
        if check_finite:
            finite = (
                bool(jnp.isfinite(chunk).all())
                if isinstance(chunk, jax.Array)
                else bool(np.isfinite(chunk).all())
            )
            if not finite:
                raise ValueError(
                    f"model {name!r}: row chunk {i} (rows {seen}-{seen + int(shape[0]) - 1}) "
                    "contains NaN or infinite values."
                )
        seen += int(shape[0])
        if seen > n:
            break
        yield chunk
    if seen != n:
        raise ValueError(
            f"model {name!r}: the row chunks hold {seen}{'+' if seen > n else ''} rows; "
            f"the labels have {n}."
        )


@dataclasses.dataclass(frozen=True)
class TopComponents:
    """What pass 1 yields: everything pass 2 and the kernel need.

    Everything is in units of the rescaled features ``(x - shift) / scale``.
    """

    mean: np.ndarray | jax.Array  # (D,) in the computation dtype, original units
    evals: np.ndarray | jax.Array  # (k,) top eigenvalues of the centred scatter, decreasing
    evecs: np.ndarray | jax.Array | None  # (D, k); None where pass 2 is not needed
    scale: float | jax.Array  # the power of two the centred features were divided by
    floors: np.ndarray | jax.Array  # (k,) rounding level of each eigenvalue (_pca.rounding_floors)


# --- host flavour -------------------------------------------------------------


def host_pca(
    name: str, x: Any, k: int, dtype: np.dtype, *, rows: int = CHUNK_ROWS
) -> tuple[np.ndarray, TopComponents]:
    """Both passes on the host: returns the (N, k) projection and pass 1's result.

    ``k`` is this model's ``min(n_components, N - 1, D)``. With N >= D the
    D x D scatter is accumulated chunk by chunk (float32 BLAS, float64 eigh) and
    pass 2 projects; with N < D the rows are kept (they take less memory than
    the scatter would) and the N x N Gram is formed and solved in float64, with
    no second pass.
    """
    n, d = (int(s) for s in x.shape)
    dtype = np.dtype(dtype)
    check = isinstance(x, RowChunks)  # arrays were checked up front
    wide = n < d
    syrk = blas.get_blas_funcs("syrk", dtype=dtype)
    shift = total = scatter = buf = kept = None
    inv_scale = scale = 1.0
    start = 0
    for chunk in _checked(name, iter_rows(x, rows), d, n, check_finite=check):
        chunk = _host(chunk, dtype)
        if shift is None:
            shift = chunk.mean(axis=0, dtype=np.float64).astype(dtype)
            scale = float(chunk_scale(chunk, shift))
            inv_scale = dtype.type(1.0 / scale)
            total = np.zeros(d, np.float64)
            if wide:
                kept = np.empty((n, d), np.float64)
            else:
                scatter = np.zeros((d, d), dtype, order="F")
        buf = _centre_into(chunk, shift, buf, inv_scale)
        total += buf.sum(axis=0, dtype=np.float64)
        if wide:
            kept[start : start + buf.shape[0]] = buf
            start += buf.shape[0]
        else:
            # scatter += buf.T @ buf, lower triangle, in place (buf.T is Fortran-ordered).
            scatter = syrk(1.0, buf.T, beta=1.0, c=scatter, lower=1, overwrite_c=True)
    d_mean = total / n
    mean = (shift.astype(np.float64) + d_mean * scale).astype(dtype)
    if wide:
        kept -= d_mean
        gram = kept @ kept.T  # float64 products of float32 data: exact but for the sums
        evals, evecs = scipy.linalg.eigh(gram, subset_by_index=(n - k, n - 1), check_finite=False)
        evals, evecs = evals[::-1], evecs[:, ::-1]
        z = (evecs * np.sqrt(np.clip(evals, 0.0, None))).astype(dtype)
        col_sq = np.einsum("ij,ij->j", kept, kept)
        floors = rounding_floors(evals, np.float64, np.float64, col_sq)
        return z, TopComponents(mean, evals.astype(dtype), None, scale, np.asarray(floors, dtype))
    cov = scatter.astype(np.float64, order="F")
    cov = blas.dsyr(-n, d_mean, a=cov, lower=1, overwrite_a=True)  # - n d d^T, lower triangle
    # Fortran order and the lower triangle: LAPACK's own layout (the upper triangle of
    # a Fortran array took 20x longer with scipy 1.17).
    evals, evecs = scipy.linalg.eigh(
        cov, lower=True, subset_by_index=(d - k, d - 1), check_finite=False
    )
    top = TopComponents(
        mean=mean,
        evals=evals[::-1].astype(dtype),
        evecs=np.ascontiguousarray(evecs[:, ::-1], dtype=dtype),
        scale=scale,
        floors=np.asarray(
            rounding_floors(
                evals[::-1], dtype, np.float64, np.diag(scatter).astype(np.float64), evecs[:, ::-1]
            ),
            dtype,
        ),
    )
    z = np.empty((n, k), dtype)
    start = 0
    for chunk in _checked(name, iter_rows(x, rows), d, n, check_finite=False):
        buf = _centre_into(_host(chunk, dtype), mean, buf, inv_scale)
        np.matmul(buf, top.evecs, out=z[start : start + buf.shape[0]])
        start += buf.shape[0]
    return z, top


def _host(chunk: Any, dtype: np.dtype) -> np.ndarray:
    if isinstance(chunk, jax.Array):
        chunk = jax.device_get(chunk)
    return np.asarray(chunk, dtype)


def _centre_into(
    chunk: np.ndarray, centre: np.ndarray, buf: np.ndarray | None, inv_scale
) -> np.ndarray:
    """``(chunk - centre) * inv_scale`` written into a reused buffer (no fresh pages
    per chunk); ``inv_scale`` is a power of two, so the product is exact."""
    if buf is None or buf.shape[0] < chunk.shape[0]:
        buf = np.empty_like(chunk)
    out = buf[: chunk.shape[0]]
    np.subtract(chunk, centre, out=out)
    out *= inv_scale
    return out


# --- device flavour -----------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Moments:
    """Pass 1's running statistics about ``shift``, in units of ``scale`` (device flavour)."""

    shift: jax.Array  # (D,)
    scale: jax.Array  # scalar power of two
    total: jax.Array  # (D,) sum of (x - shift) / scale
    scatter: jax.Array  # (D, D) sum of the outer products of (x - shift) / scale


@jax.jit
def _start(chunk: jax.Array) -> Moments:
    shift = jnp.mean(chunk, axis=0)
    scale = chunk_scale(chunk, shift)
    d = chunk.shape[1]
    return Moments(shift, scale, jnp.zeros(d, chunk.dtype), jnp.zeros((d, d), chunk.dtype))


@functools.partial(jax.jit, donate_argnums=0)
def _accumulate(m: Moments, chunk: jax.Array) -> Moments:
    centred = (chunk - m.shift) / m.scale
    return Moments(m.shift, m.scale, m.total + centred.sum(axis=0), m.scatter + centred.T @ centred)


@functools.partial(jax.jit, static_argnames=("k", "linalg"))
def _top(m: Moments, n: int, *, k: int, linalg: Linalg):
    d_mean = m.total / n
    evals, evecs = linalg.top_eigh(m.scatter - n * jnp.outer(d_mean, d_mean), k)
    mean = m.shift + d_mean * m.scale
    dtype = m.scatter.dtype
    floors = rounding_floors(evals, dtype, linalg.solve_dtype(dtype), jnp.diag(m.scatter), evecs)
    return mean, evals, evecs, floors


@jax.jit
def _project(chunk: jax.Array, mean: jax.Array, scale: jax.Array, evecs: jax.Array) -> jax.Array:
    return ((chunk - mean) / scale) @ evecs


def device_pca(
    name: str,
    x: Any,
    k: int,
    dtype: np.dtype,
    *,
    rows: int = CHUNK_ROWS,
    linalg: Linalg,
    device: jax.Device | None = None,
    precision: str = "highest",
) -> tuple[jax.Array, TopComponents]:
    """Both passes with jitted kernels on ``device``: one row chunk there at a time;
    ``linalg`` says how the top-k eigenproblem is solved (the plan's)."""
    n, d = (int(s) for s in x.shape)
    check = isinstance(x, RowChunks)
    m = None
    with jax.default_matmul_precision(precision):
        for chunk in _checked(name, iter_rows(x, rows), d, n, check_finite=check):
            chunk = jax.device_put(jnp.asarray(chunk, dtype), device)
            if m is None:
                m = _start(chunk)
            m = _accumulate(m, _pad_rows(chunk, m.shift, rows))
        mean, evals, evecs, floors = _top(m, n, k=k, linalg=linalg)
        parts = [
            _project(
                _pad_rows(jax.device_put(jnp.asarray(b, dtype), device), mean, rows),
                mean,
                m.scale,
                evecs,
            )[: b.shape[0]]
            for b in _checked(name, iter_rows(x, rows), d, n, check_finite=False)
        ]
    return jnp.concatenate(parts), TopComponents(mean, evals, evecs, m.scale, floors)


def _pad_rows(chunk: jax.Array, fill: jax.Array, rows: int) -> jax.Array:
    """Pads a short chunk to ``rows`` rows of ``fill`` (the shift: they add nothing)."""
    short = rows - chunk.shape[0]
    if short <= 0:
        return chunk
    return jnp.concatenate([chunk, jnp.broadcast_to(fill, (short, chunk.shape[1]))])
