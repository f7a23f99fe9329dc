"""LEEP and NCE kernels against their float64 references, on every regime.

The logits come from :func:`source_logits.source_logits`: a different number of source
classes per model (3 beside 100), zero-padded to the widest plus 3, so every comparison
also checks that padded source classes change nothing.
"""

from __future__ import annotations

import numpy as np
import pytest
from metric_parity import kernel_values, reference_values, rel_err
from source_logits import source_logits

from ncti_jax import regimes

NAMES = ("leep", "nce")


@pytest.mark.parametrize("regime", sorted(regimes.REGIMES))
def test_float64_matches_reference(regime, rng, x64):
    feats, y = regimes.make(regime, rng, size="tiny")
    logits = source_logits(feats, rng)
    got = kernel_values(NAMES, feats, y, logits=logits, pad=3)
    for name in NAMES:
        want = reference_values(name, feats, y, logits)
        # Sums of N probabilities and logs: measured <= 7e-16 over 5 seeds, except
        # binary's LEEP 5e-15 (|LEEP| is small there: EEP near 1, log EEP cancels).
        assert rel_err(got[name], want) < 1e-12, (name, got[name], want)


@pytest.mark.parametrize("regime", ["chance", "collapsed", "longtail"])
def test_float32_matches_reference(regime, rng):
    feats, y = regimes.make(regime, rng, size="tiny")
    # The same float32 logits on both sides: the argmax of NCE is then the same class.
    logits = {m: v.astype(np.float32) for m, v in source_logits(feats, rng).items()}
    got = kernel_values(NAMES, feats, y, dtype=np.float32, logits=logits, pad=3)
    for name in NAMES:
        want = reference_values(name, feats, y, logits)
        # Measured <= 3.4e-7 over 5 seeds (float32 softmax and sums of N = 400 terms).
        # Not binary: LEEP near 0 there, log EEP of EEP ~ 1 loses eps / |LEEP| (3.4e-6).
        assert rel_err(got[name], want) < 1e-5, (name, got[name], want)


def _informative_logits(rng, y, strengths, n_source=(3, 100, 12, 40)):
    """Logits that carry more of the target label as ``strength`` grows: each target class
    maps to a random source class, plus unit noise."""
    out = {}
    for j, s in enumerate(strengths):
        k = n_source[j % len(n_source)]
        mapping = rng.integers(0, k, int(y.max()) + 1)
        out[f"m{j}"] = s * np.eye(k)[mapping[y]] + rng.normal(size=(y.shape[0], k))
    return out


def test_values_rise_with_information(rng, x64):
    y = rng.permutation(np.arange(300) % 5)
    logits = _informative_logits(rng, y, (0.0, 1.0, 2.5, 6.0))
    feats = {m: rng.normal(size=(300, 4)) for m in logits}  # not read by either metric
    got = kernel_values(NAMES, feats, y, logits=logits)
    for name in NAMES:
        want = reference_values(name, feats, y, logits)
        assert rel_err(got[name], want) < 1e-12
        assert np.all(np.diff(got[name]) > 0.01), (name, got[name])


def test_deterministic_and_constant_predictions(rng, x64):
    """Closed forms: a one-hot source prediction that is a bijection of the target gives
    LEEP = NCE = 0 (most of its 50 source classes have P(z) = 0: masked, not 0/0); a
    constant prediction gives NCE = -H(Y) and LEEP = sum_y P(y) log P(y) as well."""
    y = rng.permutation(np.arange(240) % 6)
    bijection = np.full((240, 50), -1e3)
    bijection[np.arange(240), 7 * y + 1] = 0.0  # exp(-1000) = 0: exactly one-hot
    constant = np.zeros((240, 9))
    constant[:, 4] = 1e3
    logits = {"bijection": bijection, "constant": constant}
    feats = {m: rng.normal(size=(240, 3)) for m in logits}
    got = kernel_values(NAMES, feats, y, logits=logits, pad=3)
    prior = np.bincount(y) / len(y)
    entropy = -np.sum(prior * np.log(prior))
    np.testing.assert_allclose(got["leep"], [0.0, -entropy], atol=1e-15, rtol=1e-14)
    np.testing.assert_allclose(got["nce"], [0.0, -entropy], atol=1e-15, rtol=1e-14)
    np.testing.assert_allclose(reference_values("nce", feats, y, logits), got["nce"], atol=1e-15)
