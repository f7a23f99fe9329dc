"""The kernel's building blocks against the float64 reference, one at a time.

The end-to-end tests see a numerical change as a wrong etf or vc; these see it next
to its cause: the singular values through a Gram (:mod:`ncti_jax._nuclear`), and
each LDA solver (:mod:`ncti_jax._lda`), unmasked and with masked PCA columns.
Inputs are fresh random matrices with a prescribed spectrum, never friendly ones.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncti_jax import _lda, _linalg, _nuclear, reference

# The CPU's linear algebra: looped LAPACK calls, no host callbacks.
LINALG = _linalg.Linalg.for_platform("cpu", host_solve=False)


def with_spectrum(rng: np.random.Generator, n: int, p: int, decades: float) -> np.ndarray:
    """An (n, p) matrix with singular values from 1 down to 10**-decades, random bases."""
    r = min(n, p)
    u, _ = np.linalg.qr(rng.normal(size=(n, r)))
    v, _ = np.linalg.qr(rng.normal(size=(p, r)))
    return (u * np.logspace(0, -decades, r)) @ v.T


@pytest.mark.parametrize("shape", [(40, 7), (7, 40), (25, 25)])
@pytest.mark.parametrize("decades", [0.0, 6.0])
def test_gram_singular_values_float64(rng, x64, shape, decades):
    a = with_spectrum(rng, *shape, decades)
    expected = np.linalg.svd(a, compute_uv=False)
    got = np.sort(np.asarray(_nuclear.gram_singular_values(jnp.asarray(a), LINALG)))[::-1]
    # Re-measured as ||A v||: about eps * s_max absolute, even for the small ones.
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-13 * expected[0])
    got_norm = float(_nuclear.nuclear_norm(jnp.asarray(a), LINALG))
    assert got_norm == pytest.approx(reference.nuclear_norm(a), rel=1e-13)


def test_gram_singular_values_float32_resolved_to_eps(rng):
    """float32 singular values down to 1e-3 of the largest (above sqrt(eps) * s_max, so
    the Gram resolves their vectors) to a few eps * s_max. Measured over 40 seeds: at
    most 3.4 eps; the square roots of the Gram's eigenvalues, at least 7.1 eps."""
    a = with_spectrum(rng, 60, 12, 3.0)
    expected = np.linalg.svd(a, compute_uv=False)
    got = np.asarray(_nuclear.gram_singular_values(jnp.asarray(a, jnp.float32), LINALG))
    err = np.abs(np.sort(got)[::-1] - expected).max()
    assert err <= 6 * np.finfo(np.float32).eps * expected[0], err


def class_data(rng, n: int, k: int, n_classes: int, separation: float):
    """(N, k) projections with class structure and a spread of column scales."""
    y = np.arange(n) % n_classes
    rng.shuffle(y)
    means = rng.normal(size=(n_classes, k)) * separation
    z = (means[y] + rng.normal(size=(n, k))) * np.logspace(0, -2, k)
    return z - z.mean(axis=0), y


@functools.partial(jax.jit, static_argnames=("n_classes",))
def lda_svd(z, y, n_discriminants, *, n_classes):
    """The svd solver compiled as the kernel runs it (class statistics inside the trace)."""
    stats = _lda.ClassStats(z, y, jnp.bincount(y, length=n_classes).astype(z.dtype))
    return _lda.lda_svd(z, stats, n_discriminants, LINALG)


@functools.partial(jax.jit, static_argnames=("n_classes",))
def lda_eigen(z, y, mask, n_discriminants, shrinkage, *, n_classes):
    stats = _lda.ClassStats(z, y, jnp.bincount(y, length=n_classes).astype(z.dtype))
    return _lda.lda_eigen(z, mask, stats, n_discriminants, shrinkage, LINALG)


def assert_same_columns(got: np.ndarray, expected: np.ndarray, rtol: float) -> None:
    """Equal up to the sign of each column (eigen- and singular vectors have none)."""
    signs = np.sign(np.sum(got * expected, axis=0))
    signs[signs == 0] = 1.0
    err = np.abs(got * signs - expected).max(axis=0) / np.abs(expected).max(axis=0)
    assert err.max() <= rtol, f"column errors relative to each column's largest entry: {err}"


@pytest.mark.parametrize(("n", "k", "n_classes"), [(300, 12, 5), (200, 6, 9), (150, 10, 2)])
def test_lda_svd_matches_reference(rng, x64, n, k, n_classes):
    z, y = class_data(rng, n, k, n_classes, separation=1.5)
    n_disc = min(n_classes - 1, k)
    projection, decision = lda_svd(z, y, n_disc, n_classes=n_classes)
    ref_projection, ref_decision = reference.lda_svd(z, y, n_classes)
    projection = np.asarray(projection)
    assert not projection[:, n_disc:].any()  # unused columns exactly zero
    assert_same_columns(projection[:, :n_disc], ref_projection, rtol=1e-9)
    np.testing.assert_allclose(np.asarray(decision), ref_decision, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("shrinkage", [1e-8, 0.3, 1.0 - 1e-9])
@pytest.mark.parametrize(("n", "k", "n_classes"), [(300, 12, 5), (120, 8, 10)])
def test_lda_eigen_matches_reference(rng, x64, shrinkage, n, k, n_classes):
    z, y = class_data(rng, n, k, n_classes, separation=0.7)
    n_disc = min(n_classes - 1, k)
    mask = np.ones(k, bool)
    projection, decision = lda_eigen(z, y, mask, n_disc, shrinkage, n_classes=n_classes)
    ref_projection, ref_decision = reference.lda_eigen(z, y, n_classes, shrinkage)
    projection = np.asarray(projection)
    assert not projection[:, n_disc:].any()
    assert_same_columns(projection[:, :n_disc], ref_projection, rtol=1e-7)
    np.testing.assert_allclose(np.asarray(decision), ref_decision, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("solver", ["svd", "eigen"])
def test_masked_pca_columns_change_nothing(rng, x64, solver):
    """A projection with its last principal directions masked (zero columns) gives the
    reference's result on the kept columns alone: how ragged PCA ranks share one shape."""
    n, k, kept, n_classes = 240, 10, 7, 4
    z, y = class_data(rng, n, kept, n_classes, separation=1.0)
    padded = np.concatenate([z, np.zeros((n, k - kept))], axis=1)
    mask = np.arange(k) < kept
    n_disc = min(n_classes - 1, kept)
    if solver == "svd":
        projection, decision = lda_svd(padded, y, n_disc, n_classes=n_classes)
        ref_projection, ref_decision = reference.lda_svd(z, y, n_classes)
    else:
        projection, decision = lda_eigen(padded, y, mask, n_disc, 0.05, n_classes=n_classes)
        ref_projection, ref_decision = reference.lda_eigen(z, y, n_classes, 0.05)
    assert_same_columns(np.asarray(projection)[:, :n_disc], ref_projection, rtol=1e-8)
    np.testing.assert_allclose(np.asarray(decision), ref_decision, rtol=1e-8, atol=1e-8)
