"""What is timed: the JAX engine (in several configurations) and its two baselines.

Every contender maps ``(features, labels)`` to the same plain outputs: the raw
components per model and the ranking (model names, best first), so that they
can be compared with each other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Mapping

import numpy as np

Features = Mapping[str, np.ndarray]

# Set to 1: the JAX contenders run the accelerators' numerics on any device
# (ncti_jax._plan.device_numerics, fused): how gpu.sh --quick is dry-run on a CPU.
DEVICE_NUMERICS_ENV = "NCTI_BENCH_DEVICE_NUMERICS"


@dataclasses.dataclass(frozen=True)
class Contender:
    name: str
    description: str
    engine: str  # "jax", "reference" or "authors"
    precision: str = "highest"  # JAX matmul precision
    on_device: bool = False  # features put on the default JAX device before timing
    eigensolver: str = "topk"  # the device path's PCA eigensolver (ncti_jax.defaults)
    requires: str | None = None  # an optional module it needs

    @property
    def compiled(self) -> bool:
        return self.engine == "jax"


CONTENDERS = {
    c.name: c
    for c in (
        Contender("jax", "ncti_jax.score_zoo, features as given (host, memory-mapped)", "jax"),
        Contender(
            "jax-device",
            "ncti_jax.score_zoo, features already on the device (jax.device_put, untimed)",
            "jax",
            on_device=True,
        ),
        Contender(
            "jax-device-eigh",
            "as jax-device, the full eigh for the PCA (before the top-k solver)",
            "jax",
            on_device=True,
            eigensolver="eigh",
        ),
        Contender(
            "jax-device-tf32",
            "as jax-device, the top-k solver on a TF32 scatter refined on the exact one",
            "jax",
            on_device=True,
            eigensolver="topk-tf32",
        ),
        Contender(
            "jax-device-bf16",
            "as jax-device, the top-k solver on a bfloat16 scatter refined on the exact one",
            "jax",
            on_device=True,
            eigensolver="topk-bf16",
        ),
        Contender(
            "jax-high",
            "as jax-device, precision='high' (TF32 / bf16x3 on accelerators)",
            "jax",
            precision="high",
            on_device=True,
        ),
        Contender(
            "jax-default",
            "as jax-device, precision='default' (TF32 on NVIDIA GPUs, one bf16 pass on TPUs)",
            "jax",
            precision="default",
            on_device=True,
        ),
        Contender("reference", "ncti_jax.reference.score_zoo: float64 NumPy/SciPy", "reference"),
        Contender(
            "authors",
            "the authors' scikit-learn pipeline: PCA(64), default solver; LDA; float64",
            "authors",
            requires="sklearn",
        ),
    )
}
DEFAULT = ("jax", "reference", "authors")


def parse(spec: str) -> list[Contender]:
    """Contenders from a comma-separated list of names."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONTENDERS]
    if unknown or not names:
        raise ValueError(
            f"unknown contender(s) {unknown}; choose from {', '.join(CONTENDERS)}."
            if unknown
            else "no contenders given."
        )
    return [CONTENDERS[n] for n in dict.fromkeys(names)]


def _outputs(result) -> dict:
    """Plain outputs of an ``NCTIResult`` or ``ReferenceResult``."""
    models = list(result.models)
    return {
        "models": models,
        "etf": np.asarray(result.etf, np.float64).tolist(),
        "ncc": np.asarray(result.ncc, np.float64).tolist(),
        "vc": np.asarray(result.vc, np.float64).tolist(),
        "ranking": [models[i] for i in np.asarray(result.ranking).tolist()],
        "details": {},
    }


def _engine_outputs(result) -> dict:
    """:func:`_outputs` of an ``NCTIResult``, with the models whose top-k PCA eigensolver
    fell back to the full eigh and the solver's largest certified residual."""
    from ncti_jax import Status

    out = _outputs(result)
    fell = (np.asarray(result.status) & Status.EIGENSOLVER_FALLBACK) > 0
    out["details"] = {
        "eigensolver_fallbacks": [m for m, f in zip(out["models"], fell, strict=True) if f],
        "eigensolver_max_residual": float(np.max(result.eigen_residual, initial=0.0)),
    }
    return out


def prepare(contender: Contender, features: Features) -> Features:
    """The features as the contender is given them (on the device, for ``on_device``)."""
    if not contender.on_device:
        return features
    import jax

    return jax.block_until_ready({m: jax.device_put(x) for m, x in features.items()})


def runner(contender: Contender) -> Callable[[Features, np.ndarray], dict]:
    """A function ``(features, labels) -> outputs`` that returns once all work is done."""
    if contender.engine == "jax":
        import jax

        import ncti_jax
        from ncti_jax import _plan

        # A CPU dry run of gpu.sh traces the accelerators' code path (fused, the top-k
        # solver and its fallback call) rather than the CPU's host path.
        forced = os.environ.get(DEVICE_NUMERICS_ENV) == "1"

        def run(features, labels):
            with _plan.device_numerics() if forced else contextlib.nullcontext():
                result = ncti_jax.score_zoo(
                    features,
                    labels,
                    precision=contender.precision,
                    eigensolver=contender.eigensolver,
                    strategy="fused" if forced else "auto",
                )
            return _engine_outputs(jax.block_until_ready(result))

        return run
    if contender.engine == "reference":
        from ncti_jax import reference

        return lambda features, labels: _outputs(reference.score_zoo(features, labels))
    from . import authors

    return authors.score_zoo
