"""Every edge case of docs/algorithm.md §4: clear errors before tracing, or defined results."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import ncti_jax
from ncti_jax import Status, _validate, reference

import zoos

pytestmark = pytest.mark.filterwarnings("ignore:.*n_components reduced:UserWarning")


@pytest.fixture(scope="module")
def zoo():
    rng = np.random.default_rng(7)
    return zoos.zoo(rng, n=150, n_classes=4, dims=(12, 20))


def test_labels_column_vector(zoo):
    feats, y = zoo
    a = ncti_jax.score_zoo(feats, y)
    b = ncti_jax.score_zoo(feats, y[:, None])
    np.testing.assert_array_equal(a.ncti, b.ncti)


def test_whole_float_labels_accepted_fractional_rejected(zoo):
    feats, y = zoo
    np.testing.assert_array_equal(
        ncti_jax.score_zoo(feats, y.astype(np.float32)).ncti, ncti_jax.score_zoo(feats, y).ncti
    )
    bad = y.astype(np.float64)
    bad[3] = 1.5
    with pytest.raises(ValueError, match=r"not whole numbers.*1\.5 at index 3"):
        ncti_jax.score_zoo(feats, bad)
    bad[3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ncti_jax.score_zoo(feats, bad)


def test_too_few_samples():
    x = {"m": np.ones((1, 3), np.float32)}
    with pytest.raises(ValueError, match="at least 2 samples"):
        ncti_jax.score_zoo(x, [0])
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="3 samples for 3 classes"):
        ncti_jax.score_zoo({"m": rng.random((3, 4))}, [0, 1, 2])


def test_single_class():
    with pytest.raises(ValueError, match="single class"):
        ncti_jax.score_zoo({"m": np.random.default_rng(0).random((10, 4))}, np.zeros(10))


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_non_finite_features_name_model_and_count(zoo, bad_value):
    feats, y = zoo
    broken = dict(feats)
    name = list(feats)[1]
    x = feats[name].copy()
    x[[1, 5, 9], 2] = bad_value
    broken[name] = x
    with pytest.raises(ValueError, match=rf"model '{name}'.* 3 NaN or infinite"):
        ncti_jax.score_zoo(broken, y)


def test_mismatched_n_names_model(zoo):
    feats, y = zoo
    name = next(iter(feats))
    with pytest.raises(
        ValueError, match=rf"model '{name}': features have 149 samples but the labels have 150"
    ):
        ncti_jax.score_zoo(dict(feats, **{name: feats[name][:-1]}), y)
    with pytest.raises(ValueError, match="labels have 149"):
        ncti_jax.score_zoo(feats, y[:-1])


def test_bad_shapes_and_types(zoo):
    feats, y = zoo
    with pytest.raises(ValueError, match=r"model 'm': features must have shape \(N, D\)"):
        ncti_jax.score_zoo({"m": np.ones(150)}, y)
    with pytest.raises(TypeError, match="model 'm': features must be real numbers"):
        ncti_jax.score_zoo({"m": np.ones((150, 3), complex)}, y)
    with pytest.raises(ValueError, match="empty"):
        ncti_jax.score_zoo({}, y)
    with pytest.raises(TypeError, match="mapping"):
        ncti_jax.score_zoo([1, 2, 3], y)
    with pytest.raises(ValueError, match="labels must have shape"):
        ncti_jax.score_zoo(feats, np.zeros((150, 2)))
    with pytest.raises(ValueError, match="names has 1 entries for 2 models"):
        ncti_jax.score_zoo(np.ones((2, 150, 3)), y, names=["a"])


def test_bad_arguments(zoo):
    feats, y = zoo
    with pytest.raises(ValueError, match="n_components must be >= 1"):
        ncti_jax.score_zoo(feats, y, n_components=0)
    with pytest.raises(TypeError, match="n_components"):
        ncti_jax.score_zoo(feats, y, n_components=2.5)
    with pytest.raises(ValueError, match="precision must be one of"):
        ncti_jax.score_zoo(feats, y, precision="fast")
    with pytest.raises(ValueError, match="dtype must be float32 or float64"):
        ncti_jax.score_zoo(feats, y, dtype="float16")


def test_float64_needs_x64(zoo):
    feats, y = zoo
    if jax.config.read("jax_enable_x64"):
        pytest.skip("x64 is enabled globally")
    with pytest.raises(ValueError, match="enable_x64"):
        ncti_jax.score_zoo(feats, y, dtype="float64")


def test_errors_come_before_tracing(zoo, monkeypatch):
    feats, y = zoo
    from ncti_jax import _score

    def fail(*args, **kwargs):
        raise AssertionError("the kernel was reached")

    monkeypatch.setattr(_score, "zoo_components", fail)
    bad = dict(feats, m=np.full((150, 3), np.nan))
    with pytest.raises(ValueError, match="model 'm'"):
        ncti_jax.score_zoo(bad, y)


def test_one_sample_class_warns_and_is_scored(zoo):
    feats, y = zoo
    y = y.copy()
    y[0] = 99  # a class of its own
    with pytest.warns(UserWarning, match="single sample"):
        result = ncti_jax.score_zoo(feats, y)
    assert np.isfinite(result.ncti).all()
    assert (result.status & Status.SINGLETON_CLASS).all()
    ref = reference.score_zoo(feats, y)
    np.testing.assert_allclose(result.etf, ref.etf, rtol=1e-4)
    np.testing.assert_allclose(result.vc, ref.vc, rtol=1e-4)


def test_gapped_labels_equal_contiguous(zoo):
    feats, y = zoo
    np.testing.assert_allclose(
        ncti_jax.score_zoo(feats, np.array([3, 10, 11, 40])[y]).etf,
        ncti_jax.score_zoo(feats, y).etf,
        rtol=1e-6,
    )


def test_k_reduced_by_d_and_by_n(rng):
    y = zoos.labels(rng, 40, 3)
    feats = {
        "narrow": zoos.model_features(rng, y, 8, 0.2),
        "wide": zoos.model_features(rng, y, 90, 0.2),
    }
    with pytest.warns(
        UserWarning,
        match=r"n_components reduced from 64 for 2 models: 'narrow' to 8 \(D = 8\), 'wide' to 39 \(N - 1 = 39\)",
    ):
        result = ncti_jax.score_zoo(feats, y)
    assert result.pca_rank.tolist() == [8, 39]
    assert all(s & Status.K_REDUCED for s in result.status)
    ref = reference.score_zoo(feats, y)
    np.testing.assert_array_equal(ref.pca_rank, [8, 39])
    # With N - 1 <= k the within-class scatter is singular (rank N - C = 37 of 39
    # directions): LDA divides by singular values near the solver's cut-off, and
    # float32 rounding moves etf by up to a few 1e-3 (seen: 2.4e-3). Parity is
    # therefore checked in float64, where the engine and the reference agree.
    with jax.enable_x64(True):
        exact = ncti_jax.score_zoo(feats, y, dtype="float64")
    for name in ("etf", "ncc", "vc"):
        np.testing.assert_allclose(getattr(exact, name), getattr(ref, name), rtol=1e-7)
        np.testing.assert_allclose(getattr(result, name)[0], getattr(ref, name)[0], rtol=1e-4)


@pytest.mark.parametrize("kind", ["zeros", "constant"])
def test_constant_features_are_defined(zoo, kind):
    feats, y = zoo
    value = 0.0 if kind == "zeros" else 3.7
    flat = dict(feats, flat=np.full((150, 16), value, np.float32))
    with pytest.warns(UserWarning, match="1 model with features of no variance .*: 'flat'"):
        result = ncti_jax.score_zoo(flat, y)
    i = result.models.index("flat")
    assert result.status[i] & Status.NO_VARIANCE
    assert result.pca_rank[i] == 0
    assert np.isfinite(result.ncti).all()
    # No features: the LDA predicts the priors. etf = 0, ncc = sum(p_c^2), vc from rank-1 blocks.
    priors = np.bincount(y) / len(y)
    assert result.etf[i] == 0
    assert result.ncc[i] == pytest.approx(np.sum(priors**2), rel=1e-5)
    counts = np.bincount(y)
    assert result.vc[i] == pytest.approx(
        np.log(np.sum(np.sqrt(counts)) * np.linalg.norm(priors)), rel=1e-5
    )
    ref = reference.model_components(flat["flat"], y)
    assert (ref.etf, ref.pca_rank) == (0.0, 0)
    assert ref.ncc == pytest.approx(result.ncc[i], rel=1e-5)
    assert ref.vc == pytest.approx(result.vc[i], rel=1e-5)


def test_rank_deficient_features(rng):
    y = zoos.labels(rng, 200, 4)
    low_rank = rng.random((200, 5)) @ rng.random((5, 40))
    feats = {"low": low_rank.astype(np.float32), "full": zoos.model_features(rng, y, 40, 0.1)}
    with pytest.warns(
        UserWarning, match=r"principal directions have variance for 1 model: 'low' \(5 of 40\)"
    ):
        result = ncti_jax.score_zoo(feats, y)
    assert result.pca_rank.tolist() == [5, 40]
    assert result.status[0] & Status.RANK_DEFICIENT
    ref = reference.score_zoo({"low": low_rank}, y)
    assert ref.pca_rank.tolist() == [5]
    for name in ("etf", "ncc", "vc"):
        np.testing.assert_allclose(getattr(result, name)[0], getattr(ref, name)[0], rtol=1e-3)


def test_single_model_zoo(zoo):
    feats, y = zoo
    name = next(iter(feats))
    with pytest.warns(UserWarning, match="a zoo of one model"):
        result = ncti_jax.score_zoo({name: feats[name]}, y)
    assert result.ncti.tolist() == [0.0]
    assert result.status[0] & Status.CONSTANT_COMPONENT
    assert np.isfinite(result.etf).all()


def test_duplicate_model_names():
    with pytest.raises(ValueError, match="unique"):
        ncti_jax.score_zoo(np.ones((2, 10, 3)), np.arange(10) % 2, names=["a", "a"])


def test_integer_and_bool_features(zoo):
    _, y = zoo
    rng = np.random.default_rng(1)
    result = ncti_jax.score_zoo(
        {"ints": rng.integers(0, 50, (150, 10)), "bools": rng.random((150, 12)) > 0.5}, y
    )
    assert np.isfinite(result.ncti).all()


def test_nonfinite_scan_is_exact_when_column_sums_overflow():
    x = np.full((20, 3), 3e38, np.float32)  # finite, but every column sum overflows
    assert _validate.count_nonfinite(x) == 0
    x[4, 1] = np.nan
    x[7, 2] = -np.inf
    assert _validate.count_nonfinite(x) == 2
