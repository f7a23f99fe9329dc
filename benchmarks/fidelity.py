"""The fidelity issue's cases, end to end: ``ncti score`` against the reference.

``python -m benchmarks.fidelity [--cases a,b] [--work DIR] [--out FILE]``

Each case is written as a feature store, then scored twice, each in a process of
its own (so each peak RSS is its own): ``ncti score STORE --out DIR`` (default
settings, as a user runs it) and :func:`ncti_jax.reference.score_zoo` in float64.
The report gives, per case: the largest relative error of each raw component,
whether the rankings agree (pairs whose reference scores differ by more than
1e-3), any null score, the two wall times and the two peak RSS.

Cases:
  collapsed-seeds  the issue's post-ReLU generator, seeds 0..29, one zoo of 30 models
                   (N = 5000, D = 512, C = 10); NaN vc on 4 of them before the fix
  shifted-column   a model, its copy with 1000 added to one column, and a weaker model
  fewshot-4096     N = 300 (30 per class), D = 4096, two models
  longtail-600     N = 4000: one class with 40%, 599 classes of 1-3 samples, D <= 384
  scale-sweep      a 3-model collapsed zoo multiplied by 1e-20, 1e-10, 1e10 and 1e18

``python -m benchmarks.fidelity --regimes small --seeds 5`` runs instead the accuracy
sweep: every regime of :mod:`ncti_jax.regimes` at a size the tests do not reach
("small": N = 1500, D = 128, C = 10; "large": N = 5000, D = 512), over several seeds,
on every code path (host streaming and fused; the accelerators' numerics forced on
CPU), in this process, with the largest error of each raw component and any problem
:func:`ncti_jax.regimes.compare` reports.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from ncti_jax import regimes


def case_zoos(name: str) -> list[tuple[str, dict[str, np.ndarray], np.ndarray]]:
    """``[(label, features, labels)]``: the zoos of one case."""
    if name == "collapsed-seeds":
        feats = {f"seed{s:02d}": regimes.fidelity_issue_model(s) for s in range(30)}
        return [(name, feats, np.arange(5000) % 10)]
    if name == "shifted-column":
        base = regimes.fidelity_issue_model(10)
        shifted = base.copy()
        shifted[:, 7] += 1000.0
        weak = regimes.fidelity_issue_model(3)[:, ::-1] * 0.5 + np.random.default_rng(0).random(
            (5000, 512), np.float32
        )
        feats = {"base": base, "shifted": shifted, "weaker": weak.astype(np.float32)}
        return [(name, feats, np.arange(5000) % 10)]
    rng = np.random.default_rng(0)
    if name == "fewshot-4096":
        y = rng.permutation(np.arange(300) % 10)
        feats = {f"wide{i}": regimes.relu_features(rng, y, 4096, s) for i, s in enumerate((0.5, 2))}
        return [(name, feats, y)]
    if name == "longtail-600":
        y = regimes.longtail_labels(rng, 4000, 600)
        feats = {
            f"lt{i}_d{d}": regimes.relu_features(rng, y, d, s)
            for i, (d, s) in enumerate(((256, 0.5), (384, 1.5), (384, 3.0)))
        }
        return [(name, feats, y)]
    if name == "scale-sweep":
        out = []
        for scale in (1e-20, 1e-10, 1e10, 1e18):
            feats, y = regimes.scaled(np.random.default_rng(0), "small", scale)
            out.append((f"{name}-{scale:g}", feats, y))
        return out
    raise ValueError(f"unknown case {name!r}")


CASES = ("collapsed-seeds", "shifted-column", "fewshot-4096", "longtail-600", "scale-sweep")

_REFERENCE = """
import json, sys, numpy as np
from ncti_jax import io, reference
feats, y = io.load_feature_store(sys.argv[1])
r = reference.score_zoo({m: np.asarray(x, np.float64) for m, x in feats.items()}, y)
json.dump({f: np.asarray(getattr(r, f)).tolist() for f in ("etf", "ncc", "vc", "ncti")}
          | {"models": list(r.models)}, open(sys.argv[2], "w"))
"""


def _timed(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (GiB) of a command, which must succeed."""
    start = time.perf_counter()
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "%M", *cmd], capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    peak_kib = int(proc.stderr.strip().splitlines()[-1])
    return wall, peak_kib / 2**20


