"""Ranking metrics against scipy, the published CIFAR-10 check, ``ncti evaluate``/``plot``."""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import pytest
import scipy.stats

from ncti_jax import cli, ranking


def random_pairs(rng, n_pairs=200):
    for i in range(n_pairs):
        m = int(rng.integers(2, 16))
        tied = i % 2 == 1
        x = rng.integers(0, 4, m).astype(float) if tied else rng.normal(size=m)
        y = rng.integers(0, 3, m).astype(float) if i % 3 == 0 else rng.normal(size=m) * 10
        yield x, y


def assert_same_or_both_nan(got, want, atol=1e-12):
    if np.isnan(want):
        assert np.isnan(got)
    else:
        assert got == pytest.approx(want, abs=atol)


@pytest.mark.filterwarnings("ignore::scipy.stats.ConstantInputWarning")
def test_correlations_equal_scipy_on_random_and_tied_inputs(rng):
    for x, y in random_pairs(rng):
        assert_same_or_both_nan(
            float(ranking.weighted_tau(x, y)), scipy.stats.weightedtau(x, y).statistic
        )
        assert_same_or_both_nan(
            float(ranking.kendall_tau(x, y)), scipy.stats.kendalltau(x, y).statistic
        )
        assert_same_or_both_nan(
            float(ranking.spearman(x, y)), scipy.stats.spearmanr(x, y).statistic
        )
        if len(set(x)) > 1 and len(set(y)) > 1:
            assert float(ranking.pearson(x, y)) == pytest.approx(
                scipy.stats.pearsonr(x, y).statistic, abs=1e-12
            )


def test_batched_equals_one_at_a_time(rng):
    x = rng.normal(size=(7, 9))
    y = rng.integers(0, 5, size=(7, 9)).astype(float)
    for name, metric in ranking.METRICS.items():
        batched = metric(x, y)
        assert batched.shape == (7,), name
        for i in range(7):
            assert_same_or_both_nan(float(batched[i]), float(metric(x[i], y[i])))


def test_top_k_and_recall():
    scores = np.array([0.9, 0.8, 0.1, 0.5])
    truth = np.array([80.0, 90.0, 95.0, 85.0])
    assert ranking.top_k_relative_accuracy(scores, truth, 1) == pytest.approx(80 / 95)
    assert ranking.top_k_relative_accuracy(scores, truth, 2) == pytest.approx(90 / 95)
    assert ranking.top_k_relative_accuracy(scores, truth, 4) == 1.0
    # top-2 by score: {0, 1}; best two by truth: {2, 1}
    assert ranking.recall_at_k(scores, truth, 2) == 0.5
    assert ranking.recall_at_k(scores, truth, 4) == 1.0
    with pytest.raises(ValueError, match="k must be an integer in"):
        ranking.recall_at_k(scores, truth, 5)


def test_bad_inputs():
    with pytest.raises(ValueError, match="same shape"):
        ranking.weighted_tau([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="at least 2 models"):
        ranking.kendall_tau([1.0], [2.0])
    with pytest.raises(ValueError, match="finite"):
        ranking.pearson([1.0, np.nan], [1.0, 2.0])


def test_bootstrap_interval_is_seeded_and_brackets_the_estimate(rng):
    x = rng.normal(size=12)
    y = x + rng.normal(size=12) * 0.5
    lo, hi = ranking.bootstrap(ranking.weighted_tau, x, y, n_resamples=500, seed=3)
    assert (lo, hi) == ranking.bootstrap(ranking.weighted_tau, x, y, n_resamples=500, seed=3)
    assert -1 <= lo < float(ranking.weighted_tau(x, y)) < hi <= 1


def test_published_tables_shipped():
    tables = ranking.finetune_accuracy()
    assert len(tables["group1"]) == 11 and all(len(v) == 11 for v in tables["group1"].values())
    assert len(tables["group2"]) == 13 and all(len(v) == 12 for v in tables["group2"].values())
    truth = ranking.published_truth("group2:resisc")
    assert all(v > 0 for v in truth.values()) and len(truth) < 12  # unmeasured zeros left out
    with pytest.raises(ValueError, match="unknown ground-truth group 'group9'"):
        ranking.published_truth("group9:cifar10")
    with pytest.raises(ValueError, match="no group1 accuracies for dataset 'mnist'"):
        ranking.published_truth("group1:mnist")


def published_scores_path():
    return resources.files("ncti_jax.data").joinpath("published_ncti_cifar10_group1.json")


def test_published_cifar10_weighted_tau_through_evaluate(capsys):
    with resources.as_file(published_scores_path()) as path:
        assert cli.main(["evaluate", str(path), "--truth", "group1:cifar10"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.strip().startswith("weighted_tau"))
    assert line.split()[1] == "0.843"
    scores = json.loads(published_scores_path().read_text())["ncti"]
    truth = ranking.published_truth("group1:cifar10")
    names = sorted(scores)
    assert float(ranking.weighted_tau([scores[m] for m in names], [truth[m] for m in names])) == (
        pytest.approx(
            scipy.stats.weightedtau(
                [scores[m] for m in names], [truth[m] for m in names]
            ).statistic,
            abs=1e-12,
        )
    )


def test_truth_file_errors(tmp_path, capsys):
    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps({"a": 1.0, "b": 2.0, "c": 0.5}))
    (tmp_path / "missing.csv").write_text("model,accuracy\na,90\nb,91\n")
    (tmp_path / "unknown.json").write_text(json.dumps({"a": 90, "b": 91, "c": 80, "zz": 70}))
    (tmp_path / "good.json").write_text(json.dumps({"accuracy": {"a": 90, "b": 91, "c": 80}}))
    assert cli.main(["evaluate", str(scores), "--truth", str(tmp_path / "missing.csv")]) == 2
    assert "no accuracy for model(s) ['c']" in capsys.readouterr().err
    # A truth table with more models than the results: the intersection, with a warning.
    assert cli.main(["evaluate", str(scores), "--truth", str(tmp_path / "unknown.json")]) == 0
    assert "no score for model(s) ['zz']" in capsys.readouterr().err
    assert cli.main(["evaluate", str(scores), "--truth", str(tmp_path / "good.json")]) == 0
    assert "weighted_tau" in capsys.readouterr().out
    assert cli.main(["evaluate", str(scores), "--truth", "group1:cifar10"]) == 2
    assert "no accuracy for model(s) ['a', 'b', 'c']" in capsys.readouterr().err


def test_evaluate_all_datasets(tmp_path, capsys):

    tables = ranking.finetune_accuracy()["group1"]
    rng = np.random.default_rng(0)
    for dataset in ("cifar10", "dtd", "pets"):
        acc = tables[dataset]
        records = [{"model": m, "ncti": a + rng.normal()} for m, a in acc.items()]
        doc = {"schema": "ncti-jax/scores/v2", "models": records}
        (tmp_path / dataset).mkdir()
        (tmp_path / dataset / "scores.json").write_text(json.dumps(doc))
    assert cli.main(["evaluate", str(tmp_path), "--all", "--truth", "group1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines] == ["dataset", "cifar10", "dtd", "pets", "mean"]
    wtau = [float(ln.split()[1]) for ln in lines[1:4]]
    assert float(lines[4].split()[1]) == pytest.approx(np.mean(wtau), abs=1e-3)


def test_plots_are_written(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    with resources.as_file(published_scores_path()) as path:
        assert (
            cli.main(["plot", str(path), "--truth", "group1:cifar10", "--out", str(tmp_path)]) == 0
        )
    for name in ("ranking.png", "ncti_vs_truth.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
