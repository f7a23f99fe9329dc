"""``ncti extract``, ``ncti rank`` and ``ncti demo``: the torch bridge behind a command line.

Argument parsing, printing and exit codes only; the work is
:func:`ncti_jax.bridges.pipeline.extract_zoo` / :func:`~ncti_jax.bridges.pipeline.rank_zoo`
and :mod:`ncti_jax.bridges.demo`. This module imports no torch: ``ncti rank --help``
works without it, and :mod:`ncti_jax.cli` builds these parsers only when one of these
commands runs.
"""

from __future__ import annotations

import argparse
import sys
import time

from ncti_jax.cli import (
    ExitOnInterrupt,
    add_compile_cache_option,
    add_scoring_options,
    plural,
    prepare_scoring,
    scoring_kwargs,
    write_scores,
)

from . import defaults

_TORCH = " Needs the torch extra."


def add_extract_arguments(parser: argparse.ArgumentParser) -> None:
    """``ncti extract``: the extraction options and ``--out STORE``."""
    parser.description += _TORCH
    _add_extraction_options(parser)
    parser.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="feature store directory (resumable: a rerun extracts only what is missing)",
    )
    parser.add_argument(
        "--with-logits",
        action="store_true",
        help="also store each model's source logits (its own classifier's output, for "
        "LEEP, NCE, ETran) as DIR/logits/<model>.npy, in the same pass; models stored "
        "without them are extracted again",
    )
    parser.set_defaults(func=_extract)


def add_rank_arguments(parser: argparse.ArgumentParser) -> None:
    """``ncti rank``: the extraction options, ``--store`` and the scoring options of
    ``ncti score``."""
    parser.description += _TORCH
    group = _add_extraction_options(parser)
    group.add_argument(
        "--store",
        metavar="DIR",
        help="also write the features to this feature store (resumable; default: in memory only)",
    )
    add_scoring_options(parser)
    parser.set_defaults(func=_rank)


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Pre-train a zoo of small CNNs on digits 0-4 (cached), fine-tune each on digits 5-9 "
        "for the ground truth, score the zoo with every available transferability metric and "
        "report how well each ranks it. Needs the torch extra; a few minutes on 2 CPU cores "
        "the first time."
    )
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    seeds.add_argument(
        "--seeds",
        metavar="S,S,...",
        help="run once per seed (e.g. 0,1,2,3,4): each seed's report in DIR/seed-S/, "
        "every metric's tau per seed and its mean +- std in DIR/seeds.json",
    )
    parser.add_argument(
        "--protocol",
        default="finetune-frozen-bn",
        choices=("finetune-frozen-bn", "finetune", "probe-finetune-frozen-bn"),
        help="the fine-tuning protocol of the ground truth: every layer, 15 epochs, BatchNorm "
        "statistics frozen (finetune-frozen-bn) or updated (finetune: the protocol before "
        "issue #14, with which the untrained network catches up); or a linear probe then 10 "
        "epochs of every layer at lr 3e-4, BatchNorm frozen (default: %(default)s)",
    )
    parser.add_argument(
        "--device", default=defaults.DEVICE, help="auto, cpu, cuda (default: %(default)s)"
    )
    parser.add_argument(
        "--out", default="ncti-demo", metavar="DIR", help="report directory (default: %(default)s)"
    )
    parser.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="where the pre-trained zoo is cached (default: $XDG_CACHE_HOME/ncti-jax/demo)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 3 tiny models, 1 epoch of pre-training and of fine-tuning each "
        "(seconds, not minutes)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_compile_cache_option(parser)
    parser.set_defaults(func=_demo)


