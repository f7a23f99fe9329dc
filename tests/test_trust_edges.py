"""Trust at the edges of `ncti score` and `score_zoo`: interrupts, stale checkpoints,
output files, and clear one-line refusals (exit 2) instead of tracebacks."""

from __future__ import annotations

import csv
import os
import signal
import stat
import subprocess
import sys
import time
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest

import ncti_jax
from ncti_jax import cli, io

import zoos

pytestmark = pytest.mark.filterwarnings("ignore:.*n_components reduced:UserWarning")


@pytest.fixture(scope="module")
def zoo():
    rng = np.random.default_rng(5)
    return zoos.zoo(rng, n=240, n_classes=4, dims=(16, 24))


def write_store(path: Path, feats, y) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    np.save(path / "labels.npy", y)
    for name, x in feats.items():
        np.save(path / f"{name}.npy", x)
    return path


def one_line_error(capsys, code, *, match: str) -> str:
    """Exit 2 and one error line (a progress line before it is fine), no traceback."""
    text = capsys.readouterr().err
    errors = [ln for ln in text.splitlines() if ln.startswith("ncti score: error:")]
    assert code == 2
    assert len(errors) == 1 and "Traceback" not in text, text
    assert match in errors[0], errors[0]
    return errors[0]


# --- interrupts ------------------------------------------------------------------


