"""The statistics of one model's features that the metrics share, each computed once.

A :class:`ModelStats` wraps one model's (N, D) features (zero-padded columns
allowed), the labels' :class:`ncti_jax._pad.ClassLayout` and, when a metric
needs them, the source classifier's logits. Inside one compiled call every
requested metric's kernel reads its statistics from the same instance, and each
statistic is a ``cached_property``: traced at most once whatever number of
metrics use it (one pass over the features, one covariance, one
eigendecomposition). Nothing here is a pytree: an instance lives inside a trace.

Padding: columns beyond ``n_cols`` are zero in ``x``, so they are zero in every
sum and scatter below and add zero eigenvalues; metrics that depend on the width
itself (LogME's evidence, SFDA's ``trace / D``, the shrinkage H-score's ``mu``)
read ``n_cols``, never ``x.shape[1]``. Padded source classes (columns of
``logits`` beyond ``n_logits``) get probability exactly 0.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from ._linalg import Linalg
from ._pad import ClassLayout
from ._pca import power_of_two_scale


class ModelStats:
    """One model's features, labels and source logits, and what the metrics compute from them.

    Args:
      x: (N, D) features, zero beyond column ``n_cols``.
      n_cols: scalar, the model's true width ``D_m``.
      layout: the labels' device arrays.
      linalg: how the linear algebra is traced (a static choice of the plan).
      logits: (N, S) the source classifier's logits on the samples, or None.
      n_logits: scalar, the model's true number of source classes ``S_m``.
    """

    def __init__(
        self,
        x: jax.Array,
        n_cols: jax.Array,
        layout: ClassLayout,
        linalg: Linalg,
        logits: jax.Array | None = None,
        n_logits: jax.Array | None = None,
    ):
        self.x = x
        self.n_cols = n_cols
        self.layout = layout
        self.linalg = linalg
        self._logits = logits
        self._n_logits = n_logits

    # -- shapes and labels ------------------------------------------------------
    @property
    def dtype(self):
        return self.x.dtype

    @property
    def n(self) -> int:
        """Samples (static)."""
        return self.x.shape[0]

    @property
    def width(self) -> int:
        """Padded feature width (static); the true width is ``n_cols``."""
        return self.x.shape[1]

    @property
    def n_classes(self) -> int:
        return self.layout.counts.shape[0]

    @property
    def codes(self) -> jax.Array:
        """(N,) int32 class of each sample."""
        return self.layout.codes

    @property
    def counts(self) -> jax.Array:
        """(C,) samples per class, in the computation dtype."""
        return self.layout.counts

    @functools.cached_property
    def col_mask(self) -> jax.Array:
        """(D,) bool: the columns that are not padding."""
        return jnp.arange(self.width) < self.n_cols

    @functools.cached_property
    def onehot(self) -> jax.Array:
        """(N, C) class indicators in the computation dtype."""
        return jax.nn.one_hot(self.codes, self.n_classes, dtype=self.dtype)

    # -- first and second moments --------------------------------------------------
    @functools.cached_property
    def mean(self) -> jax.Array:
        """(D,) column means."""
        return jnp.mean(self.x, axis=0)

    @functools.cached_property
    def centred(self) -> jax.Array:
        """(N, D) the features minus their column means (padding stays zero)."""
        return self.x - self.mean

    @functools.cached_property
    def gram(self) -> jax.Array:
        """(D, D) ``x^T x``, uncentred."""
        return self.x.T @ self.x

    @functools.cached_property
    def scatter(self) -> jax.Array:
        """(D, D) total scatter ``Xc^T Xc`` of the centred features."""
        return self.centred.T @ self.centred

    @functools.cached_property
    def scatter_eigh(self) -> tuple[jax.Array, jax.Array]:
        """Eigenvalues (decreasing, clipped at 0) and eigenvectors of :attr:`scatter`."""
        evals, evecs = self.linalg.eigh(self.scatter)
        return jnp.maximum(evals[::-1], 0.0), evecs[:, ::-1]

    @functools.cached_property
    def class_sums(self) -> jax.Array:
        """(C, D) per-class sums of the features."""
        return jax.ops.segment_sum(self.x, self.codes, num_segments=self.n_classes)

    @functools.cached_property
    def class_means(self) -> jax.Array:
        """(C, D) per-class means (a class has at least one sample)."""
        return self.class_sums / self.counts[:, None]

    @functools.cached_property
    def between(self) -> jax.Array:
        """(C, D) rows ``sqrt(n_c) (mu_c - mu)``: the between-class scatter is ``B^T B``."""
        return jnp.sqrt(self.counts)[:, None] * (self.class_means - self.mean)

    @functools.cached_property
    def within_scatter(self) -> jax.Array:
        """(D, D) within-class scatter ``sum_c sum_{i in c} (x_i - mu_c)(x_i - mu_c)^T``,
        formed from the class-centred rows (no cancellation against the total)."""
        xw = self.x - self.class_means[self.codes]
        return xw.T @ xw

    @functools.cached_property
    def scale(self) -> jax.Array:
        """A power of two near the largest ``|centred|`` (1 for constant features).

        :attr:`unit_centred` is divided by it (exactly) so that no product of the
        features under- or overflows at any scale the dtype holds (1e-20 to 1e18 in
        float32); metrics whose value depends on the scale carry ``scale**2`` back in.
        """
        return power_of_two_scale(jnp.max(jnp.abs(self.centred)))

    @functools.cached_property
    def unit_centred(self) -> jax.Array:
        """(N, D) :attr:`centred`, centred once more, divided by :attr:`scale` (entries about
        1 at most).

        The second pass removes the rounding of the first mean (``~eps |mean|`` per column),
        a rank-one offset ``1 delta^T`` of variance ~1e-6 in float32 beside a column offset
        of 1e4; what is left is at the rounding of the spread. (Not exactly zero for constant
        features: XLA may recompute a mean inside each fusion that reads it, each rounded
        its own way.)
        """
        xc = self.centred
        return (xc - jnp.mean(xc, axis=0)) / self.scale

    @functools.cached_property
    def unit_svd(self) -> tuple[jax.Array, jax.Array]:
        """Singular values (m,) (decreasing) and right singular vectors (D, m) of
        :attr:`unit_centred`, ``m = min(N, D)`` (static), by a direct SVD.

        Unlike the eigenvalues of a formed scatter (accurate to ``eps * s_max**2``), these
        resolve small directions to ``eps * s_max``: in float32 a direction with 1e-6 of the
        largest variance is still there. Padded columns add zero singular values.
        """
        m = min(self.n, self.width)
        s, v = self.linalg.svd(self.unit_centred)
        return s[:m], v[:, :m]

    # -- the source classifier ------------------------------------------------------
    @property
    def has_logits(self) -> bool:
        return self._logits is not None

    @functools.cached_property
    def source_mask(self) -> jax.Array:
        """(S,) bool: the source classes that are not padding."""
        if self._logits is None:
            raise ValueError("this metric needs the source classifier's logits")
        return jnp.arange(self._logits.shape[1]) < self._n_logits

    @functools.cached_property
    def logits(self) -> jax.Array:
        """(N, S) source logits, ``-inf`` in padded source classes."""
        return jnp.where(self.source_mask, self._logits, -jnp.inf)

    @functools.cached_property
    def source_log_probs(self) -> jax.Array:
        """(N, S) log-softmax of the source logits (``-inf`` in padded classes)."""
        return jax.nn.log_softmax(self.logits, axis=1)

    @functools.cached_property
    def source_probs(self) -> jax.Array:
        """(N, S) the source classifier's class probabilities (0 in padded classes)."""
        return jnp.exp(self.source_log_probs)
