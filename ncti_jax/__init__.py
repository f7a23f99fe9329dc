"""ncti-jax: NCTI transferability scores for whole model zoos, in JAX.

NCTI (Wang et al., ICCV 2023) ranks pre-trained models by how far their
penultimate features on a target dataset are from neural collapse. This package
scores a zoo with jit-compiled kernels vmapped over the models and split
over devices (and hosts).

Example:
  >>> import numpy as np, ncti_jax
  >>> rng = np.random.default_rng(0)
  >>> y = rng.integers(0, 3, 300)
  >>> result = ncti_jax.score_zoo({"a": rng.normal(size=(300, 16)) + y[:, None],
  ...                              "b": rng.normal(size=(300, 8))}, y)
  >>> result.best()
  'a'

Importing the package imports nothing heavy: each public name below is imported
from its submodule (and JAX started) on first use, so that ``ncti --help`` stays
fast. The torch bridge is :mod:`ncti_jax.bridges`, the benchmarks
:mod:`ncti_jax.benchmarks`.
"""

from __future__ import annotations

import importlib
import os
import sys

# Every public name and the submodule that defines it: the one list of the public API.
_EXPORTS = {
    "CheckpointError": "._checkpoint",
    "MetricResult": "._result",
    "NCTIResult": "._result",
    "RowChunks": "._stream",
    "Status": "._result",
    "ZooMetrics": "._result",
    "normalise_zoo": "._result",
    "score_metrics": "._score",
    "score_zoo": "._score",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            value = version("ncti-jax")
        except PackageNotFoundError:  # pragma: no cover - a source tree that is not installed
            value = "0.0.0+unknown"
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _SourceTreeFinder:
    """``ncti_jax.bridges`` and ``ncti_jax.benchmarks`` in a source checkout.

    An install maps the folders ``bridges/`` and ``benchmarks/`` beside ``ncti_jax/`` to
    those names (pyproject.toml). A checkout used without installing (``PYTHONPATH``,
    as benchmarks/gpu.sh and the tests run it) answers to the same names through this
    finder, which serves those two names only.
    """

    def __init__(self, root: str, names: dict[str, str]):
        self.root, self.names = root, names

    def find_spec(self, fullname, path=None, target=None):
        folder = self.names.get(fullname)
        if folder is None:
            return None
        import importlib.util

        where = os.path.join(self.root, folder)
        return importlib.util.spec_from_file_location(
            fullname, os.path.join(where, "__init__.py"), submodule_search_locations=[where]
        )


def _serve_source_tree() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    names = {
        f"{__name__}.{folder}": folder
        for folder in ("bridges", "benchmarks")
        if not os.path.isdir(os.path.join(here, folder))  # installed: the real subpackage
        and os.path.isfile(os.path.join(root, folder, "__init__.py"))
    }
    served = any(type(f).__name__ == "_SourceTreeFinder" for f in sys.meta_path)
    if names and not served and os.path.isfile(os.path.join(root, "pyproject.toml")):
        sys.meta_path.append(_SourceTreeFinder(root, names))


_serve_source_tree()