def test_sigint_ends_score_cleanly_and_the_checkpoint_resumes(tmp_path):
    rng = np.random.default_rng(0)
    feats, y = zoos.zoo(rng, n=6000, n_classes=10, dims=(384,) * 6)
    store = write_store(tmp_path / "store", feats, y)
    ckpt, out = tmp_path / "ckpt", tmp_path / "out"
    cmd = [sys.executable, "-m", "ncti_jax.cli", "score", str(store), "--out", str(out)]
    env = dict(os.environ, NCTI_JAX_CACHE="off")
    proc = subprocess.Popen(
        [*cmd, "--checkpoint", str(ckpt)], stderr=subprocess.PIPE, text=True, env=env
    )
    seen = []
    while not (seen and seen[-1].startswith("scoring 6 models")):  # past any library notice
        seen.append(proc.stderr.readline())
        assert seen[-1], seen  # the process ended before scoring
    time.sleep(2.0)  # compiling or inside a model's PCA
    sent = time.perf_counter()
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    code = proc.wait(timeout=30)
    waited = time.perf_counter() - sent
    assert code == 130, rest
    assert waited < 2.0, waited
    last = rest.strip().splitlines()[-1]
    assert last == f"interrupted; rerun the same command to resume from --checkpoint {ckpt}"
    assert "Traceback" not in rest
    assert not (out / "scores.json").exists()
    # The checkpoint is usable: the rerun ends with the scores of an uninterrupted run.
    done = subprocess.run(
        [*cmd, "--checkpoint", str(ckpt), "--quiet"], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    scores = {r["model"]: r["ncti"] for r in io.metric_records(io.read_results(out))}
    expected = ncti_jax.score_zoo(feats, y)
    for name, value in zip(expected.models, expected.ncti, strict=True):
        assert scores[name] == pytest.approx(value, abs=1e-5)


# --- output files ------------------------------------------------------------------


def test_results_have_umask_permissions_and_safe_csv(tmp_path, zoo, capsys):
    feats, y = zoo
    renamed = {"=HYPERLINK(1)": feats["model_0_d16"], "@cmd": feats["model_1_d24"]}
    store = write_store(tmp_path / "store", renamed, y)
    old = os.umask(0o022)
    try:
        assert cli.main(["score", str(store), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    finally:
        os.umask(old)
    for name in ("scores.json", "scores.csv"):
        assert stat.S_IMODE((tmp_path / "out" / name).stat().st_mode) == 0o644
    with open(tmp_path / "out" / "scores.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["model"] for r in rows) == ["'=HYPERLINK(1)", "'@cmd"]
    json_names = {r["model"] for r in io.metric_records(io.read_results(tmp_path / "out"))}
    assert json_names == set(renamed)  # the JSON keeps the names as they are
    assert set(io.read_scores(tmp_path / "out" / "scores.csv")) == set(renamed)  # round trip


def test_a_json_and_csv_from_different_runs_are_detected(tmp_path, zoo):
    feats, y = zoo
    store = write_store(tmp_path / "store", feats, y)
    out = tmp_path / "out"
    assert cli.main(["score", str(store), "--out", str(out), "--quiet"]) == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        io.read_results(out)  # consistent: no warning
    table = (out / "scores.csv").read_text()
    (out / "scores.csv").write_text(table.replace("model_0", "model_X"))  # a newer CSV
    with pytest.warns(UserWarning, match="not the table of"):
        io.read_results(out)


def test_unwritable_out_fails_before_scoring(tmp_path, zoo, capsys):
    feats, y = zoo
    store = write_store(tmp_path / "store", feats, y)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code = cli.main(["score", str(store), "--out", str(blocker / "out")])
    line = one_line_error(capsys, code, match="--out")
    assert "cannot write" in line


# --- stores ------------------------------------------------------------------------


def test_zero_d_labels_and_dangling_symlinks_are_named(tmp_path, zoo, capsys):
    feats, y = zoo
    store = write_store(tmp_path / "store", feats, y)
    np.save(store / "labels.npy", np.array(3))
    one_line_error(
        capsys,
        cli.main(["score", str(store), "--out", str(tmp_path / "o")]),
        match="labels must have shape (N,) or (N, 1)",
    )
    np.save(store / "labels.npy", y)
    (store / "ghost.npy").symlink_to(tmp_path / "nowhere.npy")
    one_line_error(
        capsys,
        cli.main(["score", str(store), "--out", str(tmp_path / "o")]),
        match="['ghost.npy'] are symbolic links to missing files",
    )


def test_checkpoint_refusal_is_one_line(tmp_path, zoo, capsys):
    feats, y = zoo
    store = write_store(tmp_path / "store", feats, y)
    args = ["score", str(store), "--out", str(tmp_path / "o"), "--quiet"]
    assert cli.main([*args, "--checkpoint", str(tmp_path / "ck")]) == 0
    np.save(store / "model_0_d16.npy", np.roll(feats["model_0_d16"], 3, axis=0))
    capsys.readouterr()
    code = cli.main([*args, "--checkpoint", str(tmp_path / "ck")])
    one_line_error(capsys, code, match="features of ['model_0_d16'] changed")


def test_fused_memory_limit_messages(tmp_path, zoo, capsys):
    feats, y = zoo
    store = write_store(tmp_path / "store", feats, y)
    base = ["score", str(store), "--out", str(tmp_path / "o"), "--strategy", "fused"]
    one_line_error(
        capsys,
        cli.main([*base, "--memory-limit", "0"]),
        match="memory_limit must be a positive whole number of bytes",
    )
    one_line_error(
        capsys,
        cli.main([*base, "--memory-limit", "1000"]),
        match="more than the 1000 bytes available",
    )


# --- API arguments -----------------------------------------------------------------


def test_api_arguments_are_checked(zoo):
    feats, y = zoo
    with pytest.raises(TypeError, match=r"devices must be a list of jax\.Device"):
        ncti_jax.score_zoo(feats, y, devices="cpu")
    with pytest.raises(TypeError, match="memory_limit must be a number of bytes"):
        ncti_jax.score_zoo(feats, y, memory_limit="1GB")
    with pytest.raises(ValueError, match="positive whole number"):
        ncti_jax.score_zoo(feats, y, memory_limit=-5)
    ncti_jax.score_zoo(feats, y, devices=jax.devices("cpu")[:1])  # a real list works
    labels = np.array(y, dtype=object)
    labels[4] = float("nan")
    with pytest.raises(ValueError, match=r"1 missing value\(s\) \(None or NaN\), e.g. at index 4"):
        ncti_jax.score_zoo(feats, labels)
