"""Images to ranking in JAX alone: the flax ports of a zoo, data parallel, no torch.

``ncti rank --backend jax`` and :func:`extract_zoo` here are the torch pipeline's
(:mod:`ncti_jax.bridges.pipeline`) counterparts for a TPU VM or any machine
without torch: the zoo's models are the flax ports of
:mod:`ncti_jax.bridges.flax_models` (the ResNets, ViT-B/16, ViT-S/16 from
torchvision, timm or Hugging Face), their weights converted once
(:mod:`ncti_jax.bridges.convert`) and cached with orbax, the images an image
folder decoded with Pillow (:mod:`ncti_jax.bridges.images`), the extraction
jit-compiled and sharded over every device (:mod:`ncti_jax.bridges.jax_extract`),
and the features left on the devices for scoring.

Weights, per zoo entry:

- none (``--weights none``): the flax model's own random initialisation, seeded
  with the zoo's seed and the model's name;
- ``checkpoint = "file"``: a ``.safetensors`` file (read without torch) or a torch
  checkpoint (read with torch, ``weights_only=True``);
- pre-trained, timm and Hugging Face: the ``model.safetensors`` of the model's hub
  repository, from the Hugging Face cache (downloaded when online), or a
  ``save_pretrained`` directory's;
- pre-trained, torchvision: the torch hub cache's file, which only torch can read:
  this needs torch once (the converted parameters are then cached).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import defaults
from .features import ZooFeatures
from .images import image_folder
from .zoo import ModelSpec, check_model_names, init_seed, resolve_zoo

_SAFETENSORS = "model.safetensors"


class WeightsUnavailable(OSError):
    """Weights the JAX path cannot have: every model at fault, in one message."""


def default_cache_dir() -> Path:
    """Where converted parameters are kept: ``$XDG_CACHE_HOME/ncti-jax/flax``."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ncti-jax" / "flax"


def flax_arch(spec: ModelSpec) -> str:
    """The arch string :mod:`~ncti_jax.bridges.flax_models` takes for ``spec``."""
    if spec.source == "torchvision":
        return spec.model_id
    return f"{spec.source}:{spec.model_id}"


def extract_zoo(
    zoo: str | Sequence[ModelSpec],
    dataset: str,
    *,
    root: str | os.PathLike | None = None,
    weights: str | None = defaults.WEIGHTS,
    seed: int = defaults.SEED,
    samples_per_class: int | None = None,
    preprocess: str = defaults.PREPROCESS[0],
    image_size: int = defaults.IMAGE_SIZE,
    batch_size: int = defaults.BATCH_SIZE,
    workers: int = defaults.WORKERS,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    with_logits: bool = False,
    cache_dir: str | os.PathLike | None = None,
    mesh: Any = None,
) -> ZooFeatures:
    """Extracts the zoo's penultimate features with its flax ports, on every device.

    Takes the arguments of :func:`ncti_jax.bridges.pipeline.extract_zoo` that apply
    (an image folder as ``dataset``, or ``"imagefolder"`` with ``root``; the paper's
    preprocessing), plus ``cache_dir`` (converted parameters; default
    :func:`default_cache_dir`) and ``mesh`` (default: a 1-D mesh of every device).
    The features come back as sharded JAX arrays on the devices.

    Raises:
      ValueError: a model without a flax port (all of them named), a dataset that is
        not an image folder, an option the JAX path does not have.
      WeightsUnavailable: weights that cannot be had (all of them named), before any
        image is decoded.
    """
    from . import jax_extract

    say = log or (lambda line: None)
    if preprocess != "paper":
        raise ValueError(
            f"--preprocess {preprocess}: the JAX path has the paper's preprocessing only "
            "(resize, ImageNet mean and std); use --backend torch for each weights' own."
        )
    if isinstance(weights, str) and weights.lower() == "none":
        weights = None
    if isinstance(zoo, str):
        specs = resolve_zoo(zoo, weights=weights, seed=seed)
    else:
        specs = list(zoo)
        check_model_names([s.name for s in specs], "zoo")
    sources = check_models(specs)
    folder = image_folder(_folder_path(dataset, root))
    if samples_per_class:
        folder = folder.subsample(samples_per_class, seed=seed)
    say(f"{len(folder)} images of {len(folder.classes)} classes from {dataset}")
    loaded = load_models(specs, sources, cache_dir=cache_dir, log=say)
    headless = [name for name, model in loaded.items() if getattr(model, "head", None) is None]
    if with_logits and headless:
        raise ValueError(
            f"model(s) {', '.join(map(repr, headless))}: no source classifier (a backbone), "
            "and the metrics asked for read the source logits; leave them out of the zoo."
        )
    sizes = {name: input_size(model, image_size) for name, model in loaded.items()}
    for name, size in sizes.items():
        if size != image_size:
            say(f"model {name!r} takes {size} x {size} images (a fixed input size)")
    done = _progress(len(folder), progress)
    extraction = jax_extract.extract_features(
        loaded,
        folder,
        sizes,
        batch_size=batch_size,
        workers=workers,
        mesh=mesh,
        with_logits=list(loaded) if with_logits else (),
        progress=done,
    )
    done(None)
    names = [s.name for s in specs]
    logits = extraction.logits if with_logits else None
    return ZooFeatures(
        names, names, [], extraction, None, extraction.features, extraction.labels, logits
    )


