"""Every transferability metric timed: the batched JAX kernel, its float64 reference, and
all metrics in one pass against NCTI alone and against the metrics scored one by one.

  python -m ncti_jax.benchmarks.metrics --scenario cifar10-zoo [--rows 10000] [--repeats 3]
      [--metrics all] [--out DIR] [--cache DIR]

The zoo is a benchmark scenario's synthetic feature store (:mod:`benchmarks.data`,
generated once into the cache); ``--rows`` keeps its first N samples, so that the
float64 references (one model at a time, NumPy/SciPy) finish on a small machine.
The metrics that read the source classifier (LEEP, NCE, ETran) get synthetic
logits: each model's features through a fixed random head of 1000 classes plus
noise (the point is the time and the agreement with the reference, not the score).

Each JAX time is the median of ``--repeats`` calls of :func:`ncti_jax.score_metrics`
after one untimed call that compiles (its time is reported apart); each
reference time is one call per model, summed. Errors are the largest relative
difference from the reference over the models (a zoo-level metric, ETran: of its
parts). Results go to ``DIR/metrics-<scenario>-<rows>.json`` and a table is printed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from pathlib import Path

import numpy as np

from . import data, scenarios

SOURCE_CLASSES = 1000


def synthetic_logits(features: dict, seed: int) -> dict[str, np.ndarray]:
    """Each model's features through a random head of ``SOURCE_CLASSES`` classes, plus noise."""
    out = {}
    for i, (model, x) in enumerate(features.items()):
        rng = np.random.default_rng([seed, 7, i])
        d = x.shape[1]
        head = rng.standard_normal((d, SOURCE_CLASSES), np.float32) / np.float32(np.sqrt(d))
        z = np.asarray(x, np.float32) @ head
        z /= np.float32(z.std() + 1e-12)
        out[model] = (4 * z + rng.standard_normal(z.shape, np.float32)).astype(np.float32)
    return out


def _timed(fn, repeats: int) -> tuple[float, float, object]:
    """(first call's seconds, median of ``repeats`` further calls, the last result)."""
    start = time.perf_counter()
    result = fn()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return first, statistics.median(times), result


def _reference(metric, features, labels, logits) -> tuple[float, np.ndarray]:
    """(seconds, values) of the float64 reference over the zoo, one model at a time."""
    from ncti_jax import metrics as registry

    m = registry.get(metric)
    start = time.perf_counter()
    values = []
    for model, x in features.items():
        lg = None if logits is None or not m.needs_logits else logits[model]
        values.append(m.reference(np.asarray(x, np.float64), labels, lg))
    return time.perf_counter() - start, np.asarray(values, np.float64)


def run(args: argparse.Namespace) -> dict:
    import ncti_jax
    from ncti_jax import metrics as registry

    scenario = scenarios.resolve([args.scenario])[0]
    root = data.ensure_store(Path(args.cache), scenario, args.seed)
    features, labels = data.load_store(root)
    if args.rows:
        features = {m: np.asarray(x[: args.rows]) for m, x in features.items()}
        labels = labels[: args.rows]
    names = registry.parse(args.metrics)
    others = [m for m in names if m != "ncti"]
    logits = synthetic_logits(features, args.seed) if others else None
    n, c = labels.shape[0], len(np.unique(labels))
    print(f"{scenario.name}: {len(features)} models, N = {n}, C = {c}", flush=True)

    def score(which):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return ncti_jax.score_metrics(features, labels, metrics=which, logits=logits)

    rows = {}
    for metric in names:
        first, median, result = _timed(lambda metric=metric: score(metric), args.repeats)
        row = {"jax_first_s": first, "jax_median_s": median}
        if metric != "ncti" and not args.no_reference:
            spec = registry.get(metric)
            if spec.combine is None:
                ref_s, want = _reference(metric, features, labels, logits)
                got = result[metric].values
            else:  # zoo-level: compare the per-model parts
                start = time.perf_counter()
                parts = np.array(
                    [
                        spec.reference(np.asarray(x, np.float64), labels, logits[m])
                        for m, x in features.items()
                    ]
                )
                ref_s = time.perf_counter() - start
                want = parts.reshape(len(features), -1)
                got = np.stack([result[metric].fields[f] for f in spec.fields], axis=1)
            err = np.abs(np.asarray(got, np.float64) - want) / np.maximum(np.abs(want), 1e-12)
            row.update(
                reference_s=ref_s,
                speedup_vs_reference=ref_s / median,
                max_rel_error=float(np.max(err)),
            )
        rows[metric] = row
        print(f"  {metric:<18} {json.dumps(row)}", flush=True)
    together = {}
    if len(names) > 1:
        first, median, _ = _timed(lambda: score(names), args.repeats)
        separate = sum(rows[m]["jax_median_s"] for m in names)
        together = {
            "metrics": list(names),
            "jax_first_s": first,
            "jax_median_s": median,
            "sum_of_separate_s": separate,
            "ratio_to_separate": median / separate,
        }
        if "ncti" in rows:
            together["ratio_to_ncti_alone"] = median / rows["ncti"]["jax_median_s"]
        print(f"  all in one pass     {json.dumps(together)}", flush=True)
    import jax

    return {
        "scenario": scenario.name,
        "n_models": len(features),
        "n_samples": int(n),
        "n_classes": int(c),
        "dims": {m: int(x.shape[1]) for m, x in features.items()},
        "repeats": args.repeats,
        "device": str(jax.devices()[0].device_kind),
        "backend": jax.default_backend(),
        "per_metric": rows,
        "one_pass": together,
    }


def format_table(report: dict) -> str:
    head = f"{'metric':<18}{'jax s':>10}{'compile+1st s':>15}{'reference s':>13}{'x ref':>8}{'max rel err':>13}"
    lines = [head, "-" * len(head)]
    for metric, r in report["per_metric"].items():
        ref = r.get("reference_s")
        lines.append(
            f"{metric:<18}{r['jax_median_s']:10.3f}{r['jax_first_s']:15.2f}"
            + (
                f"{ref:13.2f}{r['speedup_vs_reference']:8.1f}{r['max_rel_error']:13.1e}"
                if ref
                else ""
            )
        )
    t = report["one_pass"]
    if t:
        lines.append(
            f"all {len(t['metrics'])} in one pass: {t['jax_median_s']:.3f} s "
            f"(separately {t['sum_of_separate_s']:.3f} s, ratio {t['ratio_to_separate']:.2f}"
            + (
                f"; {t['ratio_to_ncti_alone']:.2f}x NCTI alone"
                if "ratio_to_ncti_alone" in t
                else ""
            )
            + ")"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ncti_jax.benchmarks.metrics", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--scenario", default="cifar10-zoo")
    parser.add_argument("--rows", type=int, default=10_000, help="first N samples (0: all)")
    parser.add_argument("--metrics", default="all")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-reference", action="store_true", help="skip the float64 references")
    parser.add_argument("--cache", default="ncti-bench/features")
    parser.add_argument("--out", default="ncti-bench")
    args = parser.parse_args(argv)
    report = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"metrics-{report['scenario']}-{report['n_samples']}.json"
    from ncti_jax import io as ncti_io

    ncti_io.atomic_write_text(path, json.dumps(report, indent=1) + "\n")
    print(format_table(report))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
