"""Memory planning: how a zoo is split into compiled calls before anything runs.

Two strategies compute the same thing:

* ``"fused"``: each call moves a batch of whole models to the devices and runs the
  entire kernel there (PCA included), vmapped over the models of each device.
  The fastest route on accelerators when a model fits in device memory.
* ``"streaming"``: the PCA of each model is accumulated from row chunks
  (:mod:`ncti_jax._stream`), so a model never has to fit anywhere; only its
  (N, k) projection goes to the compiled kernel. The default on CPU, where the
  host BLAS forms the covariance about twice as fast as XLA:CPU, and the fallback
  for a model wider or longer than device memory.

``"auto"`` picks streaming on CPU, fused elsewhere when one model per device fits.

The plan owns every rule that differs between the CPU and accelerators: the
strategy, the models per call, and the :class:`ncti_jax._linalg.Linalg` every
compiled call is traced with (looped LAPACK calls on XLA:CPU; the PCA's
eigenproblems solved in float64 on the host on CPU, in the computation dtype on
the device elsewhere, or on CPU inside :func:`device_numerics`, how the
accelerator path is tested).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import os
from collections.abc import Iterator
from typing import Literal

import jax
import numpy as np

from ._linalg import Linalg
from .defaults import EIGENSOLVERS, STRATEGIES

Strategy = Literal["auto", "fused", "streaming"]

# Share of the free device memory a plan may fill (XLA needs headroom for its own buffers).
_HEADROOM = 0.8

_DEVICE_NUMERICS = contextvars.ContextVar("ncti_device_numerics", default=False)


@contextlib.contextmanager
def device_numerics() -> Iterator[None]:
    """Plans runs inside this context as on an accelerator, whatever the device.

    On CPU this runs the accelerator code path (jitted streaming PCA, float32
    ``eigh`` inside the kernel, no host callbacks) with the CPU's looped linear
    algebra: how the tests and the accuracy benchmarks check the device path
    without a device.
    """
    token = _DEVICE_NUMERICS.set(True)
    try:
        yield
    finally:
        _DEVICE_NUMERICS.reset(token)


@dataclasses.dataclass(frozen=True)
class Plan:
    """How :func:`ncti_jax.score_zoo` runs a zoo.

    Attributes:
      strategy: ``"fused"`` or ``"streaming"``.
      models_per_call: models this process sends per compiled call (a multiple of
        its device count; the last call is padded with dummy models).
      linalg: how every compiled call traces its linear algebra (a static
        argument): ``linalg.host_solve`` says the PCA's eigenproblems are solved
        in float64 on the host (CPU, unless :func:`device_numerics`), and then the
        streamed PCA runs on the host too.
      call_bytes: the device bytes one fused call is planned to fill on each device
        (None when streaming): what the benchmarks set beside the measured peak.
    """

    strategy: str
    models_per_call: int
    linalg: Linalg
    call_bytes: int | None = None


def fused_bytes(n: int, d: int, k: int, n_classes: int, itemsize: int) -> int:
    """Peak device bytes of one model in the fused kernel.

    Four copies of the features (4 N D): the input, its centred copy, XLA's
    intermediates, and the copy of the covariance matmul's operand that XLA:GPU's
    autotuner allocates to check for out-of-bounds writes; the covariance and
    eigh's workspace (about 3 D^2, or 3 N^2 when N < D), and the LDA stage.
    Measured on an H200 (jax 0.11.2, cifar10-zoo, 11 models per call): the call's
    peak was 1.32 times the 2 N D estimate this replaces; on big-zoo (62 models
    per call) the autotuner's 23.7 GiB operand copy then ran out of memory.
    """
    gram = min(n, d) ** 2
    return itemsize * (4 * n * d + 3 * gram) + stage2_bytes(n, k, n_classes, itemsize)


def stage2_bytes(n: int, k: int, n_classes: int, itemsize: int) -> int:
    """The LDA stage on the (N, k) projection: a few (N, k) and (N, C) arrays, and
    the per-class probability blocks for vc (at most 2 N rows of C, see
    :class:`ncti_jax._pad.ClassLayout`)."""
    return itemsize * (6 * n * k + 8 * n * n_classes)


def format_bytes(count: int) -> str:
    """``1536`` -> ``"1.5 KiB"``: three significant digits in the largest fitting unit."""
    value = float(count)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.3g} {unit}"
        value /= 1024
    raise AssertionError  # unreachable


def device_budget(device: jax.Device, memory_limit: int | None) -> int | None:
    """Bytes one device may fill: ``memory_limit`` if given, else what the device reports
    free (with headroom), else half the host's memory for a CPU device."""
    if memory_limit is not None:
        return int(memory_limit)
    try:
        stats = device.memory_stats() or {}
    except Exception:  # some backends do not implement it
        stats = {}
    if "bytes_limit" in stats:
        return int(_HEADROOM * (stats["bytes_limit"] - stats.get("bytes_in_use", 0)))
    if device.platform == "cpu":
        try:
            return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
        except (ValueError, OSError):
            return None
    return None


