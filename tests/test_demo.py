"""``ncti demo`` end to end on a reduced zoo (3 tiny models, 1 pre-training epoch)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

from ncti_jax import cli, ranking
from ncti_jax import metrics as registry
from ncti_jax.bridges import demo


def _check_metrics(report: dict) -> None:
    """Every available metric is reported: its tau and top-1 finite, or null with a reason."""
    assert list(report["metrics"]) == list(registry.available())
    names = [r["model"] for r in report["models"]]
    acc = np.array([r["finetune_accuracy"] for r in report["models"]])
    for metric, q in report["metrics"].items():
        for key in ("weighted_tau", "top1_rel_acc"):
            value = q[key]
            assert (value is not None and math.isfinite(value)) or q.get("reason"), (metric, key)
        values = np.array([np.nan if r[metric] is None else r[metric] for r in report["models"]])
        ranked = np.isfinite(values)
        assert q["n_ranked"] == int(ranked.sum()), metric
        if q["weighted_tau"] is not None:
            expected = ranking.weighted_tau(values[ranked], acc[ranked])
            assert q["weighted_tau"] == pytest.approx(float(expected)), metric
        if q["top1_rel_acc"] is not None:
            assert q["pick"] in names
            assert q["top1_rel_acc"] == pytest.approx(acc[names.index(q["pick"])] / acc.max())


def test_quick_demo_report_is_consistent(tmp_path, capsys):
    out, cache = tmp_path / "out", tmp_path / "cache"
    args = ["demo", "--quick", "--out", str(out), "--cache-dir", str(cache), "--no-progress"]
    assert cli.main(args) == 0
    report = json.loads((out / "demo.json").read_text())
    records = report["models"]
    assert [r["model"] for r in records] != [] and len(records) == len(demo.QUICK_ZOO)
    assert [r["rank"] for r in records] == list(range(1, len(records) + 1))
    scores = np.array([r["ncti"] for r in records])
    assert (np.diff(scores) <= 0).all()  # sorted by score, best first
    acc = np.array([r["finetune_accuracy"] for r in records])
    for r in records:
        for key in ("ncti", "etf", "ncc", "vc", "finetune_accuracy"):
            assert np.isfinite(r[key]), key
    assert ((acc >= 0) & (acc <= 1)).all()
    assert report["weighted_tau"] == pytest.approx(float(ranking.weighted_tau(scores, acc)))
    top = acc[0] / acc.max()
    assert report["top1_rel_acc"] == pytest.approx(top)
    assert all(v >= 0 for v in report["seconds"].values())
    _check_metrics(report)
    assert report["metrics"]["ncti"]["weighted_tau"] == report["weighted_tau"]

    # The untrained member is in the zoo, and the gap to the best pre-trained one reported.
    untrained = [m.name for m in demo.QUICK_ZOO if m.epochs == 0]
    assert untrained and set(untrained) <= {r["model"] for r in records}
    gap = report["pretraining_gap"]
    truth = {r["model"]: r["finetune_accuracy"] for r in records}
    assert gap["untrained"] in untrained and gap["best_pretrained"] not in untrained
    assert gap["points"] == pytest.approx(
        100 * (truth[gap["best_pretrained"]] - truth[gap["untrained"]])
    )
    assert report["protocol"] == demo.make_config(quick=True).protocol()

    text = capsys.readouterr().out
    assert f"{report['weighted_tau']:.3f}" in text
    assert all(f"\n{m} " in text for m in report["metrics"])
    pytest.importorskip("matplotlib")
    assert (out / "ranking.png").stat().st_size > 0 and (
        out / "ncti_vs_truth.png"
    ).stat().st_size > 0

    # --seeds 0,1: seed 0 reuses the cached, safely reloaded zoo (no pre-training, the same
    # numbers); seed 1 pre-trains its own; seeds.json has every metric's tau per seed.
    cached = sorted(p.name for p in cache.iterdir())
    assert len(cached) == len(demo.QUICK_ZOO)
    again = tmp_path / "again"
    args = ["demo", "--quick", "--seeds", "0,1", "--out", str(again), "--cache-dir", str(cache)]
    assert cli.main([*args, "--no-progress"]) == 0
    seed0 = json.loads((again / "seed-0" / "demo.json").read_text())
    assert seed0["seconds"]["pretrain"] == 0.0
    assert [r["ncti"] for r in seed0["models"]] == pytest.approx([r["ncti"] for r in records])
    assert set(cached) < {p.name for p in cache.iterdir()}
    assert len(list(cache.iterdir())) == 2 * len(demo.QUICK_ZOO)
    seed1 = json.loads((again / "seed-1" / "demo.json").read_text())
    _check_metrics(seed1)
    summary = json.loads((again / "seeds.json").read_text())
    assert summary["seeds"] == [0, 1]
    assert list(summary["metrics"]) == list(registry.available())
    for metric, q in summary["metrics"].items():
        taus = [r["metrics"][metric]["weighted_tau"] for r in (seed0, seed1)]
        assert q["weighted_tau"]["values"] == taus
        defined = [t for t in taus if t is not None]
        if defined:
            assert q["weighted_tau"]["mean"] == pytest.approx(np.mean(defined))
    text = capsys.readouterr().out
    assert "mean +- std" in text and all(f"\n{m} " in text for m in summary["metrics"])
