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
"""

from importlib.metadata import PackageNotFoundError, version

from ._checkpoint import CheckpointError as CheckpointError
from ._result import NCTIResult as NCTIResult
from ._result import Status as Status
from ._result import normalise_zoo as normalise_zoo
from ._score import score_zoo as score_zoo
from ._stream import RowChunks as RowChunks

try:
    __version__ = version("ncti-jax")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = [
    "CheckpointError",
    "NCTIResult",
    "RowChunks",
    "Status",
    "__version__",
    "normalise_zoo",
    "score_zoo",
]
