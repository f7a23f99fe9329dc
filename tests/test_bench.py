"""The benchmark suite on the tiny scenario: the results document, the cache, the pieces."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from ncti_jax import cli, reference
from ncti_jax.benchmarks import authors, contenders, data, floor, report, scenarios, worker

GPU_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.sh"
TINY = scenarios.SCENARIOS["tiny"]


@pytest.fixture
def store(tmp_path, seed):
    return data.ensure_store(tmp_path / "cache", TINY, seed)


def test_bench_writes_a_results_document(tmp_path, seed, capsys):
    code = cli.main(
        [
            "bench",
            "--quick",
            "--scenario=tiny",
            "--scenario=big-zoo",
            "--repeats=2",
            "--contenders=jax,reference",
            f"--seed={seed}",
            f"--cache={tmp_path / 'cache'}",
            f"--out={tmp_path / 'out'}",
        ]
    )
    assert code == 0
    printed = capsys.readouterr()
    (path,) = (tmp_path / "out").glob("*.json")
    doc = json.loads(path.read_text())
    assert doc["schema"] == report.SCHEMA
    machine = doc["machine"]
    assert path.name.startswith(machine["tag"] + "-")
    assert machine["cores"] >= 1 and machine["cpu"]
    assert {"python", "jax", "jaxlib", "numpy", "scipy", "scikit-learn", "ncti_jax"} <= set(
        machine["versions"]
    )
    assert machine["host"]["bandwidth_gbps"] > 0 and machine["host"]["matmul_gflops"] > 0

    if jax.default_backend() == "cpu":
        assert "big-zoo" not in doc["scenarios"]
        assert "skipping big-zoo" in printed.err
    entry = doc["scenarios"]["tiny"]
    assert entry["settings"]["seed"] == seed
    assert entry["shape"] == {
        "models": 3,
        "n_samples": TINY.n_samples,
        "n_classes": TINY.n_classes,
        "dims": dict(TINY.dims),
    }
    assert entry["floor"]["bytes"] == 4 * TINY.n_samples * sum(d for _, d in TINY.dims)
    assert entry["floor"]["flops"] == pytest.approx(sum(entry["floor"]["flops_by_term"].values()))

    jx, ref = entry["contenders"]["jax"], entry["contenders"]["reference"]
    for c in (jx, ref):
        assert len(c["times_s"]) == c["repeats"] == 2
        assert min(c["times_s"]) > 0 and c["first_s"] > 0 and c["peak_rss_bytes"] > 0
        assert c["median_s"] == pytest.approx(np.median(c["times_s"]))
        assert c["min_s"] <= c["median_s"] <= c["max_s"]
        assert c["floor_s"] > 0
        assert c["time_over_floor"] == pytest.approx(c["median_s"] / c["floor_s"])
    assert jx["speedup"]["reference"] == pytest.approx(ref["median_s"] / jx["median_s"])
    assert ref["speedup"]["reference"] == pytest.approx(1.0)
    assert "authors" not in jx["speedup"]
    assert jx["compile_s"] == pytest.approx(jx["first_s"] - jx["median_s"])
    assert ref["compile_s"] is None
    assert "accuracy" not in ref
    assert set(jx["accuracy"]["max_rel_err"]) == {"etf", "ncc", "vc"}
    assert max(jx["accuracy"]["max_rel_err"].values()) < 1e-3
    assert jx["accuracy"]["same_ranking"] is True

    assert all(word in printed.out for word in ("tiny", "jax", "reference", "same rank"))

    # A second invocation merges its scenarios into the same file.
    doc["scenarios"]["earlier"] = entry
    path.write_text(json.dumps(doc))
    assert report.load_document(path, machine)["scenarios"].keys() == {"tiny", "earlier"}


def test_store_is_deterministic_and_resumable(tmp_path, seed):
    first = data.ensure_store(tmp_path / "a", TINY, seed)
    feats, labels = data.load_store(first)
    assert list(feats) == list(TINY.models)
    assert set(np.unique(labels)) == set(range(TINY.n_classes))
    for (_, dim), x in zip(TINY.dims, feats.values(), strict=True):
        assert isinstance(x, np.memmap) and x.dtype == np.float32
        assert x.shape == (TINY.n_samples, dim) and x.min() >= 0

    second = data.ensure_store(tmp_path / "b", TINY, seed)
    removed = second / f"{TINY.models[1]}.npy"
    removed.unlink()
    data.ensure_store(tmp_path / "b", TINY, seed)  # regenerates the missing model only
    for name in (*TINY.models, "labels"):
        assert (first / f"{name}.npy").read_bytes() == (second / f"{name}.npy").read_bytes()

    other = data.ensure_store(tmp_path / "c", TINY, seed + 1)
    assert (first / "labels.npy").read_bytes() != (other / "labels.npy").read_bytes()


def test_authors_pipeline_matches_the_reference(store):
    pytest.importorskip("sklearn")
    feats, labels = data.load_store(store)
    got = authors.score_zoo(feats, labels)
    want = reference.score_zoo(feats, labels)
    assert got["models"] == list(want.models)
    for comp in ("etf", "ncc", "vc"):
        np.testing.assert_allclose(got[comp], getattr(want, comp), rtol=1e-6)
    assert got["ranking"] == [want.models[i] for i in want.ranking]


def test_device_contender_gets_device_arrays(store):
    feats, _ = data.load_store(store)
    placed = contenders.prepare(contenders.CONTENDERS["jax-device"], feats)
    assert all(isinstance(x, jax.Array) for x in placed.values())
    np.testing.assert_array_equal(placed[TINY.models[0]], feats[TINY.models[0]])
    assert contenders.prepare(contenders.CONTENDERS["jax"], feats) is feats


def test_long_runs_make_fewer_repeats(store):
    record = worker.measure(
        contenders.CONTENDERS["reference"],
        store,
        repeats=3,
        long_run=0.0,
        long_repeats=1,
        label="test",
    )
    assert len(record["times_s"]) == 1
    assert "1 repeats instead of 3" in record["repeats_note"]


def test_failed_contender_is_reported(store):
    timed = worker.measure(
        contenders.CONTENDERS["reference"],
        store,
        repeats=1,
        long_run=60.0,
        long_repeats=1,
        label="test",
    )
    records = {"reference": timed, "jax": {"contender": "jax", "error": "killed by SIGKILL"}}
    machine = {"host": {"bandwidth_gbps": 10.0, "matmul_gflops": 100.0}}
    entry = report.summarise(TINY, records, timed["outputs"], machine, {})
    assert entry["contenders"]["jax"]["error"] == "killed by SIGKILL"
    assert entry["contenders"]["reference"]["median_s"] == timed["times_s"][0]
    assert "error: killed by SIGKILL" in report.format_table({"tiny": entry})


def test_floor_is_the_slower_of_reading_and_computing():
    cost = floor.scenario_cost(TINY)
    assert floor.floor_seconds(cost, bandwidth_gbps=1e-9, matmul_gflops=1e9) == cost["bytes"]
    assert floor.floor_seconds(cost, bandwidth_gbps=1e9, matmul_gflops=1e-9) == cost["flops"]
    n, d, c = 1000, 100, 10
    terms = floor.model_flops(n, d, c)
    assert terms["covariance"] == n * d * d
    assert terms["projection"] == 2 * n * d * 64


def test_sweep_plot(tmp_path):
    pytest.importorskip("matplotlib")
    timing = {"median_s": 1.0, "min_s": 0.9, "max_s": 1.2}
    entries = {
        f"sweep-m-{m}": {"sweep": "sweep-m", "value": m, "contenders": {"jax": timing}}
        for m in (2, 4)
    }
    png = report.plot_sweeps(entries, tmp_path / "sweeps.png", "test")
    assert png.read_bytes().startswith(b"\x89PNG")
    assert report.plot_sweeps({}, tmp_path / "none.png", "test") is None


def test_list_and_unknown_names(capsys):
    assert cli.main(["bench", "--list"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in ("cifar10-zoo", "big-zoo", "sweep-m", "sweep-c"))
    assert cli.main(["bench", "--scenario", "no-such-zoo"]) == 2
    assert cli.main(["bench", "--quick", "--contenders", "jax,numba"]) == 2
    assert "numba" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(GPU_SCRIPT)], check=True)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_script_quick(tmp_path):
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "NCTI_BENCH_CACHE": str(tmp_path / "cache"),
        "NCTI_BENCH_RESULTS": str(tmp_path / "results"),
        "OUT": str(tmp_path / "out"),
    }
    (tmp_path / "out").mkdir()
    subprocess.run(["bash", str(GPU_SCRIPT), "--quick"], env=env, check=True)
    (path,) = (tmp_path / "out").glob("*.json")
    assert set(json.loads(path.read_text())["scenarios"]["tiny"]["contenders"]) == {
        "jax",
        "jax-device",
    }


def test_bench_writes_under_the_current_directory(tmp_path, monkeypatch):
    """Without --out and --cache, `ncti bench` writes into ./ncti-bench, never beside its code."""
    from ncti_jax.benchmarks import cli as bench_cli

    package = Path(bench_cli.__file__).resolve().parent

    def files():
        return sorted(p for p in package.rglob("*") if "__pycache__" not in p.parts)

    before = files()
    monkeypatch.chdir(tmp_path)
    args = cli._parser("bench").parse_args(["bench"])
    assert args.out.resolve() == tmp_path / "ncti-bench"
    assert args.cache.resolve().parent == tmp_path / "ncti-bench"
    assert cli.main(["bench", "--generate-only", "--scenario", "tiny"]) == 0
    stores = list((tmp_path / "ncti-bench").rglob("labels.npy"))
    assert [p.parent.name for p in stores] == ["tiny-seed0"]
    assert files() == before


def test_metrics_benchmark_times_and_checks_each_metric(tmp_path, capsys):
    from ncti_jax.benchmarks import metrics as metrics_bench

    argv = ["--scenario", "tiny", "--rows", "200", "--metrics", "ncti,hscore,leep,etran"]
    argv += ["--repeats", "1", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path)]
    assert metrics_bench.main(argv) == 0
    report = json.loads((tmp_path / "metrics-tiny-200.json").read_text())
    assert report["n_samples"] == 200 and list(report["per_metric"]) == [
        "ncti",
        "hscore",
        "leep",
        "etran",
    ]
    for name in ("hscore", "leep", "etran"):
        row = report["per_metric"][name]
        assert row["reference_s"] > 0 and row["jax_median_s"] > 0
        assert row["max_rel_error"] < 1e-3  # float32 against the float64 reference
    one = report["one_pass"]
    assert one["metrics"] == ["ncti", "hscore", "leep", "etran"] and one["jax_median_s"] > 0
    assert "all 4 in one pass" in capsys.readouterr().out
