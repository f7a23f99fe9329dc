"""Scaling out: strategies, memory planning, streaming, devices, processes, resume.

Runs that need their own JAX runtime (forced CPU devices, jax.distributed, a
SIGKILL) go through tests/scale_worker.py in subprocesses.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import scale_worker

import ncti_jax
from ncti_jax import _linalg, _plan, _stream, reference

import zoos

pytestmark = pytest.mark.filterwarnings("ignore:.*n_components reduced:UserWarning")

WORKER = Path(__file__).with_name("scale_worker.py")
FLOAT32_RTOL = 1e-4
COMPONENTS = ("etf", "ncc", "vc")


def assert_same(a, b, rtol=FLOAT32_RTOL):
    """Same models, raw components (to ``rtol``) and ranking; ``a``/``b`` results or dicts."""

    def get(r, f):
        return np.asarray(r[f] if isinstance(r, dict) else getattr(r, f), np.float64)

    models_a = list(a["models"] if isinstance(a, dict) else a.models)
    models_b = list(b["models"] if isinstance(b, dict) else b.models)
    assert models_a == models_b
    for f in COMPONENTS:
        np.testing.assert_allclose(get(a, f), get(b, f), rtol=rtol, err_msg=f)
    np.testing.assert_array_equal(get(a, "ranking"), get(b, "ranking"))


@pytest.fixture
def small_zoo(rng):
    return zoos.zoo(rng, n=1500, n_classes=6, dims=(40, 72, 96, 64, 80))


# --- strategies and streaming ---------------------------------------------------


def test_streaming_equals_fused_and_reference(small_zoo):
    feats, y = small_zoo
    fused = ncti_jax.score_zoo(feats, y, strategy="fused")
    streamed = ncti_jax.score_zoo(feats, y, strategy="streaming", chunk_rows=256)
    assert_same(streamed, fused)
    assert_same(streamed, reference.score_zoo(feats, y))


def test_streaming_from_memmap_and_row_chunks(tmp_path, rng):
    """A memory-mapped file ~12x the chunk size, as an array and as a chunk iterator."""
    feats, y = zoos.zoo(rng, n=3000, n_classes=7, dims=(120, 64))
    path = tmp_path / "wide.npy"
    np.save(path, feats["model_0_d120"])
    mapped = np.load(path, mmap_mode="r")
    chunks = ncti_jax.RowChunks(
        lambda: (mapped[i : i + 250] for i in range(0, 3000, 250)),
        shape=mapped.shape,
        dtype=mapped.dtype,
    )
    in_memory = ncti_jax.score_zoo(feats, y)
    from_file = ncti_jax.score_zoo(
        {"model_0_d120": mapped, "model_1_d64": feats["model_1_d64"]}, y, chunk_rows=256
    )
    from_chunks = ncti_jax.score_zoo(
        {"model_0_d120": chunks, "model_1_d64": feats["model_1_d64"]}, y
    )
    assert_same(from_file, in_memory, rtol=1e-5)
    assert_same(from_chunks, in_memory, rtol=1e-5)


def test_device_flavour_equals_host_flavour(rng):
    """The jitted accumulator (accelerators) against the BLAS one (CPU), on the CPU."""
    feats, _ = zoos.zoo(rng, n=2100, n_classes=4, dims=(48,))
    x = feats["model_0_d48"]
    z_host, top_host = _stream.host_pca("m", x, 16, np.float32, rows=500)
    z_dev, top_dev = _stream.device_pca(
        "m",
        x,
        16,
        np.float32,
        rows=500,
        linalg=_linalg.Linalg.for_platform("cpu", host_solve=False),
    )
    np.testing.assert_allclose(np.asarray(top_dev.evals), top_host.evals, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(top_dev.mean), top_host.mean, rtol=1e-5, atol=1e-6)
    # Eigenvectors are defined up to sign: compare the projections column by column.
    signs = np.sign(np.sum(np.asarray(z_dev) * z_host, axis=0))
    scale = np.abs(z_host).max()
    np.testing.assert_allclose(np.asarray(z_dev) * signs, z_host, atol=1e-3 * scale)


def test_row_chunks_errors_name_the_model(rng):
    feats, y = zoos.zoo(rng, n=600, n_classes=3, dims=(16,))
    x = feats["model_0_d16"]

    def chunks(blocks):
        return ncti_jax.RowChunks(lambda: iter(blocks), shape=x.shape, dtype=x.dtype)

    bad = x.copy()
    bad[450, 3] = np.nan
    cases = [
        (chunks([x[:300], x[300:, :8]]), r"'m'.*chunk 1 has shape"),
        (chunks([bad[:400], bad[400:]]), r"'m'.*chunk 1 \(rows 400-599\).*NaN"),
        (chunks([x[:300]]), r"'m'.*hold 300 rows; the labels have 600"),
    ]
    for source, message in cases:
        with pytest.raises(ValueError, match=message):
            ncti_jax.score_zoo({"m": source}, y)
    with pytest.raises(TypeError, match="callable"):
        ncti_jax.RowChunks(iter([x]), shape=x.shape, dtype=x.dtype)
    with pytest.raises(ValueError, match="chunk_rows"):
        ncti_jax.score_zoo({"m": x}, y, chunk_rows=0)


# --- memory planning --------------------------------------------------------------


def test_plan_chunks_the_model_axis():
    args = dict(n=50000, d_max=2048, k=64, n_classes=100, dtype=np.float32)
    per_model = _plan.fused_bytes(50000, 2048, 64, 100, 4)
    cpu = jax.devices("cpu")[0]
    with _plan.device_numerics():
        plan = _plan.make_plan(
            "fused",
            device=cpu,
            n_local_devices=4,
            n_devices=4,
            n_models=64,
            memory_limit=3 * per_model,
            widest="w",
            **args,
        )
    assert (plan.strategy, plan.models_per_call) == ("fused", 12)  # 3 per device
    assert plan.linalg == _linalg.Linalg(looped=True, host_solve=False, eigensolver="topk")
    # On CPU the plan solves on the host, and refuses the fused float32 path on several
    # devices (its host callbacks hang XLA:CPU).
    with pytest.raises(ValueError, match="needs dtype=float64"):
        _plan.make_plan(
            "fused",
            device=cpu,
            n_local_devices=4,
            n_devices=4,
            n_models=64,
            memory_limit=None,
            widest="w",
            **args,
        )
    assert (
        _plan.make_plan(
            "auto",
            device=cpu,
            n_local_devices=1,
            n_devices=1,
            n_models=64,
            memory_limit=None,
            widest="w",
            **args,
        ).strategy
        == "streaming"
    )
    with pytest.raises(MemoryError, match=r"model 'w' \(N = 50000, D = 2048\).*streaming"):
        _plan.make_plan(
            "fused",
            device=cpu,
            n_local_devices=1,
            n_devices=1,
            n_models=3,
            memory_limit=per_model - 1,
            widest="w",
            **args,
        )


def test_chunked_model_axis_equals_unchunked(small_zoo):
    feats, y = small_zoo
    whole = ncti_jax.score_zoo(feats, y, strategy="fused")
    per_model = _plan.fused_bytes(1500, 96, 64, 6, 4)
    chunked = ncti_jax.score_zoo(feats, y, strategy="fused", memory_limit=2 * per_model + 1)
    # Another batch size compiles to another schedule: float32 rounding differs (seen: 2.7e-6).
    assert_same(chunked, whole, rtol=1e-5)
    with pytest.raises(MemoryError, match="model 'model_2_d96'"):
        ncti_jax.score_zoo(feats, y, strategy="fused", memory_limit=1000)


# --- many devices, many processes (subprocesses) ---------------------------------


def run_worker(*args, timeout=240):
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run(
        [sys.executable, str(WORKER), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    return proc


def read(path):
    return json.loads(Path(path).read_text())


def test_forced_cpu_devices_give_the_same_scores(tmp_path):
    """2 and 8 devices, 5 models: padded with 1 and 3 dummies, masked out of the min-max,
    give the scores of one device (this process)."""
    feats, y = scale_worker.zoo()
    expected = ncti_jax.score_zoo(feats, y)
    for n_dev in (2, 8):
        out = tmp_path / f"d{n_dev}.json"
        proc = run_worker("devices", n_dev, "streaming", "float32", out)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert_same(read(out), expected)
        assert read(out)["status"][1:] == [0, 0, 0, 0]  # no dummy leaked into the flags


def test_fused_kernel_sharded_over_forced_cpu_devices(tmp_path):
    """The whole kernel under shard_map (float64: float32 uses host callbacks, see score_zoo)."""
    results = {}
    for n_dev in (1, 4):
        out = tmp_path / f"f{n_dev}.json"
        proc = run_worker("devices", n_dev, "fused", "float64", out)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[n_dev] = read(out)
    assert_same(results[4], results[1], rtol=1e-9)
    refused = run_worker("devices", 2, "fused", "float32", tmp_path / "refused.json")
    assert refused.returncode != 0
    assert "strategy='fused' on several CPU devices needs dtype=float64" in refused.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_give_the_same_scores(tmp_path):
    port = free_port()
    outs = [tmp_path / f"p{i}.json" for i in range(2)]
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), "process", str(i), "2", str(port), str(outs[i])],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    errors = [p.communicate(timeout=240)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), errors
    feats, y = scale_worker.zoo()
    first, second = read(outs[0]), read(outs[1])
    assert first == second  # every process gets the whole zoo, identically
    # Models come back in process order: process 0's (models 0, 2, 4), then process 1's.
    order = ["model_0_d40", "model_2_d96", "model_4_d80", "model_1_d72", "model_3_d64"]
    assert_same(first, ncti_jax.score_zoo({m: feats[m] for m in order}, y))


# --- resumable runs ----------------------------------------------------------------


def test_killed_run_resumes_and_matches(tmp_path):
    ckpt = tmp_path / "ckpt"
    killed = run_worker("resume", ckpt, 2, tmp_path / "killed.json")
    assert killed.returncode == -9  # SIGKILLed after its second save (2 of 5 models done)
    assert not (tmp_path / "killed.json").exists()

    resumed = run_worker("resume", ckpt, 0, tmp_path / "resumed.json")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # Only the 3 unfinished models were scored (one save each) after the restart.
    assert (tmp_path / "resumed.json.saves").read_text() == "3"
    feats, y = scale_worker.zoo()
    result = read(tmp_path / "resumed.json")
    assert_same(result, ncti_jax.score_zoo(feats, y))


def test_bad_checkpoints_are_not_reused(tmp_path, small_zoo):
    feats, y = small_zoo
    ckpt = tmp_path / "ckpt"
    first = ncti_jax.score_zoo(feats, y, checkpoint=ckpt)
    again = ncti_jax.score_zoo(feats, y, checkpoint=ckpt)  # everything restored
    assert_same(again, first, rtol=0)

    with pytest.raises(ncti_jax.CheckpointError, match="different run"):
        ncti_jax.score_zoo(feats, np.roll(y, 1), checkpoint=ckpt)

    # A model re-extracted with the same shape but new rows: its old score must not return.
    name = list(feats)[1]
    redone = dict(feats, **{name: np.roll(feats[name], 1, axis=0)})
    with pytest.raises(ncti_jax.CheckpointError, match=rf"features of \['{name}'\] changed"):
        ncti_jax.score_zoo(redone, y, checkpoint=ckpt)

    # Flip bytes in every array file of the latest step: the digest catches it.
    step = max((p for p in ckpt.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    files = [p for p in (step / "state").rglob("*") if p.is_file() and "zarray" not in p.name]
    assert files
    for p in files:
        data = bytearray(p.read_bytes())
        if len(data) > 64:
            data[-8:] = bytes(8)
            p.write_bytes(bytes(data))
    with pytest.raises(ncti_jax.CheckpointError, match=r"corrupt|digest"):
        ncti_jax.score_zoo(feats, y, checkpoint=ckpt)
