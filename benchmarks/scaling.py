"""Scale-out measurements: one zoo on 1 vs several devices; streaming vs in-memory memory.

``python -m benchmarks.scaling devices [--scenario cifar10-zoo] [--devices 1,4]``
    times ``score_zoo`` on a scenario's store with N forced devices (on a CPU,
    ``--xla_force_host_platform_device_count``), each in a fresh process: the
    first call (compilation included) and the median of the next ``--repeats``.

``python -m benchmarks.scaling memory [--n 200000] [--d 2048]``
    peak resident memory of one (N, D) model scored in memory (loaded whole,
    ``strategy="fused"``), streamed from a memory-mapped file, and streamed from
    plain file reads (:class:`ncti_jax.RowChunks`), each in a fresh process. Peak
    RSS counts the touched pages of a memory-mapped file, which the kernel can
    drop at any time: the plain-read variant shows what streaming itself holds.

Results are printed and merged into ``benchmarks/results/<machine>-<date>.json``
under ``"scaling"``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from . import data, machine, report
from .scenarios import SCENARIOS, Scenario

CHUNK_ROWS = 4096


def _peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _child(argv: list[str]) -> dict:
    """Runs in the subprocess: one measurement, returned as a dict."""
    mode = argv[0]
    if mode == "devices":
        store, repeats = Path(argv[1]), int(argv[2])
        import jax

        import ncti_jax

        features, labels = data.load_store(store)
        start = time.perf_counter()
        ncti_jax.score_zoo(features, labels)
        first = time.perf_counter() - start
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            ncti_jax.score_zoo(features, labels)
            times.append(time.perf_counter() - start)
        return {"devices": len(jax.devices()), "first_s": first, "times_s": times}
    path, variant = Path(argv[1]), argv[2]
    labels = np.load(path.with_name("labels.npy"))
    import ncti_jax

    baseline = _peak_rss_bytes()  # the interpreter, jax and numpy, before any feature is read
    if variant == "in-memory":
        features = np.load(path)
        result = ncti_jax.score_zoo({"m": features}, labels, strategy="fused")
    elif variant == "streaming-memmap":
        features = np.load(path, mmap_mode="r")
        result = ncti_jax.score_zoo({"m": features}, labels, strategy="streaming")
    else:
        mapped = np.load(path, mmap_mode="r")  # header only: shape, dtype, data offset
        shape, dtype, offset = mapped.shape, mapped.dtype, mapped.offset
        del mapped

        def blocks():
            with open(path, "rb") as fh:
                fh.seek(offset)
                for start in range(0, shape[0], CHUNK_ROWS):
                    rows = min(CHUNK_ROWS, shape[0] - start)
                    yield np.fromfile(fh, dtype, rows * shape[1]).reshape(rows, shape[1])

        chunks = ncti_jax.RowChunks(blocks, shape=shape, dtype=dtype)
        result = ncti_jax.score_zoo({"m": chunks}, labels, strategy="streaming")
    return {
        "variant": variant,
        "baseline_rss_bytes": baseline,
        "peak_rss_bytes": _peak_rss_bytes(),
        "etf": float(result.etf[0]),
        "ncc": float(result.ncc[0]),
        "vc": float(result.vc[0]),
    }


def _spawn(args: list[str], env: dict | None = None) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", f"{__package__}.scaling", "--child", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"measurement {args} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def devices(scenario: Scenario, counts: list[int], cache: Path, seed: int, repeats: int) -> dict:
    store = data.ensure_store(cache, scenario, seed)
    out = {"scenario": scenario.name, "runs": []}
    for n in counts:
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
        run = _spawn(["devices", str(store), str(repeats)], env)
        run["median_s"] = statistics.median(run["times_s"])
        print(
            f"{scenario.name} on {run['devices']} device(s): first call {run['first_s']:.2f} s, "
            f"median of {repeats} {run['median_s']:.2f} s",
            flush=True,
        )
        out["runs"].append(run)
    return out


def memory(n: int, d: int, cache: Path, seed: int) -> dict:
    root = Path(cache) / f"memory-n{n}-d{d}-seed{seed}"
    path = root / "m.npy"
    if not path.exists():
        root.mkdir(parents=True, exist_ok=True)
        y = data.labels(seed, n, 10)
        np.save(root / "labels.npy", y)
        data.write_model(path, y, d, 0.1, seed=seed, index=0)
    out = {"n": n, "d": d, "feature_bytes": n * d * 4, "chunk_rows": CHUNK_ROWS, "runs": []}
    for variant in ("in-memory", "streaming-memmap", "streaming-reads"):
        run = _spawn(["memory", str(path), variant])
        run["added_bytes"] = run["peak_rss_bytes"] - run["baseline_rss_bytes"]
        print(
            f"N={n} D={d} {variant}: peak RSS {run['peak_rss_bytes'] / 2**30:.2f} GiB "
            f"({run['added_bytes'] / 2**30:.2f} GiB above the {run['baseline_rss_bytes'] / 2**30:.2f}"
            f" GiB after imports)",
            flush=True,
        )
        out["runs"].append(run)
    first = out["runs"][0]
    for run in out["runs"][1:]:
        run["max_rel_err_vs_in_memory"] = max(
            abs(run[c] - first[c]) / abs(first[c]) for c in ("etf", "ncc", "vc")
        )
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        print(json.dumps(_child(argv[1:])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("devices", "memory"))
    parser.add_argument("--scenario", default="cifar10-zoo", choices=sorted(SCENARIOS))
    parser.add_argument("--devices", default="1,4", help="device counts (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--d", type=int, default=2048)
    parser.add_argument("--cache", type=Path, default=Path("benchmarks/.cache"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.what == "devices":
        counts = [int(c) for c in args.devices.split(",")]
        result = devices(SCENARIOS[args.scenario], counts, args.cache, args.seed, args.repeats)
    else:
        result = memory(args.n, args.d, args.cache, args.seed)
    host = machine.describe(quick=True)
    path = report.results_path(args.out, host)
    doc = report.load_document(path, host)
    doc.setdefault("scaling", {})[args.what] = result
    report.write_document(path, doc)
    print(f"wrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
