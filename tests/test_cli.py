"""``ncti score`` on generated feature stores, in both layouts; corrupt files."""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from ncti_jax import cli, defaults, io, reference

import zoos

pytestmark = pytest.mark.filterwarnings("ignore:.*n_components reduced:UserWarning")


@pytest.fixture(scope="module")
def zoo():
    rng = np.random.default_rng(11)
    return zoos.zoo(rng, n=300, n_classes=5, dims=(24, 40, 32))


def write_directory_store(path, feats, y):
    path.mkdir(parents=True, exist_ok=True)
    np.save(path / "labels.npy", y)
    for i, (name, x) in enumerate(feats.items()):
        if i == 0:
            np.savez(path / f"{name}.npz", features=x)
        else:
            np.save(path / f"{name}.npy", x)
    return path


def write_authors_store(path, feats, y, dataset="cifar10"):
    path.mkdir(parents=True, exist_ok=True)
    for name, x in feats.items():
        np.save(path / f"{name}_{dataset}_feature.npy", x)
        np.save(path / f"{name}_{dataset}_label.npy", y)
    return path


def _no_constants(token):
    raise AssertionError(f"scores.json holds {token}: not strict JSON")


def check_outputs(out, feats, y, capsys):
    doc = json.loads((out / "scores.json").read_text())
    assert doc["schema"] == io.SCHEMA
    assert doc["settings"]["n_samples"] == len(y) and doc["settings"]["n_models"] == len(feats)
    assert {"jax", "numpy", "ncti_jax"} <= set(doc["versions"])
    records = io.metric_records(doc)
    assert [r["rank"] for r in records] == list(range(1, len(feats) + 1))
    assert [r["ncti"] for r in records] == sorted((r["ncti"] for r in records), reverse=True)
    ref = reference.score_zoo(feats, y)
    by_name = {r["model"]: r for r in records}
    for i, name in enumerate(ref.models):
        rec = by_name[name]
        for comp in ("etf", "ncc", "vc"):
            assert rec[comp] == pytest.approx(getattr(ref, comp)[i], rel=1e-4)
        # Every published field, not only the raw components (a swap of two normalised
        # columns once passed every test).
        for field in ("etf_norm", "ncc_norm", "vc_norm", "ncti"):
            assert rec[field] == pytest.approx(getattr(ref, field)[i], abs=1e-3)
        assert rec["solver"] == ref.solver[i]
        assert rec["shrinkage"] == pytest.approx(ref.shrinkage[i], rel=1e-3)
        assert rec["pca_rank"] == ref.pca_rank[i]
        assert rec["rank"] == int(np.flatnonzero(ref.ranking == i)[0]) + 1
    assert [r["model"] for r in records] == [ref.models[i] for i in ref.ranking]
    json.loads((out / "scores.json").read_text(), parse_constant=_no_constants)
    with open(out / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["model"] for r in rows] == [r["model"] for r in records]
    assert float(rows[0]["ncti"]) == pytest.approx(records[0]["ncti"])
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left
    table = capsys.readouterr().out
    assert records[0]["model"] in table.splitlines()[2]


def test_score_directory_layout(tmp_path, zoo, capsys):
    feats, y = zoo
    store = write_directory_store(tmp_path / "store", feats, y)
    out = tmp_path / "out"
    assert cli.main(["score", str(store), "--out", str(out)]) == 0
    check_outputs(out, feats, y, capsys)
    pytest.importorskip("matplotlib")
    assert cli.main(["plot", str(out)]) == 0
    assert (out / "ranking.png").read_bytes()[:4] == b"\x89PNG"


def test_score_authors_layout(tmp_path, zoo, capsys):
    feats, y = zoo
    store = write_authors_store(tmp_path / "store", feats, y)
    write_authors_store(store, feats, y, dataset="dtd")  # a second dataset in the same folder
    out = tmp_path / "out"
    assert cli.main(["score", str(store), "--dataset", "cifar10", "--out", str(out)]) == 0
    check_outputs(out, feats, y, capsys)
    assert cli.main(["score", str(store), "--out", str(out)]) == 2
    assert "several datasets ['cifar10', 'dtd']" in capsys.readouterr().err


