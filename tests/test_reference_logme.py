"""The LogME reference against independent evaluations of its evidence.

The evidence of a class is the Gaussian log density ``log N(y; 0, F F^T / alpha + I / beta)``;
here it is computed directly (scipy's multivariate normal, no SVD of ``F``) at the fitted
``(alpha, beta)``, and the converged fixed point is checked to be the maximum over a grid.
Then: the Gram and SVD routes agree on every shape, zero-padded columns change nothing
(``variant="paper"``; ``variant="thuml"`` with ``n_cols``), the repository variant's bias is
exactly ``(D - N) / 2 log alpha``, labels and samples can be renamed and permuted, and better
separated classes score higher.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

# The module's names, not the package's: ncti_jax.reference may re-export them.
from ncti_jax.reference.logme import logme, logme_fit

CONVERGED = dict(tol=1e-12, max_iter=10_000)


def clustered(rng, n, d, n_classes, separation=1.0):
    y = rng.permutation(np.arange(n) % n_classes)
    x = rng.normal(size=(n, d)) + separation * rng.normal(size=(n_classes, d))[y]
    return x, y


def gaussian_evidence(x, target, alpha, beta):
    """log N(target; 0, x x^T / alpha + I / beta) / N, evaluated directly."""
    n = x.shape[0]
    cov = x @ x.T / alpha + np.eye(n) / beta
    return scipy.stats.multivariate_normal(np.zeros(n), cov).logpdf(target) / n


# Well separated classes: without epsilon, a class whose indicator the features barely explain
# has its maximum at alpha = infinity (no weights), where the fixed point runs off.
@pytest.mark.parametrize(("n", "d", "epsilon"), [(24, 4, 0.0), (60, 8, 0.0), (20, 50, 1e-5)])
def test_evidence_is_the_gaussian_log_density(rng, n, d, epsilon):
    x, y = clustered(rng, n, d, 3, separation=3.0)
    fit = logme_fit(x, y, epsilon=epsilon, **CONVERGED)
    assert np.all(fit.n_iter < CONVERGED["max_iter"])
    for c in range(3):
        direct = gaussian_evidence(x, (y == c).astype(float), fit.alpha[c], fit.beta[c])
        np.testing.assert_allclose(fit.evidence[c], direct, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fit.score, np.mean(fit.evidence))


@pytest.mark.parametrize(("n", "d"), [(24, 4), (60, 8)])
def test_fixed_point_maximises_the_evidence(rng, n, d):
    """Without the epsilon in the updates, the converged (alpha, beta) is the evidence's
    maximum: no point of a log grid around it (out to a factor e^2) does better."""
    x, y = clustered(rng, n, d, 3, separation=3.0)
    fit = logme_fit(x, y, epsilon=0.0, **CONVERGED)
    steps = np.array([-2.0, -0.5, -0.1, -0.01, 0.0, 0.01, 0.1, 0.5, 2.0])
    for c in range(3):
        target = (y == c).astype(float)
        best = max(
            gaussian_evidence(x, target, fit.alpha[c] * np.exp(u), fit.beta[c] * np.exp(v))
            for u in steps
            for v in steps
        )
        assert best <= fit.evidence[c] + 1e-12


def test_default_stopping_is_close_to_converged(rng):
    x, y = clustered(rng, 200, 16, 4)
    np.testing.assert_allclose(logme(x, y), logme(x, y, **CONVERGED), rtol=1e-2)


@pytest.mark.parametrize(("n", "d"), [(200, 20), (30, 90), (50, 50)])
@pytest.mark.parametrize("variant", ["paper", "thuml"])
def test_gram_and_svd_routes_agree(rng, n, d, variant):
    x, y = clustered(rng, n, d, 4)
    gram = logme_fit(x, y, solver="gram", variant=variant)
    svd = logme_fit(x, y, solver="svd", variant=variant)
    np.testing.assert_allclose(gram.evidence, svd.evidence, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(gram.alpha, svd.alpha, rtol=1e-8)
    assert logme(x, y, variant=variant) == (gram.score if n > d else svd.score)


def test_routes_agree_on_rank_deficient_features(rng):
    """Collinear columns (N > D but rank < D): both routes keep the null directions, which
    add nothing; the evidence equals that of the full-rank factor."""
    x, y = clustered(rng, 150, 12, 3)
    wide = np.hstack([x, x @ rng.normal(size=(12, 20))])
    gram, svd = (logme(wide, y, solver=s) for s in ("gram", "svd"))
    np.testing.assert_allclose(gram, svd, rtol=1e-9)
    fit = logme_fit(wide, y, **CONVERGED)
    direct = [
        gaussian_evidence(wide, (y == c).astype(float), fit.alpha[c], fit.beta[c]) for c in range(3)
    ]
    np.testing.assert_allclose(fit.evidence, direct, rtol=1e-8)


@pytest.mark.parametrize(("n", "d", "pad"), [(300, 20, 50), (40, 25, 60), (30, 60, 100)])
def test_zero_padded_columns(rng, n, d, pad):
    """N > D', D < N < D' (the original switches branch) and N < D < D'."""
    x, y = clustered(rng, n, d, 3)
    padded = np.hstack([x, np.zeros((n, pad))])
    np.testing.assert_allclose(logme(padded, y), logme(x, y), rtol=1e-10)
    np.testing.assert_allclose(
        logme(padded, y, variant="thuml", n_cols=d), logme(x, y, variant="thuml"), rtol=1e-10
    )


@pytest.mark.parametrize(("n", "d"), [(30, 80), (120, 40)])
def test_thuml_variant_bias(rng, n, d):
    """The repository's evidence = the marginal likelihood + max(D - N, 0) / 2 log alpha."""
    x, y = clustered(rng, n, d, 3)
    paper = logme_fit(x, y)
    thuml = logme_fit(x, y, variant="thuml")
    np.testing.assert_array_equal(paper.alpha, thuml.alpha)  # the same fixed point
    bias = max(d - n, 0) / 2 * np.log(paper.alpha) / n
    np.testing.assert_allclose(thuml.evidence - paper.evidence, bias, atol=1e-12)
    if d > n:  # and it is no rounding-level difference
        assert np.all(np.abs(bias) > 1e-3)


def test_labels_and_samples_renamed_and_permuted(rng):
    x, y = clustered(rng, 120, 10, 4)
    base = logme(x, y)
    names = np.array(["cat", "dog", "emu", "yak"])[::-1][y]  # other names, other order
    np.testing.assert_allclose(logme(x, names), base, rtol=1e-12)
    np.testing.assert_allclose(logme(x, 7 * y + 3), base, rtol=1e-12)
    order = rng.permutation(120)
    np.testing.assert_allclose(logme(x[order], y[order]), base, rtol=1e-10)


@pytest.mark.parametrize(("n", "d"), [(300, 16), (40, 100)])
def test_more_separable_classes_score_higher(rng, n, d):
    y = rng.permutation(np.arange(n) % 4)
    centres, noise = rng.normal(size=(4, d)), rng.normal(size=(n, d))
    scores = [logme(noise + s * centres[y], y) for s in (0.0, 0.5, 1.0, 2.0, 4.0)]
    assert np.all(np.diff(scores) > 0), scores


def test_bad_arguments(rng):
    x, y = clustered(rng, 20, 4, 2)
    with pytest.raises(ValueError, match="variant"):
        logme(x, y, variant="icml")
    with pytest.raises(ValueError, match="solver"):
        logme(x, y, solver="qr")
    with pytest.raises(ValueError, match="labels"):
        logme(x, y[:-1])
