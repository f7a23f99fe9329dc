"""ETran's float64 reference: energy and LDA parts re-computed by brute force, the Fisher
LDA against scikit-learn's shrinkage LDA, the zoo combination in closed form, and the
padding behaviour of each part."""

from __future__ import annotations

import numpy as np
import pytest

from ncti_jax.reference import etran as ref

pytest.importorskip("sklearn")
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis


def blobs(rng, n=200, d=10, n_classes=4, separation=1.0, scale=1.0):
    y = np.concatenate([np.arange(n_classes), rng.integers(0, n_classes, n - n_classes)])
    centres = separation * rng.normal(size=(n_classes, d))
    return scale * (rng.normal(size=(n, d)) + centres[y]), y


@pytest.mark.parametrize(("n", "tail", "percent", "n_keep"), [
    (1000, "bot", 0.5, 5), (1100, "bot", 0.5, 5), (1100, "top", 0.5, 6),
    (1000, "top", 0.5, 5), (400, "bot", 5.0, 20), (150, "bot", 0.5, 1),
])  # fmt: skip
def test_energy_brute_force(rng, n, tail, percent, n_keep):
    v = rng.normal(size=(n, 7)) * 2
    e = sorted(float(np.log(np.sum(np.exp(row)))) for row in v)
    kept = e[:n_keep] if tail == "bot" else e[-n_keep:]
    got = ref.energy_score(v, percent=percent, tail=tail)
    assert got == pytest.approx(np.mean(kept), rel=1e-12)


def test_energy_closed_form_and_padding(rng):
    a = rng.normal(size=(300, 1)) * 5
    v = np.repeat(a, 9, axis=1)  # e_i = a_i + log 9
    assert ref.energy_score(v) == pytest.approx(np.sort(a[:, 0])[0] + np.log(9), rel=1e-12)
    x = rng.normal(size=(600, 12))
    padded = np.hstack([x, np.zeros((600, 30))])
    assert ref.energy_score(padded, dim=12) == ref.energy_score(x)
    # Without the true width every zero column adds exp(0) = 1 inside the log: not invariant.
    assert ref.energy_score(padded) > ref.energy_score(x) + 1e-3


def test_repository_lda_is_nearest_mean_softmax(rng):
    x, y = blobs(rng, scale=0.7)
    means = np.stack([x[y == c].mean(axis=0) for c in range(4)])
    sq = ((x[:, None, :] - means[None]) ** 2).sum(axis=2)  # distances, not inner products
    logits = -0.5 * sq + np.log(np.bincount(y) / len(y))
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    expected = np.mean(p[np.arange(len(y)), y])
    assert ref.lda_score(x, y, lda="repository") == pytest.approx(expected, rel=1e-10)
    rotation, _ = np.linalg.qr(rng.normal(size=(10, 10)))  # identity covariance: rotations
    assert ref.lda_score(x @ rotation, y, lda="repository") == pytest.approx(expected, rel=1e-10)
    padded = np.hstack([x, np.zeros((len(y), 6))])
    assert ref.lda_score(padded, y, lda="repository") == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("scale", [0.05, 0.5, 3.0])
def test_fisher_lda_is_shrinkage_lda(rng, scale):
    x, y = blobs(rng, scale=scale)
    sw = sum(np.mean(y == c) * np.cov(x[y == c].T, bias=True) for c in range(4))
    v = np.linalg.matrix_power(sw, 6) @ np.ones(10)
    t = max(np.exp(-5 * np.linalg.norm(sw @ v) / np.linalg.norm(v)), 1e-10)
    p = LinearDiscriminantAnalysis(solver="lsqr", shrinkage=t).fit(x, y).predict_proba(x)
    expected = np.mean(p[np.arange(len(y)), y])
    assert ref.lda_score(x, y) == pytest.approx(expected, rel=1e-9)
    padded = np.hstack([x, np.zeros((len(y), 6))])
    assert ref.lda_score(padded, y, dim=10) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("lda", ["fisher", "repository"])
def test_lda_rises_with_separation(rng, lda):
    x0 = rng.normal(size=(300, 8))
    y = rng.integers(0, 3, 300)
    centres = rng.normal(size=(3, 8))
    scores = [ref.lda_score(x0 + s * centres[y], y, lda=lda) for s in (0.0, 0.5, 1.5, 4.0)]
    assert np.all(np.diff(scores) > 0), scores


def test_combine_closed_form():
    np.testing.assert_allclose(ref.etran_combine([0.0, 1.0, 2.0], [2.0, 1.0, 0.0]),
                               [0.85, 0.5, 0.15], rtol=1e-12)  # fmt: skip
    np.testing.assert_allclose(ref.etran_combine([3.0, 3.0], [0.1, 0.9]), [0.0, 0.85])
    np.testing.assert_allclose(
        ref.etran_combine([0.0, 4.0], [1.0, 0.0], energy_weight=0.5), [0.5, 0.5]
    )


def test_zoo(rng):
    y = rng.integers(0, 3, 250)
    names = np.array(["owl", "bee", "elk"])[y]
    feats = {f"m{i}": rng.normal(size=(250, d)) + s * rng.normal(size=(3, d))[y]
             for i, (d, s) in enumerate([(6, 0.3), (9, 1.0), (12, 2.0), (5, 0.0)])}  # fmt: skip
    logits = {m: rng.normal(size=(250, 20)) for m in feats}
    scores = ref.etran_zoo(feats, y, logits)
    parts = np.array([ref.etran_parts(feats[m], y, logits[m]) for m in feats])
    np.testing.assert_allclose(scores, ref.etran_combine(parts[:, 0], parts[:, 1]), rtol=1e-12)
    np.testing.assert_allclose(ref.etran_zoo(feats, names, logits), scores, rtol=1e-10)
    reverse = dict(reversed(list(feats.items())))
    np.testing.assert_allclose(ref.etran_zoo(reverse, y, logits), scores[::-1], rtol=1e-12)
    # Features padded to a common width with their true widths: the same zoo scores.
    width = max(x.shape[1] for x in feats.values())
    padded = {m: np.hstack([x, np.zeros((250, width - x.shape[1]))]) for m, x in feats.items()}
    dims = {m: x.shape[1] for m, x in feats.items()}
    for lda in ("fisher", "repository"):
        np.testing.assert_allclose(
            ref.etran_zoo(padded, y, lda=lda, dims=dims), ref.etran_zoo(feats, y, lda=lda),
            rtol=1e-9,
        )  # fmt: skip


def test_arguments_checked(rng):
    x, y = blobs(rng)
    with pytest.raises(ValueError, match="tail"):
        ref.energy_score(x, tail="bottom")
    with pytest.raises(ValueError, match="lda"):
        ref.lda_score(x, y, lda="eigen")