def input_size(model: Any, image_size: int) -> int:
    """The side of the images ``model`` takes: ``image_size``, unless the model has a
    fixed input size (a ViT's position embedding), which wins."""
    config = getattr(model, "config", None)
    return int(getattr(config, "image_size", image_size))


def check_models(specs: Sequence[ModelSpec]) -> dict[str, Path | None]:
    """Every model's flax port and weights file, checked before any is loaded.

    Returns:
      ``{name: weights file}``, None for a random initialisation.

    Raises:
      ValueError: the models without a flax port, all named.
      WeightsUnavailable: the weights (or a hub model's config.json) that cannot be had,
        all named, with where each was looked for.
    """
    from . import flax_models

    problems, offline, missing = [], None, set()
    for spec in specs:  # a hub model's config.json says which flax port it needs
        if spec.source == "hf" and flax_models.hf_config(flax_arch(spec)) is None:
            try:
                _, offline = _hub_file(spec, spec.model_id, offline, "config.json")
            except WeightsUnavailable as err:
                problems.append(str(err))
                missing.add(spec.name)
    unported = [
        s for s in specs if s.name not in missing and not flax_models.supports(flax_arch(s))
    ]
    if unported:
        raise ValueError(
            f"{len(unported)} model(s) without a flax port for --backend jax: "
            + ", ".join(f"{s.name!r} ({s.arch})" for s in unported)
            + f". The JAX path runs {', '.join(flax_models.JAX_ARCHS)}; use --backend "
            "torch for the others."
        )
    sources = {}
    for spec in specs:
        if spec.name in missing:
            continue
        try:
            sources[spec.name], offline = _weights_file(spec, offline)
        except WeightsUnavailable as err:
            problems.append(str(err))
    if problems:
        raise WeightsUnavailable(
            f"{len(problems)} model(s) without weights for --backend jax"
            + (f" (download failed: {offline})" if offline else "")
            + ": "
            + "; ".join(problems)
            + "."
        )
    return sources


