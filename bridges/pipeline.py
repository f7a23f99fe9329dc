"""Images to ranking in one call: a zoo and an image dataset in, NCTI out.

For a notebook::

    from ncti_jax.bridges import rank_zoo

    result = rank_zoo("resnet18,mobilenet_v3_small", "photos/", store="features", log=print)
    result.best(), result.to_records()

:func:`rank_zoo` extracts the zoo's penultimate features (:func:`extract_zoo`: in
memory, or into a resumable feature store when ``store`` is given), then scores
them with :func:`ncti_jax.score_zoo`. ``ncti rank`` and ``ncti extract`` are these
functions behind a command line (:mod:`ncti_jax.bridges.cli`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch.utils.data import Dataset, Subset

from ncti_jax import defaults as engine

from . import datasets, defaults, dlpack, extract, models
from .features import ZooFeatures

if TYPE_CHECKING:
    from ncti_jax import NCTIResult


def extract_zoo(
    zoo: str | Sequence[models.ModelSpec],
    dataset: str | Dataset,
    *,
    store: str | os.PathLike | None = None,
    root: str | os.PathLike | None = None,
    download: bool = False,
    weights: str | None = defaults.WEIGHTS,
    seed: int = defaults.SEED,
    samples_per_class: int | None = None,
    preprocess: str = defaults.PREPROCESS[0],
    image_size: int = defaults.IMAGE_SIZE,
    batch_size: int = defaults.BATCH_SIZE,
    workers: int = defaults.WORKERS,
    device: str = defaults.DEVICE,
    bf16: bool = False,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    with_logits: bool = False,
) -> ZooFeatures:
    """Extracts the penultimate features of every model of ``zoo`` on ``dataset``.

    Args:
      zoo: ``"group1"`` (the paper's supervised zoo), ``"timm-small"``, a zoo ``.toml``
        file, comma-separated models (torchvision architectures, ``timm:NAME``,
        ``hf:ORG/NAME``, ``hf:./DIR``), or :class:`~.models.ModelSpec` s.
      dataset: a target dataset name (``cifar10``, ...; see
        :data:`~.datasets.DATASETS`), ``"imagefolder"`` (the folder is ``root``), the
        path of an ImageFolder directory, or a torch dataset of (image, label) pairs.
      store: a feature store directory to extract into: the models already stored
        with the same settings are not extracted again, and an interrupted extraction
        resumes where it stopped. None: features stay in memory.
      root: where torchvision finds the dataset (the folder, for ``imagefolder``).
      download: let torchvision download the dataset (needs network access).
      weights: the weights of a named zoo's models: ``"DEFAULT"`` (each library's
        pre-trained weights), a torchvision enum name such as ``"IMAGENET1K_V1"``, or
        None / ``"none"`` for random initialisation seeded by ``seed``.
      seed: seed of ``samples_per_class`` subsampling and of random initialisation.
      samples_per_class: keep at most this many samples of each class (seeded).
      preprocess: ``"paper"`` (resize to ``image_size``, ImageNet mean/std) or
        ``"native"`` (each weights' own transforms).
      image_size: input size of ``"paper"`` preprocessing.
      batch_size, workers: data loader batch size and worker processes.
      device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
      bf16: bfloat16 autocast on CUDA.
      progress: a progress bar over the images (tqdm).
      log: called with a line of text at each step (e.g. ``print``); None: silent.
      with_logits: also keep each model's source logits, its own classifier applied
        to the features in the same pass (:meth:`ZooFeatures.source_logits`); into a
        store, as ``logits/<model>.npy``, and models stored without them are
        extracted again.

    Raises:
      ValueError, OSError: a bad zoo, dataset, weights file or store, before
        anything is extracted.
      KeyboardInterrupt: Ctrl-C; into a store, :class:`~.extract.ExtractionInterrupted`
        once the rows done were saved for the rerun.
    """
    say = log or (lambda line: None)
    if isinstance(weights, str) and weights.lower() == "none":
        weights = None
    if isinstance(zoo, str):
        specs = models.resolve_zoo(zoo, weights=weights, seed=seed)
    else:
        specs = list(zoo)
        models.check_model_names([s.name for s in specs], "zoo")
        models.check_specs(specs)
    if isinstance(dataset, str):
        name, ds = dataset, datasets.load_dataset(dataset, root, download=download)
    else:
        name, ds = getattr(dataset, "name", None) or type(dataset).__name__, dataset
    if samples_per_class:
        ds = datasets.subsample_per_class(ds, samples_per_class, seed=seed)
    say(_describe(ds, name))
    names = [s.name for s in specs]
    options = {
        "batch_size": batch_size,
        "device": device,
        "num_workers": workers,
        "bf16": bf16,
        "progress": progress,
    }
    if store is not None:
        extracted, result = extract.extract_to_store(
            specs,
            ds,
            store,
            dataset_name=name,
            preprocess=preprocess,
            image_size=image_size,
            log=say,
            with_logits=with_logits,
            **options,
        )
        stored = [n for n in names if n not in extracted]
        return ZooFeatures(names, extracted, stored, result, Path(store))
    extract.check_weights(specs)
    heads = None
    if with_logits:
        pairs = {s.name: extract.load_model_with_head(s) for s in specs}
        loaded = {n: model for n, (model, _) in pairs.items()}
        heads = {n: head for n, (_, head) in pairs.items()}
    else:
        loaded = {s.name: extract.load_model(s) for s in specs}
    transforms = {s.name: extract.transform_for(s, preprocess, image_size) for s in specs}
    result = extract.extract_features(loaded, ds, transforms, heads=heads, **options)
    features = {n: dlpack.to_jax(t) for n, t in result.features.items()}
    logits = {n: dlpack.to_jax(t) for n, t in result.logits.items()} if with_logits else None
    return ZooFeatures(names, names, [], result, None, features, result.labels, logits)


def rank_zoo(
    zoo: str | Sequence[models.ModelSpec],
    dataset: str | Dataset,
    *,
    store: str | os.PathLike | None = None,
    n_components: int = engine.N_COMPONENTS,
    dtype: str = engine.DTYPES[0],
    precision: str = engine.PRECISIONS[0],
    strategy: str = engine.STRATEGIES[0],
    chunk_rows: int = engine.CHUNK_ROWS,
    memory_limit: int | None = None,
    checkpoint: str | os.PathLike | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    **extraction: Any,
) -> NCTIResult:
    """Ranks ``zoo`` on ``dataset`` by NCTI: images in, :class:`ncti_jax.NCTIResult` out.

    Extracts the features (:func:`extract_zoo`, which takes ``zoo``, ``dataset``,
    ``store``, ``progress``, ``log`` and the ``extraction`` keywords: ``root``,
    ``weights``, ``samples_per_class``, ``preprocess``, ``device``, ...), then scores
    them with :func:`ncti_jax.score_zoo` and the scoring arguments here (its own,
    with the same defaults). With ``store``, a rerun extracts nothing already stored
    and resumes an interrupted extraction; with ``checkpoint`` too, an interrupted
    scoring resumes as well.
    """
    from ncti_jax import score_zoo

    zoo_features = extract_zoo(zoo, dataset, store=store, progress=progress, log=log, **extraction)
    features, labels = zoo_features.arrays()
    return score_zoo(
        features,
        labels,
        n_components=n_components,
        dtype=dtype,
        precision=precision,
        strategy=strategy,
        chunk_rows=chunk_rows,
        memory_limit=memory_limit,
        checkpoint=checkpoint,
        progress=progress,
    )


def _describe(ds: Dataset, name: str) -> str:
    """``24 images of 3 classes from photos/`` (the classes where the dataset names them)."""
    base = ds
    while isinstance(base, Subset):
        base = base.dataset
    classes = getattr(base, "classes", None)
    of = f" of {len(classes)} classes" if classes is not None else ""
    return f"{len(ds)} images{of} from {name}"
