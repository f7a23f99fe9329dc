"""Times one contender on one feature store, in a process of its own.

``python -m benchmarks.worker CONTENDER STORE RESULT.json [--repeats R] ...``

A fresh process per contender: no contender inherits another's compiled
kernels, caches or allocations, and the process's peak RSS is that contender's.
The first call is timed on its own (for JAX: compilation + one run; for the
others: a warm-up that also pages the features in); then ``--repeats`` timed
calls. When the first of those takes longer than ``--long-run`` seconds, only
``--long-repeats`` are made, and the result says so.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

from . import contenders, data


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _device_peak_bytes() -> int | None:
    import jax

    stats = jax.local_devices()[0].memory_stats()
    return stats.get("peak_bytes_in_use") if stats else None


def _plan_bytes(features, labels) -> int | None:
    """Device bytes the memory planner expects one fused call to fill (``None``: not fused),
    for score_zoo's defaults on these features.

    Recorded beside the measured device peak, which also holds the features of the
    ``jax-device`` contender (already on the device before the call).
    """
    import jax
    import numpy as np

    from ncti_jax import _plan, defaults

    n, d_max = len(labels), max(x.shape[1] for x in features.values())
    return _plan.make_plan(
        defaults.STRATEGIES[0],
        device=jax.local_devices()[0],
        n_local_devices=jax.local_device_count(),
        n_devices=jax.device_count(),
        n_models=len(features),
        n=n,
        d_max=d_max,
        k=min(defaults.N_COMPONENTS, n - 1, d_max),
        n_classes=len(np.unique(np.asarray(labels))),
        dtype=np.dtype(defaults.DTYPES[0]),
        memory_limit=None,
        widest="",
    ).call_bytes


def measure(
    contender: contenders.Contender,
    store: Path,
    *,
    repeats: int,
    long_run: float,
    long_repeats: int,
    label: str,
) -> dict:
    """Times ``contender`` on ``store``; ``repeats=0``: one untimed call for its outputs."""
    features, labels = data.load_store(store)
    run = contenders.runner(contender)
    record: dict = {"contender": contender.name}

    start = time.perf_counter()
    features = contenders.prepare(contender, features)
    if contender.on_device:
        record["transfer_s"] = time.perf_counter() - start
        _say(f"{label}: features put on the device in {record['transfer_s']:.3f} s")

    start = time.perf_counter()
    record["outputs"] = run(features, labels)
    record["first_s"] = time.perf_counter() - start
    what = "compilation + run" if contender.compiled else "warm-up"
    _say(f"{label}: first call ({what}) {record['first_s']:.3f} s")
    fell = record["outputs"]["details"].get("eigensolver_fallbacks")
    if fell is not None:
        residual = record["outputs"]["details"]["eigensolver_max_residual"]
        _say(
            f"{label}: eigensolver {contender.eigensolver}: {len(fell)} of "
            f"{len(record['outputs']['models'])} models fell back to the full eigh"
            f"{' (' + ', '.join(fell[:5]) + ')' if fell else ''}; largest residual {residual:.1e}"
        )

    times: list[float] = []
    target = repeats
    while len(times) < target:
        start = time.perf_counter()
        run(features, labels)
        times.append(time.perf_counter() - start)
        _say(f"{label}: repeat {len(times)}/{target} {times[-1]:.3f} s")
        if len(times) == 1 and times[0] > long_run and target > long_repeats:
            target = long_repeats
            record["repeats_note"] = (
                f"{long_repeats} repeats instead of {repeats}: one run takes "
                f"{times[0]:.0f} s (> {long_run:.0f} s)"
            )
            _say(f"{label}: {record['repeats_note']}")
    record["times_s"] = times
    record["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if contender.engine == "jax":
        record["device_peak_bytes"] = _device_peak_bytes()
        record["plan_bytes"] = _plan_bytes(features, labels)
        if record["device_peak_bytes"] is not None:
            planned = record["plan_bytes"]
            _say(
                f"{label}: device peak {record['device_peak_bytes'] / 2**30:.2f} GiB; the plan "
                + (f"expects {planned / 2**30:.2f} GiB per call" if planned else "is not fused")
            )
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("contender", choices=list(contenders.CONTENDERS))
    parser.add_argument("store", type=Path, help="a scenario's feature store")
    parser.add_argument("result", help="where to write the JSON result")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls (0: untimed)")
    parser.add_argument("--long-run", type=float, default=60.0)
    parser.add_argument("--long-repeats", type=int, default=3)
    parser.add_argument("--label", default="", help="prefix of the progress lines")
    args = parser.parse_args(argv)
    from ncti_jax import io as ncti_io

    record = measure(
        contenders.CONTENDERS[args.contender],
        args.store,
        repeats=args.repeats,
        long_run=args.long_run,
        long_repeats=args.long_repeats,
        label=args.label or args.contender,
    )
    ncti_io.atomic_write_text(args.result, json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
