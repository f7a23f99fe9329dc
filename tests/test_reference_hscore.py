"""The H-score references against explicit covariance formulas and constructed cases.

The explicit formulas here form the covariances and invert them (``pinv``/``solve``), the
references take an SVD of the data; the shrinkage is checked against scikit-learn's
Ledoit-Wolf estimator where scikit-learn is installed.
"""

from __future__ import annotations

import numpy as np
import pytest

# The module's names, not the package's: ncti_jax.reference may re-export them.
from ncti_jax.reference.hscore import h_score, ledoit_wolf_shrinkage, shrinkage_h_score


def clustered(rng, n, d, n_classes, separation=1.0):
    y = rng.permutation(np.arange(n) % n_classes)
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) / np.sqrt(d)
    return x + separation * rng.normal(size=(n_classes, d))[y], y


def between_covariance(x, y):
    """cov(E[f|y]) / (N - 1) normalisation: each sample replaced by its class mean."""
    means = np.stack([x[y == c].mean(axis=0) for c in range(y.max() + 1)])
    return np.cov(means[y], rowvar=False)


def explicit_h_score(x, y):
    return np.trace(np.linalg.pinv(np.cov(x, rowvar=False)) @ between_covariance(x, y))


def explicit_shrinkage_h_score(x, y, a):
    d = x.shape[1]
    s = np.cov(x, rowvar=False, bias=True)
    shrunk = (1 - a) * s + a * np.trace(s) / d * np.eye(d)
    return (1 - a) * np.trace(np.linalg.solve(shrunk, between_covariance(x, y)))


@pytest.mark.parametrize(("n", "d", "n_classes"), [(100, 5, 3), (300, 30, 7), (80, 60, 2)])
def test_h_score_matches_the_explicit_formula(rng, n, d, n_classes):
    x, y = clustered(rng, n, d, n_classes)
    np.testing.assert_allclose(h_score(x, y), explicit_h_score(x, y), rtol=1e-8)


def test_one_hot_features_give_c_minus_one(rng):
    """Features that are the labels' one-hot codes: the between-class covariance is the
    whole covariance, of rank C - 1."""
    for n_classes in (2, 5, 12):
        y = rng.permutation(np.arange(200) % n_classes)
        onehot = np.eye(n_classes)[y]
        np.testing.assert_allclose(h_score(onehot, y), n_classes - 1, rtol=1e-12)
        scaled = 3.0 * onehot @ rng.normal(size=(n_classes, n_classes + 4)) + 1.5
        np.testing.assert_allclose(h_score(scaled, y), n_classes - 1, rtol=1e-9)


def test_fewer_samples_than_dimensions_saturate(rng):
    """N <= D, generic features: they span every centred labelling, so H = C - 1."""
    x, y = clustered(rng, 40, 90, 6)
    np.testing.assert_allclose(h_score(x, y), 5.0, rtol=1e-10)


def test_uninformative_features_score_near_zero(rng):
    x = rng.normal(size=(4000, 6))
    y = rng.integers(0, 3, 4000)
    assert h_score(x, y) < 0.05  # ~ (C - 1) D / N under independence


@pytest.mark.parametrize("score", [h_score, shrinkage_h_score])
def test_more_separable_classes_score_higher(rng, score):
    y = rng.permutation(np.arange(300) % 4)
    centres, noise = rng.normal(size=(4, 20)), rng.normal(size=(300, 20))
    values = [score(noise + s * centres[y], y) for s in (0.0, 0.5, 1.0, 2.0, 4.0)]
    assert np.all(np.diff(values) > 0), values


@pytest.mark.parametrize("score", [h_score, shrinkage_h_score])
def test_labels_and_samples_renamed_and_permuted(rng, score):
    x, y = clustered(rng, 150, 12, 4)
    base = score(x, y)
    np.testing.assert_allclose(score(x, np.array(list("wxyz"))[::-1][y]), base, rtol=1e-12)
    order = rng.permutation(150)
    np.testing.assert_allclose(score(x[order], 10 * y[order] + 1), base, rtol=1e-10)


def test_shrinkage_matches_scikit_learn(rng):
    covariance = pytest.importorskip("sklearn.covariance")
    for n, d in ((50, 10), (200, 40), (30, 80)):
        x, _ = clustered(rng, n, d, 2)
        expected = covariance.ledoit_wolf_shrinkage(x - x.mean(axis=0))
        np.testing.assert_allclose(ledoit_wolf_shrinkage(x), expected, rtol=1e-10)


@pytest.mark.parametrize(("n", "d"), [(200, 10), (60, 40)])
def test_shrinkage_h_score_matches_the_explicit_formula(rng, n, d):
    x, y = clustered(rng, n, d, 4)
    a = ledoit_wolf_shrinkage(x)
    assert 0.0 < a < 1.0
    np.testing.assert_allclose(
        shrinkage_h_score(x, y), explicit_shrinkage_h_score(x, y, a), rtol=1e-9
    )
    for fixed in (0.01, 0.3, 0.9):
        np.testing.assert_allclose(
            shrinkage_h_score(x, y, shrinkage=fixed),
            explicit_shrinkage_h_score(x, y, fixed),
            rtol=1e-9,
        )


def test_no_shrinkage_is_the_h_score_up_to_n_over_n_minus_one(rng):
    """The originals' normalisations (N for the covariance, N - 1 for the between-class
    part): at zero shrinkage the score is N / (N - 1) H, and it tends there continuously."""
    n = 120
    x, y = clustered(rng, n, 15, 5)
    limit = n / (n - 1) * h_score(x, y)
    np.testing.assert_allclose(shrinkage_h_score(x, y, shrinkage=0.0), limit, rtol=1e-10)
    gaps = [abs(shrinkage_h_score(x, y, shrinkage=a) - limit) for a in (1e-2, 1e-4, 1e-6)]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-4 * limit


def test_full_shrinkage_scores_zero(rng):
    x, y = clustered(rng, 50, 8, 3)
    assert shrinkage_h_score(x, y, shrinkage=1.0) == 0.0


@pytest.mark.parametrize(("n", "d", "pad"), [(200, 20, 30), (40, 60, 50)])
def test_zero_padded_columns(rng, n, d, pad):
    x, y = clustered(rng, n, d, 3)
    padded = np.hstack([x, np.zeros((n, pad))])
    np.testing.assert_allclose(h_score(padded, y), h_score(x, y), rtol=1e-10)
    unpadded = shrinkage_h_score(x, y)
    np.testing.assert_allclose(shrinkage_h_score(padded, y, n_cols=d), unpadded, rtol=1e-10)
    np.testing.assert_allclose(
        ledoit_wolf_shrinkage(padded, n_cols=d), ledoit_wolf_shrinkage(x), rtol=1e-10
    )
    # Without the true width the shrinkage sees D + pad columns: a different score.
    assert abs(shrinkage_h_score(padded, y) - unpadded) > 1e-6 * abs(unpadded)


def test_one_feature(rng):
    """D = 1: the covariance is a multiple of the identity, the shrinkage is 0 (as in
    scikit-learn), and the score is N / (N - 1) times the (one-dimensional) H-score."""
    x, y = clustered(rng, 90, 1, 3)
    assert ledoit_wolf_shrinkage(x) == 0.0
    np.testing.assert_allclose(shrinkage_h_score(x, y), 90 / 89 * h_score(x, y), rtol=1e-12)
