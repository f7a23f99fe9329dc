"""The NumPy reference against the authors' pipeline built from scikit-learn.

scikit-learn's exact PCA (``svd_solver="full"``) and LinearDiscriminantAnalysis,
composed as the spec describes; float64; components agree to 1e-7 relative.
"""

from __future__ import annotations

import numpy as np
import pytest

from ncti_jax import reference

import zoos

sklearn = pytest.importorskip("sklearn")
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis  # noqa: E402

RTOL = 1e-7


def sklearn_components(x, y, n_components=64):
    """NCTI's three components the way the authors compute them (exact PCA)."""
    x = np.asarray(x, np.float64)
    k = min(n_components, x.shape[0] - 1, x.shape[1])
    pca = PCA(n_components=k, svd_solver="full")
    z = pca.fit_transform(x)
    shrinkage = max(np.exp(-np.sum(pca.explained_variance_[:32])), 1e-10)
    if shrinkage == 1e-10:
        lda = LinearDiscriminantAnalysis(solver="svd")
    else:
        lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage=float(shrinkage))
    low = lda.fit_transform(z, y)
    low = low - low.mean(axis=0, keepdims=True)
    etf = np.linalg.norm(low, ord="nuc")
    probs = lda.predict_proba(z)
    idx = np.searchsorted(lda.classes_, y)
    ncc = probs[np.arange(len(y)), idx].mean()
    vc = np.log(sum(np.linalg.norm(probs[y == c], ord="nuc") for c in lda.classes_))
    return np.array([etf, ncc, vc]), ("svd" if shrinkage == 1e-10 else "eigen")


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
