"""Images to ranking, timed: the torch and the JAX-native extraction on the same images.

  python -m ncti_jax.benchmarks.extraction [--images 512] [--size 224]
      [--zoo resnet18,resnet50] [--jax-zoo ZOO] [--backends torch,jax]
      [--batch-size 64] [--workers 2] [--metrics ncti] [--cache DIR] [--out DIR]

A folder of ``--images`` generated JPEGs (10 classes, smooth random scenes of
varied sizes, written once into ``--cache``) goes through ``ncti rank``'s two
halves for each backend, with random weights (nothing is downloaded):

- **torch** (:func:`ncti_jax.bridges.pipeline.extract_zoo`): the zoo in torch on
  CUDA when there is one; images/s is over the extraction's own time (models
  loaded, data loader started).
- **jax** (:func:`ncti_jax.bridges.jax_pipeline.extract_zoo`): the flax ports,
  data parallel over every local JAX device; run twice, the first compiling (its
  images/s is reported apart), the second the steady state.

Each backend's features are then scored (:func:`ncti_jax.score_metrics`, first call,
compilation included), and the share of extraction and scoring in the total is
printed. ``--zoo timm-small --backends torch`` times a timm zoo. Results go to
``DIR/extraction-<device>-<images>.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from . import machine

CLASSES = 10


def make_images(root: Path, n: int, seed: int = 0) -> Path:
    """``n`` JPEGs in ``root/<class>/`` (made once; a complete folder is reused)."""
    from PIL import Image

    done = root / f".complete-{n}"
    if done.is_file():
        return root
    rng = np.random.default_rng(seed)
    for i in range(n):
        c = i % CLASSES
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
        h, w = rng.integers(200, 320, 2)
        yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
        phase = rng.uniform(0, 2 * np.pi, 3)
        freq = 2 + c + rng.uniform(0, 2, 3)
        pixels = [np.sin(freq[k] * (xx + yy * (k + 1)) * np.pi + phase[k]) for k in range(3)]
        rgb = (np.stack(pixels, -1) * 100 + 128 + rng.normal(0, 12, (h, w, 3))).clip(0, 255)
        Image.fromarray(rgb.astype(np.uint8)).save(root / f"c{c}" / f"{i:06d}.jpg", quality=90)
    done.write_text("")
    return root


def _score(zoo_features, metrics: str) -> float:
    from ncti_jax import score_metrics

    start = time.perf_counter()
    score_metrics(*zoo_features.arrays(), metrics=metrics, progress=False)
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> dict:
    import jax

    folder = make_images(Path(args.cache) / f"images-{args.images}", args.images)
    common = {
        "weights": None,
        "image_size": args.size,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "progress": False,
    }
    report = {
        "images": args.images,
        "image_size": args.size,
        "batch_size": args.batch_size,
        "machine": machine.describe(quick=True),
        "jax_devices": [str(d) for d in jax.local_devices()],
        "backends": {},
    }
    for backend in args.backends.split(","):
        if backend == "torch":
            from ncti_jax.bridges import pipeline

            zoo = args.zoo
            start = time.perf_counter()
            features = pipeline.extract_zoo(zoo, str(folder), device=args.device, **common)
            total = time.perf_counter() - start
            seconds = features.extraction.seconds
            entry = {
                "zoo": zoo,
                "device": features.extraction.device,
                "extraction_s": seconds,
                "with_loading_s": total,
                "images_per_s": args.images / seconds,
            }
        elif backend == "jax":
            from ncti_jax.bridges import jax_pipeline

            zoo = args.jax_zoo or args.zoo
            start = time.perf_counter()
            jax_pipeline.extract_zoo(zoo, str(folder), **common)
            first = time.perf_counter() - start
            start = time.perf_counter()
            features = jax_pipeline.extract_zoo(zoo, str(folder), **common)
            total = time.perf_counter() - start
            seconds = features.extraction.seconds
            entry = {
                "zoo": zoo,
                "device": features.extraction.device,
                "first_call_s": first,
                "extraction_s": seconds,
                "with_loading_s": total,
                "images_per_s": args.images / seconds,
                "images_per_s_first_call": args.images / first,
            }
        else:
            raise SystemExit(f"--backends: torch and/or jax, not {backend!r}")
        entry["scoring_s"] = _score(features, args.metrics)
        entry["extraction_share"] = seconds / (seconds + entry["scoring_s"])
        report["backends"][backend] = entry
        print(
            f"{backend:5s} {entry['device']:>14s}  {entry['images_per_s']:8.1f} images/s "
            f"(extraction {seconds:.1f} s; scoring {entry['scoring_s']:.1f} s, "
            f"{100 * entry['extraction_share']:.0f}% extraction)",
            flush=True,
        )
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ncti_jax.benchmarks.extraction", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", type=int, default=224, help="the paper preprocessing's size")
    parser.add_argument("--zoo", default="resnet18,resnet50")
    parser.add_argument("--jax-zoo", help="the JAX path's zoo (default: --zoo)")
    parser.add_argument("--backends", default="torch,jax")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="auto", help="the torch path's device")
    parser.add_argument("--metrics", default="ncti")
    parser.add_argument("--cache", default="ncti-bench/images")
    parser.add_argument("--out", default="ncti-bench")
    args = parser.parse_args(argv)
    report = run(args)
    out = Path(args.out) / f"extraction-{report['machine']['tag']}-{args.images}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
