"""PARC reference: a pair-by-pair re-computation with scipy's Spearman, the exact PCA
against scikit-learn's, the closed-form maximum, invariances, zero padding and the
seeded, stratified subsample.

Independent checks of :mod:`ncti_jax.reference.parc` (the parity with the SFDA/NCTI
``metrics.py`` is measured outside the repository; see the module docstring).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from ncti_jax.reference.parc import parc, principal_components, stratified_subsample


def clustered(rng, n, d, n_classes, spread=1.0, noise=1.0):
    y = rng.permutation(np.arange(n) % n_classes)
    centres = rng.normal(size=(n_classes, d)) * spread
    return centres[y] + rng.normal(size=(n, d)) * noise * rng.uniform(0.2, 2.0, size=d), y


def parc_pairs(z, y):
    """PARC of already-reduced features, one pair at a time, scipy's Spearman."""
    zs = (z - z.mean(axis=0)) / z.std(axis=0)
    n_classes = len(set(y.tolist()))
    feature, label = [], []
    for i in range(len(y)):
        for j in range(i + 1, len(y)):
            feature.append(1 - np.corrcoef(zs[i], zs[j])[0, 1])
            label.append(0.0 if y[i] == y[j] else n_classes / (n_classes - 1))
    return 100 * scipy.stats.spearmanr(feature, label)[0]


@pytest.mark.parametrize(("n", "d", "n_classes"), [(60, 12, 3), (90, 40, 5)])
def test_matches_pairwise_spearman(rng, n, d, n_classes):
    x, y = clustered(rng, n, d, n_classes, spread=0.7)
    z = principal_components(x, 32)
    np.testing.assert_allclose(parc(x, y), parc_pairs(z, y), rtol=1e-10)


def test_principal_components_match_scikit_learn(rng):
    decomposition = pytest.importorskip("sklearn.decomposition")
    for n, d in ((80, 50), (40, 90)):  # both routes: eigh of the scatter, SVD of the data
        x = rng.normal(size=(n, d)) * rng.uniform(0.1, 3.0, size=d) + rng.normal(size=d)
        k = min(32, n - 1)
        expected = decomposition.PCA(n_components=k, svd_solver="full").fit_transform(x)
        np.testing.assert_allclose(principal_components(x, 32), expected, rtol=1e-7, atol=1e-9)


def test_perfect_separation_gives_the_closed_form_maximum(rng):
    # Samples near their class centre (3 directions, all kept): every same-class pair is
    # more similar than every different-class pair, so the ranks split perfectly and
    # Spearman with the binary label matrix is sqrt(3 n0 n1 / (M^2 - 1)).
    n, n_classes = 80, 4
    x, y = clustered(rng, n, 3, n_classes, spread=1.0, noise=1e-3)
    upper = np.triu_indices(n, 1)
    different = y[upper[0]] != y[upper[1]]
    m, n1 = different.size, int(different.sum())
    n0 = m - n1
    np.testing.assert_allclose(parc(x, y), 100 * np.sqrt(3 * n0 * n1 / (m**2 - 1)), rtol=1e-12)


def test_increases_with_class_structure(rng):
    n, d, n_classes = 150, 6, 4
    y = rng.permutation(np.arange(n) % n_classes)
    centres = rng.normal(size=(n_classes, d))
    noise = rng.normal(size=(n, d))
    scores = [parc(t * centres[y] + noise, y) for t in (0.0, 1.0, 4.0, 100.0)]
    assert np.all(np.diff(scores) > 0)
    assert abs(scores[0]) < 10  # no structure: near 0


def test_label_and_row_permutation_invariance(rng):
    x, y = clustered(rng, 100, 20, 5, spread=0.5)
    base = parc(x, y)
    names = np.array(["ant", "bee", "cow", "doe", "elk"])[rng.permutation(5)]
    rows = rng.permutation(100)
    np.testing.assert_allclose(parc(x[rows], names[y][rows]), base, rtol=1e-10)
    np.testing.assert_allclose(parc(x, 3 * y + 11), base, rtol=1e-12)


def test_zero_padding(rng):
    for d in (20, 48):  # fewer and more columns than the 32 directions kept
        x, y = clustered(rng, 90, d, 4, spread=0.6)
        padded = np.hstack([x, np.zeros((90, 30))])
        np.testing.assert_allclose(parc(padded, y), parc(x, y), rtol=1e-9)
        # ratio <= 1: k = int(D * ratio) needs the model's own D.
        np.testing.assert_allclose(
            parc(padded, y, ratio=0.5, true_dim=d), parc(x, y, ratio=0.5), rtol=1e-9
        )


def test_ratio_sets_the_dimension(rng):
    x, y = clustered(rng, 100, 40, 4, spread=0.6)
    np.testing.assert_allclose(
        parc(x, y, ratio=0.25), parc(principal_components(x, 10), y, ratio=2), rtol=1e-9
    )


def test_subsample_is_seeded_stratified_and_keeps_labels(rng):
    n, n_classes = 400, 4
    x, y = clustered(rng, n, 10, n_classes, spread=0.5)
    y = np.sort(y)  # class blocks: a subsample that ignored the labels would show
    idx = stratified_subsample(y, n_classes, 120, seed=3)
    np.testing.assert_array_equal(np.bincount(y[idx]), np.round(np.bincount(y) * 120 / n))
    assert np.unique(idx).size == idx.size
    got = parc(x, y, max_samples=120, seed=3)
    assert got == parc(x[idx], y[idx])
    assert got == parc(x, y, max_samples=120, seed=3)
    assert got != parc(x, y, max_samples=120, seed=4)
    assert parc(x, y, max_samples=n) == parc(x, y)  # N <= max_samples: no sampling


def test_degenerate_labels_give_nan(rng):
    x = rng.normal(size=(30, 5))
    assert np.isnan(parc(x, np.zeros(30, int)))
    assert np.isnan(parc(x, np.arange(30)))