def _add_extraction_options(parser: argparse.ArgumentParser):
    group = parser.add_argument_group("extraction options")
    group.add_argument(
        "--zoo",
        default="group1",
        help="'group1' (the paper's supervised zoo), 'timm-small' (12 timm models under 30M "
        "parameters), a zoo .toml file, or comma-separated models: torchvision architectures, "
        "timm:NAME[.TAG], hf:ORG/NAME or hf:./DIR (default: %(default)s)",
    )
    group.add_argument(
        "--weights",
        default=defaults.WEIGHTS,
        help="weights of the zoo's models: DEFAULT (each library's pre-trained weights), a "
        "torchvision enum name such as IMAGENET1K_V1, or 'none' for random initialisation "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--dataset",
        default="cifar10",
        help="a target dataset name (cifar10, cifar100, aircraft, caltech101, cars, dtd, "
        "flowers, food, pets, sun397, voc2007), 'imagefolder', or an ImageFolder path "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--data-root",
        metavar="DIR",
        help="where the dataset lives (the folder, for imagefolder)",
    )
    group.add_argument(
        "--download",
        action="store_true",
        help="let torchvision download the dataset (needs network access)",
    )
    group.add_argument(
        "--samples-per-class",
        type=int,
        metavar="N",
        help="subsample each class (seeded; default: every sample)",
    )
    group.add_argument(
        "--seed",
        type=int,
        default=defaults.SEED,
        help="seed of subsampling and of --weights none initialisation (default: %(default)s)",
    )
    group.add_argument(
        "--preprocess",
        choices=defaults.PREPROCESS,
        default=defaults.PREPROCESS[0],
        help="'paper': resize to --image-size, ImageNet mean/std; 'native': each "
        "weights' own transforms (default: %(default)s)",
    )
    group.add_argument(
        "--image-size",
        type=int,
        default=defaults.IMAGE_SIZE,
        metavar="PIXELS",
        help="input size for 'paper' preprocessing (default: %(default)s)",
    )
    group.add_argument(
        "--batch-size",
        type=int,
        default=defaults.BATCH_SIZE,
        metavar="N",
        help="images per batch (default: %(default)s)",
    )
    group.add_argument(
        "--workers",
        type=int,
        default=defaults.WORKERS,
        metavar="N",
        help="data loader worker processes (default: %(default)s)",
    )
    group.add_argument(
        "--device",
        default=defaults.DEVICE,
        help="auto, cpu, cuda, cuda:N (default: %(default)s)",
    )
    group.add_argument("--bf16", action="store_true", help="bfloat16 autocast on CUDA")
    group.add_argument(
        "--backend",
        choices=defaults.BACKENDS,
        default=defaults.BACKENDS[0],
        help="'torch': the models in torch (CUDA when --device allows); 'jax': their flax "
        "ports (ResNet-18..152, ViT-B/16, ViT-S/16 from torchvision, timm or Hugging Face), "
        "jit-compiled and data parallel over every JAX device of --device's platform, "
        "features left on the devices for scoring; no torch needed (image folders, 'paper' "
        "preprocessing, ncti rank only) (default: %(default)s)",
    )
    group.add_argument(
        "--no-progress", action="store_true", help="no progress bar while extracting"
    )
    return group


def _pipeline(command: str):
    try:
        from . import pipeline
    except ImportError as err:
        raise ValueError(
            f"'ncti {command}' needs torch and torchvision: pip install 'ncti-jax[torch]' ({err})."
        ) from None
    return pipeline


def _extract_zoo(args: argparse.Namespace, store: str | None):
    """:func:`~ncti_jax.bridges.pipeline.extract_zoo` with the extraction options (or
    :func:`~ncti_jax.bridges.jax_pipeline.extract_zoo`, with ``--backend jax``)."""
    if args.backend == "jax":
        return _extract_zoo_jax(args, store)
    return _pipeline(args.command).extract_zoo(
        args.zoo,
        args.dataset,
        store=store,
        download=args.download,
        device=args.device,
        bf16=args.bf16,
        **_extraction_kwargs(args),
    )


def _extraction_kwargs(args: argparse.Namespace) -> dict:
    """The extraction options both backends take."""
    return {
        "root": args.data_root,
        "weights": args.weights,
        "seed": args.seed,
        "samples_per_class": args.samples_per_class,
        "preprocess": args.preprocess,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "progress": not args.no_progress,
        "log": _say,
        "with_logits": getattr(args, "with_logits", False) or _needs_logits(args),
    }


def _extract_zoo_jax(args: argparse.Namespace, store: str | None):
    """``--backend jax``: the flax ports on a mesh of ``--device``'s JAX devices."""
    unsupported = [
        what
        for what, given in (
            ("ncti extract (a feature store)", args.command == "extract"),
            ("--store", store is not None),
            ("--bf16", args.bf16),
            ("--download", args.download),
        )
        if given
    ]
    if unsupported:
        raise ValueError(
            f"--backend jax extracts in memory for 'ncti rank': {', '.join(unsupported)} "
            "needs --backend torch."
        )
    try:
        from . import jax_extract, jax_pipeline
    except ImportError as err:
        raise ValueError(
            f"--backend jax needs flax: pip install 'ncti-jax[flax]' ({err})."
        ) from None
    return jax_pipeline.extract_zoo(
        args.zoo,
        args.dataset,
        mesh=jax_extract.batch_mesh(jax_extract.platform_devices(args.device)),
        **_extraction_kwargs(args),
    )


def _needs_logits(args: argparse.Namespace) -> bool:
    """``ncti rank --metrics`` asks for a metric that reads the source classifier."""
    from ncti_jax import metrics

    chosen = metrics.parse(getattr(args, "metrics", "ncti"))
    return any(m != "ncti" and metrics.get(m).needs_logits for m in chosen)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _interrupted(args: argparse.Namespace, err: KeyboardInterrupt) -> int:
    """One line for Ctrl-C during extraction (no traceback); exit status 130."""
    if hasattr(err, "done"):  # extract.ExtractionInterrupted: the rows done are stored
        what = f" after {err.done}/{err.total} images; rerun the same command to resume"
    else:
        what = ": no new features were stored"
    print(f"ncti {args.command}: interrupted{what}", file=sys.stderr)
    return 130


