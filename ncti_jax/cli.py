"""The ``ncti`` command line.

    ncti score PATH [--dataset NAME] [--out DIR] [--n-components K]
                    [--dtype float32|float64] [--precision highest|high|default]
                    [--models a,b,c]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Sequence


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
    score.add_argument("path", help="feature store directory: <model>.npy + labels.npy, or "
                       "the authors' <model>_<dataset>_feature.npy / _label.npy")
    score.add_argument("--dataset", help="dataset of an authors'-layout store")
    score.add_argument("--models", help="comma-separated models to score (default: all)")
    score.add_argument("--out", default="ncti-results",
                       help="directory for scores.json and scores.csv (default: %(default)s)")
    score.add_argument("--n-components", type=int, default=64,
                       help="PCA dimension k (default: %(default)s)")
    score.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                       help="computation dtype (default: %(default)s)")
    score.add_argument("--precision", choices=("highest", "high", "default"), default="highest",
                       help="matmul precision on accelerators (default: %(default)s, exact float32)")
    score.add_argument("-q", "--quiet", action="store_true", help="do not print the table")
    score.set_defaults(func=_score)
    return parser


def _score(args: argparse.Namespace) -> int:
    import jax

    if args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)  # the CLI owns the process; library code never does

    from . import io as ncti_io
    from ._ncti import score_zoo

    models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
    feats, labels = ncti_io.load_feature_store(args.path, dataset=args.dataset, models=models)
    n = labels.shape[0]
    print(f"scoring {len(feats)} models on {n} samples from {args.path} ...", file=sys.stderr)
    start = time.perf_counter()
    result = score_zoo(feats, labels, n_components=args.n_components, precision=args.precision,
                       dtype=args.dtype)
    elapsed = time.perf_counter() - start
    records = result.to_records()
    settings = {
        "n_components": args.n_components, "precision": args.precision, "dtype": args.dtype,
        "dataset": args.dataset, "source": str(args.path), "n_samples": int(n),
        "n_classes": len(set(labels.reshape(-1).tolist())), "n_models": len(records),
    }
    json_path, csv_path = ncti_io.write_results(args.out, ncti_io.results_document(records, settings))
    if not args.quiet:
        print(ncti_io.format_table(records))
    print(f"scored in {elapsed:.2f} s (compilation included); wrote {json_path} and {csv_path}",
          file=sys.stderr)
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ncti`` command."""
    args = _parser().parse_args(argv)
    warnings.showwarning = _show_warning
    try:
        return args.func(args)
    except (ValueError, TypeError) as err:
        print(f"ncti {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
