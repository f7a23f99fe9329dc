"""SFDA kernel against its float64 reference, on every regime."""

from __future__ import annotations

import numpy as np
import pytest
from metric_parity import kernel_values, reference_values, rel_err

from ncti_jax import regimes
from ncti_jax.reference import sfda as ref
from ncti_jax.reference.ncti import remap_labels

NAME = "sfda"


@pytest.mark.parametrize("regime", sorted(regimes.REGIMES))
def test_float64_matches_reference(regime, rng, x64):
    feats, y = regimes.make(regime, rng, size="tiny")
    got = kernel_values(NAME, feats, y, pad=3)[NAME]
    want = reference_values(NAME, feats, y)
    # Worst measured 8.4e-11 over 10 seeds per regime ("massive": the reference forms
    # x^T S^-1 mu on the raw 1e4-offset columns, the kernel on centred ones; the softmax
    # cancels the offset); 1.4e-11 "ill-conditioned", 9.5e-12 "low-rank", else < 1e-13.
    assert rel_err(got, want) < 1e-8, (got, want)


def test_shrinkage_matches_the_reference_rule(rng, x64):
    # Both regimes of the rule: exp(-5 rho) (tiny scale: 1) and its 1e-10 floor.
    for regime in ("tiny-scale", "collapsed"):
        feats, y = regimes.make(regime, rng, size="tiny")
        got = kernel_values(NAME, feats, y, pad=3, field="shrinkage")[NAME]
        codes, c = remap_labels(y)
        want = [ref.fisher_probabilities(np.float64(x), codes, c)[1] for x in feats.values()]
        assert rel_err(got, np.array(want)) < 1e-12, (regime, got, want)


@pytest.mark.parametrize("regime", ["collapsed", "chance", "huge-scale", "tiny-scale"])
def test_float32_matches_reference(regime, rng):
    # Measured worst (8 seeds): 5.2e-6 "huge-scale" (shrinkage at its 1e-10 floor: the
    # float32 ridge floor RIDGE32 decides), else < 3e-7; 1e-4 is the engine's float32
    # budget. The scaled regimes check that no square of 1e18 or 1e-20 features is formed.
    feats, y = regimes.make(regime, rng, size="tiny")
    got = kernel_values(NAME, feats, y, dtype=np.float32, pad=3)[NAME]
    assert rel_err(got, reference_values(NAME, feats, y)) < 1e-4


def test_ranking_follows_class_separation(rng, x64):
    # Binary: separations 0.3, 1.0, 4.0 give about 0.6, 0.98, 1 (the last two at least
    # 7e-3 apart over 40 seeds): a kernel that mixed up models, the mixture or the
    # padding would reorder them or close the gap.
    feats, y = regimes.make("binary", rng, size="tiny")
    got = kernel_values(NAME, feats, y, pad=3)[NAME]
    want = reference_values(NAME, feats, y)
    assert np.min(np.diff(np.sort(want))) > 1e-6, want  # distinct: the order is defined
    np.testing.assert_array_equal(np.argsort(got), np.argsort(want))
    assert want[1:].min() - want[0] > 0.1 and got[1:].min() - got[0] > 0.1, (got, want)


def test_constant_features_give_nan(rng, x64):
    # Sw = 0: S is singular for every shrinkage (the reference's Cholesky raises); the
    # kernel must say NaN, and leave the other model of the batch alone.
    feats, y = regimes.make("binary", rng, size="tiny")
    x = next(iter(feats.values()))
    got = kernel_values(NAME, {"constant": np.ones_like(x) * 3.0, "real": x}, y, pad=3)[NAME]
    assert np.isnan(got[0])
    assert rel_err(got[1:], reference_values(NAME, {"real": x}, y)) < 1e-8