def _extracted(zoo_features, where: str) -> str:
    """``extracted 2 models on 24 images in 1.3 s (...) into DIR``."""
    result = zoo_features.extraction
    return (
        f"extracted {plural(len(zoo_features.extracted), 'model')} on {len(result.labels)} "
        f"images in {result.seconds:.1f} s ({result.images_per_second:.1f} images/s for the "
        f"whole zoo, {result.device}){where}"
        + (f" (resumed at image {result.start})" if result.start else "")
    )


def _extract(args: argparse.Namespace) -> int:
    try:
        zoo_features = _extract_zoo(args, args.out)
    except KeyboardInterrupt as err:
        return _interrupted(args, err)
    if zoo_features.extraction is not None:
        _say(_extracted(zoo_features, f" into {args.out}"))
    return 0


def _rank(args: argparse.Namespace) -> int:
    from ncti_jax import metrics, score_metrics

    metrics.parse(args.metrics)  # an unknown metric fails before any extraction
    prepare_scoring(args)
    try:
        zoo_features = _extract_zoo(args, args.store)
    except KeyboardInterrupt as err:
        return _interrupted(args, err)
    if zoo_features.extraction is None:
        extraction = "no extraction (every model was stored)"
    else:
        _say(_extracted(zoo_features, f" into {args.store}" if args.store else ""))
        extraction = f"extraction {zoo_features.extraction.seconds:.1f} s"
    features, labels = zoo_features.arrays()
    if args.store:
        resume = (
            f"interrupted while scoring; the features are in --store {args.store}: "
            f"'ncti score {args.store}' scores them without extracting again"
        )
    else:
        resume = "interrupted while scoring; nothing was written (--store DIR keeps the features)"
    _say(f"scoring {plural(len(features), 'model')} on {len(labels)} samples ...")
    start = time.perf_counter()
    with ExitOnInterrupt(resume):
        logits = zoo_features.source_logits() if _needs_logits(args) else None
        result = score_metrics(features, labels, logits=logits, **scoring_kwargs(args))
    seconds = time.perf_counter() - start
    import numpy as np

    settings = {
        "dataset": args.dataset,
        "source": f"zoo {args.zoo}, weights {args.weights}",
        "n_samples": len(labels),
        "n_classes": len(set(np.asarray(labels).tolist())),
        "preprocess": args.preprocess,
    }
    write_scores(
        args,
        result,
        settings,
        f"{extraction}, scoring {seconds:.2f} s (compilation included)",
    )
    return 0


def _demo(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    try:
        from . import demo
    except ImportError as err:
        raise ValueError(
            f"'ncti demo' needs torch: pip install 'ncti-jax[torch]' ({err})."
        ) from None
    from ncti_jax import io as ncti_io

    def run(seed: int, out: Path) -> dict:
        config = demo.make_config(args.protocol, quick=args.quick, seed=seed)
        report = demo.run_demo(
            config,
            device=args.device,
            cache_dir=Path(args.cache_dir) if args.cache_dir else None,
            progress=not args.no_progress,
        )
        ncti_io.atomic_write_text(
            out / "demo.json", json.dumps(report, indent=1, allow_nan=False) + "\n"
        )
        print(demo.format_report(report))
        written = [out / "demo.json", *_demo_plots(report, out)]
        print("wrote " + ", ".join(str(p) for p in written), file=sys.stderr)
        return report

    out = Path(args.out)
    if args.seeds is None:
        run(args.seed, out)
        return 0
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds: comma-separated integers, got {args.seeds!r}.") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds: distinct comma-separated integers, got {args.seeds!r}.")
    reports = []
    for seed in seeds:
        print(f"== seed {seed}")
        reports.append(run(seed, out / f"seed-{seed}"))
        print()
    summary = demo.summarize_seeds(reports)
    ncti_io.atomic_write_text(
        out / "seeds.json", json.dumps(summary, indent=1, allow_nan=False) + "\n"
    )
    print(demo.format_seeds(summary))
    print(f"wrote {out / 'seeds.json'}", file=sys.stderr)
    return 0


def _demo_plots(report: dict, out) -> list:
    """NCTI's ranking and NCTI against the ground truth (none without matplotlib)."""
    import numpy as np

    from ncti_jax import plots

    records = report["models"]
    tau = report["weighted_tau"]
    try:
        return [
            plots.plot_ranking(
                records, out / "ranking.png", title="ncti demo: NCTI ranking of the digits zoo"
            ),
            plots.plot_vs_truth(
                [r["model"] for r in records],
                np.array([r["ncti"] for r in records]),
                np.array([100 * r["finetune_accuracy"] for r in records]),
                float("nan") if tau is None else tau,
                out / "ncti_vs_truth.png",
                title="ncti demo",
            ),
        ]
    except ImportError:
        print("(matplotlib not installed: no plots)", file=sys.stderr)
        return []
