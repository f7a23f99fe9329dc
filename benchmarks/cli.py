"""``ncti bench`` / ``python -m benchmarks``: time the JAX engine against its baselines.

This process only orchestrates: it generates the features into the cache, then
runs the machine probe and each contender in a fresh subprocess (the ``machine``
and ``worker`` modules of this package) and never initialises JAX itself.

The package runs under two names: ``ncti_jax.benchmarks`` when installed (``ncti
bench``), ``benchmarks`` from a source checkout (``python -m benchmarks``, as
benchmarks/gpu.sh runs it); the subprocesses run under the same name as this one.
By default every file goes under the current directory, never into the package.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from . import contenders, data, report, scenarios

# Where `ncti bench` writes when not told: the current directory.
DEFAULT_OUT = Path("ncti-bench")
DEFAULT_CACHE = DEFAULT_OUT / "features"


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``ncti bench`` and ``python -m benchmarks``; ``func`` runs them."""
    parser.description = (
        "Time ncti_jax.score_zoo against the float64 reference and the authors' scikit-learn "
        "pipeline on synthetic zoos: times, peak memory, accuracy against the float64 "
        "reference and the machine's floor (see the benchmarks' README)."
    )
    parser.set_defaults(func=run)
    parser.add_argument(
        "--scenario",
        action="append",
        metavar="NAME",
        help="a scenario or a sweep (repeatable; see --list)",
    )
    parser.add_argument("--list", action="store_true", help="list the scenarios and sweeps")
    parser.add_argument(
        "--contenders",
        default=",".join(contenders.DEFAULT),
        help=f"comma-separated, from {', '.join(contenders.CONTENDERS)} (default: %(default)s)",
    )
    parser.add_argument(
        "--repeats", type=int, help="timed calls after the first (default: 5; 2 with --quick)"
    )
    parser.add_argument(
        "--long-run",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="a contender whose run takes longer makes only --long-repeats (default: %(default)s)",
    )
    parser.add_argument(
        "--long-repeats",
        type=int,
        default=3,
        metavar="N",
        help="timed calls of a contender past --long-run (default: %(default)s)",
    )
    parser.add_argument(
        "--no-check",
        action="store_true",
        help="no untimed float64 reference run for the accuracy columns when the reference "
        "contender is not timed",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=DEFAULT_CACHE,
        metavar="DIR",
        help="feature cache directory (default: %(default)s, under the current directory)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        metavar="DIR",
        help="results directory (default: %(default)s, under the current directory)",
    )
    parser.add_argument("--seed", type=int, default=0, help="feature generator seed (default: 0)")
    parser.add_argument(
        "--generate-only", action="store_true", help="fill the feature cache, time nothing"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run in seconds: the tiny scenario (unless --scenario is given), "
        "2 repeats, small machine probes",
    )
    return parser


