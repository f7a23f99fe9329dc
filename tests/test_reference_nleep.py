"""NLEEP's float64 reference: its EM against scikit-learn's GaussianMixture from a
matched initialisation, its k-means and PCA against scikit-learn's, LEEP by brute force,
and the invariances (labels, zero-padded columns, seed)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from ncti_jax.reference import nleep as ref

pytest.importorskip("sklearn")
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture
from threadpoolctl import threadpool_limits


@pytest.fixture(autouse=True)
def one_blas_thread():
    """Tiny matrices: threaded BLAS only adds contention on a shared machine."""
    with threadpool_limits(1):
        yield


def blobs(rng, n=240, d=12, n_classes=3, separation=2.0):
    y = np.concatenate([np.arange(n_classes), rng.integers(0, n_classes, n - n_classes)])
    return rng.normal(size=(n, d)) + separation * rng.normal(size=(n_classes, d))[y], y


def test_pca_matches_sklearn(rng):
    x = rng.normal(size=(150, 30)) @ rng.normal(size=(30, 30))
    z = ref.pca_explained(x)
    skl = PCA(n_components=0.8, svd_solver="full").fit(x)
    assert z.shape[1] == skl.n_components_
    np.testing.assert_allclose(np.abs(z), np.abs(skl.transform(x)), rtol=1e-8, atol=1e-10)


def test_lloyd_matches_sklearn_kmeans(rng):
    z, _ = blobs(rng, n=300, d=4, n_classes=6, separation=1.0)
    centres = ref.kmeans_plusplus(z, 10, rng)
    assert len({tuple(c) for c in centres}) == 10  # distinct data points
    assert all(np.any(np.all(z == c, axis=1)) for c in centres)
    km = KMeans(10, init=centres, n_init=1, algorithm="lloyd").fit(z)
    np.testing.assert_array_equal(ref.lloyd(z, centres), km.labels_)


@pytest.mark.parametrize(("d", "k", "max_iter"), [(3, 6, 100), (5, 10, 100), (4, 8, 3)])
def test_em_matches_sklearn_gaussian_mixture(rng, d, k, max_iter):
    z, _ = blobs(rng, n=300, d=d, n_classes=4, separation=1.5)
    labels0 = rng.integers(0, k, len(z))  # any hard initialisation
    onehot = np.eye(k)[labels0]
    counts = onehot.sum(axis=0)
    means0 = onehot.T @ z / counts[:, None]
    covs0 = [np.cov(z[labels0 == j].T, bias=True) + 1e-6 * np.eye(d) for j in range(k)]
    gm = GaussianMixture(
        k,
        max_iter=max_iter,
        weights_init=counts / len(z),
        means_init=means0,
        precisions_init=np.linalg.inv(np.stack(covs0)),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the max_iter=3 case does not converge
        gm.fit(z)
    got = ref.gaussian_mixture(z, k, init_labels=labels0, max_iter=max_iter)
    assert (got.n_iter, got.converged) == (gm.n_iter_, gm.converged_)
    np.testing.assert_allclose(got.lower_bound, gm.lower_bound_, rtol=1e-9)
    np.testing.assert_allclose(got.weights, gm.weights_, rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(got.means, gm.means_, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(got.covariances, gm.covariances_, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(got.posteriors, gm.predict_proba(z), rtol=1e-6, atol=1e-9)


def brute_force_leep(phi, y):
    n, n_z = phi.shape
    n_classes = y.max() + 1
    joint = np.array([[sum(phi[i, z] for i in range(n) if y[i] == c) / n for z in range(n_z)]
                      for c in range(n_classes)])  # fmt: skip
    cond = joint / joint.sum(axis=0)
    p = np.array([sum(phi[i, z] * cond[y[i], z] for z in range(n_z)) for i in range(n)])
    return np.mean(np.log(p)), np.mean(p)


def test_leep_brute_force_and_jensen(rng):
    y = rng.integers(0, 4, 60)
    phi = rng.dirichlet(np.full(7, 0.5), size=60)
    paper, repo = brute_force_leep(phi, y)
    got_paper = ref.leep_from_posteriors(phi, y, 4, "paper")
    got_repo = ref.leep_from_posteriors(phi, y, 4, "repository")
    np.testing.assert_allclose([got_paper, got_repo], [paper, repo], rtol=1e-12)
    assert got_paper < np.log(got_repo)  # the mean of logs is below the log of the mean


def test_leep_closed_forms(rng):
    y = rng.integers(0, 3, 90)
    priors = np.bincount(y, minlength=3) / 90
    uniform = np.full((90, 5), 0.2)  # uninformative: p(y_i | x_i) = prior of y_i
    np.testing.assert_allclose(
        ref.leep_from_posteriors(uniform, y, 3, "paper"), np.mean(np.log(priors[y])), rtol=1e-12
    )
    aligned = np.eye(6)[2 * y + rng.integers(0, 2, 90)]  # each component inside one class
    assert ref.leep_from_posteriors(aligned, y, 3, "paper") == pytest.approx(0.0, abs=1e-12)
    assert ref.leep_from_posteriors(aligned, y, 3, "repository") == pytest.approx(1.0)
    dead = np.hstack([aligned, np.zeros((90, 1))])  # a component with P(z) = 0: no NaN
    assert ref.leep_from_posteriors(dead, y, 3, "paper") == pytest.approx(0.0, abs=1e-12)


def test_invariances(rng):
    x, y = blobs(rng, n=200, d=10, n_classes=3, separation=1.0)
    seed = int(rng.integers(1 << 31))
    base = ref.nleep(x, y, seed=seed)
    assert ref.nleep(x, y, seed=seed) == base  # seeded: deterministic
    names = np.array(["zebra", "ant", "moth"])[y]
    np.testing.assert_allclose(ref.nleep(x, names, seed=seed), base, rtol=1e-10)
    padded = np.hstack([np.zeros((200, 3)), x, np.zeros((200, 17))])
    np.testing.assert_allclose(ref.nleep(padded, y, seed=seed), base, rtol=1e-8)


def test_more_separation_scores_higher(rng):
    # Class centres at the corners of an equilateral triangle, randomly rotated: the
    # between-class variance is isotropic in their plane, so the 80% PCA keeps the plane.
    angles = 2 * np.pi * np.arange(3) / 3
    triangle = 3.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    rotation, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    centres = np.hstack([triangle, np.zeros((3, 4))]) @ rotation
    y = np.arange(240) % 3
    x0 = rng.normal(size=(240, 6))
    scores = [ref.nleep(x0 + s * centres[y], y, seed=1) for s in (0.0, 1.0, 4.0)]
    assert scores[0] < scores[1] < scores[2], scores
    assert scores[2] > -0.05  # nearly every sample explained
    assert scores[0] < -0.5  # near chance, log(1/3) = -1.10


def test_variant_checked(rng):
    with pytest.raises(ValueError, match="variant"):
        ref.nleep(rng.normal(size=(20, 3)), np.arange(20) % 2, variant="log")
