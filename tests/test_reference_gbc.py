"""GBC reference: the Bhattacharyya distance from its full-covariance formula, closed-form
cases, invariances (labels, rotation, zero padding) and monotonicity.

Independent checks of :mod:`ncti_jax.reference.gbc` (the parity with google-research's
``gbc.py`` is measured outside the repository; see the module docstring).
"""

from __future__ import annotations

import numpy as np
import pytest

from ncti_jax.reference.gbc import VARIANCE_FLOOR, gbc


def bhattacharyya_full(mu1, cov1, mu2, cov2):
    """Bhattacharyya distance between N(mu1, cov1) and N(mu2, cov2), the textbook formula."""
    cov = (cov1 + cov2) / 2
    d = mu1 - mu2
    _, logdet = np.linalg.slogdet(cov)
    _, logdet1 = np.linalg.slogdet(cov1)
    _, logdet2 = np.linalg.slogdet(cov2)
    return d @ np.linalg.solve(cov, d) / 8 + 0.5 * (logdet - 0.5 * (logdet1 + logdet2))


def gbc_loops(x, y, gaussian_type, variant):
    """GBC over ordered class pairs, each Gaussian as an explicit covariance matrix."""
    classes = sorted(set(y.tolist()))
    k = x.shape[1]
    stats = {}
    for c in classes:
        xc = x[y == c]
        var = np.maximum(np.var(xc, axis=0), VARIANCE_FLOOR)
        stats[c] = (
            xc.mean(axis=0),
            np.diag(var) if gaussian_type == "diagonal" else np.eye(k) * var.mean(),
        )
    total = 0.0
    for a in classes:
        for b in classes:
            if a == b:
                continue
            (mu1, cov1), (mu2, cov2) = stats[a], stats[b]
            dist = bhattacharyya_full(mu1, cov1, mu2, cov2)
            if gaussian_type == "spherical" and variant == "repository":
                # The original takes the spherical log-determinant term once, not K times.
                s1, s2 = cov1[0, 0], cov2[0, 0]
                dist -= 0.5 * (k - 1) * (np.log((s1 + s2) / 2) - 0.5 * (np.log(s1) + np.log(s2)))
            total += np.exp(-dist)
    return -total


def gaussian_classes(rng, n, d, n_classes, spread=0.5):
    y = rng.permutation(np.arange(n) % n_classes)
    centres = rng.normal(size=(n_classes, d)) * spread
    scales = rng.uniform(0.5, 1.5, size=(n_classes, 1)) * rng.uniform(0.02, 1.0, size=d)
    return centres[y] + rng.normal(size=(n, d)) * scales[y], y


@pytest.mark.parametrize("gaussian_type", ["spherical", "diagonal"])
@pytest.mark.parametrize("variant", ["repository", "exact"])
def test_matches_full_covariance_formula(rng, gaussian_type, variant):
    x, y = gaussian_classes(rng, 240, 12, 4)
    x[:, 3] *= 1e-3  # some variances under the 1e-4 floor
    got = gbc(x, y, gaussian_type=gaussian_type, pca_components=None, variant=variant)
    np.testing.assert_allclose(got, gbc_loops(x, y, gaussian_type, variant), rtol=1e-10)


def test_identical_classes_give_minus_c_times_c_minus_1(rng):
    base = rng.normal(size=(30, 10)) * rng.uniform(0.1, 2.0, size=10)
    n_classes = 4
    x = np.tile(base, (n_classes, 1))  # every class has exactly the same samples
    y = np.repeat(np.arange(n_classes), 30)
    for gaussian_type in ("spherical", "diagonal"):
        for pca_components in (None, 64, 5):
            got = gbc(x, y, gaussian_type=gaussian_type, pca_components=pca_components)
            np.testing.assert_allclose(got, -n_classes * (n_classes - 1), rtol=1e-12)


def test_far_apart_classes_give_zero(rng):
    x, y = gaussian_classes(rng, 200, 8, 5, spread=1e3)
    for gaussian_type in ("spherical", "diagonal"):
        got = gbc(x, y, gaussian_type=gaussian_type)
        assert -1e-12 <= got <= 0


