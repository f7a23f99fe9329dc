"""SFDA's float64 reference: independent re-computations and invariances.

The Fisher steps are checked against scikit-learn's shrinkage LDA (``solver="lsqr"``,
the same regularised covariance ``(1 - t) Sw + t tr(Sw)/D I``), the shrinkage rule against
an explicit matrix power, and the score against a step-by-step re-computation.
"""

from __future__ import annotations

import numpy as np
import pytest

from ncti_jax.reference import sfda as ref

pytest.importorskip("sklearn")
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis


def blobs(rng, n=240, d=20, n_classes=4, separation=1.0, scale=1.0):
    y = np.concatenate([np.arange(n_classes), rng.integers(0, n_classes, n - n_classes)])
    centres = separation * rng.normal(size=(n_classes, d))
    return scale * (rng.normal(size=(n, d)) + centres[y]), y


def sklearn_fisher(x, y, shrinkage):
    lda = LinearDiscriminantAnalysis(solver="lsqr", shrinkage=shrinkage).fit(x, y)
    return lda.predict_proba(x)


def brute_force_sfda(x, y):
    """SFDA step by step from the paper's description, with scikit-learn's LDA."""
    n_classes = y.max() + 1
    n = len(y)
    sw = sum(np.mean(y == c) * np.cov(x[y == c].T, bias=True) for c in range(n_classes))
    v = np.linalg.matrix_power(sw, 6) @ np.ones(x.shape[1])
    rho = np.linalg.norm(sw @ v) / np.linalg.norm(v)
    t = max(np.exp(-5 * rho), 1e-10)
    q = np.exp(sklearn_fisher(x, y, t))
    q /= q.sum(axis=1, keepdims=True)
    mixed = x.copy()
    for c in range(n_classes):
        others = np.mean([x[y == k].mean(axis=0) for k in range(n_classes) if k != c], axis=0)
        rows = y == c
        mixed[rows] = q[rows, c][:, None] * x[rows] + (1 - q[rows, c])[:, None] * others
    return np.mean(sklearn_fisher(mixed, y, t)[np.arange(n), y])


@pytest.mark.parametrize("scale", [0.05, 0.4, 3.0])  # shrinkage from ~1 down to the floor
def test_fisher_step_is_shrinkage_lda(rng, scale):
    x, y = blobs(rng, scale=scale)
    p, t = ref.fisher_probabilities(x, y, 4)
    assert 1e-10 <= t <= 1
    np.testing.assert_allclose(p, sklearn_fisher(x, y, t), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize(("scale", "n_classes"), [(0.1, 3), (0.5, 6), (2.0, 2)])
def test_matches_brute_force(rng, scale, n_classes):
    x, y = blobs(rng, n=200, d=16, n_classes=n_classes, scale=scale)
    np.testing.assert_allclose(ref.sfda(x, y), brute_force_sfda(x, y), rtol=1e-9)


def test_power_iteration_estimate(rng):
    a = rng.normal(size=(12, 12))
    a = a @ a.T
    exact = np.linalg.eigvalsh(a)[-1]
    assert ref.largest_eigenvalue_estimate(a, None) == pytest.approx(exact, rel=1e-12)
    assert ref.largest_eigenvalue_estimate(a, 200) == pytest.approx(exact, rel=1e-6)
    assert ref.largest_eigenvalue_estimate(a, 3) <= exact * (1 + 1e-12)  # a Rayleigh-type bound


def test_labels_permuted_and_renamed(rng):
    x, y = blobs(rng, n_classes=5, scale=0.3)
    perm = rng.permutation(5)
    names = np.array(["fox", "cat", "dog", "emu", "yak"])[perm[y]]
    order = rng.permutation(len(y))
    base = ref.sfda(x, y)
    np.testing.assert_allclose(ref.sfda(x, names), base, rtol=1e-10)
    np.testing.assert_allclose(ref.sfda(x[order], y[order]), base, rtol=1e-10)
    np.testing.assert_allclose(ref.sfda(x, np.array([3, 8, 10, 42, 99])[y]), base, rtol=1e-10)


@pytest.mark.parametrize("scale", [0.05, 0.5])
def test_zero_padded_columns_with_true_dim(rng, scale):
    x, y = blobs(rng, d=12, scale=scale)
    padded = np.hstack([x, np.zeros((len(y), 20))])
    base = ref.sfda(x, y)
    np.testing.assert_allclose(ref.sfda(padded, y, dim=12), base, rtol=1e-10)
    # Without the true width, tr(Sw)/D shrinks: the score moves (while shrinkage matters).
    if scale == 0.05:
        assert abs(ref.sfda(padded, y) - base) > 1e-6


def test_more_separation_scores_higher(rng):
    x0 = rng.normal(size=(300, 10))
    y = rng.integers(0, 3, 300)
    centres = rng.normal(size=(3, 10))
    scores = [ref.sfda(x0 + s * centres[y], y) for s in (0.0, 0.5, 1.0, 2.0, 4.0)]
    assert np.all(np.diff(scores) > 0), scores
    assert scores[0] < 0.5 and scores[-1] > 0.95


def test_does_not_modify_input(rng):
    x, y = blobs(rng)
    before = x.copy()
    ref.sfda(x, y)
    np.testing.assert_array_equal(x, before)


def test_one_class_rejected(rng):
    with pytest.raises(ValueError, match="two classes"):
        ref.sfda(rng.normal(size=(10, 3)), np.zeros(10))
