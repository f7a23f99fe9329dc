"""The ``ncti`` command line.

ncti score PATH [--dataset NAME] [--models a,b,c] [SCORING OPTIONS]
ncti rank [--zoo ZOO] [--dataset NAME] [EXTRACTION OPTIONS] [--store DIR] [SCORING OPTIONS]
ncti extract [--zoo ZOO] [--dataset NAME] [EXTRACTION OPTIONS] --out DIR
ncti evaluate RESULTS --truth group1:cifar10|accuracies.csv [--all] [--bootstrap N]
              [--out DIR]
ncti plot RESULTS [--truth ...] [--out DIR]
ncti demo [--quick] [--seed S | --seeds S,S,...] [--protocol NAME] [--out DIR]
ncti bench --scenario NAME [--contenders jax,reference,authors] [--repeats N] [--quick] [--list]

SCORING OPTIONS (score and rank, from :func:`add_scoring_options`; defaults from
:mod:`ncti_jax.defaults`): --out DIR, --n-components K, --dtype, --precision,
--strategy, --chunk-rows N, --memory-limit BYTES, --checkpoint DIR,
--compile-cache DIR|off, -q.

``ncti --help`` and ``ncti score`` import neither torch, the bridges nor the
benchmarks: the commands that need them (:data:`LAZY_COMMANDS`) are listed with
their one-line help, and their options and code are imported only when they run.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import warnings
from collections.abc import Sequence

from . import defaults

# Commands whose options and code live in the torch bridge or the benchmarks:
# name -> (module, the function that adds its options and sets ``func``, one-line help).
LAZY_COMMANDS = {
    "demo": (
        "ncti_jax.bridges.cli",
        "add_demo_arguments",
        "the paper's experiment in miniature, offline (start here)",
    ),
    "extract": (
        "ncti_jax.bridges.cli",
        "add_extract_arguments",
        "extract penultimate features of a torchvision zoo into a feature store",
    ),
    "rank": (
        "ncti_jax.bridges.cli",
        "add_rank_arguments",
        "extract features and score the zoo in one go (the paper's experiment)",
    ),
    "bench": (
        "ncti_jax.benchmarks.cli",
        "add_arguments",
        "time the engine against the float64 reference and the authors' pipeline",
    ),
}


def _parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``ncti`` parser; of the :data:`LAZY_COMMANDS`, only ``command`` gets its options
    (the others are listed by name and help)."""
    parser = argparse.ArgumentParser(
        prog="ncti",
        description="Rank pre-trained models by NCTI transferability on a target dataset.",
    )
    parser.add_argument("--version", action=_Version, help="show the version and exit")
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
    score.add_argument(
        "--dataset", help="dataset of an authors'-layout store (default: its only one)"
    )
    score.add_argument("--models", help="comma-separated models to score (default: all)")
    add_scoring_options(score)
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
    evaluate.add_argument(
        "--seed", type=int, default=0, help="bootstrap seed (default: %(default)s)"
    )
    evaluate.add_argument(
        "--published",
        action="store_true",
        help="print the published weighted tau of LEEP, LogME, NLEEP, PARC and SFDA on the "
        "same group1 dataset (the SFDA README's table) beside the results' (needs --truth "
        "group1:DATASET)",
    )
    evaluate.add_argument(
        "--out",
        metavar="DIR",
        help="also write the metrics as evaluate.json and evaluate.csv into DIR",
    )
    evaluate.set_defaults(func=_evaluate)

    plot = sub.add_parser(
        "plot",
        help="plot a ranking (needs matplotlib)",
        description="Write ranking.png and, with --truth, ncti_vs_truth.png (one panel per "
        "metric, metrics_vs_truth.png, for results with several metrics).",
    )
    plot.add_argument("results", help="scores.json or its directory (as for evaluate)")
    plot.add_argument("--truth", help=truth_help)
    plot.add_argument(
        "--out", metavar="DIR", help="directory for the PNGs (default: next to the results)"
    )
    plot.set_defaults(func=_plot)

    for name, (module, function, helptext) in LAZY_COMMANDS.items():
        if name == command:
            lazy = sub.add_parser(name, help=helptext, description=helptext + ".")
            getattr(importlib.import_module(module), function)(lazy)
        else:  # listed only: its arguments are parsed once it is known to run
            sub.add_parser(name, help=helptext, add_help=False)
    return parser