@pytest.mark.parametrize("gaussian_type", ["spherical", "diagonal"])
def test_increases_with_separation(rng, gaussian_type):
    n, d, n_classes = 300, 16, 6
    y = rng.permutation(np.arange(n) % n_classes)
    centres = rng.normal(size=(n_classes, d))
    noise = rng.normal(size=(n, d))
    scores = [
        gbc(t * centres[y] + noise, y, gaussian_type=gaussian_type) for t in (0.0, 0.3, 1.0, 3.0)
    ]
    assert np.all(np.diff(scores) > 0)
    assert -n_classes * (n_classes - 1) <= scores[0]


def test_label_and_row_permutation_invariance(rng):
    x, y = gaussian_classes(rng, 150, 20, 5)
    names = np.array(["a", "b", "c", "d", "e"])[rng.permutation(5)]
    rows = rng.permutation(150)
    for gaussian_type in ("spherical", "diagonal"):
        base = gbc(x, y, gaussian_type=gaussian_type)
        np.testing.assert_allclose(
            gbc(x[rows], names[y][rows], gaussian_type=gaussian_type), base, rtol=1e-10
        )


def test_spherical_is_rotation_invariant_and_pca_is_a_rotation(rng):
    # With every class variance above the floor, spherical GBC depends only on distances
    # and traces: an orthogonal map leaves it unchanged, and so does a full-rank PCA.
    x, y = gaussian_classes(rng, 300, 10, 4)
    x = x + rng.normal(size=x.shape) * 0.2
    q, _ = np.linalg.qr(rng.normal(size=(10, 10)))
    raw = gbc(x, y, pca_components=None)
    np.testing.assert_allclose(gbc(x @ q, y, pca_components=None), raw, rtol=1e-10)
    np.testing.assert_allclose(gbc(x, y), raw, rtol=1e-10)  # PCA 64 keeps all 10 directions


def test_zero_padding(rng):
    x, y = gaussian_classes(rng, 200, 24, 5)
    padded = np.hstack([x, np.zeros((200, 40))])
    for gaussian_type in ("spherical", "diagonal"):
        for variant in ("repository", "exact"):
            kw = dict(gaussian_type=gaussian_type, variant=variant)
            np.testing.assert_allclose(gbc(padded, y, **kw), gbc(x, y, **kw), rtol=1e-9)
    # Raw diagonal: a padded column adds exactly 0 to every distance.
    kw = dict(gaussian_type="diagonal", pca_components=None)
    np.testing.assert_allclose(gbc(padded, y, **kw), gbc(x, y, **kw), rtol=1e-12)
    # Raw spherical: the padded columns' floored variances enter the mean; true_dim restores it.
    kw = dict(gaussian_type="spherical", pca_components=None)
    assert not np.isclose(gbc(padded, y, **kw), gbc(x, y, **kw), rtol=1e-6)
    np.testing.assert_allclose(gbc(padded, y, true_dim=24, **kw), gbc(x, y, **kw), rtol=1e-15)


def test_pca_reduces_to_the_top_directions(rng):
    # Signal in 3 directions, 60 more directions of small noise: PCA 3 keeps the signal.
    x, y = gaussian_classes(rng, 300, 3, 4, spread=3.0)
    x = x + rng.normal(size=x.shape) * 0.2  # class variances well above the floor
    q, _ = np.linalg.qr(rng.normal(size=(63, 3)))
    embedded = x @ q.T + rng.normal(size=(300, 63)) * 1e-9
    np.testing.assert_allclose(
        gbc(embedded, y, pca_components=3), gbc(x, y, pca_components=None), rtol=1e-6
    )


def test_bad_options(rng):
    x, y = gaussian_classes(rng, 40, 4, 2)
    with pytest.raises(ValueError, match="gaussian_type"):
        gbc(x, y, gaussian_type="full")
    with pytest.raises(ValueError, match="variant"):
        gbc(x, y, variant="paper")
