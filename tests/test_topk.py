"""The certified top-k eigensolver of the device path (ncti_jax._topk) and its fallback.

The solver against a float64 ``eigh`` on prescribed spectra (fresh seeds); its
certificate refusing an ill-defined subspace (a gap of 1e-7 at k) and an
unconverged one; and the engine on the device path (forced on CPU) against the
float64 reference over the input regimes, with the top-k solver doing real
iterations (``n_components=8``: a block of 40 columns in 48 or more dimensions)
and the fallback taken, flagged and exact on the tiny-gap zoo. Tolerances: as
tests/test_regimes.py (raw components within 1e-4 relative, the reference's
ranking); the solver's eigenvalues within its certified residual (32 eps lambda_1) of a
float64 ``eigh`` of the same float32 matrix and its kept subspace within 1e-4 where the gap
is 1e-2 of lambda_1 or more.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ncti_jax
from ncti_jax import _linalg, _plan, _topk, reference, regimes

LINALG = _linalg.Linalg(looped=True, host_solve=False, eigensolver="topk")
EPS32 = float(np.finfo(np.float32).eps)


def spectrum_matrix(rng, d, lam, pad=0):
    """A (d + pad) square symmetric matrix with eigenvalues ``lam`` in a random basis of
    its first d coordinates, zero on the ``pad`` last (padding)."""
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    c = np.zeros((d + pad, d + pad))
    c[:d, :d] = (q * lam) @ q.T
    return c


def solve(c, k, *, kept=None, row_mask=None, max_iters=_topk.MAX_ITERS):
    def keep(evals, evecs):
        return jnp.ones(k, bool) if kept is None else kept

    fn = jax.jit(
        lambda c: _topk.topk_eigh(c, k, keep, LINALG, row_mask=row_mask, max_iters=max_iters)
    )
    theta, x, res, _ = fn(jnp.asarray(c, jnp.float32))
    residual, gap, certified = _topk.certificate(theta, res, jnp.ones(k, bool))
    return np.asarray(theta, np.float64), np.asarray(x, np.float64), residual, gap, certified


@pytest.mark.parametrize("spectrum", ["power", "steep"])
def test_topk_matches_float64_eigh(rng, spectrum):
    d, k, pad = 160, 16, 24
    i = np.arange(1, d + 1)
    lam = 1.0 / i if spectrum == "power" else np.geomspace(1.0, 1e-6, d)
    lam[k:] *= 0.9  # a gap of about 1e-2 of lambda_1 or more after k
    c = spectrum_matrix(rng, d, lam, pad)
    row_mask = jnp.arange(d + pad) < d
    theta, x, residual, gap, certified = solve(c, k, row_mask=row_mask)
    # The solver sees the matrix rounded to float32: that matrix is the oracle's input.
    w, e = np.linalg.eigh(c.astype(np.float32).astype(np.float64))
    w, e = w[::-1][:k], e[:, ::-1][:, :k]
    assert bool(certified), (float(residual), float(gap))
    assert float(residual) <= _topk.RESIDUAL_CERT * EPS32
    # A Ritz value is within its residual of an eigenvalue, and residuals are certified.
    np.testing.assert_allclose(theta[:k], w, atol=_topk.RESIDUAL_CERT * EPS32 * w[0])
    v = x[:, :k]
    assert np.linalg.norm(v - e @ (e.T @ v), 2) < 1e-4
    np.testing.assert_allclose(v.T @ v, np.eye(k), atol=1e-5)
    assert np.abs(x[d:]).max() == 0.0  # padding coordinates stay zero


def test_certificate_refuses_a_tiny_gap(rng):
    d, k = 128, 16
    lam = np.geomspace(1.0, 1e-2, d)
    lam[k] = lam[k - 1] * (1 - 1e-7)
    *_, gap, certified = solve(spectrum_matrix(rng, d, lam), k)
    assert float(gap) < 1e-5
    assert not bool(certified)


def test_certificate_refuses_an_unconverged_block(rng):
    d, k = 128, 16
    lam = 1.0 / np.arange(1, d + 1)
    *_, residual, _, certified = solve(spectrum_matrix(rng, d, lam), k, max_iters=2)
    assert float(residual) > _topk.RESIDUAL_CERT * EPS32
    assert not bool(certified)


def test_tf32_rounding_emulation(rng):
    """TF32 keeps 10 explicit mantissa bits: round to nearest, relative error at most 2**-11,
    and a value that already fits is unchanged."""
    a = rng.normal(size=1000).astype(np.float32) * np.float32(1e3)
    t = np.asarray(_topk.round_tf32(jnp.asarray(a)))
    assert np.all(np.abs(t - a) <= np.abs(a) * 2.0**-11)
    mantissa = t.view(np.uint32) & 0x1FFF
    assert (mantissa == 0).all()
    exact = np.float32(1 + 2.0**-10)
    assert float(_topk.round_tf32(jnp.float32(exact))) == exact


def score(feats, y, **kwargs):
    with _plan.device_numerics(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return ncti_jax.score_zoo(feats, y, strategy="fused", **kwargs)


def ref_of(feats, y, n_components):
    refs = {m: np.asarray(x, np.float64) for m, x in feats.items()}
    return reference.score_zoo(refs, y, n_components=n_components)


@pytest.mark.parametrize("regime", ["collapsed", "fewshot-wide", "low-rank", "ill-conditioned"])
def test_device_topk_matches_reference(regime, seed):
    """The top-k solver iterating for real (k = 8, a block of 40 columns in D >= 48; the
    N x N Gram on few-shot-wide): the reference's numbers, certified."""
    feats, y = regimes.make(regime, np.random.default_rng(seed), size="tiny")
    result = score(feats, y, n_components=8)
    report = regimes.compare(result, ref_of(feats, y, 8))
    assert report["problems"] == [], report
    assert (np.asarray(result.eigen_residual) <= _topk.RESIDUAL_CERT * EPS32).all()


