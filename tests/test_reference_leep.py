"""LEEP and NCE references: closed forms, a loop re-computation, invariances, monotonicity.

Independent checks of :mod:`ncti_jax.reference.leep` (the parity with TLlib and the
SFDA/NCTI ``metrics.py`` is measured outside the repository; see the module docstring).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from ncti_jax.reference.leep import leep, nce, nce_from_predictions


def random_probs(rng, n, n_source, labels=None, signal=2.0):
    logits = rng.normal(size=(n, n_source))
    if labels is not None:
        logits[np.arange(n), labels % n_source] += signal
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def leep_loops(probs, y, variant="paper"):
    """LEEP written out with loops over samples, classes and source classes."""
    n, n_source = probs.shape
    classes = sorted(set(y.tolist()))
    joint = {
        (c, z): sum(probs[i, z] for i in range(n) if y[i] == c) / n
        for c in classes
        for z in range(n_source)
    }
    marginal = [sum(joint[c, z] for c in classes) for z in range(n_source)]
    total = 0.0
    for i in range(n):
        eep = sum(
            probs[i, z] * joint[y[i], z] / marginal[z] for z in range(n_source) if marginal[z] > 0
        )
        total += math.log(eep) if variant == "paper" else eep
    return total / n


def nce_loops(z, y):
    n = len(y)
    score = 0.0
    for zz in set(z.tolist()):
        in_z = [y[i] for i in range(n) if z[i] == zz]
        for yy in set(in_z):
            p_yz = in_z.count(yy) / n
            score += p_yz * math.log(in_z.count(yy) / len(in_z))
    return score


@pytest.mark.parametrize(("n", "n_source", "n_classes"), [(40, 6, 3), (150, 20, 7)])
def test_leep_matches_loops(rng, n, n_source, n_classes):
    y = rng.integers(0, n_classes, n)
    p = random_probs(rng, n, n_source, y)
    for variant in ("paper", "repository"):
        np.testing.assert_allclose(
            leep(p, y, variant=variant), leep_loops(p, y, variant), rtol=1e-12
        )


def test_leep_deterministic_mapping_is_zero(rng):
    # Each sample's source prediction is one-hot on a source class that determines
    # its target class; source classes 7..9 are never predicted (P(z) = 0).
    source_to_target = np.array([0, 0, 1, 2, 2, 2, 1, 0, 1, 2])
    z = rng.integers(0, 7, 90)
    p = np.eye(10)[z]
    y = source_to_target[z]
    assert leep(p, y) == 0.0
    assert leep(p, y, variant="repository") == 1.0


def test_leep_uninformative_source_is_minus_label_entropy(rng):
    n = 120
    y = rng.integers(0, 4, n)
    p = np.tile(rng.dirichlet(np.ones(9)), (n, 1))  # the same prediction for every sample
    freq = np.bincount(y) / n
    np.testing.assert_allclose(leep(p, y), np.mean(np.log(freq[y])), rtol=1e-12)
    np.testing.assert_allclose(leep(p, y, variant="repository"), np.sum(freq**2), rtol=1e-12)


def test_leep_invariances(rng):
    n, n_source = 80, 12
    y = rng.integers(0, 5, n)
    p = random_probs(rng, n, n_source, y)
    base = leep(p, y)
    names = np.array(["cat", "dog", "emu", "fox", "gnu"])[rng.permutation(5)]
    rows, cols = rng.permutation(n), rng.permutation(n_source)
    np.testing.assert_allclose(leep(p, names[y]), base, rtol=1e-13)
    np.testing.assert_allclose(leep(p[rows][:, cols], y[rows]), base, rtol=1e-13)
    np.testing.assert_allclose(leep(p, 10 * y + 3), base, rtol=1e-13)  # gapped labels


def test_leep_decreases_as_predictions_blur(rng):
    n, n_source = 100, 8
    z = rng.integers(0, n_source, n)
    y = z % 3
    onehot = np.eye(n_source)[z]
    blur = [0.0, 0.2, 0.5, 0.8, 1.0]
    scores = [leep((1 - t) * onehot + t / n_source, y) for t in blur]
    assert np.all(np.diff(scores) < 0)
    # Uniform predictions carry no information: minus the label entropy.
    np.testing.assert_allclose(scores[-1], np.mean(np.log(np.bincount(y)[y] / n)), rtol=1e-12)


def test_leep_variants_related_by_jensen(rng):
    y = rng.integers(0, 6, 200)
    p = random_probs(rng, 200, 30, y, signal=1.0)
    paper, repository = leep(p, y), leep(p, y, variant="repository")
    assert paper < 0 and 0 < repository <= 1
    assert repository >= math.exp(paper)
    with pytest.raises(ValueError, match="variant"):
        leep(p, y, variant="log")


@pytest.mark.parametrize(("n", "n_source", "n_classes"), [(50, 5, 3), (300, 40, 10)])
def test_nce_matches_loops(rng, n, n_source, n_classes):
    y = rng.integers(0, n_classes, n)
    p = random_probs(rng, n, n_source, y, signal=1.5)
    np.testing.assert_allclose(nce(p, y), nce_loops(np.argmax(p, axis=1), y), rtol=1e-12)


def test_nce_closed_forms(rng):
    n = 60
    y = rng.integers(0, 4, n)
    # A bijective relabelling and a many-to-one map from source to target: Y known from Z.
    assert nce_from_predictions((y * 7 + 2) % 5, y) == 0.0
    z = rng.integers(0, 9, n)
    assert nce_from_predictions(z, z % 3) == 0.0
    assert nce(np.eye(9)[z], z % 3) == 0.0
    # A constant prediction says nothing: NCE = -H(Y).
    freq = np.bincount(y) / n
    freq = freq[freq > 0]
    np.testing.assert_allclose(
        nce_from_predictions(np.zeros(n, int), y), np.sum(freq * np.log(freq)), rtol=1e-13
    )


def test_nce_bounds_and_invariances(rng):
    n, n_classes = 200, 5
    y = rng.integers(0, n_classes, n)
    p = random_probs(rng, n, 15, y, signal=1.0)
    score = nce(p, y)
    assert -math.log(n_classes) <= score <= 0
    cols, rows = rng.permutation(15), rng.permutation(n)
    names = np.array(list("vwxyz"))[rng.permutation(n_classes)]
    np.testing.assert_allclose(nce(p[rows][:, cols], names[y][rows]), score, rtol=1e-13)
    assert nce(p, y) == nce_from_predictions(np.argmax(p, axis=1), y)


def test_nce_increases_with_agreement(rng):
    n = 400
    y = rng.integers(0, 4, n)
    flips = rng.random(n)
    noise = rng.integers(0, 4, n)
    scores = [nce_from_predictions(np.where(flips < q, noise, y), y) for q in (1.0, 0.6, 0.3, 0.0)]
    assert np.all(np.diff(scores) > 0) and scores[-1] == 0.0


def test_shape_errors():
    with pytest.raises(ValueError, match="probs"):
        leep(np.ones((3, 2)) / 2, [0, 1])
    with pytest.raises(ValueError, match="source predictions"):
        nce_from_predictions([0, 1, 1], [0, 1])
