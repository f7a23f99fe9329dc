"""NCTI's raw components of one model, and the same kernel compiled over batches of models.

The kernel of one model is pure and traced on static shapes: PCA
(:mod:`ncti_jax._pca`), LDA (:mod:`ncti_jax._lda`), then the three components.
:func:`zoo_components` (features in) and :func:`zoo_projected_components` (a
streamed PCA's projections in) vmap it over a batch of models and split the
batch over a device mesh. Every rule that differs between backends comes in as
a static argument chosen by the plan (:class:`ncti_jax._plan.Plan`): the
linear algebra (``linalg``), the matmul ``precision`` and the ``mesh``.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from . import _shard
from ._lda import ClassStats, lda_eigen, lda_svd
from ._linalg import Linalg
from ._nuclear import nuclear_norm
from ._pad import ClassLayout
from ._pca import EIGH, mask_components, pca_project

# The authors' branch rule: the svd solver when the shrinkage clamps at this floor.
SHRINKAGE_FLOOR = 1e-10
# Explained variances summed in the shrinkage rule.
SHRINKAGE_TOP = 32
# The LDA solvers, in the order of their codes in ``RawComponents.solver``.
SOLVERS = ("svd", "eigen")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class RawComponents:
    """Per-model outputs of the compiled kernel; every field has shape (M,) or (M, 3).

    These fields are what a checkpoint saves (:mod:`ncti_jax._checkpoint`).
    """

    components: jax.Array  # (M, 3): etf, ncc, vc
    pca_rank: jax.Array  # (M,) principal directions kept
    shrinkage: jax.Array  # (M,) the rule's shrinkage t
    solver: jax.Array  # (M,) the LDA solver used, an index into SOLVERS
    # (M,) the PCA eigensolver's largest kept residual over lambda_1 and its relative gap
    # after the last kept direction (ncti_jax._topk.certificate; 0 and 1 for an exact solve)
    residual: jax.Array
    gap: jax.Array
    eigensolver: jax.Array  # (M,) _pca.EIGH, TOPK or FALLBACK


RAW_FIELDS = tuple(f.name for f in dataclasses.fields(RawComponents))


def model_components(
    x: jax.Array,
    max_components: jax.Array,
    n_cols: jax.Array,
    layout: ClassLayout,
    *,
    k: int,
    linalg: Linalg,
) -> tuple[jax.Array, ...]:
    """NCTI's three raw components for one model, from its features.

    Args:
      x: (N, D) features, zero-padded columns allowed.
      max_components: scalar ``min(n_components, N - 1, D_model)``.
      n_cols: scalar ``D_model``, the columns of ``x`` that are not padding.
      layout: the labels' device arrays.
      k: static PCA width (the batch's largest ``max_components``).
      linalg: how the linear algebra is traced.

    Returns:
      The fields of :class:`RawComponents` for this model: (3,) etf, ncc, vc; the
      PCA rank kept; the shrinkage; the LDA solver's code; the PCA eigensolver's
      residual, gap and code.
    """
    *pca, residual, gap, code = pca_project(x, max_components, n_cols, k, linalg)
    return (*_components(*pca, layout, linalg), residual, gap, code)


def projected_components(
    z: jax.Array,
    evals: jax.Array,
    scale: jax.Array,
    floors: jax.Array,
    max_components: jax.Array,
    layout: ClassLayout,
    *,
    linalg: Linalg,
) -> tuple[jax.Array, ...]:
    """:func:`model_components` from a PCA done elsewhere (:mod:`ncti_jax._stream`).

    Args:
      z: (N, k) centred features divided by ``scale``, projected on their top-``k``
        principal directions.
      evals: (k,) the matching eigenvalues of the centred scatter, decreasing.
      scale: scalar, the power of two the features were divided by.
      floors: (k,) the rounding level of each eigenvalue (:func:`ncti_jax._pca.rounding_floors`).
      max_components: scalar ``min(n_components, N - 1, D_model)``; columns beyond it
        are ignored.
      layout: the labels' device arrays.
      linalg: how the linear algebra is traced.
    """
    masked = mask_components(z, evals, floors, max_components)
    exact = (jnp.zeros((), z.dtype), jnp.ones((), z.dtype), jnp.int32(EIGH))
    return (*_components(*masked, scale, layout, linalg), *exact)


def shrinkage_rule(variances: jax.Array, scale: jax.Array) -> jax.Array:
    """The authors' ``t = max(exp(-sum of the top-32 variances), 1e-10)``.

    ``variances`` are those of the features divided by ``scale``; the product is
    taken in an order that neither overflows nor underflows before it must.
    """
    top = jnp.sum(variances[:SHRINKAGE_TOP]) * scale * scale
    return jnp.maximum(jnp.exp(-top), SHRINKAGE_FLOOR)


def _components(
    z: jax.Array,
    variances: jax.Array,
    mask: jax.Array,
    scale: jax.Array,
    layout: ClassLayout,
    linalg: Linalg,
) -> tuple[jax.Array, ...]:
    c = layout.counts.shape[0]
    shrinkage = shrinkage_rule(variances, scale)
    # Compare with the floor as rounded to this dtype, as the authors' code does in float64.
    use_eigen = shrinkage > jnp.asarray(SHRINKAGE_FLOOR, z.dtype)

    stats = ClassStats(z, layout.codes, layout.counts)
    pca_rank = jnp.sum(mask)
    n_discriminants = jnp.minimum(c - 1, pca_rank)
    proj_svd, dec_svd = lda_svd(z, stats, n_discriminants, linalg)
    proj_eig, dec_eig = lda_eigen(z, mask, stats, n_discriminants, shrinkage, linalg)
    projection = jnp.where(use_eigen, proj_eig, proj_svd)
    decision = jnp.where(use_eigen, dec_eig, dec_svd)

    etf = nuclear_norm(projection - jnp.mean(projection, axis=0), linalg)
    log_p = jax.nn.log_softmax(decision, axis=1)
    ncc = jnp.mean(jnp.exp(jnp.take_along_axis(log_p, layout.codes[:, None], axis=1)))
    vc = jnp.log(class_nuclear_norms(log_p, layout, linalg))
    solver = use_eigen.astype(jnp.int32)  # SOLVERS.index("eigen") == 1
    return jnp.stack([etf, ncc, vc]), pca_rank, shrinkage, solver


def class_nuclear_norms(log_p: jax.Array, layout: ClassLayout, linalg: Linalg) -> jax.Array:
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
            norms = jnp.sum(jax.vmap(linalg.singular_values)(blocks), axis=1)
        else:
            norms = jax.vmap(functools.partial(nuclear_norm, linalg=linalg))(blocks)
        total = total + jnp.sum(norms)
    return total


@functools.partial(jax.jit, static_argnames=("k", "precision", "linalg", "mesh"))
def zoo_components(
    x: jax.Array,
    max_components: jax.Array,
    n_cols: jax.Array,
    layout: ClassLayout,
    *,
    k: int,
    precision: str,
    linalg: Linalg,
    mesh: Mesh | None = None,
) -> RawComponents:
    """:func:`model_components` vmapped over the model axis of ``x`` (M, N, D).

    With a ``mesh``, the model axis is split over its devices (M a multiple of
    their count).
    """
    kernel = functools.partial(model_components, k=k, linalg=linalg)
    batched = jax.vmap(kernel, in_axes=(0, 0, 0, None))
    return _over_models(batched, (x, max_components, n_cols), layout, precision, mesh)


@functools.partial(jax.jit, static_argnames=("precision", "linalg", "mesh"))
def zoo_projected_components(
    z: jax.Array,
    evals: jax.Array,
    scale: jax.Array,
    floors: jax.Array,
    max_components: jax.Array,
    layout: ClassLayout,
    *,
    precision: str,
    linalg: Linalg,
    mesh: Mesh | None = None,
) -> RawComponents:
    """:func:`projected_components` vmapped over the model axis of ``z`` (M, N, k)."""
    kernel = functools.partial(projected_components, linalg=linalg)
    batched = jax.vmap(kernel, in_axes=(0, 0, 0, 0, 0, None))
    per_model = (z, evals, scale, floors, max_components)
    return _over_models(batched, per_model, layout, precision, mesh)


def _over_models(batched, per_model, layout, precision, mesh):
    def local(*args):
        with jax.default_matmul_precision(precision):
            return RawComponents(*batched(*args))

    if mesh is None:
        return local(*per_model, layout)
    return _shard.over_models(local, mesh, n_replicated=1)(*per_model, layout)