class _Version(argparse.Action):
    """``--version``, reading the installed version only when asked."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, **kwargs):
        super().__init__(option_strings, dest=dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        from . import __version__

        print(f"ncti-jax {__version__}")
        parser.exit()


def add_scoring_options(parser: argparse.ArgumentParser) -> None:
    """The scoring options of ``ncti score`` and ``ncti rank``: where the results go and
    :func:`ncti_jax.score_zoo`'s settings, with its defaults (:mod:`ncti_jax.defaults`)."""
    group = parser.add_argument_group("scoring options")
    group.add_argument(
        "--metrics",
        default="ncti",
        metavar="LIST",
        help="comma-separated transferability metrics to score, or 'all' (default: "
        "%(default)s); choices: " + ", ".join(_metric_names()),
    )
    group.add_argument(
        "--out",
        default="ncti-results",
        metavar="DIR",
        help="directory for scores.json and scores.csv (default: %(default)s)",
    )
    group.add_argument(
        "--n-components",
        type=int,
        default=defaults.N_COMPONENTS,
        metavar="K",
        help="PCA dimension k (default: %(default)s, the paper's)",
    )
    group.add_argument(
        "--dtype",
        choices=defaults.DTYPES,
        default=defaults.DTYPES[0],
        help="computation dtype (default: %(default)s)",
    )
    group.add_argument(
        "--precision",
        choices=defaults.PRECISIONS,
        default=defaults.PRECISIONS[0],
        help="matmul precision on accelerators: highest is exact float32, high TF32, "
        "default bfloat16 passes (default: %(default)s)",
    )
    group.add_argument(
        "--strategy",
        choices=defaults.STRATEGIES,
        default=defaults.STRATEGIES[0],
        help="fused: whole models on the devices; streaming: PCA from row chunks, for models "
        "larger than device memory; auto: streaming on CPU, else fused where a model fits "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--eigensolver",
        choices=defaults.EIGENSOLVERS,
        default=defaults.EIGENSOLVERS[0],
        help="the PCA eigensolver on accelerators: topk, a certified top-k solver (a model "
        "it cannot certify is recomputed with the full eigh and flagged); topk-tf32 / "
        "topk-bf16, the same on a TF32 / bfloat16 scatter refined on the exact one; eigh, "
        "the full eigh. The CPU solves in float64 (default: %(default)s)",
    )
    group.add_argument(
        "--chunk-rows",
        type=int,
        default=defaults.CHUNK_ROWS,
        metavar="N",
        help="rows per chunk when streaming (default: %(default)s)",
    )
    group.add_argument(
        "--memory-limit",
        type=_bytes,
        metavar="BYTES",
        help="memory one device may use, e.g. 12GiB (default: what the device reports free)",
    )
    group.add_argument(
        "--checkpoint",
        metavar="DIR",
        help="save finished models here; rerunning the same command resumes from them "
        "(default: none; needs orbax-checkpoint, the resume extra)",
    )
    add_compile_cache_option(group)
    group.add_argument("-q", "--quiet", action="store_true", help="no table and no progress bar")


def _metric_names() -> list[str]:
    from .metrics import NAMES  # no JAX import

    return list(NAMES)


