"""ETran's kernel against its float64 reference, on every regime.

ETran exists only over a zoo, so the parity is checked twice: each model's parts
(the kernel's fields ``"energy"`` and ``"lda"``, against
:func:`ncti_jax.reference.etran.etran_parts`, which ``Metric.reference`` returns), and
the zoo's values (``Metric.values`` of the kernel's fields, against
:func:`ncti_jax.reference.etran.etran_zoo`). The logits have a different number of
source classes per model (3 beside 100), zero-padded to the widest plus 3.
"""

from __future__ import annotations

import numpy as np
import pytest
from metric_parity import kernel_values, reference_values, rel_err
from source_logits import source_logits

from ncti_jax import metrics, regimes
from ncti_jax.metrics import etran
from ncti_jax.reference import etran as ref

METRIC = metrics.get("etran")


def kernel_parts(feats, y, logits, **kwargs) -> dict[str, np.ndarray]:
    """``{field: (M,)}`` of the ETran kernel (one compilation: the second call hits the cache)."""
    return {
        f: kernel_values("etran", feats, y, logits=logits, field=f, **kwargs)["etran"]
        for f in METRIC.fields
    }


def check_zoo(feats, y, logits, parts, *, lda_tol, energy_tol, zoo_tol):
    want = reference_values("etran", feats, y, logits)  # (M, 2): energy, lda
    assert rel_err(parts["energy"], want[:, 0]) < energy_tol, (parts["energy"], want[:, 0])
    assert rel_err(parts["lda"], want[:, 1]) < lda_tol, (parts["lda"], want[:, 1])
    # Min-max values lie in [0, 1] and the smallest is 0: compare them absolutely.
    got = METRIC.values(parts)
    np.testing.assert_allclose(got, ref.etran_zoo(feats, y, logits), rtol=0, atol=zoo_tol)


@pytest.mark.parametrize("regime", sorted(regimes.REGIMES))
def test_float64_matches_reference(regime, rng, x64):
    feats, y = regimes.make(regime, rng, size="tiny")
    logits = source_logits(feats, rng)
    parts = kernel_parts(feats, y, logits, pad=3)
    # Measured over 5 seeds: energy <= 2.4e-16; LDA <= 8e-16 except ill-conditioned
    # 1.2e-13, massive 4.7e-12 and low-rank 2.2e-11, the reference's own rounding: S
    # has condition ~1e10 at the 1e-10 shrinkage floor and the reference forms
    # x^T S^-1 mu_c uncentred (centring its input moves it by 1e-11 on low-rank).
    # Zoo values (absolute, in [0, 1]) <= 6.1e-12.
    check_zoo(feats, y, logits, parts, energy_tol=1e-12, lda_tol=1e-9, zoo_tol=1e-9)


@pytest.mark.parametrize("regime", ["chance", "massive", "huge-scale", "tiny-scale"])
def test_float32_matches_reference(regime, rng):
    feats, y = regimes.make(regime, rng, size="tiny")
    logits = {m: v.astype(np.float32) for m, v in source_logits(feats, rng).items()}
    parts = kernel_parts(feats, y, logits, dtype=np.float32, pad=3)
    # Measured over 5 seeds: energy <= 1e-7, LDA <= 1.8e-7, zoo values <= 5.3e-7
    # absolute; the power-of-two scaling keeps 1e18 and 1e-20 features in float32's range.
    check_zoo(feats, y, logits, parts, energy_tol=1e-5, lda_tol=1e-5, zoo_tol=1e-4)


@pytest.mark.parametrize("regime", ["fewshot-wide", "low-rank"])
def test_float32_rank_deficient(regime, rng):
    """Sw rank-deficient and t at its 1e-10 floor: float32 cannot factor S and the
    kernel raises the ridge to 64 eps times Sw's top eigenvalue (not NaN). The
    directions Sw lacks still dominate the classifier, so L barely moves: measured
    <= 8.4e-6 (low-rank) and 1.3e-7 (fewshot-wide) over 5 seeds."""
    feats, y = regimes.make(regime, rng, size="tiny")
    feats = dict(list(feats.items())[:2])  # fewshot-wide: D = 96, 384 (the float64 test has 1536)
    logits = {m: v.astype(np.float32) for m, v in source_logits(feats, rng).items()}
    parts = kernel_parts(feats, y, logits, dtype=np.float32, pad=3)
    check_zoo(feats, y, logits, parts, energy_tol=1e-5, lda_tol=1e-4, zoo_tol=1e-3)


def test_ranking_follows_separation(rng, x64):
    """Models whose classes are further apart score higher LDA parts, their logits'
    energies differ, and the zoo's ETran orders them as the reference does."""
    n, d = 300, 12
    y = rng.permutation(np.arange(n) % 4)
    centres = rng.normal(size=(4, d))
    feats = {f"sep{s}": rng.normal(size=(n, d)) + s * centres[y] for s in (0.0, 0.4, 1.0, 2.5)}
    logits = {
        m: source_logits({m: x}, rng, strength=1 + j)[m] for j, (m, x) in enumerate(feats.items())
    }
    parts = kernel_parts(feats, y, logits, pad=2)
    # Increasing; the two most separated zoos may both be near the part's ceiling of 1.
    assert np.all(np.diff(parts["lda"]) > 0), parts["lda"]
    assert np.ptp(parts["energy"]) > 0.1, parts["energy"]
    check_zoo(feats, y, logits, parts, energy_tol=1e-12, lda_tol=1e-10, zoo_tol=1e-10)
    values = METRIC.values(parts)
    assert values[0] < values[-1]
    np.testing.assert_array_equal(np.argsort(values), np.argsort(ref.etran_zoo(feats, y, logits)))


def test_energy_keeps_the_reference_count():
    for n in (30, 199, 200, 400, 1100, 50000):
        v = np.arange(n, dtype=np.float64)[:, None] * np.ones((1, 3))
        # Energies are 0..n-1 + log 3, so the kept mean reveals the count.
        kept = round(2 * (ref.energy_score(v) - np.log(3)) + 1)
        assert etran.energy_keep(n) == kept, n


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_zero_within_class_scatter_is_nan(rng, dtype, x64):
    """Every class one repeated point: S = 0; the reference raises, the kernel says NaN
    (never a number)."""
    y = np.arange(60) % 3
    # Integer points whose columns sum to 0: the means and the centring are exact.
    points = rng.integers(-4, 5, size=(2, 5)).astype(np.float64)
    feats = {"points": np.vstack([points, -points.sum(axis=0)])[y]}
    logits = {"points": rng.normal(size=(60, 4))}
    parts = kernel_parts(feats, y, logits, dtype=dtype)
    assert np.isnan(parts["lda"]).all() and np.isfinite(parts["energy"]).all()
    # Sw = 0: the reference's power estimate divides 0 by 0 and its Cholesky refuses NaN.
    with np.errstate(invalid="ignore"), pytest.raises(ValueError, match="NaN"):
        reference_values("etran", feats, y, logits)