def _python(module: str, *args: str) -> str | None:
    """Runs ``python -m <this package>.<module> args``; ``None`` on success, else why not."""
    env = dict(os.environ)
    # The folder holding the top-level package (a checkout, or site-packages), so that the
    # child imports the same code under the same name as this process.
    top = sys.modules[__package__.partition(".")[0]]
    root = str(Path(top.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", f"{__package__}.{module}", *args]
    code = subprocess.run(command, env=env, check=False).returncode
    if code == 0:
        return None
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


def _available(selected: list[contenders.Contender]) -> list[contenders.Contender]:
    kept = []
    for c in selected:
        if c.requires and importlib.util.find_spec(c.requires) is None:
            print(
                f"skipping contender {c.name}: it needs {c.requires} (pip install scikit-learn)",
                file=sys.stderr,
                flush=True,
            )
        else:
            kept.append(c)
    return kept


def _worker(contender: contenders.Contender, store: Path, tmp: Path, label: str, **options) -> dict:
    result = tmp / f"{contender.name}.json"
    result.unlink(missing_ok=True)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in options.items()]
    failure = _python("worker", contender.name, str(store), str(result), f"--label={label}", *flags)
    if failure:
        print(f"{label}: failed ({failure})", file=sys.stderr, flush=True)
        return {"contender": contender.name, "error": failure}
    return json.loads(result.read_text())


def _contender_runs(
    store: Path,
    label: str,
    selected: list[contenders.Contender],
    tmp: Path,
    *,
    check: bool,
    options: dict,
) -> Iterator[tuple[dict, dict | None]]:
    """Times each contender in turn; yields (records so far, reference outputs) after each."""
    reference = None
    if check:
        record = _worker(
            contenders.CONTENDERS["reference"],
            store,
            tmp,
            f"{label}/reference (untimed, for accuracy)",
            repeats=0,
        )
        reference = record.get("outputs")
    records = {}
    for contender in selected:
        records[contender.name] = _worker(
            contender, store, tmp, f"{label}/{contender.name}", **options
        )
        if contender.name == "reference":
            reference = records["reference"].get("outputs")
        yield records, reference


def run(args: argparse.Namespace) -> int:
    if args.list:
        print(scenarios.listing())
        return 0
    names = args.scenario or (["tiny"] if args.quick else None)
    if not names:
        raise ValueError("name a scenario with --scenario (see --list), or use --quick.")
    chosen = scenarios.resolve(names)
    if args.generate_only:
        for scenario in chosen:
            data.ensure_store(args.cache, scenario, args.seed)
        return 0
    selected = _available(contenders.parse(args.contenders))
    if not selected:
        raise ValueError("no contender left to time.")
    repeats = args.repeats if args.repeats is not None else (2 if args.quick else 5)
    if repeats < 1:
        raise ValueError(f"--repeats must be at least 1, not {repeats}.")
    # The reference runs first: its outputs are what every other contender is checked against.
    selected.sort(key=lambda c: c.name != "reference")
    check = not args.no_check and selected[0].name != "reference"
    options = {"repeats": repeats, "long_run": args.long_run, "long_repeats": args.long_repeats}
    settings = {"seed": args.seed, "repeats_requested": repeats, "long_run_s": args.long_run}

    with tempfile.TemporaryDirectory(prefix="ncti-bench-") as tmp_dir:
        tmp = Path(tmp_dir)
        print("probing the machine ...", file=sys.stderr, flush=True)
        quick = ["--quick"] if args.quick else []
        failure = _python("machine", str(tmp / "machine.json"), *quick)
        if failure:
            print(f"the machine probe failed ({failure}).", file=sys.stderr)
            return 1
        machine = json.loads((tmp / "machine.json").read_text())
        _describe(machine)
        path = report.results_path(args.out, machine)
        doc = report.load_document(path, machine)
        done = {}
        for scenario in chosen:
            if scenario.gpu_only and machine["backend"] == "cpu":
                print(
                    f"skipping {scenario.name} ({scenario.describe()}): it needs an "
                    "accelerator; JAX sees only a CPU here.",
                    file=sys.stderr,
                    flush=True,
                )
                continue
            print(f"== {scenario.name}: {scenario.describe()}", file=sys.stderr, flush=True)
            store = data.ensure_store(args.cache, scenario, args.seed)
            runs = _contender_runs(
                store, scenario.name, selected, tmp, check=check, options=options
            )
            for records, reference in runs:  # the file is rewritten after each contender
                entry = report.summarise(scenario, records, reference, machine, settings)
                doc["scenarios"][scenario.name] = done[scenario.name] = entry
                report.write_document(path, doc)
            print(report.format_table({scenario.name: entry}), flush=True)
    if not done:
        return 0
    if len(done) > 1:
        print("\n" + report.format_table(done), flush=True)
    print(f"wrote {path}", file=sys.stderr, flush=True)
    if any(s.sweep for s in chosen):
        _plot(doc, path)
    return 0


def _describe(machine: dict) -> None:
    host = machine["host"]
    devices = ", ".join(machine["devices"]) or "no accelerator"
    print(
        f"machine {machine['tag']}: {machine['cores']} cores, {devices}; host sgemm "
        f"{host['matmul_gflops']:.0f} GFLOP/s, read {host['bandwidth_gbps']:.1f} GB/s",
        file=sys.stderr,
        flush=True,
    )
    load = machine["load_average"][0]
    if load > machine["cores"]:
        print(
            f"warning: load average {load:.1f} on {machine['cores']} cores: other work "
            "competes for the CPU, so these timings are not reliable.",
            file=sys.stderr,
            flush=True,
        )


def _plot(doc: dict, path: Path) -> None:
    try:
        png = report.plot_sweeps(
            doc["scenarios"], path.with_name(f"{path.stem}-sweeps.png"), doc["machine"]["tag"]
        )
    except ImportError:
        print("(matplotlib is not installed: no sweep plot)", file=sys.stderr, flush=True)
        return
    if png:
        print(f"wrote {png}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = add_arguments(argparse.ArgumentParser(prog=f"python -m {__package__}"))
    try:
        return run(parser.parse_args(argv))
    except ValueError as err:
        parser.error(str(err))
