"""LEEP and NCE, batched (reference: :mod:`ncti_jax.reference.leep`).

Both read the source classifier's class probabilities ``p = softmax(logits)``
(:attr:`ncti_jax._stats.ModelStats.source_probs`, exactly 0 in padded source
classes) and the target labels ``y``; neither reads the features.

LEEP (the paper's variant, the reference's default)::

    P(y, z) = 1/N sum_{i: y_i = y} p[i, z],   P(z) = sum_y P(y, z),
    LEEP    = 1/N sum_i log sum_z p[i, z] P(y_i, z) / P(z).

A source class with ``P(z) = 0`` (a padded class, or one whose probabilities
all underflow) adds ``p[i, z] P(y_i | z) = 0`` to every sample: its ``0 / 0``
conditional is masked to 0, as the reference drops it.

NCE, of the hard source predictions ``z_i = argmax_z logits[i, z]`` (first maximum
on ties; padded classes are ``-inf``, never chosen)::

    NCE = sum_{y, z} P(y, z) log(P(y, z) / P(z)),  P(y, z) = #{i: y_i = y, z_i = z} / N,

with ``0 log 0 = 0``. It is formed from the integer counts, ``n_yz / N log(n_yz / n_z)``:
exact counts in any dtype up to 2**24 samples in float32.

The reference takes the argmax of the probabilities, the same class unless two
logits differ by less than the rounding of ``exp`` (absolute gaps below ~1e-16 in
float64: the probabilities tie and the reference takes the first). The logits'
argmax does not depend on how a softmax rounds, so a float32 run picks the classes
a float64 one picks from the same (float32) logits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special

from ..reference import leep as ref
from . import Metric


def leep(stats) -> dict:
    p = stats.source_probs  # (N, S), 0 in padded source classes
    n = stats.n
    # P(y, z) up to the common 1/N, which cancels in P(y | z).
    joint = jax.ops.segment_sum(p, stats.codes, num_segments=stats.n_classes)  # (C, S)
    p_z = jnp.sum(joint, axis=0)
    seen = p_z > 0
    conditional = jnp.where(seen, joint / jnp.where(seen, p_z, 1.0), 0.0)  # P(y | z)
    eep = jnp.sum(p * conditional[stats.codes], axis=1)  # (N,)
    return {"value": jnp.sum(jnp.log(eep)) / n}


def nce(stats) -> dict:
    z = jnp.argmax(stats.logits, axis=1)
    n_s = stats.logits.shape[1]
    counts = jnp.zeros((stats.n_classes, n_s), stats.dtype).at[stats.codes, z].add(1.0)
    n_z = jnp.sum(counts, axis=0)
    occupied = counts > 0
    ratio = counts / jnp.where(occupied, n_z, 1.0)  # n_yz / n_z = P(y | z)
    terms = jnp.where(occupied, counts * jnp.log(jnp.where(occupied, ratio, 1.0)), 0.0)
    return {"value": jnp.sum(terms) / stats.n}


def _probs(logits) -> np.ndarray:
    if logits is None:
        raise ValueError("LEEP and NCE need the source classifier's logits")
    return scipy.special.softmax(np.asarray(logits, np.float64), axis=1)


def _ref_leep(features, labels, logits=None) -> float:
    return ref.leep(_probs(logits), labels)


def _ref_nce(features, labels, logits=None) -> float:
    return ref.nce(_probs(logits), labels)


METRICS = (
    Metric(
        "leep",
        leep,
        _ref_leep,
        needs_logits=True,
        summary="LEEP (Nguyen et al. 2020): log expected empirical prediction of the source classifier",
    ),
    Metric(
        "nce",
        nce,
        _ref_nce,
        needs_logits=True,
        summary="NCE (Tran et al. 2019): -H(target label | source argmax label)",
    ),
)
