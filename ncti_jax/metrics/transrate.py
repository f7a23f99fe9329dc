"""TransRate, batched (reference: :mod:`ncti_jax.reference.transrate`).

``TrR = R(Z) - (1 / C) sum_c R(Z_c)`` with ``R(A) = 1/2 sum_i log1p(s_i^2 / (n eps))`` over
the singular values of an (n, D) block ``A`` of the globally centred features ``Z``
(``logdet(I + a A^T A)`` by Sylvester's identity, as in the reference).

Route: direct SVDs of the data blocks, never a formed second moment.

- ``R(Z)``: :attr:`ncti_jax._stats.ModelStats.unit_svd` (shared with GBC's PCA).
- ``R(Z_c)``: per size bucket of :attr:`ncti_jax._pad.ClassLayout.buckets` (G classes
  padded to B rows, B static), the singular values of the (G, B, D) class rows (padded
  rows zero: they add zero singular values). Memory ``sum G B D <= 2 N D``, work
  ``sum_c B D min(B, D)``: no ``C x D x D`` stack of per-class scatters (a segment-sum
  of outer products: 1000 x 2048^2 entries for a 1000-class target on 2048-wide
  features), and no ``C x B x D`` padding of every class to the largest one (a long tail
  beside a head class).

Why SVDs and not the eigenvalues of the smaller of ``A^T A`` and ``A A^T`` (the same
nonzero spectrum, and cheaper): ``eps_TrR = 1e-4`` is absolute, so a direction with a
variance of 1e-4 counts ~1 nat whatever the largest variance; a formed Gram resolves
eigenvalues only to ``eps * s_max^2``. On ReLU features (units that are dead within a
class) float32 Grams lost or invented such directions and TransRate was off by up to 2e-2
relative on the friendly regimes (binary, collapsed), 2e-1 with massive activations; the
SVD resolves ``s`` to ``eps * s_max`` (float32 within 1e-5 there), for about twice the work.

Rounding: singular values at or below ``16 eps s_max`` are taken as exact zeros
(:func:`drop_rounding`). They are null directions (a padded column, a class with fewer
rows than columns, a unit constant within a class) that rounding left at ``~eps s_max``;
``log1p(s^2 / (n eps_TrR))`` of that is negligible at unit scale but ~17 nats each at
1e18, where the reference's own value is set by that rounding (20% off its exact value
on ReLU features; ``tests/test_metric_transrate.py`` checks the kernel against the exact one).

The features are divided by a power of two (:attr:`~ncti_jax._stats.ModelStats.scale`)
before the SVDs; ``scale**2`` comes back in each ``s_i^2 / (n eps)``, through ``log``
where the product would leave the dtype's range. Padding: zero columns add zero singular
values, ``log1p(0) = 0``; TransRate does not depend on the true width.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..reference import transrate as ref
from . import Metric

EPS = ref.EPS  # the distortion: TLlib's default


def drop_rounding(s: jax.Array) -> jax.Array:
    """Singular values with those at the rounding level of the largest (last axis) set to 0."""
    eps = jnp.finfo(s.dtype).eps
    return jnp.where(s > 16 * eps * jnp.max(s, axis=-1, keepdims=True), s, 0.0)


def coding_rate(s: jax.Array, unit: jax.Array, log_unit: jax.Array, n: jax.Array) -> jax.Array:
    """``1/2 sum_i log1p(s_i^2 unit / (n eps))`` over the last axis.

    Args:
      s: (..., k) singular values of blocks of the scaled features (>= 0).
      unit: ``scale**2`` (it may have over- or underflowed), ``log_unit`` its log (exact).
      n: rows of each block, broadcastable against ``s[..., 0]``.
    """
    n = jnp.asarray(n, s.dtype)[..., None]
    t = s * s * (unit / (n * EPS))
    # Out of the dtype's range (huge or tiny features in float32) the same terms through
    # logs; in range the direct product keeps log1p's full precision on small t.
    log_t = 2.0 * jnp.log(s) + (log_unit - jnp.log(n * EPS))
    direct = jnp.isfinite(t) & ((t >= jnp.finfo(s.dtype).tiny) | (s == 0))
    terms = jnp.where(direct, jnp.log1p(jnp.where(direct, t, 0.0)), jax.nn.softplus(log_t))
    return 0.5 * jnp.sum(terms, axis=-1)


def class_rates(stats, unit: jax.Array, log_unit: jax.Array) -> jax.Array:
    """``sum_c R(Z_c)``: the coding rates of the class blocks, bucket by bucket."""
    z = stats.unit_centred
    # vmapped: a loop of unbatched SVDs on the CPU (batched LAPACK can deadlock XLA:CPU).
    singular_values = jax.vmap(stats.linalg.singular_values)
    total = jnp.zeros((), z.dtype)
    for bucket in stats.layout.buckets:  # a static tuple: one traced block per bucket
        rows = jnp.where(bucket.mask[..., None], z[bucket.index], 0.0)  # (G, B, D)
        s = drop_rounding(singular_values(rows))
        total = total + jnp.sum(coding_rate(s, unit, log_unit, jnp.sum(bucket.mask, axis=1)))
    return total


def transrate(stats) -> dict:
    scale = stats.scale
    unit, log_unit = scale * scale, 2.0 * jnp.log(scale)
    rate = coding_rate(drop_rounding(stats.unit_svd[0]), unit, log_unit, stats.n)
    class_rate = class_rates(stats, unit, log_unit) / stats.n_classes
    return {"value": rate - class_rate, "rate": rate, "class_rate": class_rate}


def _ref(features, labels, logits=None) -> float:
    return ref.transrate(features, labels)


METRICS = (
    Metric(
        "transrate",
        transrate,
        _ref,
        fields=("value", "rate", "class_rate"),
        summary="TransRate (Huang et al. 2022): coding rate of the features less that of each class",
        class_blocks=True,
    ),
)
