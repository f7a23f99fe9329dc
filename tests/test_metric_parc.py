"""PARC kernel against its float64 reference, on every regime; the driver's subsample."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from metric_parity import kernel_values, reference_values

from ncti_jax import regimes
from ncti_jax._stats import ModelStats
from ncti_jax.metrics import parc as kernel
from ncti_jax.reference import parc as ref

NAME = "parc"


def _percent_err(got, want) -> float:
    """Largest error relative to ``max(|PARC|, 1)``: PARC is in percent and crosses 0
    (at chance), where a relative error says nothing."""
    return float(np.max(np.abs(got - want) / np.maximum(np.abs(want), 1.0)))


@pytest.mark.parametrize("regime", sorted(regimes.REGIMES))
def test_float64_matches_reference(regime, rng, x64):
    feats, y = regimes.make(regime, rng, size="tiny")
    got = kernel_values(NAME, feats, y, pad=3)[NAME]
    want = reference_values(NAME, feats, y)
    # Worst measured 1.8e-14 (8 seeds per regime), except "low-rank": its duplicated
    # rows make ~57 pairs of dissimilarity exactly 0, which both sides compute as
    # rounding noise (0, 1.1e-16, 2.2e-16, ...), so the average ranks inside that tie
    # group differ (worst 7.4e-7 over 25 seeds). 1e-10 elsewhere leaves room for nearly
    # equal eigenvalues (see the float32 test): 8e-15 for seed 382629174's 6e-4 gap.
    tol = 1e-5 if regime == "low-rank" else 1e-10
    assert _percent_err(got, want) < tol, (got, want)


def test_component_count_matches_reference(rng, x64):
    for regime in ("low-rank", "fewshot-wide"):  # k below 32: rank 5 and 20; N - 1 = 29
        feats, y = regimes.make(regime, rng, size="tiny")
        got = kernel_values(NAME, feats, y, pad=3, field="n_components")[NAME]
        want = [
            ref.principal_components(np.float64(x), ref.N_DIMS).shape[1] for x in feats.values()
        ]
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("regime", ["collapsed", "chance", "huge-scale", "tiny-scale"])
def test_float32_matches_reference(regime, rng):
    # Measured worst (10 seeds): 8.5e-7 relative, 1.8e-5 absolute at chance (PARC ~ 0);
    # PARC ranks 80k dissimilarities that float32 resolves to ~1e-7. Nearly equal
    # eigenvalues rotate the float32 components by ~eps * s_0 / (s_i - s_j) (PARC
    # standardises each one, so it depends on the vectors, not just the subspace): seed
    # 382629174 (two of the top 32 within 6e-4) gave 1.1e-4 with an eigh of the formed
    # scatter, 1.6e-7 with the SVD used now. The scaled regimes check that no 1e18 or
    # 1e-20 square is formed.
    feats, y = regimes.make(regime, rng, size="tiny")
    got = kernel_values(NAME, feats, y, dtype=np.float32, pad=3)[NAME]
    assert _percent_err(got, reference_values(NAME, feats, y)) < 1e-4


def test_ranking_follows_class_separation(rng, x64):
    # Separations 0.4, 1.1, 2.5, 6.0: PARC about 11, 28, 32, 33 (the last two can come
    # within 0.2 of each other, in either order): the kernel must order the models as
    # the reference does, and the weakest model must be far below the others.
    feats, y = regimes.make("collapsed", rng, size="tiny")
    got = kernel_values(NAME, feats, y, pad=3)[NAME]
    want = reference_values(NAME, feats, y)
    assert np.min(np.diff(np.sort(want))) > 1e-9, want  # distinct: the order is defined
    np.testing.assert_array_equal(np.argsort(got), np.argsort(want))
    assert want[1:].min() - want[0] > 5 and got[1:].min() - got[0] > 5, (got, want)


def test_subsample_for_the_driver(rng, x64):
    # The driver scores the rows of sample_rows(labels) when N exceeds the cap: the same
    # seeded, stratified sample as the reference's, which scores the sampled rows.
    feats, y = regimes.make("binary", rng, size="tiny")
    assert kernel.sample_rows(y) is None  # 400 <= 15000: every row
    rows = kernel.sample_rows(y, max_samples=150)
    assert 140 <= rows.size <= 160
    sampled = {m: x[rows] for m, x in feats.items()}
    got = kernel_values(NAME, sampled, y[rows], pad=3)[NAME]
    want = [ref.parc(np.float64(x), y, max_samples=150) for x in feats.values()]
    assert _percent_err(got, np.array(want)) < 1e-12, (got, want)


def test_refuses_more_rows_than_the_reference_scores():
    stats = ModelStats(jnp.zeros((ref.MAX_SAMPLES + 1, 2)), 2, None, None)
    with pytest.raises(ValueError, match="sample_rows"):
        kernel.parc(stats)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the reference's mean of no columns
def test_constant_features_give_nan(rng, x64):
    # No direction of non-zero variance: the reference divides 0 by 0 (NaN); the kernel
    # must say NaN too, and leave the other model of the batch alone.
    feats, y = regimes.make("binary", rng, size="tiny")
    x = next(iter(feats.values()))
    zoo = {"constant": np.ones_like(x) * 3.0, "real": x}
    got = kernel_values(NAME, zoo, y, pad=3)[NAME]
    want = reference_values(NAME, zoo, y)
    assert np.isnan(want[0]) and np.isnan(got[0])
    assert _percent_err(got[1:], want[1:]) < 1e-12