def load_models(
    specs: Sequence[ModelSpec],
    sources: dict[str, Path | None] | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """``{name: flax model}`` of ``specs``, with their weights (``sources``, from
    :func:`check_models`, which runs here when they are not given).

    A weights file is converted once: the converted parameters are cached under
    ``cache_dir`` (default :func:`default_cache_dir`), keyed by the file's SHA-256.
    """
    from . import convert, flax_models

    say = log or (lambda line: None)
    sources = check_models(specs) if sources is None else sources
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    models = {}
    for spec in specs:
        arch, path = flax_arch(spec), sources[spec.name]
        if path is None:
            models[spec.name] = flax_models.build(arch, seed=init_seed(spec))
            continue
        digest = convert.file_digest(path)
        where = cache / f"{re.sub(r'[^A-Za-z0-9._-]', '_', arch)}-{digest[:16]}"
        model = convert.load_converted(arch, where, source_digest=digest)
        if model is None:
            say(f"converting {spec.name!r} from {path} (cached in {where})")
            if path.suffix == ".safetensors":
                state = convert.read_safetensors(path)
            else:
                state = convert.read_torch_checkpoint(path, arch)
            model = convert.convert(arch, state, source=path)
            convert.save_converted(model, where, source_digest=digest)
        models[spec.name] = model
    return models


def _weights_file(spec: ModelSpec, offline: str | None) -> tuple[Path | None, str | None]:
    """The weights file of ``spec`` (None: random initialisation) and, after a failed
    download, why (no other download is tried then).

    Raises:
      WeightsUnavailable: this model's weights cannot be had (naming where they were
        looked for).
    """
    if spec.checkpoint is not None:
        path = Path(spec.checkpoint)
        if not path.is_file():
            raise WeightsUnavailable(f"model {spec.name!r}: checkpoint {path} does not exist")
        return path, offline
    if spec.weights is None:
        return None, offline
    if spec.source == "torchvision":
        return _torchvision_file(spec), offline
    if spec.source == "hf" and Path(spec.model_id).is_dir():
        path = Path(spec.model_id) / _SAFETENSORS
        if not path.is_file():
            raise WeightsUnavailable(f"model {spec.name!r}: {path} is missing")
        return path, offline
    repo = spec.model_id if spec.source == "hf" else _timm_repo(spec)
    return _hub_file(spec, repo, offline, _SAFETENSORS)


def _torchvision_file(spec: ModelSpec) -> Path:
    try:
        from . import models
    except ImportError:
        raise WeightsUnavailable(
            f"model {spec.name!r}: torchvision's pre-trained weights are torch files; convert "
            "them once where torch is installed (pip install 'ncti-jax[torch]'), or pass a "
            ".safetensors checkpoint"
        ) from None
    path = models.expected_weights_file(models._weights_enum(spec.model_id, spec.weights))
    if not path.is_file():
        raise WeightsUnavailable(
            f"model {spec.name!r}: {path} is missing (fetch it with 'ncti extract' or "
            "torchvision on a machine with network access)"
        )
    return path


def _timm_repo(spec: ModelSpec) -> str:
    """The hub repository of a timm model's pre-trained weights: ``timm/<name>.<tag>``;
    an untagged name takes timm's default tag (timm must be installed to know it)."""
    if "." in spec.model_id:
        return f"timm/{spec.model_id}"
    try:
        from timm.models import get_pretrained_cfg
    except ImportError:
        raise WeightsUnavailable(
            f"model {spec.name!r}: name its pre-trained tag (e.g. "
            f"timm:{spec.model_id}.augreg_in21k_ft_in1k), or install timm to find its default"
        ) from None
    cfg = get_pretrained_cfg(spec.model_id)
    if cfg is None or not cfg.hf_hub_id:
        raise WeightsUnavailable(f"model {spec.name!r}: timm has no hub weights for it")
    return cfg.hf_hub_id.split("@")[0]


def _hub_file(
    spec: ModelSpec, repo: str, offline: str | None, filename: str
) -> tuple[Path, str | None]:
    """``filename`` of the hub repository ``repo`` from the Hugging Face cache, downloaded
    when it is not there and a download can be tried."""
    from . import hf_cache

    path = hf_cache.cached(repo, [filename])
    if path is None and offline is None and not hf_cache.offline():
        offline = hf_cache.download(repo, [filename])
        path = hf_cache.cached(repo, [filename])
    if path is None:
        raise WeightsUnavailable(
            f"model {spec.name!r}: {filename} of {repo} is not in the Hugging Face cache "
            f"(expected under {hf_cache.repo_dir(repo)}/snapshots/<revision>/)"
        )
    return path, offline


def _folder_path(dataset: str, root: str | os.PathLike | None) -> Path:
    if dataset == "imagefolder":
        if root is None:
            raise ValueError("--dataset imagefolder needs --data-root (the folder).")
        return Path(root)
    if Path(dataset).is_dir():
        return Path(dataset)
    raise ValueError(
        f"--dataset {dataset!r}: --backend jax reads image folders (<class>/<image> files: "
        "a path, or 'imagefolder' with --data-root); the named datasets are read by "
        "torchvision (--backend torch)."
    )


def _progress(total: int, enabled: bool) -> Callable[[int | None], None]:
    """A progress callback: images done, or None at the end (a tqdm bar if installed)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        enabled = False
    if not enabled:
        return lambda done: None
    bar = tqdm(total=total, unit="img", unit_scale=True, desc="extracting (jax)")

    def update(done: int | None) -> None:
        if done is None:
            bar.close()
        else:
            bar.update(done - bar.n)

    return update
