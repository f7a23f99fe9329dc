"""The ``ncti`` command line.

ncti score PATH [--dataset NAME] [--out DIR] [--n-components K]
                [--dtype float32|float64] [--precision highest|high|default]
                [--models a,b,c] [--strategy auto|fused|streaming] [--chunk-rows N]
                [--memory-limit BYTES] [--checkpoint DIR]
ncti evaluate RESULTS --truth group1:cifar10|accuracies.csv [--all] [--bootstrap N]
              [--out DIR]
ncti plot RESULTS [--truth ...] [--out DIR]
ncti bench --scenario NAME [--contenders jax,reference,authors] [--repeats N] [--quick] [--list]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from collections.abc import Sequence

import numpy as np


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="ncti",
        description="Rank pre-trained models by NCTI transferability on a target dataset.",
    )
    parser.add_argument("--version", action="version", version=f"ncti-jax {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    score = sub.add_parser(
        "score",
        help="score a zoo from a feature store",
        description="Score every model of a feature store with NCTI; print the ranking and "
        "write scores.json and scores.csv.",
    )
    score.add_argument(
        "path",
        help="feature store directory: <model>.npy + labels.npy, or "
        "the authors' <model>_<dataset>_feature.npy / _label.npy",
    )
    score.add_argument("--dataset", help="dataset of an authors'-layout store")
    score.add_argument("--models", help="comma-separated models to score (default: all)")
    score.add_argument(
        "--out",
        default="ncti-results",
        help="directory for scores.json and scores.csv (default: %(default)s)",
    )
    score.add_argument(
        "--n-components", type=int, default=64, help="PCA dimension k (default: %(default)s)"
    )
    score.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default="float32",
        help="computation dtype (default: %(default)s)",
    )
    score.add_argument(
        "--precision",
        choices=("highest", "high", "default"),
        default="highest",
        help="matmul precision on accelerators (default: %(default)s, exact float32)",
    )
    score.add_argument(
        "--strategy",
        choices=("auto", "fused", "streaming"),
        default="auto",
        help="fused: whole models on the devices; streaming: PCA from row chunks, for models "
        "larger than device memory (default: %(default)s, streaming on CPU)",
    )
    score.add_argument(
        "--chunk-rows",
        type=int,
        default=4096,
        metavar="N",
        help="rows per chunk when streaming (default: %(default)s)",
    )
    score.add_argument(
        "--memory-limit",
        type=_bytes,
        metavar="BYTES",
        help="memory one device may use, e.g. 12GiB (default: what the device reports free)",
    )
    score.add_argument(
        "--checkpoint",
        metavar="DIR",
        help="save finished models here; rerunning the same command resumes from them",
    )
    score.add_argument("-q", "--quiet", action="store_true", help="do not print the table")
    score.set_defaults(func=_score)

    truth_help = (
        "ground truth: GROUP:DATASET from the published tables (e.g. group1:cifar10), "
        "or a JSON/CSV file of fine-tune accuracies per model"
    )
    evaluate = sub.add_parser(
        "evaluate",
        help="judge a ranking against fine-tune accuracies",
        description="Weighted Kendall tau (the paper's metric), Kendall tau-b, Pearson, Spearman, "
        "top-k relative accuracy and recall@3 of a ranking against ground truth.",
    )
    evaluate.add_argument(
        "results",
        help="scores.json (or its directory), a JSON {model: score} "
        "mapping, or a CSV with model,ncti columns; with --all, a directory of "
        "<dataset>/scores.json",
    )
    evaluate.add_argument("--truth", required=True, help=truth_help + "; with --all, a GROUP")
    evaluate.add_argument(
        "--all",
        action="store_true",
        help="evaluate every <dataset>/scores.json under RESULTS, one row each",
    )
    evaluate.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        metavar="N",
        help="bootstrap resamples for the wtau interval (default: %(default)s)",
    )
    evaluate.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    evaluate.add_argument(
        "--out",
        metavar="DIR",
        help="also write the metrics as evaluate.json and evaluate.csv into DIR",
    )
    evaluate.set_defaults(func=_evaluate)

    plot = sub.add_parser(
        "plot",
        help="plot a ranking (needs matplotlib)",
        description="Write ranking.png and, with --truth, ncti_vs_truth.png.",
    )
    plot.add_argument("results", help="scores.json or its directory (as for evaluate)")
    plot.add_argument("--truth", help=truth_help)
    plot.add_argument("--out", help="directory for the PNGs (default: next to the results)")
    plot.set_defaults(func=_plot)

    demo = sub.add_parser(
        "demo",
        help="the paper's experiment in miniature, offline (start here)",
        description="Pre-train a zoo of small CNNs on digits 0-4 (cached), fine-tune each on "
        "digits 5-9 for the ground truth, score the zoo with NCTI and report how well NCTI "
        "ranks it. Needs the torch extra; a few minutes on 2 CPU cores the first time.",
    )
    demo.add_argument("--seed", type=int, default=0, help="(default: 0)")
    demo.add_argument("--device", default="auto", help="auto, cpu, cuda (default: auto)")
    demo.add_argument("--out", default="ncti-demo", help="report directory (default: %(default)s)")
    demo.add_argument(
        "--cache-dir",
        help="where the pre-trained zoo is cached (default: $XDG_CACHE_HOME/ncti-jax/demo)",
    )
    demo.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 3 tiny models, 1 epoch each (seconds, not minutes)",
    )
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(func=_demo)

    for name, helptext in (
        ("extract", "extract penultimate features of a torchvision zoo into a feature store"),
        ("rank", "extract features and score the zoo in one go (the paper's experiment)"),
    ):
        p = sub.add_parser(name, help=helptext, description=helptext + ". Needs the torch extra.")
        p.add_argument(
            "--zoo",
            default="group1",
            help="'group1' (the paper's supervised zoo), "
            "a zoo .toml file, or comma-separated torchvision architectures "
            "(default: %(default)s)",
        )
        p.add_argument(
            "--weights",
            default="DEFAULT",
            help="torchvision weights for the zoo's "
            "models: DEFAULT, an enum name such as IMAGENET1K_V1, or 'none' for "
            "random initialisation (default: %(default)s)",
        )
        p.add_argument(
            "--dataset",
            default="cifar10",
            help="a target dataset name (cifar10, "
            "cifar100, aircraft, caltech101, cars, dtd, flowers, food, pets, sun397, "
            "voc2007), 'imagefolder', or an ImageFolder path (default: %(default)s)",
        )
        p.add_argument("--data-root", help="where the dataset lives (the folder, for imagefolder)")
        p.add_argument(
            "--download",
            action="store_true",
            help="let torchvision download the dataset (needs network access)",
        )
        p.add_argument("--samples-per-class", type=int, help="subsample each class (seeded)")
        p.add_argument(
            "--seed",
            type=int,
            default=0,
            help="seed of subsampling and of --weights none initialisation (default: 0)",
        )
        p.add_argument(
            "--preprocess",
            choices=("paper", "native"),
            default="paper",
            help="'paper': resize to --image-size, ImageNet mean/std; 'native': each "
            "weights' own transforms (default: %(default)s)",
        )
        p.add_argument(
            "--image-size",
            type=int,
            default=224,
            help="input size for 'paper' preprocessing (default: %(default)s)",
        )
        p.add_argument("--batch-size", type=int, default=64, help="(default: %(default)s)")
        p.add_argument("--workers", type=int, default=2, help="data loader workers (default: 2)")
        p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
        p.add_argument("--bf16", action="store_true", help="bfloat16 autocast on CUDA")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
        if name == "extract":
            p.add_argument("--out", required=True, help="feature store directory (resumable)")
            p.set_defaults(func=_extract)
        else:
            p.add_argument("--store", help="also write the features to this feature store")
            p.add_argument(
                "--out",
                default="ncti-results",
                help="directory for scores.json and scores.csv (default: %(default)s)",
            )
            p.add_argument("--n-components", type=int, default=64)
            p.add_argument("--precision", choices=("highest", "high", "default"), default="highest")
            p.add_argument("-q", "--quiet", action="store_true", help="do not print the table")
            p.set_defaults(func=_rank)

    from benchmarks.cli import add_arguments as add_bench_arguments

    bench = sub.add_parser(
        "bench",
        help="time the engine against the float64 reference and the authors' pipeline",
        description="Benchmarks on synthetic zoos: times, peak memory, accuracy against the "
        "float64 reference and the machine's floor (benchmarks/README.md).",
    )
    add_bench_arguments(bench).set_defaults(func=_bench)
    return parser


_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
}


def _bytes(text: str) -> int:
    """``"12GiB"``, ``"500MB"`` or a plain number of bytes."""
    import re

    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = match and match.group(2).lower()
    if not match or unit not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 12GiB, 500MB, 1000000)")
    return int(float(match.group(1)) * _UNITS[unit])


class _ExitOnInterrupt:
    """Ctrl-C (SIGINT) and SIGTERM end the process within a moment, cleanly.

    A KeyboardInterrupt raised while XLA's threads run a computation or a host
    callback tore the interpreter down under them (a segfault in 4 of 5 tries,
    seconds after the signal). Here the signal's C-level handler wakes a thread
    through a pipe (``signal.set_wakeup_fd``), which prints ``message`` and leaves
    with ``os._exit`` at once, even while the main thread is inside a long BLAS or
    XLA call that released the GIL (measured 0.06-0.6 s after the signal, 2 cores).
    Nothing is lost by not unwinding: results and checkpoint steps are only ever
    renamed into place when complete.
    """

    def __init__(self, message: str):
        self.message = message

    def __enter__(self):
        import signal
        import threading

        self._fds = None
        if threading.current_thread() is not threading.main_thread():
            return self  # signals are delivered to the main thread only: nothing to do
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        self._old_fd = signal.set_wakeup_fd(write_fd)
        self._old = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGINT, signal.SIGTERM)}
        self._fds = (read_fd, write_fd)

        def watch():
            try:
                got = os.read(read_fd, 1)
            except OSError:
                got = b""
            if not got:  # the run ended: the write end was closed
                os.close(read_fd)
                return
            sys.stdout.flush()
            print("\n" + self.message, file=sys.stderr, flush=True)  # past a progress bar
            os._exit(130 if got[0] == signal.SIGINT else 128 + got[0])

        threading.Thread(target=watch, daemon=True, name="ncti-interrupt").start()
        return self

    def __exit__(self, *exc):
        import signal

        if self._fds is None:
            return False
        signal.set_wakeup_fd(self._old_fd)
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        os.close(self._fds[1])  # the watcher's read returns b"": it ends quietly
        return False


def _check_writable(out: str) -> None:
    """Fails now, not after minutes of scoring, if ``out`` cannot take the results."""
    import tempfile

    try:
        os.makedirs(out, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as err:
        raise OSError(f"--out {out}: cannot write there ({err.strerror or err}).") from None


def _score(args: argparse.Namespace) -> int:
    if args.checkpoint:
        resume = (
            f"interrupted; rerun the same command to resume from --checkpoint {args.checkpoint}"
        )
    else:
        resume = (
            "interrupted; nothing was written (rerun with --checkpoint DIR to make it resumable)"
        )
    with _ExitOnInterrupt(resume):
        return _score_run(args)


def _score_run(args: argparse.Namespace) -> int:
    import jax

    if args.dtype == "float64":
        jax.config.update(
            "jax_enable_x64", True
        )  # the CLI owns the process; library code never does

    from . import io as ncti_io
    from ._score import score_zoo

    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    feats, labels = ncti_io.load_feature_store(args.path, dataset=args.dataset, models=models)
    _check_writable(args.out)
    n = labels.shape[0]
    print(f"scoring {len(feats)} models on {n} samples from {args.path} ...", file=sys.stderr)
    start = time.perf_counter()
    result = score_zoo(
        feats,
        labels,
        n_components=args.n_components,
        precision=args.precision,
        dtype=args.dtype,
        strategy=args.strategy,
        chunk_rows=args.chunk_rows,
        memory_limit=args.memory_limit,
        checkpoint=args.checkpoint,
        progress=not args.quiet,
    )
    elapsed = time.perf_counter() - start
    records = result.to_records()
    settings = {
        "n_components": args.n_components,
        "precision": args.precision,
        "dtype": args.dtype,
        "strategy": args.strategy,
        "dataset": args.dataset,
        "source": str(args.path),
        "n_samples": int(n),
        "n_classes": len(set(labels.reshape(-1).tolist())),
        "n_models": len(records),
    }
    json_path, csv_path = ncti_io.write_results(
        args.out, ncti_io.results_document(records, settings)
    )
    if not args.quiet:
        print(ncti_io.format_table(records))
    print(
        f"scored in {elapsed:.2f} s (compilation included); wrote {json_path} and {csv_path}",
        file=sys.stderr,
    )
    return 0


def _truth_for(spec: str, models: Sequence[str]) -> tuple[list[str], list[float], list[float]]:
    """Aligns ground truth with scored models; returns (names, truth) for the models kept."""
    from pathlib import Path

    from . import io as ncti_io
    from . import ranking

    published = ":" in spec and not Path(spec).exists()
    truth = ranking.published_truth(spec) if published else ncti_io.read_truth(spec)
    if published:
        table = ranking.finetune_accuracy()[spec.split(":")[0]][spec.split(":")[1]]
        unmeasured = [m for m in models if table.get(m) == 0]
        if unmeasured:
            warnings.warn(
                f"{spec} has no measured accuracy for {unmeasured}; left out.",
                UserWarning,
                stacklevel=2,
            )
        models = [m for m in models if m not in unmeasured]
    missing = [m for m in models if m not in truth]
    if missing:
        raise ValueError(f"ground truth {spec!r} has no accuracy for model(s) {missing}.")
    unknown = sorted(set(truth) - set(models))
    if unknown and not published:
        raise ValueError(
            f"ground truth {spec!r} names model(s) {unknown} that are not in the results."
        )
    return list(models), [truth[m] for m in models]


def _evaluate(args: argparse.Namespace) -> int:
    import csv
    import datetime
    import io
    import json
    import math
    from pathlib import Path

    import numpy as np

    from . import __version__, ranking
    from . import io as ncti_io

    min_common = 3  # top-3 metrics; with 2 models every correlation is +-1
    # The interval resamples M models with replacement. Below 8 models more than 2.5% of
    # resamples hold at most 3 distinct models (M=7: 8%, M=8: 2.0%, M=10: 0.07%), so the
    # ends of the 95% interval are set by such near-degenerate rankings.
    min_interval = 8

    def align(results, scores: dict[str, float], spec: str):
        """The models both sides know (in the results' order) and their accuracies; says
        on one line each which models are left out, and why."""
        published = ":" in spec and not Path(spec).exists()
        truth = ranking.published_truth(spec) if published else ncti_io.read_truth(spec)
        unmeasured = []
        if published:
            group, _, dataset = spec.partition(":")
            table = ranking.finetune_accuracy()[group][dataset]
            unmeasured = [m for m in scores if table.get(m) == 0]
        no_accuracy = [m for m in scores if m not in truth and m not in unmeasured]
        no_score = sorted(m for m in truth if m not in scores)
        names = [m for m in scores if m in truth]
        if len(names) < min_common:
            details = ""
            if unmeasured:
                details += f"; {spec} has no measured accuracy for {unmeasured}"
            if no_accuracy:
                details += f"; ground truth {spec!r} has no accuracy for model(s) {no_accuracy}"
            if no_score:
                details += f"; the results have no score for model(s) {no_score}"
            raise ValueError(
                f"only {len(names)} model(s) in common between the results {str(results)!r} "
                f"and the ground truth {spec!r}; need at least {min_common}{details}."
            )
        if unmeasured:
            warnings.warn(
                f"{spec} has no measured accuracy for {unmeasured}; left out.",
                UserWarning,
                stacklevel=2,
            )
        if no_accuracy:
            warnings.warn(
                f"ground truth {spec!r} has no accuracy for model(s) {no_accuracy} of the "
                f"results {str(results)!r}; left out, {len(names)} models evaluated.",
                UserWarning,
                stacklevel=2,
            )
        if no_score:
            warnings.warn(
                f"the results {str(results)!r} have no score for model(s) {no_score} of the "
                f"ground truth {spec!r}; left out, {len(names)} models evaluated.",
                UserWarning,
                stacklevel=2,
            )
        left_out = {"no_accuracy": no_accuracy, "no_score": no_score, "unmeasured": unmeasured}
        return names, [truth[m] for m in names], left_out

    def number(value: float) -> float | None:  # strict JSON: null, never NaN
        return value if math.isfinite(value) else None

    def write(document: dict, header: list[str], rows: list[dict]) -> None:
        out = Path(args.out)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=header, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            undefined = [k for k, v in row.items() if isinstance(v, float) and not math.isfinite(v)]
            writer.writerow({**row, **dict.fromkeys(undefined, "")})
        document = {
            "schema": "ncti-jax/evaluate/v1",
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "ncti_jax": __version__,
            **document,
        }
        ncti_io.atomic_write_text(
            out / "evaluate.json", json.dumps(document, indent=1, allow_nan=False) + "\n"
        )
        ncti_io.atomic_write_text(out / "evaluate.csv", buf.getvalue())
        print(f"wrote {out / 'evaluate.json'} and {out / 'evaluate.csv'}", file=sys.stderr)

    if args.all:
        if ":" in args.truth:
            raise ValueError(
                "with --all, --truth is a group (e.g. group1); the dataset is the "
                "name of each results subdirectory."
            )
        root = Path(args.results)
        runs = sorted(p.parent for p in root.glob("*/scores.json"))
        if not runs:
            raise ValueError(f"{root}: no <dataset>/scores.json results found.")
        rows, details = [], []
        for run in runs:
            scores = ncti_io.read_scores(run)
            spec = f"{args.truth}:{run.name}"
            names, truth, left_out = align(run / "scores.json", scores, spec)
            x = np.array([scores[m] for m in names])
            metrics = {k: float(f(x, np.array(truth))) for k, f in ranking.METRICS.items()}
            rows.append((run.name, metrics))
            details.append((run.name, spec, names, left_out))
        keys = list(ranking.METRICS)
        mean = {k: float(np.nanmean([r[k] for _, r in rows])) for k in keys}
        width = max(7, *(len(n) for n, _ in rows))
        print("dataset".ljust(width) + "".join(f"{k:>14}" for k in keys))
        for name, r in [*rows, ("mean", mean)]:
            print(name.ljust(width) + "".join(f"{r[k]:14.3f}" for k in keys))
        if args.out:
            write(
                {
                    "results": str(root),
                    "truth": args.truth,
                    "datasets": [
                        {
                            "dataset": name,
                            "truth": spec,
                            "n_models": len(names),
                            "models": names,
                            "left_out": left_out,
                            "metrics": {k: number(v) for k, v in metrics.items()},
                        }
                        for (name, spec, names, left_out), (_, metrics) in zip(
                            details, rows, strict=True
                        )
                    ],
                    "mean": {k: number(v) for k, v in mean.items()},
                },
                ["dataset", "truth", "n_models", *keys],
                [
                    {"dataset": name, "truth": spec, "n_models": len(names), **metrics}
                    for (name, spec, names, _), (_, metrics) in zip(details, rows, strict=True)
                ]
                + [{"dataset": "mean", "truth": args.truth, "n_models": "", **mean}],
            )
        return 0

    scores = ncti_io.read_scores(args.results)
    names, truth, left_out = align(args.results, scores, args.truth)
    if len(names) < min_interval:
        warnings.warn(
            f"only {len(names)} models: the 95% bootstrap interval of weighted_tau means little "
            f"below {min_interval} models (over 2.5% of its model resamples then hold 3 or fewer "
            "distinct models, so its ends come from near-degenerate rankings).",
            UserWarning,
            stacklevel=2,
        )
    result = ranking.evaluate(
        [scores[m] for m in names], truth, n_resamples=args.bootstrap, seed=args.seed
    )
    print(f"{len(names)} models, truth {args.truth}")
    for key, value in result.items():
        if not key.startswith("weighted_tau_ci"):
            extra = ""
            if key == "weighted_tau":
                extra = (
                    f"   ({args.bootstrap} bootstrap resamples, 95% interval "
                    f"{result['weighted_tau_ci_low']:.3f} .. "
                    f"{result['weighted_tau_ci_high']:.3f})"
                )
            print(f"{key:>14}  {value:7.3f}{extra}")
    if args.out:
        write(
            {
                "results": str(args.results),
                "truth": args.truth,
                "n_models": len(names),
                "models": names,
                "left_out": left_out,
                "bootstrap": {"n_resamples": args.bootstrap, "seed": args.seed, "confidence": 0.95},
                "metrics": {k: number(v) for k, v in result.items()},
            },
            ["results", "truth", "n_models", *result, "n_resamples", "seed"],
            [
                {
                    "results": str(args.results),
                    "truth": args.truth,
                    "n_models": len(names),
                    **result,
                    "n_resamples": args.bootstrap,
                    "seed": args.seed,
                }
            ],
        )
    return 0


def _plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from . import io as ncti_io
    from . import plots, ranking

    source = Path(args.results)
    out = Path(args.out) if args.out else (source if source.is_dir() else source.parent)
    try:
        records = ncti_io.read_results(source)["models"]
    except ValueError:  # a plain {model: score} file: NCTI only
        scores = ncti_io.read_scores(source)
        records = [
            {"model": m, "ncti": s} for m, s in sorted(scores.items(), key=lambda kv: -kv[1])
        ]
    written = [plots.plot_ranking(records, out / "ranking.png")]
    if args.truth:
        scores = {r["model"]: r["ncti"] for r in records if r["ncti"] is not None}
        names, truth = _truth_for(args.truth, list(scores))
        x, y = np.array([scores[m] for m in names]), np.array(truth)
        written.append(
            plots.plot_vs_truth(
                names,
                x,
                y,
                float(ranking.weighted_tau(x, y)),
                out / "ncti_vs_truth.png",
                title=args.truth,
            )
        )
    for path in written:
        print(f"wrote {path}")
    return 0


def _zoo_and_data(args: argparse.Namespace):
    try:
        from bridges import datasets, models
    except ImportError as err:
        raise ValueError(
            f"'ncti {args.command}' needs torch and torchvision: "
            f"pip install 'ncti-jax[torch]' ({err})."
        ) from None
    weights = None if args.weights.lower() == "none" else args.weights
    specs = models.resolve_zoo(args.zoo, weights=weights, seed=args.seed)
    ds = datasets.load_dataset(args.dataset, args.data_root, download=args.download)
    if args.samples_per_class:
        ds = datasets.subsample_per_class(ds, args.samples_per_class, seed=args.seed)
    return specs, ds


def _extract_kwargs(args: argparse.Namespace) -> dict:
    return {
        "batch_size": args.batch_size,
        "device": args.device,
        "num_workers": args.workers,
        "bf16": args.bf16,
        "progress": not args.no_progress,
    }


def _extract_to_store(args: argparse.Namespace, specs, ds, store: str):
    from bridges import extract

    return extract.extract_to_store(
        specs,
        ds,
        store,
        dataset_name=args.dataset,
        preprocess=args.preprocess,
        image_size=args.image_size,
        **_extract_kwargs(args),
    )


def _interrupted(args: argparse.Namespace, err: KeyboardInterrupt) -> int:
    """One line for Ctrl-C during extraction (no traceback); exit status 130."""
    if hasattr(err, "done"):  # bridges.extract.ExtractionInterrupted: the rows done are stored
        what = f" after {err.done}/{err.total} images; rerun the same command to resume"
    else:
        what = ": no new features were stored"
    print(f"ncti {args.command}: interrupted{what}", file=sys.stderr)
    return 130


def _extract(args: argparse.Namespace) -> int:
    try:
        specs, ds = _zoo_and_data(args)
        done, result = _extract_to_store(args, specs, ds, args.out)
    except KeyboardInterrupt as err:
        return _interrupted(args, err)
    skipped = [s.name for s in specs if s.name not in done]
    if skipped:
        print(f"already stored, skipped: {', '.join(skipped)}", file=sys.stderr)
    if result is not None:
        print(
            f"extracted {len(done)} models on {len(result.labels)} images in "
            f"{result.seconds:.1f} s ({result.images_per_second:.1f} images/s for the whole "
            f"zoo, {result.device}) into {args.out}"
            + (f" (resumed at image {result.start})" if result.start else ""),
            file=sys.stderr,
        )
    return 0


def _rank(args: argparse.Namespace) -> int:
    from bridges import dlpack, extract

    from . import io as ncti_io
    from ._score import score_zoo

    try:
        specs, ds = _zoo_and_data(args)
        if args.store:
            _extract_to_store(args, specs, ds, args.store)
        else:
            extract.check_weights(specs)
            models = {s.name: extract.load_model(s) for s in specs}
            transforms = {
                s.name: extract.transform_for(s, args.preprocess, args.image_size) for s in specs
            }
            result = extract.extract_features(models, ds, transforms, **_extract_kwargs(args))
    except KeyboardInterrupt as err:
        return _interrupted(args, err)
    if args.store:
        feats, labels = ncti_io.load_feature_store(args.store, models=[s.name for s in specs])
        seconds = float("nan")
    else:
        feats = {name: dlpack.to_jax(t) for name, t in result.features.items()}
        labels, seconds = result.labels, result.seconds
    start = time.perf_counter()
    resume = (
        f"interrupted while scoring; the features are in --store {args.store}: "
        f"'ncti score {args.store}' scores them without extracting again"
        if args.store
        else "interrupted while scoring; nothing was written (--store DIR keeps the features)"
    )
    with _ExitOnInterrupt(resume):
        scored = score_zoo(feats, labels, n_components=args.n_components, precision=args.precision)
    score_seconds = time.perf_counter() - start
    records = scored.to_records()
    settings = {
        "n_components": args.n_components,
        "precision": args.precision,
        "dtype": "float32",
        "dataset": args.dataset,
        "source": f"zoo {args.zoo}, weights {args.weights}",
        "n_samples": len(labels),
        "n_classes": len(set(np.asarray(labels).tolist())),
        "n_models": len(records),
        "preprocess": args.preprocess,
    }
    json_path, csv_path = ncti_io.write_results(
        args.out, ncti_io.results_document(records, settings)
    )
    if not args.quiet:
        print(ncti_io.format_table(records))
    print(
        f"extraction {seconds:.1f} s, scoring {score_seconds:.2f} s (compilation included); "
        f"wrote {json_path} and {csv_path}",
        file=sys.stderr,
    )
    return 0


def _bench(args: argparse.Namespace) -> int:
    from benchmarks.cli import run

    return run(args)


def _demo(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    try:
        from bridges import demo
    except ImportError as err:
        raise ValueError(
            f"'ncti demo' needs torch: pip install 'ncti-jax[torch]' ({err})."
        ) from None
    from . import io as ncti_io

    config = demo.DemoConfig(seed=args.seed)
    if args.quick:
        config = demo.DemoConfig(zoo=demo.QUICK_ZOO, finetune_epochs=1, seed=args.seed)
    report = demo.run_demo(
        config,
        device=args.device,
        cache_dir=Path(args.cache_dir) if args.cache_dir else None,
        progress=not args.no_progress,
    )
    out = Path(args.out)
    ncti_io.atomic_write_text(out / "demo.json", json.dumps(report, indent=1) + "\n")
    print(demo.format_report(report))
    written = [out / "demo.json"]
    try:
        import numpy as np

        from . import plots

        records = report["models"]
        written.append(
            plots.plot_ranking(
                records, out / "ranking.png", title="ncti demo: NCTI ranking of the digits zoo"
            )
        )
        written.append(
            plots.plot_vs_truth(
                [r["model"] for r in records],
                np.array([r["ncti"] for r in records]),
                np.array([100 * r["finetune_accuracy"] for r in records]),
                report["weighted_tau"],
                out / "ncti_vs_truth.png",
                title="ncti demo",
            )
        )
    except ImportError:
        print("(matplotlib not installed: no plots)", file=sys.stderr)
    print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _enable_compilation_cache() -> None:
    """JAX's persistent compilation cache for the commands that compile kernels.

    A zoo of the same shapes then loads its kernels instead of compiling them
    (measured on 2 CPU cores, N = 300, D = 4096: the first call 2.8 s -> 1.0 s).
    ``NCTI_JAX_CACHE`` names the directory (default ``$XDG_CACHE_HOME/ncti-jax/xla``,
    i.e. ``~/.cache/ncti-jax/xla``); ``NCTI_JAX_CACHE=off`` turns it off. The CLI owns
    the process; library code never changes JAX's configuration.
    """
    where = os.environ.get("NCTI_JAX_CACHE")
    if where is not None and where.strip().lower() in ("", "0", "off", "none"):
        return
    if where is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        where = os.path.join(base, "ncti-jax", "xla")
    import jax

    jax.config.update("jax_compilation_cache_dir", where)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ncti`` command."""
    args = _parser().parse_args(argv)
    warnings.showwarning = _show_warning
    if args.command in ("score", "rank", "demo"):
        _enable_compilation_cache()
    from ._checkpoint import CheckpointError

    try:
        return args.func(args)
    except (ValueError, TypeError, OSError, MemoryError, CheckpointError) as err:
        print(f"ncti {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