def add_compile_cache_option(parser) -> None:
    """``--compile-cache``, for the commands that compile kernels (score, rank, demo)."""
    parser.add_argument(
        "--compile-cache",
        metavar="DIR|off",
        help="where JAX's persistent compilation cache lives, so that a second run on the "
        "same shapes compiles nothing; 'off' disables it (default: $NCTI_JAX_CACHE, else "
        "$XDG_CACHE_HOME/ncti-jax/jax, $XDG_CACHE_HOME being ~/.cache when unset)",
    )


def scoring_kwargs(args: argparse.Namespace) -> dict:
    """:func:`ncti_jax.score_metrics`'s keyword arguments from the scoring options."""
    return {
        "metrics": args.metrics,
        "n_components": args.n_components,
        "precision": args.precision,
        "dtype": args.dtype,
        "strategy": args.strategy,
        "eigensolver": args.eigensolver,
        "chunk_rows": args.chunk_rows,
        "memory_limit": args.memory_limit,
        "checkpoint": args.checkpoint,
        "progress": not args.quiet,
    }


def prepare_scoring(args: argparse.Namespace) -> None:
    """Before any work: float64 switched on if asked for, ``--out`` checked for writing."""
    if args.dtype == "float64":
        import jax

        jax.config.update(
            "jax_enable_x64", True
        )  # the CLI owns the process; library code never does
    check_writable(args.out)


def write_scores(args: argparse.Namespace, result, settings: dict, timing: str) -> None:
    """Writes scores.json and scores.csv into ``--out``, prints the table (unless
    ``--quiet``) and one line: ``timing``, then what was written.

    ``result``: a :class:`ncti_jax.ZooMetrics`, or an :class:`ncti_jax.NCTIResult`."""
    from . import io as ncti_io
    from ._result import NCTIResult

    if isinstance(result, NCTIResult):
        blocks = {"ncti": result.to_records()}
    else:
        blocks = {
            m: (result.ncti.to_records() if m == "ncti" else result[m].to_records())
            for m in result.metrics
        }
    settings = {
        "n_components": args.n_components,
        "precision": args.precision,
        "dtype": args.dtype,
        "strategy": args.strategy,
        **settings,
        "n_models": len(next(iter(blocks.values()))),
    }
    document = ncti_io.results_document(blocks, settings)
    json_path, csv_path = ncti_io.write_results(args.out, document)
    if not args.quiet:
        if list(blocks) == ["ncti"]:
            print(ncti_io.format_table(blocks["ncti"]))
        else:
            print(ncti_io.format_metrics_table(document))
    print(f"{timing}; wrote {json_path} and {csv_path}", file=sys.stderr)


def plural(n: int, word: str) -> str:
    """``1 model``, ``3 models``."""
    return f"{n} {word}" + ("" if n == 1 else "s")


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


class ExitOnInterrupt:
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


def check_writable(out: str) -> None:
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
    with ExitOnInterrupt(resume):
        return _score_run(args)


def _score_run(args: argparse.Namespace) -> int:
    from . import io as ncti_io
    from . import metrics
    from ._score import score_metrics

    chosen = metrics.parse(args.metrics)
    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    feats, labels = ncti_io.load_feature_store(args.path, dataset=args.dataset, models=models)
    logits = None
    if any(m != "ncti" and metrics.get(m).needs_logits for m in chosen):
        logits = ncti_io.load_logits(args.path, list(feats))
    prepare_scoring(args)
    n = labels.shape[0]
    print(
        f"scoring {plural(len(feats), 'model')} on {n} samples from {args.path} ...",
        file=sys.stderr,
    )
    start = time.perf_counter()
    result = score_metrics(feats, labels, logits=logits, **scoring_kwargs(args))
    elapsed = time.perf_counter() - start
    settings = {
        "dataset": args.dataset,
        "source": str(args.path),
        "n_samples": int(n),
        "n_classes": len(set(labels.reshape(-1).tolist())),
    }
    write_scores(args, result, settings, f"scored in {elapsed:.2f} s (compilation included)")
    return 0


