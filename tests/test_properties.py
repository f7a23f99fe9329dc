"""Property-based: random shapes, class counts and degenerate inputs give finite
scores, a clear ValueError, or a flagged unranked model, never an unhandled
exception or a silent NaN."""

from __future__ import annotations

import warnings

import jax
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ncti_jax
from ncti_jax import reference, regimes

# Few distinct shapes, so that compiled kernels are reused across examples.
SHAPES = [(6, 3), (13, 5), (40, 9), (40, 70)]


@st.composite
def zoo_inputs(draw):
    n, d = draw(st.sampled_from(SHAPES))
    n_classes = draw(st.integers(1, min(n, 6)))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    n_models = draw(st.integers(1, 3))
    feats = {}
    for m in range(n_models):
        kind = draw(
            st.sampled_from(
                [
                    "normal",
                    "relu",
                    "zeros",
                    "constant",
                    "duplicate_rows",
                    "huge",
                    "tiny",
                    "integer",
                    "one_column",
                ]
            )
        )
        if kind == "normal":
            x = rng.normal(size=(n, d)) + y[:, None]
        elif kind == "relu":
            x = np.maximum(rng.normal(size=(n, d)) + 0.5 * y[:, None], 0)
        elif kind == "zeros":
            x = np.zeros((n, d))
        elif kind == "constant":
            x = np.full((n, d), 2.5)
        elif kind == "duplicate_rows":
            x = np.repeat(rng.normal(size=(1, d)), n, axis=0)
            x[: n // 2] += 1.0
        elif kind == "huge":
            x = rng.normal(size=(n, d)) * 1e15
        elif kind == "tiny":
            x = rng.normal(size=(n, d)) * 1e-15
        elif kind == "integer":
            x = rng.integers(0, 3, (n, d))
        else:
            x = rng.normal(size=(n, 1))
        feats[f"m{m}_{kind}"] = x.astype(draw(st.sampled_from([np.float32, np.float64])))
    return feats, y


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(zoo_inputs())
def test_finite_scores_or_clear_error(inputs):
    feats, y = inputs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            result = ncti_jax.score_zoo(feats, y)
        except ValueError as err:
            assert "class" in str(err) or "samples" in str(err)
            return
    assert sorted(result.ranking.tolist()) == list(range(len(feats)))
    # A model is unranked only with its flag, listed after every ranked one: the one
    # input that does it here is classes without spread (duplicate rows in class order),
    # where the shrinkage LDA is undefined.
    ranked = result.ranked()
    assert all(result.status[i] & ncti_jax.Status.NON_FINITE for i in np.flatnonzero(~ranked))
    assert ranked[result.ranking].tolist() == sorted(ranked.tolist(), reverse=True)
    assert np.isfinite(result.etf[ranked]).all() and np.isfinite(result.ncc[ranked]).all()
    assert np.isfinite(result.vc[ranked]).all() and np.isfinite(result.ncti[ranked]).all()
    assert ((result.ncc[ranked] > 0) & (result.ncc[ranked] <= 1 + 1e-5)).all()
    assert (result.etf[ranked] >= 0).all()


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(zoo_inputs())
def test_float64_engine_is_the_reference(inputs):
    """The oracle: in float64 the engine gives the reference's numbers, every field, tight.

    Inputs the engine rejects (docs/algorithm.md §4: a single class, fewer samples than
    classes + 1) get a clear error; a model the engine leaves unranked must be one the
    reference cannot score either."""
    feats, y = inputs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        try:
            with jax.enable_x64(True):
                result = ncti_jax.score_zoo(feats, y, dtype="float64")
        except ValueError as err:
            assert "class" in str(err) or "samples" in str(err)
            return
        ref = reference.score_zoo({m: np.asarray(x, np.float64) for m, x in feats.items()}, y)
    if not result.ranked().all():
        assert not np.isfinite(np.c_[ref.etf, ref.ncc, ref.vc][~result.ranked()]).all()
        return
    report = regimes.compare(result, ref, rtol=1e-6, tie=1e-6)
    assert report["problems"] == [], report
