"""The package's public surface, its wheel, and a lean start: the core never imports
torch, and ``ncti --help`` / ``ncti score`` import neither the bridges nor the benchmarks."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import numpy as np
import pytest

import ncti_jax

ROOT = Path(__file__).resolve().parents[1]
PUBLIC = {
    "CheckpointError",
    "MetricResult",
    "NCTIResult",
    "RowChunks",
    "Status",
    "__version__",
    "ZooMetrics",
    "normalise_zoo",
    "score_metrics",
    "score_zoo",
}


def test_public_api():
    assert set(ncti_jax.__all__) == PUBLIC
    assert set(dir(ncti_jax)) >= PUBLIC
    assert isinstance(ncti_jax.__version__, str)
    for name, module in ncti_jax._EXPORTS.items():  # each name from the module it names
        assert getattr(ncti_jax, name) is getattr(importlib.import_module(module, "ncti_jax"), name)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ncti_jax.nope


def _run(code: str, *args: str, cwd=ROOT, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        check=True,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
    )


def test_import_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['torchvision'] = None\n"
        "sys.modules['timm'] = None; sys.modules['transformers'] = None\n"
        "import ncti_jax, ncti_jax.io, ncti_jax.cli, ncti_jax.reference, ncti_jax.bridges\n"
        "from ncti_jax.bridges import zoo\n"
        "specs = zoo.resolve_zoo('resnet18,timm:resnet10t,hf:org/name')\n"
        "assert [s.source for s in specs] == ['torchvision', 'timm', 'hf']\n"
        "assert sys.modules['torch'] is None\n"
    )
    _run(code)


def test_import_is_lazy():
    code = (
        "import sys, ncti_jax\n"
        "assert 'jax' not in sys.modules, 'import ncti_jax started JAX'\n"
        "ncti_jax.score_zoo\n"
        "assert 'jax' in sys.modules and 'ncti_jax._score' in sys.modules\n"
    )
    _run(code)


# Runs ncti_jax.cli.main(argv) and prints which heavy modules it pulled in.
_LEAN = """
import json, sys
from ncti_jax import cli
try:
    code = cli.main(sys.argv[1:])
except SystemExit as exit:
    code = exit.code
heavy = ("torch", "torchvision", "bridges", "benchmarks", "ncti_jax.bridges",
         "ncti_jax.benchmarks", "jax")
print(json.dumps({"code": code, "loaded": [m for m in heavy if m in sys.modules]}))
"""


def test_cli_start_is_lean(tmp_path):
    env = {**os.environ, "NCTI_JAX_CACHE": "off"}

    def loaded(*argv):
        out = _run(_LEAN, *argv, env=env).stdout.strip().splitlines()[-1]
        return json.loads(out)

    assert loaded("--help") == {"code": 0, "loaded": []}  # not even JAX
    assert loaded("score", "--help") == {"code": 0, "loaded": []}
    rng = np.random.default_rng(0)
    store = tmp_path / "store"
    store.mkdir()
    np.save(store / "labels.npy", np.arange(60) % 3)
    for name in ("a", "b"):
        np.save(store / f"{name}.npy", rng.normal(size=(60, 8)).astype(np.float32))
    run = loaded("score", str(store), "--out", str(tmp_path / "out"), "-q")
    assert run == {"code": 0, "loaded": ["jax"]}
    assert len(json.loads((tmp_path / "out" / "scores.json").read_text())["results"]["ncti"]) == 2
    # The lazily registered commands still parse their own options.
    assert loaded("bench", "--nope")["code"] == 2
    assert loaded("rank", "--help") == {"code": 0, "loaded": ["ncti_jax.bridges"]}  # no torch


def test_core_dependencies_are_light():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {d.split(">")[0].split("=")[0].split("[")[0].strip() for d in meta["dependencies"]}
    assert names == {"jax", "numpy", "scipy"}
    extras = meta["optional-dependencies"]
    assert {"torch", "timm", "hf", "flax", "cuda", "tpu", "resume", "test", "all"} <= set(extras)
    # A TPU VM goes from images to ranking without torch: the tpu extra pulls flax, not torch.
    assert "ncti-jax[flax]" in extras["tpu"]
    assert not any(
        d.startswith(("torch", "ncti-jax[torch")) for d in extras["tpu"] + extras["flax"]
    )
    assert meta["scripts"]["ncti"] == "ncti_jax.cli:main"


def test_cli_entry_point_runs():
    out = _run("import sys; from ncti_jax.cli import main; sys.exit(main())", "--version")
    assert out.stdout.startswith("ncti-jax ")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the source tree (the tree itself gets no build/)."""
    pytest.importorskip("setuptools", minversion="70.1")  # bdist_wheel without `wheel`
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", ".cache", "*.egg-info", "build")
    for folder in ("ncti_jax", "bridges", "benchmarks"):
        shutil.copytree(ROOT / folder, src / folder, ignore=skip)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    build = "import sys, setuptools.build_meta as b; print(b.build_wheel(sys.argv[1]))"
    name = _run(build, str(tmp), cwd=src).stdout.strip().splitlines()[-1]
    return tmp / name


def test_wheel_installs_nothing_generic_at_the_top(wheel):
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        top_level = whl.read(next(n for n in names if n.endswith(".dist-info/top_level.txt")))
        entry_points = whl.read(next(n for n in names if n.endswith("entry_points.txt")))
    tops = {n.split("/")[0] for n in names}
    dist_info = {t for t in tops if t.endswith(".dist-info")}
    assert len(dist_info) == 1 and tops - dist_info == {"ncti_jax"}, tops
    assert top_level.decode().split() == ["ncti_jax"]
    assert b"ncti = ncti_jax.cli:main" in entry_points
    # Every module of the three source folders, under its installed name.
    for folder, package in (
        ("ncti_jax", "ncti_jax"),
        ("bridges", "ncti_jax/bridges"),
        ("benchmarks", "ncti_jax/benchmarks"),
    ):
        modules = {f"{package}/{p.name}" for p in (ROOT / folder).glob("*.py")}
        assert modules and modules <= names, sorted(modules - names)
    for data in (
        "py.typed",
        "data/__init__.py",
        "data/finetune_accuracy.json",
        "data/published_ncti_cifar10_group1.json",
    ):
        assert f"ncti_jax/{data}" in names


def test_wheel_runs_from_its_installed_names(wheel, tmp_path):
    """Unpacked as pip would: the subpackages import under ncti_jax (relative imports),
    ``python -m ncti_jax.benchmarks`` runs, and no source-tree finder is involved."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as whl:
        whl.extractall(site)
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = (
        "import sys, ncti_jax, ncti_jax.bridges, ncti_jax.benchmarks.cli as b\n"
        "assert all(m.__file__.startswith(sys.argv[1]) for m in (ncti_jax, ncti_jax.bridges, b))\n"
        "assert not [f for f in sys.meta_path if type(f).__name__ == '_SourceTreeFinder']\n"
        "assert 'torch' not in sys.modules\n"
    )
    _run(code, str(site), cwd=tmp_path, env=env)
    listing = subprocess.run(
        [sys.executable, "-m", "ncti_jax.benchmarks", "--list"],
        cwd=tmp_path,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    assert "cifar10-zoo" in listing.stdout