def tiny_gap_zoo(rng):
    """Two models whose 8th and 9th principal variances are 1e-7 (relative) apart."""
    n, d, c = 300, 64, 5
    y = rng.permutation(np.arange(n) % c)
    feats = {}
    for i in range(2):
        scales = np.geomspace(1.0, 0.05, d)
        scales[8] = scales[7] * (1 - 1e-7)
        codes = rng.normal(size=(n, d))
        codes[:, :c] += rng.normal(size=(c, c))[y] * (1 + i)
        codes = np.linalg.qr(codes - codes.mean(axis=0))[0] * np.sqrt(n) * scales
        basis = np.linalg.qr(rng.normal(size=(d, d)))[0]
        feats[f"gap{i}"] = (codes @ basis.T).astype(np.float32)
    return feats, y


def test_tiny_gap_falls_back_to_exact_eigh(seed):
    """An ill-defined top-8 subspace: the solver does not certify it, the driver recomputes
    the model with the full eigh (the same numbers as eigensolver="eigh"), and the status
    says so."""
    feats, y = tiny_gap_zoo(np.random.default_rng(seed))
    result = score(feats, y, n_components=8)
    flag = ncti_jax.Status.EIGENSOLVER_FALLBACK
    assert ((np.asarray(result.status) & flag) > 0).all(), result.status
    assert (np.asarray(result.eigen_gap) < 1e-5).all()
    exact = score(feats, y, n_components=8, eigensolver="eigh")
    assert not (np.asarray(exact.status) & flag).any()
    for f in ("etf", "ncc", "vc", "pca_rank", "shrinkage"):
        np.testing.assert_array_equal(getattr(result, f), getattr(exact, f))


@pytest.mark.parametrize("mode", [pytest.param("topk-tf32", marks=pytest.mark.slow), "topk-bf16"])
def test_low_precision_scatter_is_refined_or_falls_back(mode, seed):
    """A TF32 / bfloat16 scatter, then iterations on the exact one: each model
    is either certified against the exact scatter (and then within 1e-4 of the reference)
    or recomputed exactly."""
    feats, y = regimes.make("collapsed", np.random.default_rng(seed), size="tiny")
    result = score(feats, y, n_components=8, eigensolver=mode)
    report = regimes.compare(result, ref_of(feats, y, 8))
    assert report["problems"] == [], report


def test_eigensolver_argument_is_checked():
    x = {"a": np.random.default_rng(0).normal(size=(40, 6)).astype(np.float32)}
    with pytest.raises(ValueError, match="eigensolver must be one of"):
        ncti_jax.score_zoo(x, np.arange(40) % 2, eigensolver="lanczos")