def test_model_subset_and_unknown_model(tmp_path, zoo, capsys):
    feats, y = zoo
    store = write_directory_store(tmp_path / "store", feats, y)
    names = list(feats)[1:]
    out = tmp_path / "out"
    assert (
        cli.main(["score", str(store), "--models", ",".join(names), "--out", str(out), "-q"]) == 0
    )
    doc = io.read_results(out)
    assert sorted(r["model"] for r in io.metric_records(doc)) == sorted(names)
    assert cli.main(["score", str(store), "--models", "nope", "--out", str(out)]) == 2
    assert "no features for model(s) ['nope']" in capsys.readouterr().err


def test_corrupt_npy_is_named(tmp_path, zoo, capsys):
    feats, y = zoo
    store = write_directory_store(tmp_path / "store", feats, y)
    bad = store / "broken.npy"
    bad.write_bytes(b"\x93NUMPY garbage that is not an array header")
    assert cli.main(["score", str(store), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "broken.npy" in err and "not a readable NumPy array file" in err
    assert not (tmp_path / "out").exists()


def test_pickled_array_is_refused(tmp_path, zoo):
    feats, y = zoo
    store = write_directory_store(tmp_path / "store", feats, y)
    np.save(store / "evil.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(io.FeatureStoreError, match=r"evil\.npy"):
        io.load_feature_store(store)


def test_mismatched_files_are_named(tmp_path, zoo):
    feats, y = zoo
    store = write_authors_store(tmp_path / "a", feats, y)
    name = next(iter(feats))
    np.save(store / f"{name}_cifar10_label.npy", y[::-1])
    with pytest.raises(io.FeatureStoreError, match="labels differ"):
        io.load_feature_store(store, dataset="cifar10")
    store = write_directory_store(tmp_path / "b", feats, y)
    np.save(store / "short.npy", np.ones((10, 3), np.float32))
    with pytest.raises(io.FeatureStoreError, match=r"model 'short' have shape \(10, 3\)"):
        io.load_feature_store(store)
    with pytest.raises(io.FeatureStoreError, match="not a directory"):
        io.load_feature_store(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(io.FeatureStoreError, match="no feature store found"):
        io.load_feature_store(tmp_path / "empty")


def test_features_are_memory_mapped(tmp_path, zoo):
    feats, y = zoo
    store = write_directory_store(tmp_path / "store", feats, y)
    loaded, labels = io.load_feature_store(store)
    mapped = [name for name, x in loaded.items() if isinstance(x, np.memmap)]
    assert mapped == list(feats)[1:]  # every .npy; the .npz is read into memory
    np.testing.assert_array_equal(labels, y)


def test_existing_results_survive_a_failed_write(tmp_path, monkeypatch):
    out = tmp_path / "out"
    doc = io.results_document({"ncti": []}, {"n_models": 0})
    io.write_results(out, doc)
    before = (out / "scores.json").read_text()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(io.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        io.write_results(out, io.results_document({"ncti": []}, {"n_models": 1}))
    assert (out / "scores.json").read_text() == before
    assert sorted(p.name for p in out.iterdir()) == ["scores.csv", "scores.json"]


def test_float64_cli(tmp_path, zoo, capsys):
    import jax

    feats, y = zoo
    store = write_directory_store(tmp_path / "store", feats, y)
    try:
        assert (
            cli.main(["score", str(store), "--dtype", "float64", "--out", str(tmp_path / "o")]) == 0
        )
    finally:
        jax.config.update("jax_enable_x64", False)
    doc = io.read_results(tmp_path / "o")
    ref = reference.score_zoo(feats, y)
    got = {r["model"]: r["etf"] for r in io.metric_records(doc)}
    for i, name in enumerate(ref.models):
        assert got[name] == pytest.approx(ref.etf[i], rel=1e-9)


def test_score_scaling_options_and_resume(tmp_path, zoo, capsys):
    feats, y = zoo
    store = write_directory_store(tmp_path / "store", feats, y)
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    args = ["score", str(store), "--out", str(out), "--checkpoint", str(ckpt)]
    assert cli.main([*args, "--strategy", "fused", "--memory-limit", "1GiB"]) == 0
    check_outputs(out, feats, y, capsys)
    first = io.metric_records(io.read_results(out))
    assert any(p.name.isdigit() for p in ckpt.iterdir())  # a saved step
    assert cli.main([*args, "--strategy", "streaming", "--chunk-rows", "64"]) == 0
    assert io.metric_records(io.read_results(out)) == first  # restored, not recomputed
    with pytest.raises(SystemExit):
        cli.main(["score", str(store), "--memory-limit", "lots"])
    assert "not a size: 'lots'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "value"),
    [("12GiB", 12 * 2**30), ("500MB", 500 * 10**6), ("1000", 1000), ("1.5kib", 1536)],
)
def test_memory_sizes(text, value):
    assert cli._bytes(text) == value


def test_compile_cache_second_run_compiles_nothing(tmp_path, zoo):
    """Two ``ncti score`` processes on the same shapes: the first fills the persistent
    compilation cache, the second loads every kernel from it and writes nothing new."""
    feats, y = zoo
    store = write_directory_store(tmp_path / "store", feats, y)
    cache = tmp_path / "jax-cache"
    env = {**os.environ, "JAX_LOG_COMPILES": "1", "NCTI_JAX_CACHE": "off"}  # the flag wins

    def score(out):
        cmd = [sys.executable, "-m", "ncti_jax.cli", "score", str(store), "--out", str(out)]
        cmd += ["-q", "--compile-cache", str(cache)]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stderr

    score(tmp_path / "first")
    entries = sorted(p.name for p in cache.iterdir())
    assert entries, "the first run cached no kernel"
    log = score(tmp_path / "second")
    assert sorted(p.name for p in cache.iterdir()) == entries
    compiled = log.count("Compiling ")
    assert compiled > 0 and log.count("Persistent compilation cache hit") == compiled, log
    assert (
        io.metric_records(io.read_results(tmp_path / "second"))
        == (io.metric_records(io.read_results(tmp_path / "first")))
    )


def test_compile_cache_location(tmp_path, monkeypatch):
    monkeypatch.delenv("NCTI_JAX_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cli.compile_cache_dir() == str(tmp_path / "xdg" / "ncti-jax" / "jax")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cli.compile_cache_dir() == str(tmp_path / "home" / ".cache" / "ncti-jax" / "jax")
    monkeypatch.setenv("NCTI_JAX_CACHE", str(tmp_path / "moved"))
    assert cli.compile_cache_dir() == str(tmp_path / "moved")
    assert cli.compile_cache_dir(str(tmp_path / "flag")) == str(tmp_path / "flag")
    assert cli.compile_cache_dir("off") is None
    monkeypatch.setenv("NCTI_JAX_CACHE", "off")
    assert cli.compile_cache_dir() is None
    assert cli.compile_cache_dir(str(tmp_path / "flag")) == str(tmp_path / "flag")


def test_compile_cache_that_cannot_be_created_is_one_line(tmp_path, zoo, capsys):
    feats, y = zoo
    store = write_directory_store(tmp_path / "store", feats, y)
    (tmp_path / "file").write_text("not a directory")
    bad = tmp_path / "file" / "cache"
    args = ["score", str(store), "--out", str(tmp_path / "out"), "--compile-cache", str(bad)]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"ncti score: error: --compile-cache {bad}: cannot create the compilation cache there "
        "(Not a directory); 'off' disables it."
    )
    assert not (tmp_path / "out").exists()


def test_rank_shares_the_scoring_options():
    score = cli._parser().parse_args(["score", "store"])
    rank = cli._parser("rank").parse_args(["rank"])
    shared = ("out", "n_components", "dtype", "precision", "strategy", "chunk_rows")
    shared += ("memory_limit", "checkpoint", "compile_cache", "quiet")
    assert {k: getattr(rank, k) for k in shared} == {k: getattr(score, k) for k in shared}
    assert (score.n_components, score.chunk_rows) == (defaults.N_COMPONENTS, defaults.CHUNK_ROWS)
    assert (score.dtype, score.precision, score.strategy) == (
        defaults.DTYPES[0],
        defaults.PRECISIONS[0],
        defaults.STRATEGIES[0],
    )
    for command in ("score", "rank", "extract", "demo", "bench", "evaluate", "plot"):
        parser = cli._parser(command)
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        for action in sub.choices[command]._actions:
            assert action.help, f"ncti {command} {action.option_strings} has no help"
