"""The machine a benchmark ran on: what it is, and the rates its floor is computed from.

Run as ``python -m benchmarks.machine RESULT.json [--quick]`` in a subprocess of
its own, so that the process that orchestrates the benchmark never initialises
JAX (on a GPU it would hold device memory while the contenders run).

Rates, each the median of 5 timed calls after a warm-up:

- host read bandwidth: BLAS sgemv of a 1 GiB float32 matrix with a vector (all
  threads; every byte of the matrix read once);
- host float32 matmul rate: NumPy sgemm of two 4096 x 4096 matrices;
- on an accelerator, the same two with ``jax.numpy`` (``block_until_ready``), the
  matmul at each of JAX's three precisions, and the host-to-device transfer rate
  of ``jax.device_put`` of 1 GiB.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import re
import statistics
import time
from collections.abc import Callable

import numpy as np

REPEATS = 5
PRECISIONS = ("highest", "high", "default")
# Settings that change how many threads the contenders use, recorded when set.
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "XLA_FLAGS")


def _median_seconds(fn: Callable[[], object]) -> float:
    fn()
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _sizes(quick: bool) -> tuple[int, int]:
    """(matmul side, bytes read for the bandwidth)."""
    return (1024, 1 << 24) if quick else (4096, 1 << 30)


def host_rates(quick: bool = False) -> dict[str, float]:
    side, nbytes = _sizes(quick)
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((side, side), np.float32) for _ in range(2))
    matmul = _median_seconds(lambda: a @ b)
    m = np.ones((nbytes // (4 * 4096), 4096), np.float32)
    v = np.ones(4096, np.float32)
    read = _median_seconds(lambda: m @ v)
    return {"bandwidth_gbps": m.nbytes / read / 1e9, "matmul_gflops": 2 * side**3 / matmul / 1e9}


def accelerator_rates(quick: bool = False) -> dict[str, object]:
    import jax
    import jax.numpy as jnp

    side, nbytes = _sizes(quick)
    a, b = jax.random.normal(jax.random.key(0), (2, side, side), jnp.float32)
    gflops = {}
    for precision in PRECISIONS:
        product = jax.jit(lambda x, y, p=precision: jnp.matmul(x, y, precision=p))
        seconds = _median_seconds(lambda f=product: f(a, b).block_until_ready())
        gflops[precision] = 2 * side**3 / seconds / 1e9
    m = jnp.ones((nbytes // (4 * 4096), 4096), jnp.float32)
    v = jnp.ones(4096, jnp.float32)
    matvec = jax.jit(jnp.dot)
    read = _median_seconds(lambda: matvec(m, v).block_until_ready())
    host = np.ones(nbytes // 4, np.float32)
    transfer = _median_seconds(lambda: jax.device_put(host).block_until_ready())
    return {
        "bandwidth_gbps": m.nbytes / read / 1e9,
        "matmul_gflops": gflops,
        "transfer_gbps": host.nbytes / transfer / 1e9,
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _versions() -> dict[str, str | None]:
    from ncti_jax import io as ncti_io

    found = ncti_io.versions()
    for dist in ("scikit-learn", "matplotlib"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = None
    return found


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def tag() -> str:
    """The name results files take: the accelerator's kind, else the CPU's cores and model
    (JAX is initialised here)."""
    import jax

    if jax.default_backend() != "cpu":
        return slug(jax.devices()[0].device_kind)
    return f"cpu-{_cores()}core-{slug(_cpu_model())}"


def _cores() -> int | None:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def describe(quick: bool = False) -> dict[str, object]:
    """The machine and its measured rates (JAX is initialised here)."""
    import jax

    backend = jax.default_backend()
    cores = _cores()
    cpu = _cpu_model()
    devices = [d.device_kind for d in jax.devices()] if backend != "cpu" else []
    info: dict[str, object] = {
        "tag": tag(),
        "cpu": cpu,
        "cores": cores,
        "ram_bytes": _ram_bytes(),
        # Other work on the machine makes the timings unreliable (1, 5, 15 minutes).
        "load_average": list(os.getloadavg()),
        "thread_env": {k: os.environ[k] for k in THREAD_ENV if k in os.environ},
        "backend": backend,
        "devices": devices,
        "versions": _versions(),
        "quick_probe": quick,
        "host": host_rates(quick),
    }
    if backend != "cpu":
        info["accelerator"] = accelerator_rates(quick)
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("result", help="where to write the JSON description")
    parser.add_argument("--quick", action="store_true", help="small probes (seconds)")
    args = parser.parse_args(argv)
    from ncti_jax import io as ncti_io

    ncti_io.atomic_write_text(args.result, json.dumps(describe(args.quick), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