def run_case(label: str, feats, y, work: Path) -> dict:
    store = work / label
    store.mkdir(parents=True, exist_ok=True)
    for m, x in feats.items():
        np.save(store / f"{m}.npy", x)
    np.save(store / "labels.npy", y)
    eng_wall, eng_rss = _timed(
        [
            sys.executable,
            "-m",
            "ncti_jax.cli",
            "score",
            str(store),
            "--out",
            str(work / f"{label}-out"),
            "--quiet",
        ]
    )
    ref_path = work / f"{label}-ref.json"
    ref_wall, ref_rss = _timed([sys.executable, "-c", _REFERENCE, str(store), str(ref_path)])
    ref = json.loads(ref_path.read_text())
    doc = json.loads((work / f"{label}-out" / "scores.json").read_text())
    by_model = {r["model"]: r for r in doc["models"]}
    report = {"case": label, "models": len(feats), "engine_s": eng_wall, "reference_s": ref_wall}
    report |= {"engine_rss_gib": eng_rss, "reference_rss_gib": ref_rss}
    nulls = [m for m in ref["models"] if by_model[m]["ncti"] is None]
    report["null_scores"] = nulls
    for f in ("etf", "ncc", "vc"):
        a = np.array(
            [by_model[m][f] if by_model[m][f] is not None else np.nan for m in ref["models"]]
        )
        b = np.array(ref[f])
        report[f"err_{f}"] = float(np.nanmax(np.abs(a - b) / np.abs(b)))
    s_ref = np.array(ref["ncti"])
    s_eng = np.array(
        [by_model[m]["ncti"] if by_model[m]["ncti"] is not None else -np.inf for m in ref["models"]]
    )
    swapped = [
        (ref["models"][i], ref["models"][j])
        for i in range(len(s_ref))
        for j in range(len(s_ref))
        if s_ref[i] - s_ref[j] > 1e-3 and not s_eng[i] > s_eng[j]
    ]
    report["same_ranking"] = not swapped
    report["swapped"] = swapped[:5]
    return report


MODES = ("streaming", "fused", "device-streaming", "device-fused")


def regime_sweep(size: str, seeds: int) -> list[dict]:
    """Every regime x code path x seed, engine against the reference."""
    import contextlib
    import warnings

    import ncti_jax
    from ncti_jax import _plan, reference

    reports = []
    for regime in sorted(regimes.REGIMES):
        for seed in range(seeds):
            feats, y = regimes.make(regime, np.random.default_rng(seed), size)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                ref = reference.score_zoo(
                    {m: np.asarray(x, np.float64) for m, x in feats.items()}, y
                )
                for mode in MODES:
                    device = mode.startswith("device-")
                    ctx = _plan.device_numerics() if device else contextlib.nullcontext()
                    start = time.perf_counter()
                    with ctx:
                        result = ncti_jax.score_zoo(feats, y, strategy=mode.removeprefix("device-"))
                    seconds = time.perf_counter() - start
                    report = regimes.compare(result, ref)
                    reports.append(
                        {"regime": regime, "mode": mode, "seed": seed, "seconds": seconds} | report
                    )
                    print(
                        f"{regime:16s} {mode:17s} seed {seed}  etf {report.get('etf', np.nan):.1e} "
                        f"ncc {report.get('ncc', np.nan):.1e} vc {report.get('vc', np.nan):.1e}  "
                        f"{'; '.join(report['problems'])[:160] or 'ok'}",
                        flush=True,
                    )
    return reports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regimes", choices=("tiny", "small", "large"), default=None)
    parser.add_argument("--seeds", type=int, default=3, help="seeds per regime (--regimes)")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--work", default=None, help="where stores go (default: a temp dir)")
    parser.add_argument("--out", default=None, help="write the reports here as JSON")
    args = parser.parse_args(argv)
    if args.regimes:
        reports = regime_sweep(args.regimes, args.seeds)
        if args.out:
            Path(args.out).write_text(json.dumps(reports, indent=1) + "\n")
        return 0 if not any(r["problems"] for r in reports) else 1
    reports = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        for case in args.cases.split(","):
            for label, feats, y in case_zoos(case):
                r = run_case(label, feats, y, work)
                reports.append(r)
                print(
                    f"{label:22s} M={r['models']:2d} err etf {r['err_etf']:.1e} ncc {r['err_ncc']:.1e} "
                    f"vc {r['err_vc']:.1e}  same ranking {r['same_ranking']}  nulls {r['null_scores']}  "
                    f"engine {r['engine_s']:.1f} s {r['engine_rss_gib']:.2f} GiB  "
                    f"reference {r['reference_s']:.1f} s {r['reference_rss_gib']:.2f} GiB",
                    flush=True,
                )
    if args.out:
        Path(args.out).write_text(json.dumps(reports, indent=1) + "\n")
    return 0 if all(r["same_ranking"] and not r["null_scores"] for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
