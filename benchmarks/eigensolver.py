"""The device path's top-k PCA eigensolver: accuracy over the input regimes, time against ``eigh``.

``python -m benchmarks.eigensolver [--regimes small] [--seeds 2] [--dims 512,1024,2048,4096]
[--out DIR]``

Two tables, in one process (CPU numbers unless run on an accelerator):

* **accuracy**: every regime of :mod:`ncti_jax.regimes` (and ``tiny-gap``, a zoo whose
  64th and 65th variances are 1e-7 apart, which the solver must refuse to certify),
  scored on the device path (forced on CPU by :func:`ncti_jax._plan.device_numerics`,
  fused) with each eigensolver mode (``topk``, ``topk-tf32``, ``topk-bf16`` emulated on
  CPU, and the full ``eigh``); per mode: the largest relative error of each raw
  component against the float64 reference, the fallbacks taken, any problem
  :func:`ncti_jax.regimes.compare` reports, and the solver's largest subspace error
  ``||V - E E^T V||_2`` on the kept directions against a float64 ``eigh`` (E) of the
  same scatter (models that fell back excluded);
* **time**: the top-k solver (float32, jitted, as on the device path), the full float32
  ``eigh`` of the device path and the host path's float64 subset ``eigh`` (LAPACK's
  ``syevr`` through SciPy, lower triangle, Fortran order, as :func:`ncti_jax._stream.host_pca`
  calls it), on a D x D covariance with a ``1/i`` spectrum in a random basis (steep
  enough to need ~15 iterations, with gap ``lambda_64 / lambda_65 = 1.016`` below the
  oversampled block), k = 64: medians of ``--repeats`` after a compiled first call (the
  largest D once), their ratios, and each solver's eigenvalue and subspace errors.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np

K = 64


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def tiny_gap(rng: np.random.Generator, size: str = "small"):
    """A zoo whose 64th and 65th principal variances are 1e-7 (relative) apart: the top-64
    subspace is ill-defined and the solver must say so (fall back)."""
    n, d, c = {"tiny": (400, 96, 6), "small": (1500, 128, 10), "large": (5000, 512, 10)}[size]
    y = rng.permutation(np.arange(n) % c)
    out = {}
    for i in range(2):
        scales = np.geomspace(1.0, 0.05, d)
        scales[K] = scales[K - 1] * (1 - 1e-7)
        basis = np.linalg.qr(rng.normal(size=(d, d)))[0]
        codes = rng.normal(size=(n, d))
        codes[:, :c] += rng.normal(size=(c, c))[y] * (1 + i)  # class structure
        # Orthogonal centred columns of chosen norms: the variances are exactly `scales`.
        codes = np.linalg.qr(codes - codes.mean(axis=0))[0] * np.sqrt(n) * scales
        out[f"tinygap_{i}"] = (codes @ basis.T).astype(np.float32)
    return out, y


def subspace_errors(feats, max_components: int, mode: str) -> list[float | None]:
    """Per model: ``||V - E E^T V||_2`` of the solver's kept directions (V) against the
    float64 ``eigh`` of the same float32 scatter (E), None where it was not certified."""
    import jax
    import jax.numpy as jnp

    from ncti_jax import _linalg, _pca

    linalg = _linalg.Linalg.for_platform(jax.default_backend(), host_solve=False, eigensolver=mode)
    out = []
    for x in feats.values():
        x = jnp.asarray(np.asarray(x, np.float32))
        n, d = x.shape
        k = min(max_components, n - 1, d)
        xc = x - jnp.mean(x, axis=0)
        xc = xc / _pca.power_of_two_scale(jnp.max(jnp.abs(xc)))
        col_sq = jnp.sum(xc * xc, axis=0)
        solve = jax.jit(_pca.topk_pca, static_argnames=("k", "linalg"))
        evals, evecs, floors, _, _, certified, _ = solve(xc, col_sq, k, d, k=k, linalg=linalg)
        if not bool(certified):
            out.append(None)
            continue
        r = int(jnp.sum(evals > floors))
        a = np.asarray(xc, np.float64)
        scatter = a @ a.T if n < d else a.T @ a
        _, e = np.linalg.eigh(scatter)
        exact = e[:, ::-1][:, :r]
        v = np.asarray(evecs, np.float64)[:, :r]
        out.append(float(np.linalg.norm(v - exact @ (exact.T @ v), 2)) if r else 0.0)
    return out


def accuracy(size: str, seeds: int, modes: tuple[str, ...]) -> list[dict]:
    """The accuracy table: one row per regime, seed and mode."""
    import ncti_jax
    from ncti_jax import _plan, reference, regimes

    zoos = {**regimes.REGIMES, "tiny-gap": tiny_gap}
    rows = []
    for regime, make in zoos.items():
        for seed in range(seeds):
            feats, y = make(np.random.default_rng(seed), size)
            ref = reference.score_zoo({m: np.asarray(x, np.float64) for m, x in feats.items()}, y)
            for mode in modes:
                with _plan.device_numerics(), warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    result = ncti_jax.score_zoo(feats, y, strategy="fused", eigensolver=mode)
                report = regimes.compare(result, ref)
                fell = (np.asarray(result.status) & ncti_jax.Status.EIGENSOLVER_FALLBACK) > 0
                sub = [] if mode == "eigh" else subspace_errors(feats, 64, mode)
                sub = [s for s in sub if s is not None]
                row = {
                    "regime": regime,
                    "seed": seed,
                    "mode": mode,
                    "models": len(result.models),
                    "fallbacks": int(fell.sum()),
                    "subspace": max(sub) if sub else None,
                    **{f: report.get(f) for f in ("etf", "ncc", "vc")},
                    "problems": report["problems"],
                }
                rows.append(row)
                print(_accuracy_line(row), flush=True)
    return rows


def _accuracy_line(row: dict) -> str:
    def num(v):
        return "-" if v is None else f"{v:.1e}"

    problems = "; ".join(row["problems"])[:90]
    return (
        f"{row['regime']:<16} {row['seed']:>2} {row['mode']:<10} "
        f"{row['fallbacks']}/{row['models']:<3} {num(row['subspace']):>8} "
        f"{num(row['etf']):>8} {num(row['ncc']):>8} {num(row['vc']):>8}  {problems}"
    )


def covariance(d: int, seed: int = 0) -> np.ndarray:
    """A D x D covariance with the spectrum ``1/i`` in a random orthonormal basis."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    lam = 1.0 / np.arange(1, d + 1)
    return (q * lam) @ q.T


