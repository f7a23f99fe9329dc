"""NLEEP's kernel against its float64 reference on every regime, and how much NLEEP
depends on its seed.

The kernel takes the reference's k-means++ draws for the same seed
(:func:`ncti_jax.metrics.nleep.seeding_draws`), so the registered reference (seed 0) is
the oracle as it is for every other metric; the reference's ``init_indices`` hands it
the kernel's start where the two seedings may part (float32 distances).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from metric_parity import kernel_values, reference_values
from threadpoolctl import threadpool_limits

from ncti_jax import regimes
from ncti_jax.metrics import nleep as kernel
from ncti_jax.reference import nleep as ref


@pytest.fixture(autouse=True)
def one_blas_thread():
    """Tiny matrices: threaded BLAS only adds contention on a shared machine."""
    with threadpool_limits(1):
        yield


def close(got, want, rtol: float, atol: float) -> bool:
    """``|got - want| <= rtol |want| + atol`` for every model; NaN only where the other is.

    ``atol``: well separated models score ``log p ~ -1e-17``, zero up to the rounding of
    ``log`` near 1, where no relative tolerance is meaningful.
    """
    nan = np.isnan(want)
    if not np.array_equal(np.isnan(got), nan):
        return False
    return bool(np.all(np.abs(got[~nan] - want[~nan]) <= rtol * np.abs(want[~nan]) + atol))


BATCH = 5  # the most models a tiny regime has


def batched(feats, y, *, dtype=np.float64) -> np.ndarray:
    """The kernel on the zoo as a batch of ``BATCH`` models (its own, then its first ones
    again), zero-padded to the widest plus 3 columns, so every zoo of one N, width and C
    shares one compilation (compiling dominates this file's time). A model's copy must
    score as the model does: in a batch each model's loops stop at its own step."""
    names = list(feats)
    again = {f"{names[i % len(names)]}#{i}": feats[names[i % len(names)]] for i in range(BATCH)}
    zoo = {**feats, **dict(list(again.items())[: BATCH - len(names)])}
    got = kernel_values("nleep", zoo, y, dtype=dtype, pad=3)["nleep"]
    copies = np.resize(got[: len(names)], BATCH)[len(names) :]
    np.testing.assert_allclose(got[len(names) :], copies, rtol=1e-12, atol=1e-15)
    return got[: len(names)]


def reference_or_nan(feats, y) -> np.ndarray:
    """The reference per model, NaN where its Cholesky fails (covariances not positive
    definite: features ~1e18, where ``reg_covar = 1e-6`` is below their rounding)."""
    out = []
    for x in feats.values():
        try:
            out.append(ref.nleep(np.asarray(x, np.float64), y))
        except np.linalg.LinAlgError:
            out.append(np.nan)
    return np.array(out)


# Known: on some long-tailed seeds (60 classes, 5C = 300 components on 400 samples) the
# kernel and the reference part (seed 1509747938: -0.1467 vs -0.1506, the second model
# equal); the cause (a k-means or EM tie?) is not found yet. Not strict: most seeds agree.
_PARTS = pytest.mark.xfail(reason="NLEEP parts from the reference on some long-tailed seeds")
REGIMES = [pytest.param(r, marks=_PARTS) if r == "longtail" else r for r in sorted(regimes.REGIMES)]


@pytest.mark.parametrize("regime", REGIMES)
def test_float64_matches_reference(regime, rng, x64):
    feats, y = regimes.make(regime, rng, size="tiny")
    got = batched(feats, y)
    want = reference_or_nan(feats, y)
    # Features ~1e18: a component with fewer points than directions has a covariance
    # singular to rounding (``reg_covar`` is far below it): the reference raises, the
    # kernel's Cholesky gives NaN, for the same models (most, often all); where the
    # reference gets through, so does the kernel, to the same value. ``close`` checks both.
    assert regime == "huge-scale" or np.isfinite(want).all(), want
    # The same seeding, k-means and EM steps: rounding apart, measured <= 6e-13 relative
    # (massive; 1e-14 elsewhere), <= 4e-17 absolute on values ~0.
    assert close(got, want, 1e-8, 1e-14), (got, want, got - want)


def test_a_float32_run_scores_nleep_in_float64(rng):
    """The engine computes NLEEP in float64 whatever the run's dtype (``Metric.dtype``): in
    float32 its EM cannot resolve ``reg_covar`` and gave NaN for 3 of the 5 "massive" models
    (and 1e-2 errors elsewhere, silently). A float32 run matches the float64 reference."""
    import warnings

    import ncti_jax

    feats, y = regimes.make("massive", rng, size="tiny")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = ncti_jax.score_metrics(feats, y, metrics="nleep")  # dtype: float32
    assert close(result["nleep"].values, reference_values("nleep", feats, y), 1e-8, 1e-14)


@pytest.mark.parametrize("n_clusters", [30])
def test_seeding_is_the_references(rng, x64, n_clusters):
    """For any seed, each of the kernel's k-means++ picks is the reference's choice from
    the same state: one of the candidates the reference's draws give, with the least
    potential up to rounding. (Candidates whose potentials tie to the last bits, common
    late in seeding 60 points into 30 clusters, are ordered by rounding, so the kernel
    and the reference may take different ones of a tie, in about 1 seed in 10; from
    there each is checked against the state it reached.)"""
    z = rng.normal(size=(60, 3)) * rng.uniform(0.1, 3.0, 3)
    seed = int(rng.integers(1 << 31))
    first, draws = kernel.seeding_draws(seed, 60, n_clusters)
    got = np.asarray(kernel.kmeans_plusplus(jnp.asarray(z), first, draws))
    assert got[0] == first and len(set(got.tolist())) == n_clusters
    closest = ref._sq_distances(z, z[first][None])[:, 0]
    tied = False
    for pick, u in zip(got[1:], draws, strict=True):
        candidates = np.minimum(np.searchsorted(np.cumsum(closest), u * closest.sum()), 59)
        assert pick in candidates, (pick, candidates)
        cand = np.minimum(closest[None, :], ref._sq_distances(z, z[candidates]).T)
        potentials = cand.sum(axis=1)
        chosen = potentials[list(candidates).index(pick)]
        assert chosen <= potentials.min() * (1 + 1e-12), (chosen, potentials)
        near = np.abs(potentials - potentials.min()) <= 1e-12 * potentials.min()
        tied |= len(set(candidates[near].tolist())) > 1
        closest = cand[list(candidates).index(pick)]
    if not tied:  # no tie anywhere: the very centres of the reference
        want = ref.kmeans_plusplus(z, n_clusters, np.random.default_rng(seed))
        np.testing.assert_array_equal(z[got], want)


def test_values_rank_separation(rng, x64):
    """More separated classes score higher (chance -> -log 2, full separation -> 0)."""
    feats, y = regimes.make("binary", rng, size="tiny")
    got = batched(feats, y)
    assert got[0] < got[1] < got[2] + 1e-12, got
    assert got[0] < -0.3 and got[2] > -1e-9, got
