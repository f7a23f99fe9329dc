"""The package's public surface, and that the core never imports torch."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import ncti_jax

ROOT = Path(__file__).resolve().parents[1]


def test_public_api():
    assert set(ncti_jax.__all__) == {
        "CheckpointError",
        "NCTIResult",
        "RowChunks",
        "Status",
        "__version__",
        "normalise_zoo",
        "score_zoo",
    }
    assert isinstance(ncti_jax.__version__, str)


def test_import_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None\n"
        "import ncti_jax, ncti_jax.io, ncti_jax.cli, ncti_jax.reference, bridges\n"
        "assert sys.modules['torch'] is None\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_core_dependencies_are_light():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {d.split(">")[0].split("=")[0].split("[")[0].strip() for d in meta["dependencies"]}
    assert names == {"jax", "numpy", "scipy"}
    assert {"torch", "cuda", "tpu", "test", "all"} <= set(meta["optional-dependencies"])
    assert meta["scripts"]["ncti"] == "ncti_jax.cli:main"


def test_cli_entry_point_runs():
    out = subprocess.run(
        [sys.executable, "-m", "ncti_jax.cli", "--version"],
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.stdout.startswith("ncti-jax ")