def timing(dims: list[int], repeats: int) -> list[dict]:
    """The time table: top-k vs full float32 eigh vs the host's float64 subset eigh."""
    rows = []
    for d in dims:
        row = _time_one(d, 1 if d == max(dims) and d >= 4096 else repeats)
        rows.append(row)
        print(
            f"D {d:>5}  top-k {row['topk_s']:7.3f} s ({row['topk_iters']} it, compile "
            f"{row['topk_compile_s']:.1f} s)  eigh f32 {row['eigh_f32_s']:7.3f} s "
            f"({row['eigh_f32_over_topk']:4.1f}x)  host f64 subset {row['host_f64_subset_s']:7.3f}"
            f" s ({row['host_over_topk']:4.1f}x)  | subspace top-k {row['topk_subspace']:.1e}, "
            f"eigh f32 {row['eigh_f32_subspace']:.1e}  eval top-k {row['topk_eval_err']:.1e}, "
            f"eigh f32 {row['eigh_f32_eval_err']:.1e}",
            flush=True,
        )
    return rows


def _time_one(d: int, reps: int) -> dict:
    import jax
    import jax.numpy as jnp
    import scipy.linalg

    from ncti_jax import _linalg, _topk

    linalg = _linalg.Linalg.for_platform(
        jax.default_backend(), host_solve=False, eigensolver="topk"
    )
    c64 = covariance(d)
    c32 = jnp.asarray(c64, jnp.float32)
    w, e = scipy.linalg.eigh(c64, subset_by_index=(d - K, d - 1))
    w, e = w[::-1], e[:, ::-1]

    def errors(evals, evecs):
        evals = np.asarray(evals, np.float64)[:K]
        v = np.asarray(evecs, np.float64)[:, :K]
        return float(np.max(np.abs(evals - w)) / w[0]), float(np.linalg.norm(v - e @ (e.T @ v), 2))

    def keep(evals, evecs):
        return jnp.ones(K, bool)

    topk = jax.jit(lambda c: _topk.topk_eigh(c, K, keep, linalg))
    start = time.perf_counter()
    theta, x, res, iters = jax.block_until_ready(topk(c32))
    topk_compile = time.perf_counter() - start
    t_topk = _median_time(lambda: jax.block_until_ready(topk(c32)), reps)
    residual, gap, certified = _topk.certificate(theta, res, jnp.ones(K, bool))
    topk_err = errors(theta, x)

    full = jax.jit(jnp.linalg.eigh)
    jax.block_until_ready(full(c32))
    t_full = _median_time(lambda: jax.block_until_ready(full(c32)), reps)
    fw, fv = full(c32)
    full_err = errors(np.asarray(fw)[::-1], np.asarray(fv)[:, ::-1])

    lower = np.asfortranarray(c64)
    subset = (d - K, d - 1)
    t_host = _median_time(
        lambda: scipy.linalg.eigh(lower, lower=True, subset_by_index=subset, check_finite=False),
        reps,
    )
    return {
        "d": d,
        "repeats": reps,
        "topk_s": t_topk,
        "topk_compile_s": topk_compile,
        "topk_iters": int(iters),
        "topk_certified": bool(certified),
        "topk_residual": float(residual),
        "topk_gap": float(gap),
        "eigh_f32_s": t_full,
        "host_f64_subset_s": t_host,
        "eigh_f32_over_topk": t_full / t_topk,
        "host_over_topk": t_host / t_topk,
        "topk_eval_err": topk_err[0],
        "topk_subspace": topk_err[1],
        "eigh_f32_eval_err": full_err[0],
        "eigh_f32_subspace": full_err[1],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regimes", default="small", help="regime size (tiny, small, large)")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--modes", default="topk,topk-tf32,topk-bf16,eigh")
    parser.add_argument("--dims", default="512,1024,2048,4096")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip", choices=("accuracy", "timing"), help="leave a table out")
    parser.add_argument(
        "--out",
        help="a directory to write both tables to, as TAG-eigensolver-DATE.json (TAG: the "
        "accelerator's kind or the CPU, as the other results files)",
    )
    args = parser.parse_args(argv)
    out: dict = {}
    if args.skip != "accuracy":
        print(
            f"{'regime':<16} {'s':>2} {'mode':<10} {'fb':<5} {'subspace':>8} "
            f"{'etf':>8} {'ncc':>8} {'vc':>8}  problems"
        )
        out["accuracy"] = accuracy(args.regimes, args.seeds, tuple(args.modes.split(",")))
    if args.skip != "timing":
        dims = [int(d) for d in args.dims.split(",")]
        out["timing"] = timing(dims, args.repeats)
    if args.out:
        import jax

        from ncti_jax.io import atomic_write_text

        from . import machine

        today = datetime.datetime.now(datetime.UTC).date().isoformat()
        path = Path(args.out) / f"{machine.tag()}-eigensolver-{today}.json"
        out["machine"] = {
            "tag": machine.tag(),
            "backend": jax.default_backend(),
            "jax": jax.__version__,
            "load_average": list(os.getloadavg()),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(out, indent=1))
        print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
