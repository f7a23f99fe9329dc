"""Transferability metrics beside NCTI, each a kernel of one model on shared statistics.

Every metric module defines ``METRICS``, a tuple of :class:`Metric`: a pure
kernel of one model that reads what it needs from a :class:`ncti_jax._stats.ModelStats`
(so statistics two metrics share are traced once per compiled call) and
returns its raw values, ``"value"`` first (higher is better), plus the float64
reference of one model it is tested against. :func:`ncti_jax._batch.zoo_metrics`
batches any set of them over models and devices; :func:`ncti_jax.score_metrics`
drives a zoo.

NCTI itself (``"ncti"``) keeps its own driver, :func:`ncti_jax.score_zoo`: its
CPU path solves the PCA in float64 on the host and streams N, which the other
metrics' fused kernels do not.

This package imports JAX only when a metric is looked up (:func:`get`).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterable
from typing import Any

# Every metric, in the order results list them, and the module that defines it.
_MODULES = {
    "ncti": None,
    "logme": "logme",
    "sfda": "sfda",
    "hscore": "hscore",
    "hscore_shrinkage": "hscore",
    "transrate": "transrate",
    "gbc": "gbc",
    "leep": "leep",
    "nce": "leep",
    "nleep": "nleep",
    "parc": "parc",
    "etran": "etran",
}
NAMES = tuple(_MODULES)


@dataclasses.dataclass(frozen=True)
class Metric:
    """A transferability metric's kernel of one model.

    Attributes:
      name: the metric's name (``--metrics``, result keys, column names).
      kernel: ``kernel(stats) -> {field: scalar}``, traced per model: ``"value"``
        (higher predicts better transfer; absent when ``combine`` makes it) and any
        other raw quantities worth keeping.
      fields: the keys ``kernel`` returns, ``"value"`` first when present.
      reference: ``reference(features, labels, logits=None) -> float``, the float64
        NumPy value of one unpadded model: the oracle of the parity tests.
      needs_logits: the kernel reads the source classifier's logits.
      summary: one line for ``--help`` and the README.
      dtype: ``"float64"`` for a metric computed in float64 whatever the run's dtype
        (its float32 form is not accurate enough to rank by; see its module); None
        computes it in the run's dtype.
      sample: for a metric that scores a subsample of the rows (PARC above its sample
        cap): ``sample(codes) -> sorted row indices`` (or None for all rows), drawn
        from the labels alone, once for the whole zoo; the driver runs the kernel on
        those rows of every model.
      class_blocks: the kernel reads the per-class sample blocks
        (``stats.layout.buckets``); only then do they reach the compiled call, whose
        shapes then follow the class sizes.
      memory: ``memory(n_rows, itemsize) -> bytes`` the kernel needs per model beyond
        what the memory plan counts for every metric (PARC's N x N matrices).
      combine: for a metric defined over the zoo (e.g. ETran's weighted sum of parts
        normalised across models): ``combine({field: (M,) float64}) -> (M,)`` values,
        on the host; None when the kernel's ``"value"`` is the metric.
    """

    name: str
    kernel: Callable[[Any], dict[str, Any]]
    reference: Callable[..., float]
    fields: tuple[str, ...] = ("value",)
    needs_logits: bool = False
    summary: str = ""
    combine: Callable[[dict[str, Any]], Any] | None = None
    dtype: str | None = None
    sample: Callable[[Any], Any] | None = None
    memory: Callable[[int, int], int] | None = None
    class_blocks: bool = False

    def values(self, fields: dict[str, Any]) -> Any:
        """(M,) the metric of each model from the kernel's per-model ``fields``."""
        return fields["value"] if self.combine is None else self.combine(fields)


class UnknownMetricError(ValueError):
    pass


def available() -> tuple[str, ...]:
    """The names of the metrics whose kernels are implemented, in result order."""
    out = ["ncti"]
    for name in NAMES[1:]:
        try:
            get(name)
        except (UnknownMetricError, ImportError):
            continue
        out.append(name)
    return tuple(out)


def get(name: str) -> Metric:
    """The :class:`Metric` called ``name`` (not ``"ncti"``, which has its own driver)."""
    module = _MODULES.get(name)
    if module is None:
        raise UnknownMetricError(
            f"{name!r} has no metric kernel" if name in _MODULES else f"unknown metric {name!r}"
        )
    mod = importlib.import_module(f"{__name__}.{module}")
    for metric in getattr(mod, "METRICS", ()):
        if metric.name == name:
            return metric
    raise UnknownMetricError(f"metric {name!r} is not implemented yet")


def parse(spec: str | Iterable[str] | None) -> tuple[str, ...]:
    """``"ncti,logme"``, ``"all"`` or a sequence of names -> names in result order, unique.

    Raises:
      ValueError: an unknown or unimplemented name, naming it and the choices.
    """
    if spec is None:
        return ("ncti",)
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    names = [n for n in names if n]
    choices = available()
    if names == ["all"]:
        return choices
    bad = [n for n in names if n not in choices]
    if bad or not names:
        raise ValueError(
            f"metrics: {', '.join(map(repr, bad)) or 'none given'}; choose from "
            f"{', '.join(choices)} or 'all'."
        )
    return tuple(n for n in NAMES if n in names)
