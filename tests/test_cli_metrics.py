"""``ncti score --metrics``, and evaluate / plot on results that hold several metrics."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from ncti_jax import cli, io, ranking

import zoos

pytestmark = pytest.mark.filterwarnings("ignore:.*n_components reduced:UserWarning")

# Named as the group1 zoo, so that the published ground truth and table apply.
GROUP1 = sorted(ranking.finetune_accuracy()["group1"]["cifar10"])[:8]
METRICS = ("ncti", "hscore", "hscore_shrinkage")


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A feature store of 8 group1-named models and its `ncti score --metrics` output."""
    rng = np.random.default_rng(5)
    root = tmp_path_factory.mktemp("metrics")
    y = zoos.labels(rng, 240, 4)
    store = root / "store"
    store.mkdir()
    np.save(store / "labels.npy", y)
    feats = {}
    for i, name in enumerate(GROUP1):
        feats[name] = zoos.model_features(rng, y, 16 + 4 * i, 0.02 * (i + 1))
        np.save(store / f"{name}.npy", feats[name])
    out = root / "out"
    rc = cli.main(["score", str(store), "--metrics", ",".join(METRICS), "--out", str(out), "-q"])
    assert rc == 0
    return store, out, feats, y


def test_score_writes_one_block_per_metric(scored):
    import ncti_jax

    _, out, feats, y = scored
    doc = io.read_results(out)
    assert doc["schema"] == io.SCHEMA == "ncti-jax/scores/v3"
    assert doc["metrics"] == list(METRICS) and doc["settings"]["metrics"] == list(METRICS)
    want = ncti_jax.score_metrics(feats, y, metrics=METRICS)
    for metric in METRICS:
        records = io.metric_records(doc, metric)
        assert [r["model"] for r in records] == [want.models[i] for i in want[metric].ranking]
        got = io.read_scores(out, metric)
        np.testing.assert_allclose([got[m] for m in want.models], want[metric].values, rtol=1e-6)
    with open(out / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert set(rows[0]) >= {"model", "ncti", "ncti_rank", "etf", "hscore", "hscore_rank"}
    assert "hscore_shrinkage_shrinkage" in rows[0]
    assert [r["model"] for r in rows] == [r["model"] for r in io.metric_records(doc, "ncti")]
    assert io.read_scores(out / "scores.csv", "hscore") == pytest.approx(
        io.read_scores(out, "hscore")
    )
    assert io.scored_metrics(out) == list(METRICS) == io.scored_metrics(out / "scores.csv")


def test_table_shows_metrics_side_by_side(scored, tmp_path, capsys):
    store, *_ = scored
    assert cli.main(["score", str(store), "--metrics", "hscore,ncti", "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["model", "ncti", "hscore"]  # result order, not argument order
    assert len(lines) == 2 + len(GROUP1)


def test_unknown_metric_is_one_line_exit_2(scored, tmp_path, capsys):
    store, *_ = scored
    rc = cli.main(["score", str(store), "--metrics", "ncti,logmee", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "'logmee'" in err[0] and "Traceback" not in err[0]
    assert not (tmp_path / "scores.json").exists()


def test_evaluate_reports_every_metric(scored, tmp_path, capsys):
    _, out, _, _ = scored
    rc = cli.main(
        [
            "evaluate",
            str(out),
            "--truth",
            "group1:cifar10",
            "--bootstrap",
            "50",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in printed[2:]}
    assert set(rows) == set(METRICS)
    doc = json.loads((tmp_path / "evaluate.json").read_text())
    truth = ranking.published_truth("group1:cifar10")
    for metric in METRICS:
        scores = io.read_scores(out, metric)
        names = [m for m in scores if m in truth]
        want = ranking.weighted_tau([scores[m] for m in names], [truth[m] for m in names])
        got = doc["by_metric"][metric]["metrics"]["weighted_tau"]
        assert got == pytest.approx(float(want))
        assert float(rows[metric][2]) == pytest.approx(float(want), abs=5e-4)
    with open(tmp_path / "evaluate.csv", newline="") as f:
        assert [r["metric"] for r in csv.DictReader(f)] == list(METRICS)


def test_evaluate_published_prints_the_sfda_table(scored, capsys):
    _, out, _, _ = scored
    rc = cli.main(
        ["evaluate", str(out), "--truth", "group1:dtd", "--published", "--bootstrap", "20"]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "published weighted tau on group1:dtd" in text
    assert "sfda 0.597" in text and "leep 0.486" in text and "logme 0.647" in text
    table = ranking.published_wtau()
    assert set(table) == {"leep", "logme", "nleep", "parc", "sfda"}
    assert all(len(v) == 11 for v in table.values())
    assert table["sfda"]["cifar10"] == 0.949 and table["parc"]["aircraft"] == -0.182


def test_evaluate_published_needs_a_group1_truth(scored, tmp_path, capsys):
    _, out, _, _ = scored
    truth = tmp_path / "truth.json"
    truth.write_text(json.dumps({m: 90.0 - i for i, m in enumerate(GROUP1)}))
    rc = cli.main(["evaluate", str(out), "--truth", str(truth), "--published"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--published needs --truth group1:DATASET" in err[0]


def test_plot_draws_every_metric(scored, tmp_path):
    pytest.importorskip("matplotlib")
    _, out, _, _ = scored
    assert cli.main(["plot", str(out), "--truth", "group1:cifar10", "--out", str(tmp_path)]) == 0
    for name in ("ranking.png", "metrics_vs_truth.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_metrics_that_read_logits_use_the_stores(scored, tmp_path, capsys):
    import ncti_jax

    store, _, feats, y = scored
    rng = np.random.default_rng(8)
    (store / "logits").mkdir(exist_ok=True)
    logits = {}
    try:
        for name, x in feats.items():
            logits[name] = (x @ rng.normal(size=(x.shape[1], 7))).astype(np.float32)
            np.save(store / "logits" / f"{name}.npy", logits[name])
        out = tmp_path / "out"
        rc = cli.main(["score", str(store), "--metrics", "leep,nce", "--out", str(out), "-q"])
        assert rc == 0
        want = ncti_jax.score_metrics(feats, y, metrics="leep,nce", logits=logits)
        for metric in ("leep", "nce"):
            got = io.read_scores(out, metric)
            np.testing.assert_allclose(
                [got[m] for m in want.models], want[metric].values, rtol=1e-6
            )
        capsys.readouterr()
        (store / "logits" / f"{GROUP1[2]}.npy").unlink()
        (store / "logits" / f"{GROUP1[5]}.npy").unlink()
        rc = cli.main(["score", str(store), "--metrics", "leep", "--out", str(tmp_path / "o2")])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and "Traceback" not in err[0]
        assert GROUP1[2] in err[0] and GROUP1[5] in err[0] and "--with-logits" in err[0]
    finally:
        for f in (store / "logits").iterdir():
            f.unlink()
        (store / "logits").rmdir()
