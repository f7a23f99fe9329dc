"""The dense linear algebra the kernels use, safe to vmap on every backend.

On XLA:CPU (jaxlib 0.10), a *batched* LAPACK call (eigh, svd, cholesky, triangular
solve) fans its batch out over the intra-op thread pool and blocks a pool thread
until the batch is done. Two such calls in flight at once, or one inside a
matmul's completion callback, can hold every pool thread while waiting for the
pool: the program hangs (seen within a few runs on a 2-core machine). With
``Linalg(looped=True)``, vmapping these functions turns into a loop of unbatched
calls, which never wait on the pool. On accelerators the batched solvers are
used as they are.

Which flavour a kernel gets is not ambient state: the plan
(:func:`ncti_jax._plan.make_plan`) chooses a :class:`Linalg` and every compiled
call takes it as a static argument, so a kernel traced for the CPU cannot
silently take the batched path.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from jax.custom_batching import sequential_vmap
from jax.scipy.linalg import solve_triangular as _solve_triangular

from .defaults import EIGENSOLVERS


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


def _svd(a: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    return jnp.linalg.svd(a, full_matrices=False)


_LOOPED = {
    f: sequential_vmap(f)
    for f in (_eigh, _cholesky, _lower_solve, _upper_solve, _singular_values, _svd)
}


@dataclasses.dataclass(frozen=True)
class Linalg:
    """How the kernels' linear algebra is traced: a static argument of every compiled call.

    Attributes:
      looped: vmapped LAPACK calls run as loops of unbatched calls (XLA:CPU, see
        the module notes); else the backend's batched solvers.
      host_solve: float32 top-k eigenproblems are solved in float64 on the host
        (CPU); else with the backend's ``eigh`` in the computation dtype. The CPU
        with ``host_solve=False`` traces the accelerators' numerics with the CPU's
        looped linear algebra: how the device code path is tested without a device.
      eigensolver: how the device path (``host_solve=False``) solves the PCA's
        eigenproblem (a name of :data:`ncti_jax.defaults.EIGENSOLVERS`): ``"eigh"``, the
        backend's full ``eigh``; ``"topk"``, the certified top-k solver of
        :mod:`ncti_jax._topk` on the exact scatter; ``"topk-tf32"`` / ``"topk-bf16"``,
        the same on a scatter formed from TF32 / bfloat16 operands, then iterated on
        the exact one (applied as ``xc.T @ (xc @ q)``, at most 12 iterations) until
        certified. Ignored with ``host_solve``.
    """

    looped: bool
    host_solve: bool
    eigensolver: str = "eigh"

    def __post_init__(self):
        if self.eigensolver not in EIGENSOLVERS:
            raise ValueError(
                f"eigensolver must be one of {EIGENSOLVERS}; got {self.eigensolver!r}."
            )

    @property
    def topk(self) -> bool:
        """The PCA goes through the certified top-k solver."""
        return not self.host_solve and self.eigensolver != "eigh"

    @property
    def gram_precision(self) -> str:
        """The top-k solver's scatter precision: "highest", "tf32" or "bf16"."""
        return self.eigensolver.removeprefix("topk").removeprefix("-") or "highest"

    def exact(self) -> Linalg:
        """The same flavour with the full ``eigh``: what a model that the top-k solver
        could not certify is recomputed with."""
        return dataclasses.replace(self, eigensolver="eigh")

    @classmethod
    def for_platform(
        cls, platform: str, *, host_solve: bool | None = None, eigensolver: str = "eigh"
    ) -> Linalg:
        """The flavour for a backend ("cpu", "gpu", "tpu"); ``host_solve`` defaults to
        the CPU's float64 host solves."""
        on_cpu = platform == "cpu"
        host_solve = on_cpu if host_solve is None else host_solve
        return cls(looped=on_cpu, host_solve=host_solve, eigensolver=eigensolver)

    def solve_dtype(self, dtype) -> np.dtype:
        """The dtype :meth:`top_eigh` solves a ``dtype`` problem in."""
        return np.dtype(np.float64 if self.host_solve else dtype)

    def _pick(self, f):
        return _LOOPED[f] if self.looped else f

    def eigh(self, a: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Eigenvalues (ascending) and eigenvectors of a symmetric matrix."""
        return self._pick(_eigh)(a)

    def singular_values(self, a: jax.Array) -> jax.Array:
        """Singular values of a matrix, decreasing (a direct SVD: accurate to ``eps * s_max``)."""
        return self._pick(_singular_values)(a)

    def svd(self, a: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Singular values (decreasing, zero-padded to ``p``) and the (p, p) right singular
        vectors (zero columns past ``min(n, p)``) of ``a`` (n, p), by a direct SVD:
        accurate to ``eps * s_max`` for small and large singular values alike."""
        n, p = a.shape
        _, s, vt = self._pick(_svd)(a)
        if n < p:
            s = jnp.concatenate([s, jnp.zeros(p - n, s.dtype)])
            vt = jnp.concatenate([vt, jnp.zeros((p - n, p), vt.dtype)])
        return s, vt.T

    def cholesky(self, a: jax.Array) -> jax.Array:
        """Lower Cholesky factor."""
        return self._pick(_cholesky)(a)

    def solve_triangular(self, a: jax.Array, b: jax.Array, *, lower: bool) -> jax.Array:
        """Solves ``a @ x = b`` for triangular ``a``."""
        return self._pick(_lower_solve if lower else _upper_solve)(a, b)

    def cho_solve(self, chol: jax.Array, b: jax.Array) -> jax.Array:
        """Solves ``(chol @ chol.T) @ x = b`` given the lower Cholesky factor."""
        y = self.solve_triangular(chol, b, lower=True)
        return self.solve_triangular(chol.T, y, lower=False)

    def top_eigh(self, g: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
        """The ``k`` largest eigenpairs of a symmetric matrix, eigenvalues decreasing.

        With ``host_solve`` a float32 problem is solved in float64 on the host;
        otherwise with the backend's ``eigh`` in ``g``'s dtype.
        """
        if not self.host_solve or g.dtype == jnp.float64:
            # float64 needs no help. (It also cannot go through the callback: x64 is
            # thread-local and XLA runs callbacks on its own threads, which would
            # see float32.)
            evals, evecs = self.eigh(g)
            return evals[::-1][:k], evecs[:, ::-1][:, :k]
        d = g.shape[-1]
        out = (jax.ShapeDtypeStruct((k,), g.dtype), jax.ShapeDtypeStruct((d, k), g.dtype))
        dtype = np.dtype(g.dtype)

        def host(a):
            evals, evecs = host_top_eigh(a, k)
            return evals.astype(dtype), evecs.astype(dtype)

        return jax.pure_callback(host, out, g, vmap_method="sequential")

    def covariance_top_eigh(
        self, xc: jax.Array, n_cols: jax.Array, k: int
    ) -> tuple[jax.Array, jax.Array]:
        """The ``k`` largest eigenpairs of ``xc.T @ xc``, eigenvalues decreasing.

        ``xc`` (N, D) is centred and zero beyond its first ``n_cols`` columns
        (padding). With ``host_solve``, for float32, the covariance of the real
        columns is formed by the host BLAS (XLA:CPU's dot reached 45% of
        OpenBLAS's sgemm rate on the 2-core machine this was measured on: 3.9 s
        against 1.5 s for N = 50000, D = 2048) and solved in float64 as in
        :meth:`top_eigh`; padded columns cost nothing. Otherwise, and in float64,
        the Gram is an XLA matmul.
        """
        if not self.host_solve or xc.dtype == jnp.float64:
            return self.top_eigh(xc.T @ xc, k)
        d = xc.shape[1]
        dtype = np.dtype(xc.dtype)
        out = (jax.ShapeDtypeStruct((k,), xc.dtype), jax.ShapeDtypeStruct((d, k), xc.dtype))

        def host(a, cols):
            m = int(cols)
            real = np.asarray(a)[:, :m]
            evals, evecs = host_top_eigh(real.T @ real, min(k, m))
            w, v = np.zeros(k, dtype), np.zeros((d, k), dtype)
            w[: evals.shape[0]] = evals
            v[:m, : evecs.shape[1]] = evecs
            return w, v

        return jax.pure_callback(host, out, xc, n_cols, vmap_method="sequential")


def host_top_eigh(g: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` largest eigenpairs of a symmetric matrix, in float64 on the host
    (LAPACK's subset solver), eigenvalues decreasing."""
    g = np.asarray(g, dtype=np.float64)
    d = g.shape[-1]
    evals, evecs = scipy.linalg.eigh(g, subset_by_index=(d - k, d - 1), check_finite=False)
    return evals[::-1].copy(), evecs[:, ::-1].copy()
