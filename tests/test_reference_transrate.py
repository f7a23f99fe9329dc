"""The TransRate reference against its rate-distortion terms computed directly.

The reference codes blocks through their singular values; here the coding rates are
``slogdet`` of the ``D x D`` (and, by Sylvester's identity, the ``n x n``) matrices.
"""

from __future__ import annotations

import numpy as np
import pytest

# The module's names, not the package's: ncti_jax.reference may re-export them.
from ncti_jax.reference.transrate import coding_rate, transrate


def clustered(rng, n, d, n_classes, separation=1.0):
    y = rng.permutation(np.arange(n) % n_classes)
    return rng.normal(size=(n, d)) + separation * rng.normal(size=(n_classes, d))[y], y


def rate_dxd(a, eps):
    n, d = a.shape
    sign, logdet = np.linalg.slogdet(np.eye(d) + a.T @ a / (n * eps))
    assert sign > 0
    return 0.5 * logdet


def rate_nxn(a, eps):
    n = a.shape[0]
    sign, logdet = np.linalg.slogdet(np.eye(n) + a @ a.T / (n * eps))
    assert sign > 0
    return 0.5 * logdet


def direct_transrate(x, y, eps):
    z = x - x.mean(axis=0)
    classes = np.unique(y)
    return rate_dxd(z, eps) - np.mean([rate_dxd(z[y == c], eps) for c in classes])


@pytest.mark.parametrize(("n", "d"), [(50, 8), (20, 40), (120, 120)])
@pytest.mark.parametrize("eps", [1e-4, 1e-1, 10.0])
def test_coding_rate_is_the_log_determinant(rng, n, d, eps):
    a = rng.normal(size=(n, d)) * rng.uniform(0.1, 3.0)
    got = coding_rate(a, eps)
    np.testing.assert_allclose(got, rate_dxd(a, eps), rtol=1e-10)
    np.testing.assert_allclose(got, rate_nxn(a, eps), rtol=1e-10)


def test_coding_rate_of_known_spectra():
    """An orthogonal block with singular values s: 1/2 sum log(1 + s^2 / (n eps))."""
    a = np.zeros((4, 6))
    a[0, 0], a[1, 3], a[2, 5] = 2.0, 0.5, 3.0
    expected = 0.5 * np.sum(np.log1p(np.array([4.0, 0.25, 9.0]) / (4 * 1e-2)))
    np.testing.assert_allclose(coding_rate(a, 1e-2), expected, rtol=1e-14)
    assert coding_rate(np.zeros((5, 3))) == 0.0
    assert coding_rate(np.zeros((0, 3))) == 0.0


@pytest.mark.parametrize(("n", "d", "n_classes"), [(90, 6, 3), (200, 30, 10), (40, 64, 4)])
def test_transrate_matches_direct_terms(rng, n, d, n_classes):
    x, y = clustered(rng, n, d, n_classes)
    for eps in (1e-4, 1e-2):
        np.testing.assert_allclose(
            transrate(x, y, eps=eps), direct_transrate(x, y, eps), rtol=1e-10
        )


def test_invariant_to_a_shift_and_to_rotations(rng):
    x, y = clustered(rng, 150, 10, 4)
    base = transrate(x, y)
    q, _ = np.linalg.qr(rng.normal(size=(10, 10)))
    np.testing.assert_allclose(transrate(x + 5.0, y), base, rtol=1e-10)
    np.testing.assert_allclose(transrate(x @ q, y), base, rtol=1e-10)


def test_labels_and_samples_renamed_and_permuted(rng):
    x, y = clustered(rng, 150, 10, 4)
    base = transrate(x, y)
    np.testing.assert_allclose(transrate(x, np.array(list("pqrs"))[::-1][y]), base, rtol=1e-12)
    order = rng.permutation(150)
    np.testing.assert_allclose(transrate(x[order], 3 * y[order] - 7), base, rtol=1e-10)


@pytest.mark.parametrize(("n", "d", "pad"), [(200, 20, 40), (30, 50, 70)])
def test_zero_padded_columns(rng, n, d, pad):
    x, y = clustered(rng, n, d, 3)
    padded = np.hstack([x, np.zeros((n, pad))])
    np.testing.assert_allclose(transrate(padded, y), transrate(x, y), rtol=1e-10)


@pytest.mark.parametrize("n_classes", [3, 5, 8])
def test_more_separable_classes_score_higher(rng, n_classes):
    y = rng.permutation(np.arange(600) % n_classes)
    centres, noise = rng.normal(size=(n_classes, 16)), rng.normal(size=(600, 16))
    values = [transrate(noise + s * centres[y], y) for s in (0.0, 0.5, 1.0, 2.0, 4.0)]
    assert np.all(np.diff(values) > 0), values


def test_two_classes_do_not_reward_separation(rng):
    """The documented quirk: class blocks coded around the global mean. With two balanced
    classes at +-m, separating them raises R(Z) and both R(Z_c) alike."""
    y = np.arange(600) % 2
    m, noise = rng.normal(size=16), rng.normal(size=(600, 16))
    signs = np.where(y == 0, 1.0, -1.0)[:, None]
    values = [transrate(noise + s * signs * m, y) for s in (0.5, 1.0, 2.0, 4.0)]
    assert max(values) - min(values) < 0.1 * abs(values[0]) + 0.05, values


def test_shuffled_labels_score_lower(rng):
    x, y = clustered(rng, 400, 8, 4, separation=2.0)
    shuffled = rng.permutation(y)
    # Over 300 seeds: the true labels score at least 5.7 times and 0.74 above the shuffled.
    true, chance = transrate(x, y), transrate(x, shuffled)
    assert true > 3 * chance and true > chance + 0.5, (true, chance)
