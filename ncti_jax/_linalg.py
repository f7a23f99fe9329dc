"""The dense linear algebra the kernels use, safe to vmap on every backend.

On XLA:CPU (jaxlib 0.10), a *batched* LAPACK call (eigh, svd, cholesky, triangular
solve) fans its batch out over the intra-op thread pool and blocks a pool thread
until the batch is done. Two such calls in flight at once, or one inside a
matmul's completion callback, can hold every pool thread while waiting for the
pool: the program hangs (seen within a few runs on a 2-core machine). Under
:func:`sequential_batches`, vmapping these functions turns into a loop of
unbatched calls, which never wait on the pool. On accelerators the batched
solvers are used as they are.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from jax.custom_batching import sequential_vmap
from jax.scipy.linalg import solve_triangular as _solve_triangular

_ON_CPU = contextvars.ContextVar("ncti_linalg_on_cpu", default=False)
_HOST_SOLVE = contextvars.ContextVar("ncti_linalg_host_solve", default=False)


@contextlib.contextmanager
def target_platform(platform: str, *, host_solve: bool | None = None) -> Iterator[None]:
    """Traces the kernels inside this context for ``platform`` ("cpu", "gpu", "tpu").

    ``host_solve`` (default: on CPU) solves float32 top-k eigenproblems in float64 on
    the host; ``False`` on CPU traces the accelerators' numerics (float32 ``eigh`` in
    the graph) with the CPU's looped linear algebra, so the device code path can be
    tested without a device.
    """
    on_cpu = platform == "cpu"
    tokens = (_ON_CPU.set(on_cpu), _HOST_SOLVE.set(on_cpu if host_solve is None else host_solve))
    try:
        yield
    finally:
        _ON_CPU.reset(tokens[0])
        _HOST_SOLVE.reset(tokens[1])


def solves_in_float64() -> bool:
    """Whether :func:`top_eigh` and :func:`covariance_top_eigh` solve in float64 (on CPU)."""
    return _HOST_SOLVE.get()


def _eigh(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    return jnp.linalg.eigh(a)


def _cholesky(a: jax.Array) -> jax.Array:
    return jnp.linalg.cholesky(a)


def _lower_solve(a: jax.Array, b: jax.Array) -> jax.Array:
    return _solve_triangular(a, b, lower=True)


def _upper_solve(a: jax.Array, b: jax.Array) -> jax.Array:
    return _solve_triangular(a, b, lower=False)


def _singular_values(a: jax.Array) -> jax.Array:
    return jnp.linalg.svd(a, compute_uv=False)


_LOOPED = {
    f: sequential_vmap(f) for f in (_eigh, _cholesky, _lower_solve, _upper_solve, _singular_values)
}


def _pick(f):
    return _LOOPED[f] if _ON_CPU.get() else f


def eigh(a: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Eigenvalues (ascending) and eigenvectors of a symmetric matrix."""
    return _pick(_eigh)(a)


def singular_values(a: jax.Array) -> jax.Array:
    """Singular values of a matrix, decreasing (a direct SVD: accurate to ``eps * s_max``)."""
    return _pick(_singular_values)(a)


def cholesky(a: jax.Array) -> jax.Array:
    """Lower Cholesky factor."""
    return _pick(_cholesky)(a)


def solve_triangular(a: jax.Array, b: jax.Array, *, lower: bool) -> jax.Array:
    """Solves ``a @ x = b`` for triangular ``a``."""
    return _pick(_lower_solve if lower else _upper_solve)(a, b)


def cho_solve(chol: jax.Array, b: jax.Array) -> jax.Array:
    """Solves ``(chol @ chol.T) @ x = b`` given the lower Cholesky factor."""
    return solve_triangular(chol.T, solve_triangular(chol, b, lower=True), lower=False)


def _host_top_eigh(g: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    g = np.asarray(g, dtype=np.float64)
    d = g.shape[-1]
    evals, evecs = scipy.linalg.eigh(g, subset_by_index=(d - k, d - 1), check_finite=False)
    return evals[::-1].copy(), evecs[:, ::-1].copy()


def top_eigh(g: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """The ``k`` largest eigenpairs of a symmetric matrix, eigenvalues decreasing.

    On CPU a float32 problem is solved in float64 on the host (see the module
    notes); otherwise with the backend's ``eigh`` in ``g``'s dtype.
    """
    if not _HOST_SOLVE.get() or g.dtype == jnp.float64:
        # float64 needs no help. (It also cannot go through the callback: x64 is
        # thread-local and XLA runs callbacks on its own threads, which would
        # see float32.)
        evals, evecs = eigh(g)
        return evals[::-1][:k], evecs[:, ::-1][:, :k]
    d = g.shape[-1]
    out = (jax.ShapeDtypeStruct((k,), g.dtype), jax.ShapeDtypeStruct((d, k), g.dtype))

    dtype = np.dtype(g.dtype)

    def host(a):
        evals, evecs = _host_top_eigh(a, k)
        return evals.astype(dtype), evecs.astype(dtype)

    return jax.pure_callback(host, out, g, vmap_method="sequential")


def covariance_top_eigh(xc: jax.Array, n_cols: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """The ``k`` largest eigenpairs of ``xc.T @ xc``, eigenvalues decreasing.

    ``xc`` (N, D) is centred and zero beyond its first ``n_cols`` columns (padding).
    On CPU, for float32, the covariance of the real columns is formed by the
    host BLAS (XLA:CPU's dot reached 45% of OpenBLAS's sgemm rate on the 2-core
    machine this was measured on: 3.9 s against 1.5 s for N = 50000, D = 2048)
    and solved in float64 as in :func:`top_eigh`; padded columns cost nothing.
    Elsewhere, and in float64, the Gram is an XLA matmul.
    """
    if not _HOST_SOLVE.get() or xc.dtype == jnp.float64:
        return top_eigh(xc.T @ xc, k)
    d = xc.shape[1]
    dtype = np.dtype(xc.dtype)
    out = (jax.ShapeDtypeStruct((k,), xc.dtype), jax.ShapeDtypeStruct((d, k), xc.dtype))

    def host(a, cols):
        m = int(cols)
        real = np.asarray(a)[:, :m]
        evals, evecs = _host_top_eigh(real.T @ real, min(k, m))
        w, v = np.zeros(k, dtype), np.zeros((d, k), dtype)
        w[: evals.shape[0]] = evals
        v[:m, : evecs.shape[1]] = evecs
        return w, v

    return jax.pure_callback(host, out, xc, n_cols, vmap_method="sequential")
