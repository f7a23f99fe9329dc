"""``ncti demo`` end to end on a reduced zoo (3 tiny models, 1 epoch)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

from ncti_jax import cli, ranking
from ncti_jax.bridges import demo


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
    text = capsys.readouterr().out
    assert f"{report['weighted_tau']:.3f}" in text
    pytest.importorskip("matplotlib")
    assert (out / "ranking.png").stat().st_size > 0 and (
        out / "ncti_vs_truth.png"
    ).stat().st_size > 0

    # A second run reuses the cached, safely reloaded zoo: no pre-training, the same numbers.
    cached = sorted(p.name for p in cache.iterdir())
    assert len(cached) == len(demo.QUICK_ZOO)
    assert (
        cli.main(
            [
                "demo",
                "--quick",
                "--out",
                str(tmp_path / "again"),
                "--cache-dir",
                str(cache),
                "--no-progress",
            ]
        )
        == 0
    )
    again = json.loads((tmp_path / "again" / "demo.json").read_text())
    assert again["seconds"]["pretrain"] == 0.0
    assert [r["ncti"] for r in again["models"]] == pytest.approx([r["ncti"] for r in records])
    assert sorted(p.name for p in cache.iterdir()) == cached