def _align_truth(results, scores: dict[str, float], spec: str, min_common: int = 3):
    """The models both the results and the ground truth ``spec`` know (in the results'
    order) and their accuracies, for ``ncti evaluate`` and ``ncti plot`` alike; says on
    one line each which models are left out, and why. Raises ValueError below
    ``min_common`` models in common."""
    from pathlib import Path

    from . import io as ncti_io
    from . import ranking

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

    def align(results, scores: dict[str, float], spec: str):
        return _align_truth(results, scores, spec, min_common)

    # The interval resamples M models with replacement. Below 8 models more than 2.5% of
    # resamples hold at most 3 distinct models (M=7: 8%, M=8: 2.0%, M=10: 0.07%), so the
    # ends of the 95% interval are set by such near-degenerate rankings.
    min_interval = 8

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
            held = ncti_io.scored_metrics(run)
            for metric in held:
                scores = ncti_io.read_scores(run, metric)
                spec = f"{args.truth}:{run.name}"
                names, truth, left_out = align(run / "scores.json", scores, spec)
                x = np.array([scores[m] for m in names])
                metrics = {k: float(f(x, np.array(truth))) for k, f in ranking.METRICS.items()}
                label = run.name if held == ["ncti"] else f"{run.name}:{metric}"
                rows.append((label, metrics))
                details.append((label, spec, names, left_out))
        keys = list(ranking.METRICS)
        scored = sorted({n.partition(":")[2] for n, _ in rows} - {""})
        means = [("mean", {k: float(np.nanmean([r[k] for _, r in rows])) for k in keys})]
        if scored:  # several metrics: one mean per metric
            means = [
                (
                    f"mean:{m}",
                    {
                        k: float(np.nanmean([r[k] for n, r in rows if n.endswith(":" + m)]))
                        for k in keys
                    },
                )
                for m in scored
            ]
        mean = means[0][1] if len(means) == 1 else {n: v for n, v in means}
        width = max(7, *(len(n) for n, _ in rows + means))
        print("dataset".ljust(width) + "".join(f"{k:>14}" for k in keys))
        for name, r in [*rows, *means]:
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
                    "mean": {n: {k: number(v) for k, v in r.items()} for n, r in means}
                    if scored
                    else {k: number(v) for k, v in mean.items()},
                },
                ["dataset", "truth", "n_models", *keys],
                [
                    {"dataset": name, "truth": spec, "n_models": len(names), **metrics}
                    for (name, spec, names, _), (_, metrics) in zip(details, rows, strict=True)
                ]
                + [{"dataset": n, "truth": args.truth, "n_models": "", **r} for n, r in means],
            )
        return 0

    published = _published_wtau(args.truth) if args.published else None
    held = ncti_io.scored_metrics(args.results)
    if len(held) > 1:
        return _evaluate_metrics(args, held, align, min_interval, number, write, published)
    scores = ncti_io.read_scores(args.results, held[0])
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
    print(f"{len(names)} models, truth {args.truth}, metric {held[0]}")
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
    if published is not None:
        print(_format_published(published, args.truth))
    if args.out:
        write(
            {
                "results": str(args.results),
                "truth": args.truth,
                "metric": held[0],
                "n_models": len(names),
                "models": names,
                "left_out": left_out,
                "bootstrap": {"n_resamples": args.bootstrap, "seed": args.seed, "confidence": 0.95},
                "metrics": {k: number(v) for k, v in result.items()},
                **({"published": published} if published is not None else {}),
            },
            ["results", "truth", "metric", "n_models", *result, "n_resamples", "seed"],
            [
                {
                    "results": str(args.results),
                    "truth": args.truth,
                    "metric": held[0],
                    "n_models": len(names),
                    **result,
                    "n_resamples": args.bootstrap,
                    "seed": args.seed,
                }
            ],
        )
    return 0


