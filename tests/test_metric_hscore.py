"""H-score and shrinkage H-score kernels against their float64 references, on every regime."""

from __future__ import annotations

import numpy as np
import pytest
from metric_parity import kernel_values, reference_values, rel_err

from ncti_jax import regimes

NAMES = ("hscore", "hscore_shrinkage")


@pytest.mark.parametrize("regime", sorted(regimes.REGIMES))
def test_float64_matches_reference(regime, rng, x64):
    feats, y = regimes.make(regime, rng, size="tiny")
    got = kernel_values(NAMES, feats, y, pad=3)
    for name in NAMES:
        want = reference_values(name, feats, y)
        # Regimes with near-null directions: the scatter's eigenvalues (D x D, formed)
        # are accurate to eps * lam_0, the reference's SVD to eps^2 * lam_0^2.
        assert rel_err(got[name], want) < 1e-6, (name, got[name], want)


def test_float32_matches_reference(rng):
    feats, y = regimes.make("chance", rng, size="tiny")
    got = kernel_values(NAMES, feats, y, dtype=np.float32)
    for name in NAMES:
        assert rel_err(got[name], reference_values(name, feats, y)) < 1e-3
