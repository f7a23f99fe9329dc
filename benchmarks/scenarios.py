"""Named benchmark scenarios: zoo shapes, and sweeps that vary one factor at a time."""

from __future__ import annotations

import dataclasses

# The paper's CIFAR-10 zoo (group1): torchvision models and their penultimate widths.
PAPER_ZOO = {
    "inception_v3": 2048,
    "mobilenet_v2": 1280,
    "mnasnet1_0": 1280,
    "densenet121": 1024,
    "densenet169": 1664,
    "densenet201": 1920,
    "resnet34": 512,
    "resnet50": 2048,
    "resnet101": 2048,
    "resnet152": 2048,
    "googlenet": 1024,
}

# N < D: 50 images of each of 10 classes on wide models (the paper's zoo, alexnet, vgg16).
FEWSHOT_ZOO = {
    "resnet34": 512,
    "densenet121": 1024,
    "mobilenet_v2": 1280,
    "densenet169": 1664,
    "densenet201": 1920,
    "resnet50": 2048,
    "resnet101": 2048,
    "inception_v3": 2048,
    "resnet152": 2048,
    "alexnet": 4096,
    "vgg16": 4096,
}

# Sweeps vary one factor around this base; sized so that a whole sweep with every
# contender runs in minutes on 2 CPU cores.
SWEEP_BASE = {"m": 4, "n": 10_000, "d": 512, "c": 10}
SWEEP_VALUES = {
    "m": (2, 4, 8, 16),
    "n": (2_500, 5_000, 10_000, 20_000, 40_000),
    "d": (128, 256, 512, 1024),
    "c": (2, 10, 50, 200),
}
FACTOR_LABELS = {
    "m": "M (models)",
    "n": "N (samples)",
    "d": "D (feature width)",
    "c": "C (classes)",
}


@dataclasses.dataclass(frozen=True)
class Scenario:
    """A zoo of synthetic features: ``dims`` maps each model to its width D."""

    name: str
    n_samples: int
    n_classes: int
    dims: tuple[tuple[str, int], ...]
    gpu_only: bool = False
    regime: str | None = None  # "fewshot-wide", "longtail": features of ncti_jax.regimes
    sweep: str | None = None  # the sweep this point belongs to ("sweep-m", ...)
    value: int | None = None  # the swept factor's value at this point

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.dims)

    @property
    def feature_bytes(self) -> int:
        """float32 features of the whole zoo."""
        return sum(4 * self.n_samples * d for _, d in self.dims)

    def describe(self) -> str:
        widths = sorted({d for _, d in self.dims})
        d = str(widths[0]) if len(widths) == 1 else f"{widths[0]}..{widths[-1]}"
        return (
            f"M={len(self.dims)} N={self.n_samples} D={d} C={self.n_classes} "
            f"({self.feature_bytes / 1e9:.2f} GB)"
            + (", GPU only" if self.gpu_only else "")
            + (", long-tailed labels" if self.regime == "longtail" else "")
        )


def _uniform(name: str, m: int, n: int, d: int, c: int, **kwargs) -> Scenario:
    return Scenario(name, n, c, tuple((f"model_{i:02d}", d) for i in range(m)), **kwargs)


def _sweep_points(factor: str) -> list[Scenario]:
    points = []
    for value in SWEEP_VALUES[factor]:
        shape = {**SWEEP_BASE, factor: value}
        name = f"sweep-{factor}"
        points.append(_uniform(f"{name}-{value}", **shape, sweep=name, value=value))
    return points


_NAMED = [
    _uniform("tiny", m=3, n=400, d=96, c=5),
    Scenario("cifar10-zoo", 50_000, 10, tuple(PAPER_ZOO.items())),
    Scenario("cifar100-zoo", 50_000, 100, tuple(PAPER_ZOO.items())),
    Scenario("sun397-zoo", 20_000, 397, tuple(PAPER_ZOO.items())),
    _uniform("big-zoo", m=64, n=50_000, d=2048, c=100, gpu_only=True),
    # The fidelity regimes (ncti_jax.regimes): post-ReLU features of a latent class structure.
    Scenario("fewshot-wide", 500, 10, tuple(FEWSHOT_ZOO.items()), regime="fewshot-wide"),
    Scenario(
        "longtail",
        20_000,
        1000,
        (("model_a", 192), ("model_b", 256), ("model_c", 384), ("model_d", 384)),
        regime="longtail",
    ),
]
SCENARIOS = {s.name: s for s in _NAMED}
SWEEPS = {f"sweep-{factor}": _sweep_points(factor) for factor in SWEEP_VALUES}
for _points in SWEEPS.values():
    SCENARIOS.update((s.name, s) for s in _points)


def resolve(names: list[str]) -> list[Scenario]:
    """Scenarios by name; a sweep's name stands for all its points."""
    found: list[Scenario] = []
    for name in names:
        if name in SWEEPS:
            found.extend(SWEEPS[name])
        elif name in SCENARIOS:
            found.append(SCENARIOS[name])
        else:
            raise ValueError(
                f"unknown scenario {name!r}; known: {', '.join([*SCENARIOS, *SWEEPS])} "
                "(see --list)."
            )
    return list(dict.fromkeys(found))


def listing() -> str:
    """The text of ``--list``."""
    named = [s for s in SCENARIOS.values() if s.sweep is None]
    width = max(len(s.name) for s in named)
    lines = ["scenarios:"]
    lines += [f"  {s.name.ljust(width)}  {s.describe()}" for s in named]
    lines.append("sweeps (one factor at a time; each point is also a scenario, e.g. sweep-m-8):")
    base = ", ".join(f"{k.upper()}={v}" for k, v in SWEEP_BASE.items())
    for factor, values in SWEEP_VALUES.items():
        lines.append(
            f"  sweep-{factor}  {factor.upper()} in {', '.join(map(str, values))}  (others: {base})"
        )
    return "\n".join(lines)
