"""TransRate kernel against its float64 reference, on every regime."""

from __future__ import annotations

import numpy as np
import pytest
from metric_parity import kernel_values, reference_values

from ncti_jax import regimes
from ncti_jax.reference import transrate as ref
from ncti_jax.reference.ncti import remap_labels

NAME = "transrate"
# float32 on the regimes whose features float32 holds without trouble (not 1e-20 / 1e18).
FRIENDLY = ("binary", "chance", "collapsed", "massive")


def rel(got: np.ndarray, want: np.ndarray) -> float:
    """Largest relative error, no absolute floor."""
    return float(np.max(np.abs(got - want) / np.abs(want)))


def ranked_transrate(features: np.ndarray, labels, rcond: float = 1e-13) -> float:
    """The reference's formula with singular values at or below ``rcond * s_max`` of each
    block taken as exact zeros (null directions as exact arithmetic has them)."""
    y, n_classes = remap_labels(labels)
    z = features - features.mean(axis=0)

    def rate(a):
        s = np.linalg.svd(a, compute_uv=False)
        s = np.where(s > rcond * s[0], s, 0.0)
        return 0.5 * np.sum(np.log1p(s**2 / (a.shape[0] * ref.EPS)))

    return rate(z) - np.mean([rate(z[y == c]) for c in range(n_classes)])


def total_rate(features: np.ndarray) -> float:
    """``R(Z)``, the size of the coding rates that cancel into TransRate."""
    x = np.asarray(features, np.float64)
    return ref.coding_rate(x - x.mean(axis=0))


@pytest.mark.parametrize("regime", sorted(regimes.REGIMES))
def test_float64_matches_reference(regime, rng, x64):
    feats, y = regimes.make(regime, rng, size="tiny")
    got = kernel_values(NAME, feats, y, pad=3)[NAME]
    if regime == "huge-scale":
        # Ill-defined for the reference: ReLU units dead within a class leave null directions
        # in the class blocks, and at 1e18 the SVD's rounding puts them at s ~ eps s_max, each
        # log1p(s^2 / (n eps)) ~ 17 nats: the reference is 20% off its exact-arithmetic value.
        # The kernel takes them as zeros; compare with the formula on the same ranks (the
        # value holds for any rcond in 1e-14..1e-10).
        want = np.array([ranked_transrate(x.astype(np.float64), y) for x in feats.values()])
    else:
        want = reference_values(NAME, feats, y)
    # Measured up to 3e-14 relative. At 1e-20 the coding rates (~1e-36) cancel to TrR down
    # to 1e-6 of them, in the reference as here: there the error is up to 2e-15 of R(Z)
    # (up to 4e-10 of TrR), so the bound is also relative to R(Z).
    rates = np.array([total_rate(x) for x in feats.values()])
    err = np.abs(got - want)
    assert np.all(err <= 1e-10 * np.abs(want) + 1e-13 * rates), (err / np.abs(want), err / rates)


@pytest.mark.parametrize("regime", FRIENDLY)
def test_float32_matches_reference(regime, rng):
    feats, y = regimes.make(regime, rng, size="tiny")
    got = kernel_values(NAME, feats, y, dtype=np.float32, pad=3)[NAME]
    # Measured up to 2e-6 (SVDs resolve a class's dead units to eps s_max; formed Grams
    # were 2e-2 off).
    assert rel(got, reference_values(NAME, feats, y)) < 1e-4


def test_ranks_by_separation(rng, x64):
    """The collapsed zoo's models separate their classes more and more: TransRate grows
    (from three classes on) in the kernel as in the reference, by clear margins."""
    feats, y = regimes.make("collapsed", rng, size="tiny")
    got = kernel_values(NAME, feats, y, pad=3)[NAME]
    want = reference_values(NAME, feats, y)
    assert np.all(np.diff(want) > 1.0), want
    assert np.all(np.diff(got) > 1.0), got
    fields = {
        f: kernel_values(NAME, feats, y, pad=3, field=f)[NAME] for f in ("rate", "class_rate")
    }
    np.testing.assert_allclose(fields["rate"] - fields["class_rate"], got, rtol=1e-12)


def test_constant_features(rng, x64):
    """No spread: the reference's coding rates are exactly 0; the kernel's are what the
    rounding of the mean leaves (XLA recomputes the mean in each fusion that reads it,
    each rounded its own way: ~1e-27 here), far below any model with a spread."""
    feats, y = regimes.make("chance", rng, size="tiny")
    x = next(iter(feats.values()))
    zoo = {"constant": np.full_like(x, 3.0), "chance": x}
    got = kernel_values(NAME, zoo, y, pad=3)[NAME]
    assert reference_values(NAME, zoo, y)[0] == 0.0
    assert abs(got[0]) < 1e-20
    assert got[1] > 1.0