def _evaluate_metrics(args, held, align, min_interval, number, write, published) -> int:
    """``ncti evaluate`` of a results file with several metrics: one row per metric."""
    from . import io as ncti_io
    from . import ranking

    rows = []
    for metric in held:
        scores = ncti_io.read_scores(args.results, metric)
        names, truth, left_out = align(args.results, scores, args.truth)
        result = ranking.evaluate(
            [scores[m] for m in names], truth, n_resamples=args.bootstrap, seed=args.seed
        )
        rows.append((metric, names, left_out, result))
    smallest = min(len(names) for _, names, _, _ in rows)
    if smallest < min_interval:
        warnings.warn(
            f"only {smallest} models: the 95% bootstrap intervals of weighted_tau mean little "
            f"below {min_interval} models.",
            UserWarning,
            stacklevel=2,
        )
    keys = [k for k in rows[0][3] if not k.startswith("weighted_tau_ci")]
    head = ["metric", "models", *keys, "wtau 95% interval"]
    if published is not None:
        head.append("published wtau")
    table = []
    for metric, names, _, result in rows:
        cells = [metric, str(len(names)), *(f"{result[k]:.3f}" for k in keys)]
        cells.append(f"{result['weighted_tau_ci_low']:.3f} .. {result['weighted_tau_ci_high']:.3f}")
        if published is not None:
            value = published.get(metric)
            cells.append("-" if value is None else f"{value:.3f}")
        table.append(cells)
    widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(head)]
    print(f"truth {args.truth}, {args.bootstrap} bootstrap resamples")
    for cells in [head, *table]:
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
        )
    if published is not None:
        print(_format_published(published, args.truth))
    if args.out:
        write(
            {
                "results": str(args.results),
                "truth": args.truth,
                "bootstrap": {"n_resamples": args.bootstrap, "seed": args.seed, "confidence": 0.95},
                "by_metric": {
                    metric: {
                        "n_models": len(names),
                        "models": names,
                        "left_out": left_out,
                        "metrics": {k: number(v) for k, v in result.items()},
                    }
                    for metric, names, left_out, result in rows
                },
                **({"published": published} if published is not None else {}),
            },
            ["results", "truth", "metric", "n_models", *rows[0][3], "n_resamples", "seed"],
            [
                {
                    "results": str(args.results),
                    "truth": args.truth,
                    "metric": metric,
                    "n_models": len(names),
                    **result,
                    "n_resamples": args.bootstrap,
                    "seed": args.seed,
                }
                for metric, names, _, result in rows
            ],
        )
    return 0


def _published_wtau(spec: str) -> dict[str, float]:
    """The published weighted tau of every metric on ``group1:DATASET`` (``--published``)."""
    from pathlib import Path

    from . import ranking

    group, _, dataset = spec.partition(":")
    if Path(spec).exists() or group != "group1" or not dataset:
        raise ValueError(
            f"--published needs --truth group1:DATASET (the published table is of the group1 "
            f"zoo); got {spec!r}."
        )
    table = ranking.published_wtau()
    if dataset not in next(iter(table.values())):
        raise ValueError(
            f"--published: no published weighted tau for {dataset!r}; known: "
            f"{sorted(next(iter(table.values())))}."
        )
    return {metric: by_dataset[dataset] for metric, by_dataset in table.items()}


def _format_published(published: dict[str, float], spec: str) -> str:
    cells = ", ".join(f"{m} {v:.3f}" for m, v in published.items())
    return f"published weighted tau on {spec} (SFDA README, group1 zoo): {cells}"


