"""Summaries of the timings, the results document, the table and the sweep plot."""

from __future__ import annotations

import datetime
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ncti_jax import io as ncti_io

from . import floor
from .contenders import CONTENDERS
from .scenarios import FACTOR_LABELS, Scenario

SCHEMA = "ncti-jax/bench/v1"
BASELINES = ("reference", "authors")
COMPONENTS = ("etf", "ncc", "vc")


def accuracy(outputs: Mapping, reference: Mapping) -> dict:
    """Max relative error per component against the reference, and ranking identity."""
    row = {m: i for i, m in enumerate(reference["models"])}
    order = [row[m] for m in outputs["models"]]
    errors = {}
    for comp in COMPONENTS:
        got = np.asarray(outputs[comp], np.float64)
        want = np.asarray(reference[comp], np.float64)[order]
        errors[comp] = float(np.max(np.abs(got - want) / np.abs(want)))
    return {
        "max_rel_err": errors,
        "same_ranking": list(outputs["ranking"]) == list(reference["ranking"]),
    }


def _rates(name: str, machine: Mapping) -> tuple[float, float]:
    """(bandwidth GB/s, matmul GFLOP/s) of where ``name`` computes and reads its features."""
    contender = CONTENDERS[name]
    accelerator = machine.get("accelerator")
    if contender.engine == "jax" and accelerator:
        # Features on the host must first cross to the device.
        key = "bandwidth_gbps" if contender.on_device else "transfer_gbps"
        return accelerator[key], accelerator["matmul_gflops"][contender.precision]
    host = machine["host"]
    return host["bandwidth_gbps"], host["matmul_gflops"]


def summarise(
    scenario: Scenario,
    records: Mapping[str, Mapping],
    reference: Mapping | None,
    machine: Mapping,
    settings: Mapping,
) -> dict:
    """The document's entry for one scenario, from the workers' records.

    ``reference``: the outputs every contender's accuracy is measured against
    (``None``: not measured).
    """
    cost = floor.scenario_cost(scenario)
    medians = {
        name: float(np.median(r["times_s"])) for name, r in records.items() if r.get("times_s")
    }
    entries = {}
    for name, record in records.items():
        entry = {"description": CONTENDERS[name].description}
        entry.update((k, v) for k, v in record.items() if k not in ("outputs", "contender"))
        if name in medians:
            times = np.asarray(record["times_s"])
            median = medians[name]
            q1, q3 = np.percentile(times, [25, 75])
            entry.update(
                repeats=len(times),
                median_s=median,
                min_s=float(times.min()),
                max_s=float(times.max()),
                iqr_s=float(q3 - q1),
                compile_s=record["first_s"] - median if CONTENDERS[name].compiled else None,
                speedup={b: medians[b] / median for b in BASELINES if b in medians},
                floor_s=floor.floor_seconds(cost, *_rates(name, machine)),
            )
            entry["time_over_floor"] = median / entry["floor_s"]
        if "outputs" in record:
            entry["details"] = record["outputs"]["details"]
            if reference is not None and name != "reference":
                entry["accuracy"] = accuracy(record["outputs"], reference)
        entries[name] = entry
    return {
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "settings": dict(settings),
        "shape": {
            "models": len(scenario.dims),
            "n_samples": scenario.n_samples,
            "n_classes": scenario.n_classes,
            "dims": dict(scenario.dims),
        },
        "sweep": scenario.sweep,
        "value": scenario.value,
        "floor": cost,
        "rates": {k: machine[k] for k in ("host", "accelerator") if k in machine},
        "contenders": entries,
    }


def results_path(out: Path, machine: Mapping) -> Path:
    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    return Path(out) / f"{machine['tag']}-{today}.json"


def load_document(path: Path, machine: Mapping) -> dict:
    """The results file at ``path`` (scenarios of earlier runs kept), or a new one."""
    doc = {"schema": SCHEMA, "machine": dict(machine), "scenarios": {}}
    if path.exists():
        earlier = json.loads(path.read_text())
        if earlier.get("schema") != SCHEMA:
            raise ValueError(f"{path}: not a benchmark results file of schema {SCHEMA}.")
        # Keep what earlier runs wrote (scenarios, benchmarks.scaling's "scaling").
        doc.update({k: v for k, v in earlier.items() if k not in ("schema", "machine")})
    return doc


