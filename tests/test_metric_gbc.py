"""GBC kernel against its float64 reference (PCA to 64, spherical Gaussians), on every regime."""

from __future__ import annotations

import numpy as np
import pytest
from metric_parity import kernel_values, reference_values

from ncti_jax import regimes

NAME = "gbc"
# float32 on the regimes whose features float32 holds without trouble (not 1e-20 / 1e18).
FRIENDLY = ("binary", "chance", "collapsed", "massive")


def values(feats, y, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """The kernel's (value, log_overlap) of each model."""
    got = kernel_values(NAME, feats, y, **kwargs)[NAME]
    return got, kernel_values(NAME, feats, y, field="log_overlap", **kwargs)[NAME]


def check(feats, y, got, rtol: float) -> None:
    """``value`` to ``rtol`` relative, with no absolute floor (in float64 GBC is a normal
    number down to -1e-200 and more)."""
    want = reference_values(NAME, feats, y)
    assert np.all(want < 0), want
    np.testing.assert_allclose(got, want, rtol=rtol, atol=0)


@pytest.mark.parametrize("regime", sorted(regimes.REGIMES))
def test_float64_matches_reference(regime, rng, x64):
    feats, y = regimes.make(regime, rng, size="tiny")
    # Measured up to 4e-13: exp(-D_B) turns D_B's rounding (eps D_B, D_B up to ~200) into
    # relative error.
    check(feats, y, kernel_values(NAME, feats, y, pad=3)[NAME], rtol=1e-10)


def test_float64_pca_cutoff(rng, x64):
    """D > 64: the PCA keeps 64 of 128 directions (a clear spectral gap after 64) and
    none of the padding; beside them a 40-wide model keeps its own 40 (k' = min(64, D_m))."""
    feats, y = regimes.make("ill-conditioned", rng, size="small")
    first = next(iter(feats.values()))
    feats["narrow_40"] = np.ascontiguousarray(first[:, :40])
    check(feats, y, kernel_values(NAME, feats, y, pad=3)[NAME], rtol=1e-10)


@pytest.mark.parametrize("regime", FRIENDLY)
def test_float32_matches_reference(regime, rng):
    feats, y = regimes.make(regime, rng, size="tiny")
    got, log_overlap = values(feats, y, dtype=np.float32, pad=3)
    want = reference_values(NAME, feats, y)
    # log(-GBC) to 1e-4 absolute (its relative error), plus 1e-5 of itself: float32 holds
    # D_B to ~eps32 D_B (measured up to 8e-5, and 1.8e-4 at log(-GBC) = -124).
    np.testing.assert_allclose(log_overlap, np.log(-want), rtol=1e-5, atol=1e-4)
    # The value itself underflows in float32 (to -0.0 from about -1e-45): compared where
    # it is a normal number.
    normal = want < -1e-30
    np.testing.assert_allclose(got[normal], want[normal], rtol=1e-4, atol=0)
    assert np.all(got[~normal] > -1e-30)


def test_ranks_by_separation(rng, x64):
    """The collapsed zoo's models separate their classes more and more: the overlap falls
    by orders of magnitude, and GBC rises, in the kernel as in the reference."""
    feats, y = regimes.make("collapsed", rng, size="tiny")
    got, log_overlap = values(feats, y, pad=3)
    want = reference_values(NAME, feats, y)
    np.testing.assert_allclose(log_overlap, np.log(-want), rtol=0, atol=1e-10)
    assert np.all(np.diff(np.log(-want)) < -2.0), want
    assert np.all(np.diff(log_overlap) < -2.0), log_overlap
    assert np.all(np.diff(got) > 0), got


def test_constant_features(rng, x64):
    """No spread: the PCA keeps no direction and the mean variance over none is NaN, in the
    kernel as in the reference; the other model of the zoo is unaffected."""
    feats, y = regimes.make("chance", rng, size="tiny")
    x = next(iter(feats.values()))
    zoo = {"constant": np.full_like(x, 3.0), "chance": x}
    with pytest.warns(RuntimeWarning):  # the reference's mean of an empty axis
        want = reference_values(NAME, zoo, y)
    got = kernel_values(NAME, zoo, y, pad=3)[NAME]
    assert np.isnan(want[0]) and np.isnan(got[0])
    np.testing.assert_allclose(got[1], want[1], rtol=1e-10)
