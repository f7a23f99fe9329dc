"""The LogME kernel against its float64 reference (``variant="paper"``), on every regime.

The reference sees each model's features without their all-zero columns: the paper
variant is invariant to them in exact arithmetic (``log1p(0) = 0``), and the kernel
is (it zeroes rounding-level eigenvalues), but the reference's Gram gives a dead
ReLU column a rounding eigenvalue ``~ eps * sigma_max``, which on features ~1e18
(where epsilon pins ``t ~ 1e6``) counts as a full direction: -9.27 instead of -2.65.

Measured (max relative error over the zoo; 5 seeds on every regime, 20 more on the
tightest), float64: <= 3e-11 everywhere but "massive" (<= 2e-8 over 20 seeds: the
uncentred Gram of 1e4 offsets has ``sigma_max / sigma_min ~ 1e9``, so the
reference's own eigenvalues are exact only to ~1e-7 of the small ones). Float32
(SVD route): chance, longtail ~2e-7; fewshot-wide ~1e-6; collapsed, huge- and
tiny-scale, ill-conditioned, low-precision <= 4e-5; binary <= 7.4e-5 (20 seeds);
low-rank <= 3e-4 (rounding-level directions); massive <= 1.1e-3 (the float32 SVD
resolves the small singular values to ``eps32 * s_max``, ``s_max / s_min ~ 4e4``).
"""

from __future__ import annotations

import numpy as np
import pytest
from metric_parity import kernel_values, reference_values, rel_err

from ncti_jax import regimes
from ncti_jax.reference.logme import logme_fit


def _live(feats: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The zoo without each model's all-zero columns (see the module notes)."""
    return {m: x[:, np.any(np.asarray(x, np.float64) != 0, axis=0)] for m, x in feats.items()}


# Float64 tolerance: 1e-10 (measured <= 3e-11), 1e-6 on "massive" (measured <= 2e-8; see
# the module notes).
TOL64 = {"massive": 1e-6}


@pytest.mark.parametrize("regime", sorted(regimes.REGIMES))
def test_float64_matches_reference(regime, rng, x64):
    feats, y = regimes.make(regime, rng, size="tiny")
    got = kernel_values("logme", feats, y, pad=3)["logme"]
    want = reference_values("logme", _live(feats), y)
    assert rel_err(got, want) < TOL64.get(regime, 1e-10), (got, want)


def test_float64_alpha_beta_match_reference(rng, x64):
    """The fitted precisions (mean over classes; alpha in the features' units) are the
    reference's: the fixed point stops at the same step for every class."""
    feats, y = regimes.make("collapsed", rng, size="tiny")
    for field in ("alpha", "beta"):
        got = kernel_values("logme", feats, y, pad=3, field=field)["logme"]
        want = [np.mean(getattr(logme_fit(x.astype(np.float64), y), field)) for x in feats.values()]
        assert rel_err(got, np.array(want)) < 1e-10, field


# Float32 to 1e-4 (measured <= 3e-5 on these); binary to 3e-4 (measured <= 7.4e-5 over
# 20 seeds), "massive" to 1e-2 (measured <= 1.1e-3). See the module notes.
TOL32 = {"binary": 3e-4, "massive": 1e-2}


@pytest.mark.parametrize(
    "regime", ["binary", "fewshot-wide", "huge-scale", "massive", "tiny-scale"]
)
def test_float32_matches_reference(regime, rng):
    feats, y = regimes.make(regime, rng, size="tiny")
    got = kernel_values("logme", feats, y, dtype=np.float32, pad=3)["logme"]
    want = reference_values("logme", _live(feats), y)
    assert rel_err(got, want) < TOL32.get(regime, 1e-4), (got, want)


def test_ranks_models_pads_and_propagates_nan(rng, x64):
    """Better separated classes score clearly higher, in the reference's order; a narrow
    model padded by 60 columns scores as unpadded; NaN features give NaN, alone."""
    feats, y = regimes.make("collapsed", rng, size="tiny")
    bad = feats["collapsed_0"].astype(np.float64)
    bad[3, 5] = np.nan
    zoo = {"narrow": feats["collapsed_0"][:, :20], "nan": bad, **feats}
    got = kernel_values("logme", zoo, y, pad=40)["logme"]
    assert np.isnan(got[1]) and np.all(np.isfinite(np.delete(got, 1)))
    assert np.all(np.diff(got[2:]) > 0.1), got  # separations 0.4 < 1.1 < 2.5 < 6.0
    del zoo["nan"]
    want = reference_values("logme", _live(zoo), y)
    assert rel_err(np.delete(got, 1), want) < 1e-10