def write_document(path: Path, doc: Mapping) -> None:
    ncti_io.atomic_write_text(path, json.dumps(doc, indent=1) + "\n")


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_table(scenarios: Mapping[str, Mapping]) -> str:
    """One row per scenario and contender."""
    header = (
        "scenario",
        "contender",
        "median s",
        "min..max s",
        "runs",
        "compile s",
        "ref/x",
        "authors/x",
        "peak RSS GB",
        "err etf",
        "err ncc",
        "err vc",
        "same rank",
        "x floor",
    )
    rows = []
    for scenario, entry in scenarios.items():
        for name, c in entry["contenders"].items():
            if "error" in c:
                rows.append((scenario, name, f"error: {c['error']}"))
                continue
            acc = c.get("accuracy")
            errs = acc["max_rel_err"] if acc else {}
            speedup = c.get("speedup", {})
            timed = "median_s" in c
            rows.append(
                (
                    scenario,
                    name,
                    _num(c.get("median_s"), ".3f"),
                    f"{c['min_s']:.3f}..{c['max_s']:.3f}" if timed else "-",
                    str(c.get("repeats", 0)) + ("*" if c.get("repeats_note") else ""),
                    _num(c.get("compile_s"), ".2f"),
                    _num(speedup.get("reference"), ".2f"),
                    _num(speedup.get("authors"), ".2f"),
                    f"{c['peak_rss_bytes'] / 1e9:.2f}",
                    *(_num(errs.get(k), ".1e") for k in COMPONENTS),
                    "-" if acc is None else ("yes" if acc["same_ranking"] else "NO"),
                    _num(c.get("time_over_floor"), ".1f"),
                )
            )
    widths = [max(len(h), *(len(r[i]) for r in rows if len(r) > i)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=False)) for r in rows]
    notes = [
        f"* {s} / {n}: {c['repeats_note']}"
        for s, e in scenarios.items()
        for n, c in e["contenders"].items()
        if c.get("repeats_note")
    ]
    return "\n".join(lines + notes)


def plot_sweeps(scenarios: Mapping[str, Mapping], path: Path, title: str) -> Path | None:
    """Median time against each swept factor, log-log, one line per contender.

    Returns the PNG written, or ``None`` when there is no sweep point to plot.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullLocator

    sweeps: dict[str, dict[str, list[tuple[int, float, float, float]]]] = {}
    for entry in scenarios.values():
        if not entry.get("sweep"):
            continue
        for name, c in entry["contenders"].items():
            if "median_s" in c:
                point = (entry["value"], c["median_s"], c["min_s"], c["max_s"])
                sweeps.setdefault(entry["sweep"], {}).setdefault(name, []).append(point)
    if not sweeps:
        return None
    ncols = min(2, len(sweeps))
    nrows = -(-len(sweeps) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 4 * nrows), squeeze=False)
    for ax in axes.flat[len(sweeps) :]:
        ax.set_visible(False)
    order = sorted(sweeps, key=lambda s: list(FACTOR_LABELS).index(s.removeprefix("sweep-")))
    for ax, sweep in zip(axes.flat, order, strict=False):
        lines = sweeps[sweep]
        for name, points in lines.items():
            x, median, low, high = np.array(sorted(points)).T
            ax.errorbar(x, median, yerr=[median - low, high - median], marker="o", label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        values = sorted({p[0] for points in lines.values() for p in points})
        ax.set_xticks(values, [str(v) for v in values])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.yaxis.set_minor_locator(NullLocator())
        ax.set_xlabel(FACTOR_LABELS[sweep.removeprefix("sweep-")])
        ax.set_ylabel("time (s): median, min..max")
        ax.set_title(sweep)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with ncti_io.atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    plt.close(fig)
    return path