def make_plan(
    strategy: str,
    *,
    device: jax.Device,
    n_local_devices: int,
    n_devices: int,
    n_models: int,
    n: int,
    d_max: int,
    k: int,
    n_classes: int,
    dtype: np.dtype,
    memory_limit: int | None,
    widest: str,
    eigensolver: str = EIGENSOLVERS[0],
) -> Plan:
    """Chooses the strategy, the models per call and the linear algebra for a zoo.

    Args:
      device: this process's first device (they are all of one kind).
      n_local_devices, n_devices: this process's devices, and every process's.
      n_models: this process's models.
      n, d_max, k, n_classes: the zoo's shapes (``k``: the PCA width of a call).
      dtype: the computation dtype.
      eigensolver: how the device path solves the PCA's eigenproblem (see
        :class:`ncti_jax._linalg.Linalg`; the host path always solves in float64).

    Raises:
      MemoryError: ``strategy="fused"`` and one model does not fit one device.
      ValueError: an unknown strategy, or ``"fused"`` in float32 on several CPU devices.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}; got {strategy!r}.")
    dtype = np.dtype(dtype)
    budget = device_budget(device, memory_limit)
    fused = fused_bytes(n, d_max, k, n_classes, dtype.itemsize)
    fits = budget is None or fused <= budget
    linalg = Linalg.for_platform(
        device.platform, host_solve=False if _DEVICE_NUMERICS.get() else None
    )
    if not linalg.host_solve:
        linalg = dataclasses.replace(linalg, eigensolver=eigensolver)
    if strategy == "auto":
        strategy = "fused" if not linalg.host_solve and fits else "streaming"
    if strategy == "fused" and not fits:
        raise MemoryError(
            f"model {widest!r} (N = {n}, D = {d_max}) needs about {format_bytes(fused)} "
            f"on one device in the fused strategy, more than the {format_bytes(budget)} "
            "available; use strategy='streaming', which holds one chunk of rows at a time."
        )
    if strategy == "fused" and linalg.host_solve and n_devices > 1 and dtype == np.float32:
        raise ValueError(
            "strategy='fused' on several CPU devices needs dtype=float64: in float32 its "
            "eigensolver runs in host callbacks, which hang XLA:CPU when several CPU devices "
            "run at once. Use strategy='streaming' (the CPU default)."
        )
    per_device = -(-max(n_models, 1) // n_local_devices)  # ceil: every model in one call
    if strategy == "fused" and budget is not None:
        per_device = max(1, min(per_device, budget // fused))
    elif strategy == "streaming":
        per_device = 1  # one model per device per call: each model's PCA is streamed on its own
    call_bytes = per_device * fused if strategy == "fused" else None
    return Plan(strategy, per_device * n_local_devices, linalg, call_bytes)


def metrics_bytes(n: int, d: int, s: int, n_classes: int, itemsize: int) -> int:
    """Peak device bytes of one model in the metrics' kernels (:mod:`ncti_jax._batch`).

    Four (N, D) copies (the input, its centred and class-centred copies, XLA's
    intermediates), a few D x D scatters and their eigendecomposition (6 D^2),
    three (N, S) copies of the source logits, and (N, C)-sized per-metric
    work (NLEEP's responsibilities over 5 C components, probabilities, one-hots):
    32 N C. An estimate, not a measurement: check it against ``memory_stats()``
    on a device (the benchmark worker records both).
    """
    return itemsize * (4 * n * d + 6 * d * d + 3 * n * s + 32 * n * n_classes)
