"""Differential tests: the engine against the float64 reference on every input regime.

Each regime of :mod:`ncti_jax.regimes` (collapsed, chance, massive activations,
global scales 1e-20 and 1e18, few-shot wide N < D, long tails with singletons,
low rank with duplicated rows, float16/bfloat16, steep spectra) is drawn with a
fresh seed (printed; ``NCTI_TEST_SEED`` pins it) and scored on every code path:

* ``streaming``: the CPU default (host BLAS scatter or N x N Gram, float64 eigh);
* ``fused``: the whole kernel in one compiled call, eigenproblems on the host;
* ``device-streaming`` / ``device-fused``: the accelerators' numerics forced on
  CPU (:func:`ncti_jax._plan.device_numerics`): jitted streaming PCA and float32
  ``eigh`` inside the kernel;
* 4 forced CPU devices (a subprocess), streaming and device-fused.

Tolerances (:func:`ncti_jax.regimes.compare`): raw components within 1e-4
relative; normalised fields and scores within what 1e-4 on the raw components
allows; the same solver, shrinkage (1e-3 in log) and number of components; the
same order for every pair of models whose reference scores differ by more than
1e-3. One stated exception (the device path's float32 eigensolver drops directions
below its resolution, about 2e-7 of the largest variance), tested as such.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest

import ncti_jax
from ncti_jax import _plan, reference, regimes

MODES = ("streaming", "fused", "device-streaming", "device-fused")


def run_mode(feats, y, mode):
    ctx = _plan.device_numerics() if mode.startswith("device-") else nullcontext()
    with ctx, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return ncti_jax.score_zoo(feats, y, strategy=mode.removeprefix("device-"))


def reference_of(feats, y):
    return reference.score_zoo({m: np.asarray(x, np.float64) for m, x in feats.items()}, y)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("regime", sorted(regimes.REGIMES))
def test_engine_matches_reference(regime, mode, seed):
    feats, y = regimes.make(regime, np.random.default_rng(seed), size="tiny")
    result = run_mode(feats, y, mode)
    ref = reference_of(feats, y)
    if mode.startswith("device-") and device_dropped_directions(result, ref, feats):
        return
    report = regimes.compare(result, ref)
    assert report["problems"] == [], report


# float32 eigh on an accelerator resolves eigenvalues to about eps * lambda_max: the device
# path keeps a direction above 2 eps lambda_max (_pca.rounding_floors) and drops the rest.
DEVICE_RESOLUTION = 2 * np.finfo(np.float32).eps


def device_dropped_directions(result, ref, feats) -> bool:
    """The one stated exception, checked: where the device path keeps fewer principal
    directions than the reference, each dropped one has a reference variance below the
    float32 eigensolver's resolution (with 4x slack), the model is flagged
    RANK_DEFICIENT, and every other model matches the reference to 1e-4."""
    fewer = np.asarray(result.pca_rank) < ref.pca_rank
    if not fewer.any():
        return False
    flagged = (np.asarray(result.status) & ncti_jax.Status.RANK_DEFICIENT) > 0
    assert flagged[fewer].all()
    for i in np.flatnonzero(fewer):
        _, var = reference.pca(np.asarray(feats[ref.models[i]], np.float64), 64)
        dropped = var[int(result.pca_rank[i]) :]
        assert (dropped < 4 * DEVICE_RESOLUTION * var[0]).all(), (ref.models[i], dropped / var[0])
    for f in ("etf", "ncc", "vc"):
        np.testing.assert_allclose(
            np.asarray(getattr(result, f), np.float64)[~fewer], getattr(ref, f)[~fewer], rtol=1e-4
        )
    return True


@pytest.mark.parametrize("scale", [1e-20, 1e-8, 1e6, 1e18])
def test_every_scale_float32_holds(scale, seed):
    """The svd branch is scale invariant; at small scales the rule switches to the eigen
    solver, which the reference follows (both exact as the shrinkage tends to 1)."""
    feats, y = regimes.scaled(np.random.default_rng(seed), "tiny", scale)
    result = run_mode(feats, y, "streaming")
    report = regimes.compare(result, reference_of(feats, y))
    assert report["problems"] == [], report
    if scale >= 1e6:
        base, _ = regimes.scaled(np.random.default_rng(seed), "tiny", 1.0)
        unscaled = run_mode(base, y, "streaming")
        np.testing.assert_allclose(result.ncti, unscaled.ncti, atol=1e-4)


def test_collapsed_relu_never_nan(seed):
    """The fidelity issue's generator: near one-hot probability blocks (entries ~1e-38)."""
    n, d, c = 1000, 128, 10
    y = np.arange(n) % c
    rng = np.random.default_rng(seed)
    feats = {}
    for i in range(3):
        lat = rng.normal(size=(c, 32))[y] * 1.1 * (i + 1) + rng.normal(size=(n, 32))
        x = lat @ rng.normal(size=(32, d)) / 5 + 0.3 * rng.normal(size=(n, d))
        feats[f"m{i}"] = np.maximum(x, 0).astype(np.float32)
    ref = reference_of(feats, y)
    for mode in ("streaming", "device-fused"):
        result = run_mode(feats, y, mode)
        report = regimes.compare(result, ref)
        assert report["problems"] == [], (mode, report)


WORKER = Path(__file__).with_name("regimes_worker.py")


def test_four_forced_cpu_devices(seed):
    env = dict(os.environ, NCTI_TEST_SEED=str(seed))
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run(
        [sys.executable, str(WORKER), "4"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(reports) == len(regimes.REGIMES)
    assert {k: v for k, v in reports.items() if v} == {}
