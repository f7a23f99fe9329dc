"""The NumPy reference against the authors' pipeline built from scikit-learn.

The authors' scikit-learn pipeline (``ncti_jax.benchmarks.authors``, shared with the
benchmarks) with an exact PCA (``svd_solver="full"``); float64; components agree
to 1e-7 relative.
"""

from __future__ import annotations

import numpy as np
import pytest

from ncti_jax import reference

import zoos

pytest.importorskip("sklearn")
from ncti_jax.benchmarks import authors  # the authors' pipeline, as the benchmarks run it

RTOL = 1e-7


def sklearn_components(x, y, n_components=64):
    """NCTI's three components the way the authors compute them, with an exact PCA."""
    k = min(n_components, x.shape[0] - 1, x.shape[1])
    comps = authors.model_components(x, y, k, svd_solver="full")
    return np.array([comps["etf"], comps["ncc"], comps["vc"]]), comps["lda_solver"]


def scaled_to(x, top32_variance):
    """``x`` scaled so that its top-32 explained variances sum to ``top32_variance``."""
    top = np.sort(np.linalg.eigvalsh(np.cov(x.T.astype(np.float64))))[::-1][:32].sum()
    return x * np.sqrt(top32_variance / top)


def assert_matches_sklearn(x, y, n_components=64):
    expected, solver = sklearn_components(x, y, n_components)
    got = reference.model_components(x, y, n_components)
    assert got.solver == solver
    np.testing.assert_allclose([got.etf, got.ncc, got.vc], expected, rtol=RTOL)
    return got


@pytest.mark.parametrize(("n", "n_classes"), [(300, 2), (600, 10), (1500, 100)])
def test_svd_branch(rng, n, n_classes):
    feats, y = zoos.zoo(rng, n=n, n_classes=n_classes, dims=(96, 160))
    for x in feats.values():
        assert assert_matches_sklearn(scaled_to(x, 200.0), y).solver == "svd"


@pytest.mark.parametrize(("n", "n_classes"), [(300, 2), (600, 10), (1500, 100)])
def test_eigen_branch(rng, n, n_classes):
    feats, y = zoos.zoo(rng, n=n, n_classes=n_classes, dims=(96, 160))
    for x in feats.values():
        # Top-32 variances summing below ln(1e10) = 23.03: the shrinkage branch.
        assert assert_matches_sklearn(scaled_to(x, 5.0), y).solver == "eigen"


def test_labels_with_gaps_and_ragged_dims(rng):
    feats, y = zoos.zoo(rng, n=500, n_classes=6, dims=(40, 72, 130))
    gapped = np.array([0, 2, 5, 9, 10, 42])[y]
    for x in feats.values():
        assert_matches_sklearn(x, gapped)
    ref = reference.score_zoo(feats, gapped)
    same = reference.score_zoo(feats, y)
    np.testing.assert_allclose(ref.ncti, same.ncti, rtol=1e-12)


def test_small_n_components(rng):
    feats, y = zoos.zoo(rng, n=200, n_classes=5, dims=(50,))
    assert_matches_sklearn(next(iter(feats.values())), y, n_components=16)
