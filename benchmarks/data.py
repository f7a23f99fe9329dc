"""Synthetic penultimate-layer features, generated once into a feature-store cache.

The generator is that of the test suite's zoos: non-negative (post-ReLU),
class-clustered features with a decaying within-class spectrum, and a different
degree of collapse per model (geometrically spaced from 0.01 to 0.25, so the
models rank differently). A scenario's store is a directory
``<cache>/<scenario>-seed<seed>/`` of ``<model>.npy`` (float32) and
``labels.npy`` that ``ncti score`` reads as well.

Generation is streamed: each model is written in blocks of rows into a
memory-mapped ``.npy``, on all cores, each block drawn from its own
``SeedSequence(seed, spawn_key=...)``, so the result depends on the seed alone
(not on the number of threads), and memory holds one model's parameters and a
block of rows per thread, never a whole zoo. Files appear atomically; an interrupted generation resumes at the first
model not yet written.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

from ncti_jax import io as ncti_io
from ncti_jax import regimes

from .scenarios import Scenario

GENERATOR = "ncti-jax/bench-zoo/v1"  # bump when the generator changes: stale caches are rebuilt
LATENT = 96  # dimension of the class structure inside every model's features
BLOCK_ROWS = 4096
META_FILE = "meta.json"


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def labels(seed: int, n: int, n_classes: int) -> np.ndarray:
    """Labels 0..C-1 with every class present, in random order."""
    rng = _rng(seed, 0)
    y = np.concatenate([np.arange(n_classes), rng.integers(0, n_classes, n - n_classes)])
    return rng.permutation(y)


def collapse_levels(n_models: int) -> np.ndarray:
    """Per-model class separation: larger = classes further apart (more collapsed)."""
    return np.geomspace(0.01, 0.25, n_models)


def write_model(
    path: Path, y: np.ndarray, dim: int, collapse: float, *, seed: int, index: int
) -> None:
    """Writes one model's (N, dim) float32 features to ``path`` (atomically)."""
    n, n_classes = y.shape[0], int(y.max()) + 1
    rng = _rng(seed, 1, index)
    centres = rng.gamma(1.5, 1.0, size=(n_classes, LATENT)).astype(np.float32)
    scales = (1.0 / np.sqrt(np.arange(1, LATENT + 1))).astype(np.float32)
    mixing = (np.abs(rng.standard_normal((LATENT, dim))) / np.sqrt(LATENT)).astype(np.float32)

    tmp = path.with_name(f".{path.name}.tmp")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, dim))

    def block(b: int) -> None:
        rows = slice(b * BLOCK_ROWS, min(n, (b + 1) * BLOCK_ROWS))
        brng = _rng(seed, 2, index, b)
        yb = y[rows]
        codes = (
            collapse * centres[yb] + brng.standard_normal((len(yb), LATENT), np.float32) * scales
        )
        x = codes @ mixing + np.float32(0.05) * brng.standard_normal((len(yb), dim), np.float32)
        np.maximum(x, 0.0, out=out[rows])

    with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(block, range(-(-n // BLOCK_ROWS))))
    out.flush()
    os.replace(tmp, path)


def write_regime_model(
    path: Path, y: np.ndarray, dim: int, separation: float, *, seed: int, index: int
) -> None:
    """One model of a regime scenario (:func:`ncti_jax.regimes.relu_features`), atomically."""
    x = regimes.relu_features(_rng(seed, 3, index), y, dim, separation)
    with ncti_io.atomic_open(path, "wb") as f:
        np.save(f, x)


def _spec(scenario: Scenario, seed: int) -> dict:
    return {
        "generator": GENERATOR,
        "regime": scenario.regime,
        "seed": seed,
        "n_samples": scenario.n_samples,
        "n_classes": scenario.n_classes,
        "models": list(scenario.models),
        "dims": dict(scenario.dims),
    }


def store_path(cache: Path, scenario: Scenario, seed: int) -> Path:
    return Path(cache) / f"{scenario.name}-seed{seed}"


def ensure_store(cache: Path, scenario: Scenario, seed: int) -> Path:
    """The scenario's feature store, generated model by model where missing."""
    root = store_path(cache, scenario, seed)
    spec = _spec(scenario, seed)
    meta = root / META_FILE
    if meta.exists() and json.loads(meta.read_text()) != spec:
        print(f"{root}: generated with other settings; regenerating", flush=True)
        shutil.rmtree(root)
    if not meta.exists():
        root.mkdir(parents=True, exist_ok=True)
        ncti_io.atomic_write_text(meta, json.dumps(spec, indent=1) + "\n")

    y_path = root / ncti_io.LABELS_FILE
    if scenario.regime == "longtail":
        y = regimes.longtail_labels(_rng(seed, 0), scenario.n_samples, scenario.n_classes)
    else:
        y = labels(seed, scenario.n_samples, scenario.n_classes)
    if not y_path.exists():
        with ncti_io.atomic_open(y_path, "wb") as f:
            np.save(f, y)
    missing = [
        (i, m, d) for i, (m, d) in enumerate(scenario.dims) if not (root / f"{m}.npy").exists()
    ]
    levels = collapse_levels(len(scenario.dims))
    if scenario.regime is not None:
        levels = np.geomspace(0.3, 3.0, len(scenario.dims))
    writer = write_model if scenario.regime is None else write_regime_model
    for count, (i, model, dim) in enumerate(missing, start=1):
        start = time.perf_counter()
        writer(root / f"{model}.npy", y, dim, levels[i], seed=seed, index=i)
        print(
            f"generated {scenario.name}: {model} ({scenario.n_samples} x {dim}) "
            f"[{count}/{len(missing)}] in {time.perf_counter() - start:.1f} s",
            flush=True,
        )
    return root


def load_store(root: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``({model: memory-mapped (N, D) features}, labels)`` in the scenario's model order."""
    models = json.loads((Path(root) / META_FILE).read_text())["models"]
    return ncti_io.load_feature_store(root, models=models)
