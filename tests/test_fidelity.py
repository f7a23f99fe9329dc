"""Targeted fidelity tests: the boundaries and bookkeeping a plausible bug would move.

Each test compares every published field with the float64 reference (or, where
float32 cannot resolve the answer, with the float64 engine and a stated bound),
on fresh seeds.
"""

from __future__ import annotations

import contextlib
import json
import warnings

import jax
import numpy as np
import pytest

import ncti_jax
from ncti_jax import _kernel, _plan, _result, _validate, reference, regimes

import zoos


def score(feats, y, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return ncti_jax.score_zoo(feats, y, **kwargs)


def ref_of(feats, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return reference.score_zoo({m: np.asarray(x, np.float64) for m, x in feats.items()}, y)


@pytest.mark.parametrize("side", [-1, 1])
def test_solver_boundary(rng, side):
    """The top-32 variance sum just below and just above ln(1e10) = 23.03: the svd solver
    above, the eigen solver (shrinkage just over 1e-10) below, as in the reference."""
    feats, y = zoos.zoo(rng, n=400, n_classes=5, dims=(40, 56, 48))
    target = np.log(1e10) * (1 + side * 2e-3)
    scaled = {}
    for name, x in feats.items():
        _, var = reference.pca(x, 64)
        scaled[name] = (x * np.sqrt(target / var[:32].sum())).astype(np.float32)
    ref = ref_of(scaled, y)
    assert set(ref.solver) == ({"svd"} if side > 0 else {"eigen"})
    report = regimes.compare(score(scaled, y), ref)
    assert report["problems"] == [], report


@pytest.mark.parametrize("labels", ["gaps_from_zero", "negative", "strings"])
def test_label_remapping_in_full(rng, labels):
    """Labels {0, 2, 5, ...} (starting at 0, with gaps), negative ones and strings give the
    reference's numbers exactly as the contiguous codes do."""
    feats, y = zoos.zoo(rng, n=300, n_classes=4, dims=(24, 32))
    values = {
        "gaps_from_zero": np.array([0, 2, 5, 9]),
        "negative": np.array([-7, -1, 3, 4]),
        "strings": np.array(["cat", "dog", "emu", "yak"]),
    }[labels]
    mapped = values[y]
    result = score(feats, mapped)
    ref = ref_of(feats, mapped)
    assert regimes.compare(result, ref)["problems"] == []
    contiguous = score(feats, y)
    np.testing.assert_array_equal(result.ncti, contiguous.ncti)


def test_singular_within_scatter_with_tiny_shrinkage(x64):
    """Found by hypothesis (moved here from test_edge_cases with its assertions): 6 samples,
    5 classes (one residual degree of freedom), shrinkage 2.8e-8: Sw is singular to float32, whose Cholesky breaks down; the engine adds a ridge at the
    rounding level. In float64 the engine must give the reference's etf; in float32 the
    ridge may only lower it, and by the factor the rounding level explains (about 14x
    here: a ridge of 1e-3 instead gave 45x less)."""
    x = np.array(
        [
            [2.07623, 3.1534066, 1.5372064],
            [1.8916816, 0.8739859, 0.8896761],
            [-1.1168877, 1.3417637, -0.78140706],
            [3.7517774, 3.3829424, 6.9082828],
            [0.20335746, -1.6747651, -0.30133113],
            [4.514525, 3.5088148, 4.4172945],
        ],
        np.float32,
    )
    y = np.array([2, 1, 0, 4, 0, 3])
    feats = {"m": x, "n": 2 * x[:, ::-1]}
    ref = ref_of(feats, y)
    assert ref.solver[0] == "eigen"
    exact = score(feats, y, dtype="float64")
    assert regimes.compare(exact, ref, rtol=1e-9)["problems"] == []
    with jax.enable_x64(False):
        f32 = score(feats, y)
    assert f32.solver[0] == "eigen" and not f32.status[0] & ncti_jax.Status.NON_FINITE
    assert ref.etf[0] / 20 < f32.etf[0] <= ref.etf[0] * (1 + 1e-4)
    np.testing.assert_allclose(f32.ncc, ref.ncc, rtol=1e-5)
    np.testing.assert_allclose(f32.vc, ref.vc, rtol=1e-5)


def test_near_tied_models(rng):
    """Two copies of a model a hair apart, among others: every component within 1e-4, and
    the order of every pair whose reference scores differ by more than 1e-3."""
    feats, y = zoos.zoo(rng, n=600, n_classes=6, dims=(48, 64, 64))
    name = list(feats)[1]
    twin = feats[name] + rng.normal(scale=1e-4, size=feats[name].shape).astype(np.float32)
    feats[name + "_twin"] = np.maximum(twin, 0).astype(np.float32)
    ref = ref_of(feats, y)
    report = regimes.compare(score(feats, y), ref)
    assert report["problems"] == [], report


def test_undefined_model_is_unranked_and_json_is_strict():
    """A raw component that is NaN leaves the model unranked: out of the min-max, rank and
    score None in the records, strict JSON, and the others normalised without it."""
    models = ("a", "b", "c")
    comps = np.array([[10.0, 0.9, 3.0], [np.nan, 0.8, 3.1], [5.0, 0.5, 3.4]], np.float32)
    raw = _kernel.RawComponents(
        components=comps,
        pca_rank=np.array([8, 8, 8]),
        shrinkage=np.full(3, 1e-10, np.float32),
        solver=np.zeros(3, np.int32),
        residual=np.zeros(3, np.float32),
        gap=np.ones(3, np.float32),
        eigensolver=np.zeros(3, np.int32),
    )
    labels = _validate.check_labels(np.arange(20) % 4)
    with pytest.warns(UserWarning, match="1 model unranked.*: 'b'"):
        result = _result.finish(models, raw, {"a": 8, "b": 8, "c": 8}, 8, labels)
    assert list(result.ranked()) == [True, False, True]
    assert [result.models[i] for i in result.ranking] == ["a", "c", "b"]
    np.testing.assert_allclose(result.ncti[[0, 2]], [2.0, -1.0])
    records = result.to_records()
    assert records[-1]["model"] == "b" and records[-1]["rank"] is None
    assert records[-1]["ncti"] is None and records[-1]["etf"] is None
    assert "NON_FINITE" in records[-1]["status"]
    json.dumps(records, allow_nan=False)  # raises on NaN or infinity


@pytest.mark.parametrize("mode", ["fused", "device-fused"])
def test_fewshot_wide_fused_keeps_every_direction(rng, mode):
    """N = 40 samples of 2048-wide, well separated features through the fused kernel's
    N x N Gram: its rounding level is eps * trace, not eps * D * trace (which once dropped
    28 of 64 directions and moved etf by 40%)."""
    y = rng.permutation(np.arange(40) % 4)
    feats = {f"w{i}": regimes.relu_features(rng, y, 2048, s) for i, s in enumerate((1.0, 3.0))}
    ref = ref_of(feats, y)
    ctx = _plan.device_numerics() if mode == "device-fused" else contextlib.nullcontext()
    with ctx:
        result = score(feats, y, strategy="fused")
    report = regimes.compare(result, ref)
    assert report["problems"] == [], report


def test_fidelity_issue_generator_seeds_that_gave_nan():
    """The fidelity issue's post-ReLU generator (N = 5000, D = 512, C = 10): without the
    flush of sub-eps^2 probabilities, seeds 20 and 28 still give a NaN vc on the default
    path (float32 eigh of near one-hot class Grams). Fixed seeds: a regression test."""
    feats = {f"seed{s}": regimes.fidelity_issue_model(s) for s in (20, 28, 3)}
    y = np.arange(5000) % 10
    result = score(feats, y)
    assert result.ranked().all()
    report = regimes.compare(result, ref_of(feats, y))
    assert report["problems"] == [], report


@pytest.mark.parametrize("seed", [992045525, 3196395211])
@pytest.mark.parametrize("mode", ["host", "device-fused"])
def test_small_between_class_direction_is_kept(seed, mode):
    """Seeds where CI found it: a rank-5 model of the low-rank regime whose between-class
    spectrum ends at 6e-4 of its largest. float64 keeps that direction (scikit-learn's TOL
    is 1e-4); float32 through a Gram dropped it below sqrt(k eps) = 1.5e-3, and etf fell
    by sqrt(N) = 20 (a unit-variance column of the projection). A direct SVD keeps it."""
    feats, y = regimes.make("low-rank", np.random.default_rng(seed), size="tiny")
    ref = reference.score_zoo({m: np.asarray(x, np.float64) for m, x in feats.items()}, y)
    ctx = _plan.device_numerics() if mode == "device-fused" else contextlib.nullcontext()
    with ctx, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = ncti_jax.score_zoo(feats, y, strategy="fused" if mode != "host" else "auto")
    report = regimes.compare(result, ref)
    assert report["problems"] == [], report