def _plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np

    from . import io as ncti_io
    from . import plots, ranking

    source = Path(args.results)
    out = Path(args.out) if args.out else (source if source.is_dir() else source.parent)
    held = ncti_io.scored_metrics(source)
    blocks = {}
    for metric in held:
        try:
            blocks[metric] = ncti_io.metric_records(ncti_io.read_results(source), metric)
        except ValueError:  # a plain {model: score} file or a CSV
            scores = ncti_io.read_scores(source, metric)
            blocks[metric] = [
                {"model": m, metric: s} for m, s in sorted(scores.items(), key=lambda kv: -kv[1])
            ]
    if held == ["ncti"]:
        written = [plots.plot_ranking(blocks["ncti"], out / "ranking.png")]
    else:
        written = [plots.plot_metric_rankings(blocks, out / "ranking.png")]
    if args.truth:
        panels = {}
        for metric, records in blocks.items():
            scores = {r["model"]: r[metric] for r in records if r[metric] is not None}
            names, truth, _ = _align_truth(source, scores, args.truth)
            x, y = np.array([scores[m] for m in names]), np.array(truth)
            panels[metric] = (names, x, y, float(ranking.weighted_tau(x, y)))
        if held == ["ncti"]:
            written.append(
                plots.plot_vs_truth(*panels["ncti"], out / "ncti_vs_truth.png", title=args.truth)
            )
        else:
            written.append(
                plots.plot_metrics_vs_truth(panels, out / "metrics_vs_truth.png", title=args.truth)
            )
    for path in written:
        print(f"wrote {path}")
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def compile_cache_dir(setting: str | None = None) -> str | None:
    """Where JAX's persistent compilation cache lives: ``setting`` (``--compile-cache``),
    else ``$NCTI_JAX_CACHE``, else ``$XDG_CACHE_HOME/ncti-jax/jax`` (``~/.cache/ncti-jax/jax``);
    None when that says ``off``."""
    where = setting if setting is not None else os.environ.get("NCTI_JAX_CACHE")
    if where is not None and where.strip().lower() in ("", "0", "off", "none", "no", "false"):
        return None
    if where is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        where = os.path.join(base, "ncti-jax", "jax")
    return os.path.expanduser(where)


def enable_compilation_cache(setting: str | None = None) -> str | None:
    """Turns on JAX's persistent compilation cache (:func:`compile_cache_dir`) for the
    commands that compile kernels; returns its directory.

    Every kernel is cached, however small and however quick to compile, so a second run
    on a zoo of the same shapes compiles nothing (measured on 2 CPU cores, 3 models of
    2000 x 256, 10 classes: ``ncti score`` 3.3 s with a cold cache, 1.8 s the second
    time). A directory named by ``--compile-cache`` or ``NCTI_JAX_CACHE`` that cannot be
    created is an error; the default one, a warning (the run goes on without the cache).
    The CLI owns the process; library code never changes JAX's configuration.
    """
    where = compile_cache_dir(setting)
    if where is None:
        return None
    try:
        os.makedirs(where, exist_ok=True)
    except OSError as err:
        named = "--compile-cache" if setting is not None else "NCTI_JAX_CACHE"
        if setting is not None or os.environ.get("NCTI_JAX_CACHE") is not None:
            raise OSError(
                f"{named} {where}: cannot create the compilation cache there "
                f"({err.strerror or err}); 'off' disables it."
            ) from None
        warnings.warn(
            f"no compilation cache: cannot create {where} ({err.strerror or err}); "
            "--compile-cache DIR puts it elsewhere.",
            UserWarning,
            stacklevel=2,
        )
        return None
    import jax

    jax.config.update("jax_compilation_cache_dir", where)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)  # no size floor
    return where


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ncti`` command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args, unknown = _parser().parse_known_args(argv)
    if args.command in LAZY_COMMANDS:  # now build its options, and parse again
        args = _parser(args.command).parse_args(argv)
    elif unknown:
        _parser().parse_args(argv)  # the usual "unrecognized arguments" error, exit 2
    warnings.showwarning = _show_warning
    from ._checkpoint import CheckpointError

    try:
        if hasattr(args, "compile_cache"):
            enable_compilation_cache(args.compile_cache)
        return args.func(args)
    except (ValueError, TypeError, OSError, MemoryError, CheckpointError) as err:
        print(f"ncti {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
