"""torchvision models cut at the penultimate layer, their weights and preprocessing.

A model is named by its torchvision architecture (``torchvision.models.get_model``)
and loaded in eval mode with its final classifier replaced by ``Identity``, so
its output is the classifier's input: the pooled penultimate features. With
:func:`load_model_with_head` the classifier removed comes back too, so that the
source logits are ``head(features)`` in the same forward pass.

Weights come from the torchvision weights API (``"DEFAULT"`` or an enum name such
as ``"IMAGENET1K_V1"``; downloaded into the torch hub cache when online), from a
local checkpoint (loaded with ``weights_only=True``), or are left random
(``None``; seeded with the zoo's seed and the model's name, so that a run is
reproducible). Model names become file names in feature stores: letters, digits,
``.``, ``_`` and ``-`` only (see :func:`check_model_names`). Zoos are declared in
TOML::

    [[model]]
    name = "moco-v2"
    arch = "resnet50"
    checkpoint = "checkpoints/moco_v2_800ep.pth.tar"

    [[model]]
    name = "resnet50"
    arch = "resnet50"
    weights = "IMAGENET1K_V1"
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tomllib
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision import transforms

# The paper's supervised zoo (group1) and the width of each model's features.
GROUP1 = (
    "inception_v3",
    "mobilenet_v2",
    "mnasnet1_0",
    "densenet121",
    "densenet169",
    "densenet201",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "googlenet",
)
# The paper's self-supervised ResNet-50 zoo (group2): run from local checkpoints via a zoo file.
GROUP2 = (
    "byol",
    "deepcluster-v2",
    "infomin",
    "insdis",
    "moco-v1",
    "moco-v2",
    "pcl-v1",
    "pcl-v2",
    "sela-v2",
    "simclr-v1",
    "simclr-v2",
    "swav",
)
PRESETS = {"group1": GROUP1}

# Where each family keeps its final classifier: (attribute path, index in a Sequential or None).
_CLASSIFIERS: dict[str, tuple[str, int | None]] = {
    "resnet": ("fc", None),
    "resnext": ("fc", None),
    "wide_resnet": ("fc", None),
    "regnet": ("fc", None),
    "googlenet": ("fc", None),
    "inception": ("fc", None),
    "shufflenet": ("fc", None),
    "densenet": ("classifier", None),
    "mobilenet": ("classifier", -1),
    "mnasnet": ("classifier", -1),
    "efficientnet": ("classifier", -1),
    "convnext": ("classifier", -1),
    "vgg": ("classifier", -1),
    "alexnet": ("classifier", -1),
    "vit": ("heads", -1),
    "swin": ("head", None),
    "maxvit": ("classifier", -1),
}

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Checkpoint key prefixes stripped when loading: DataParallel, MoCo's query encoder, generic backbones.
_PREFIXES = ("module.", "encoder_q.", "backbone.", "encoder.", "model.")
# Model names are file names in a feature store: a safe character set, and not the store's own files.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
RESERVED_NAMES = ("labels", "meta")


class WeightsError(OSError):
    """Weights that cannot be had: names the file expected and where to put it."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One model of a zoo: a display name, a torchvision architecture and its weights.

    ``weights`` is ``"DEFAULT"``, a weights enum name, or None (random); ``checkpoint``
    a local file that overrides ``weights``; ``seed`` seeds random initialisation
    (with a stable offset per model name, see :func:`init_seed`).
    """

    name: str
    arch: str
    weights: str | None = "DEFAULT"
    checkpoint: str | None = None
    seed: int = 0


def init_seed(spec: ModelSpec) -> int:
    """The torch seed of ``spec``'s random initialisation: its seed plus a stable
    offset from its name (CRC-32, not Python's salted ``hash``)."""
    return (spec.seed + zlib.crc32(spec.name.encode())) % 2**64


def check_model_names(names: Sequence[Any], where: str) -> None:
    """Refuses model names that are unsafe as file names, reserved, or not unique.

    A name is letters, digits, ``.``, ``_`` and ``-`` (starting with a letter or a
    digit, at most 100 characters, no ``..``), not ``labels`` or ``meta``, and unique
    ignoring case (file systems may fold it). ``where`` names the zoo in the error.
    """
    seen: dict[str, str] = {}
    for name in names:
        if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name) or ".." in name:
            raise ValueError(
                f"{where}: model name {name!r} is not a safe file name (letters, digits, "
                "'.', '_', '-'; starting with a letter or digit; at most 100 characters; "
                "no '..')."
            )
        key = name.lower()
        if key in RESERVED_NAMES:
            raise ValueError(
                f"{where}: model name {name!r} is reserved (the feature store's own "
                f"{key} file); rename the model."
            )
        if key in seen:
            raise ValueError(
                f"{where}: model names {seen[key]!r} and {name!r} clash (names must be "
                "unique, ignoring case)."
            )
        seen[key] = name


def classifier_path(arch: str) -> tuple[str, int | None]:
    for prefix in sorted(_CLASSIFIERS, key=len, reverse=True):
        if arch.startswith(prefix):
            return _CLASSIFIERS[prefix]
    raise ValueError(
        f"architecture {arch!r}: no known classifier layer to cut; supported "
        f"families: {sorted(_CLASSIFIERS)}."
    )


def classifier_name(model: nn.Module, arch: str) -> str:
    """The dotted name of ``arch``'s final classifier layer in ``model`` (cut or not):
    ``fc``, ``classifier``, ``classifier.3``, ``heads.head``, ..."""
    attr, index = classifier_path(arch)
    if index is None:
        return attr
    holder = getattr(model, attr)
    if not isinstance(holder, nn.Sequential):
        raise ValueError(
            f"architecture {arch!r}: expected a Sequential at .{attr}; found "
            f"{type(holder).__name__}."
        )
    return f"{attr}.{list(holder._modules)[index]}"


def split_classifier(model: nn.Module, arch: str) -> tuple[nn.Module, nn.Module]:
    """Replaces the final classifier layer with Identity, in place.

    Returns:
      ``(model, head)``: the cut model, whose output is the head's input (the
      penultimate features), and the layer removed, so that ``head(model(x))`` is
      the full model's output (the source logits).
    """
    attr, index = classifier_path(arch)
    holder = getattr(model, attr)
    if index is None:
        head = holder
        setattr(model, attr, nn.Identity())
    else:
        if not isinstance(holder, nn.Sequential) or not isinstance(holder[index], nn.Linear):
            raise ValueError(
                f"architecture {arch!r}: expected a Sequential ending in Linear "
                f"at .{attr}; found {type(holder).__name__}."
            )
        head = holder[index]
        holder[index] = nn.Identity()
    return model, head


def cut_classifier(model: nn.Module, arch: str) -> nn.Module:
    """Replaces the final classifier layer with Identity, in place; returns the model."""
    return split_classifier(model, arch)[0]


def _check_arch(arch: str) -> None:
    available = torchvision.models.list_models(module=torchvision.models)
    if arch not in available:
        close = difflib.get_close_matches(arch, available, n=5, cutoff=0.6)
        raise ValueError(
            f"unknown torchvision model {arch!r}"
            + (f"; did you mean one of {close}?" if close else ".")
        )


def _weights_enum(arch: str, weights: str):
    enum = torchvision.models.get_model_weights(arch)
    if weights == "DEFAULT":
        return enum.DEFAULT
    try:
        return enum[weights.split(".")[-1]]  # "IMAGENET1K_V2" or "ResNet50_Weights.IMAGENET1K_V2"
    except KeyError:
        raise ValueError(
            f"model {arch!r}: unknown weights {weights!r}; available: "
            f"{['DEFAULT', *enum.__members__]}."
        ) from None


def expected_weights_file(weights_enum) -> Path:
    """The torch hub cache file torchvision reads these weights from."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights_enum.url)


def _looks_loadable(path: Path) -> bool:
    """A cheap check of a cached weights file: a complete zip (torch.save's format)
    or a legacy pickle; catches empty, truncated and HTML-error-page files."""
    with open(path, "rb") as f:
        head = f.read(2)
    return zipfile.is_zipfile(path) if head == b"PK" else head[:1] == b"\x80"


def check_weights(specs: Sequence[ModelSpec], *, download: bool = True) -> None:
    """Makes sure every pre-trained weights file of ``specs`` is cached, before any work.

    Missing files are downloaded into the torch hub cache (``download``); after the
    first failed download (offline) no other is tried.

    Raises:
      WeightsError: one message listing every file missing (with its URL) or corrupt.
    """
    problems, offline = [], None
    for spec in specs:
        if spec.checkpoint is not None or spec.weights is None:
            continue
        enum = _weights_enum(spec.arch, spec.weights)
        path = expected_weights_file(enum)
        if not path.is_file() and download and offline is None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.hub.download_url_to_file(enum.url, str(path), progress=False)
            except Exception as err:  # urllib/HTTP/OS errors offline
                offline = f"{type(err).__name__}: {err}"
        if not path.is_file():
            problems.append(f"model {spec.name!r}: {path} is missing (from {enum.url})")
        elif not _looks_loadable(path):
            problems.append(f"model {spec.name!r}: {path} is corrupt (delete it; from {enum.url})")
    if problems:
        raise WeightsError(
            f"{len(problems)} pre-trained weights file(s) cannot be had"
            + (f" (download failed: {offline})" if offline else "")
            + ": "
            + "; ".join(problems)
            + ". Download them on a machine with network access into "
            f"{Path(torch.hub.get_dir()) / 'checkpoints'} (or point TORCH_HOME at a cache "
            "that has them)."
        )


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "network", "online_backbone"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(
            f"{path}: not a checkpoint (expected a state dict of tensors, possibly "
            "under 'state_dict')."
        )
    return dict(obj)


def strip_prefixes(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Removes known wrapper prefixes (``module.``, ``encoder_q.``, ...) from keys."""
    out = {}
    for key, value in state.items():
        k = key
        changed = True
        while changed and k not in expected:
            changed = False
            for prefix in _PREFIXES:
                if k.startswith(prefix):
                    k, changed = k[len(prefix) :], True
        out[k] = value
    return out


def load_checkpoint(
    model: nn.Module, arch: str, path: str | os.PathLike, head: nn.Module | None = None
) -> None:
    """Loads a local checkpoint into a cut model, safely (``weights_only=True``).

    Keys of the original classifier (or of a self-supervised projection head in
    its place) are ignored; any other missing or unexpected key is an error that
    lists them. With ``head`` (the classifier removed by :func:`split_classifier`),
    the checkpoint's classifier weights are loaded into it; a checkpoint without
    them (a self-supervised model has no source classifier) is an error.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist.")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"{path}: not a loadable checkpoint ({type(err).__name__}: {err})."
        ) from None
    expected = set(model.state_dict())
    head_name = classifier_name(model, arch)
    head_state = (
        {} if head is None else {f"{head_name}.{k}": v for k, v in head.state_dict().items()}
    )
    state = strip_prefixes(_unwrap_state_dict(raw, path), expected | set(head_state))
    if head is not None:
        _load_head(head, head_name, head_state, state, arch, path)
    heads = (classifier_path(arch)[0] + ".", "AuxLogits.", "aux1.", "aux2.")
    state = {k: v for k, v in state.items() if not k.startswith(heads)}
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(
            f"{path}: does not match {arch!r}: missing keys {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''}, unexpected keys {unexpected[:10]}"
            f"{' ...' if len(unexpected) > 10 else ''}."
        )
    shapes = model.state_dict()
    wrong = [
        f"{k} {tuple(v.shape)} (expected {tuple(shapes[k].shape)})"
        for k, v in state.items()
        if tuple(v.shape) != tuple(shapes[k].shape)
    ]
    if wrong:
        raise ValueError(
            f"{path}: tensors of the wrong shape for {arch!r}: {', '.join(wrong[:5])}"
            f"{' ...' if len(wrong) > 5 else ''}."
        )
    model.load_state_dict(state)


def _load_head(
    head: nn.Module,
    head_name: str,
    expected: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
    arch: str,
    path: Path,
) -> None:
    """Loads the classifier ``head`` (keys ``head_name.*``) from a checkpoint's ``state``."""
    wrong = [
        k for k, v in expected.items() if k not in state or tuple(state[k].shape) != tuple(v.shape)
    ]
    if wrong:
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in expected.items())
        raise ValueError(
            f"{path}: no source classifier for {arch!r} (expected {shapes}); the source "
            "logits need the model's own classifier: extract this model without --with-logits."
        )
    head.load_state_dict({k[len(head_name) + 1 :]: state[k] for k in expected})


def load_model(spec: ModelSpec) -> nn.Module:
    """The eval-mode model of ``spec``, cut at its penultimate layer.

    Random initialisation (no weights, or before a checkpoint is loaded) is seeded
    with :func:`init_seed`, without disturbing torch's global random state.

    Raises:
      WeightsError: pre-trained weights that are neither cached nor downloadable,
        naming the file expected in the torch hub cache (or the cached file as corrupt).
    """
    return _load(spec, head=False)[0]


def load_model_with_head(spec: ModelSpec) -> tuple[nn.Module, nn.Module]:
    """:func:`load_model` and its classifier: ``(cut model, head)``, both in eval mode.

    ``head(model(x))`` is the source model's output (its logits over the source
    classes). A checkpoint's classifier is loaded from the checkpoint, and a
    checkpoint without one (self-supervised) is refused.

    Raises:
      WeightsError: as :func:`load_model`.
      ValueError: a checkpoint without the classifier's weights.
    """
    return _load(spec, head=True)


def _load(spec: ModelSpec, *, head: bool) -> tuple[nn.Module, nn.Module | None]:
    _check_arch(spec.arch)
    if spec.checkpoint is not None or spec.weights is None:
        kwargs = {}
        if spec.arch in ("inception_v3", "googlenet"):
            kwargs = {"aux_logits": False, "init_weights": True}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed(spec))
            model = torchvision.models.get_model(spec.arch, weights=None, **kwargs)
    else:
        enum = _weights_enum(spec.arch, spec.weights)
        try:
            model = torchvision.models.get_model(spec.arch, weights=enum, progress=False)
        except Exception as err:  # urllib/HTTP/OS errors offline, corrupt cache files
            cached = expected_weights_file(enum)
            if cached.is_file():
                raise WeightsError(
                    f"model {spec.name!r}: the cached weights file {cached} is corrupt "
                    f"({type(err).__name__}: {err}); delete it and download {enum.url} again."
                ) from None
            raise WeightsError(
                f"model {spec.name!r}: cannot load weights {enum} ({type(err).__name__}: {err}). "
                f"Expected the file {expected_weights_file(enum)}: download {enum.url} on a "
                "machine with network access and place it there (or point TORCH_HOME at a "
                "cache that has it)."
            ) from None
    model, classifier = split_classifier(model, spec.arch)
    if spec.checkpoint is not None:
        load_checkpoint(model, spec.arch, spec.checkpoint, classifier if head else None)
    return model.eval(), classifier.eval() if head else None


def paper_transform(size: int = 224) -> transforms.Compose:
    """The paper's protocol: resize to ``size`` x ``size``, ImageNet mean and std."""
    return transforms.Compose(
        [
            transforms.Resize((size, size)),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def native_transform(spec: ModelSpec):
    """The weights' own inference transforms (e.g. 342 -> 299 for inception_v3)."""
    if spec.weights is None or spec.checkpoint is not None:
        return paper_transform(299 if spec.arch == "inception_v3" else 224)
    return _weights_enum(spec.arch, spec.weights).transforms()


def resolve_zoo(zoo: str, *, weights: str | None = "DEFAULT", seed: int = 0) -> list[ModelSpec]:
    """Model specs from a preset name (``group1``), a TOML zoo file, or ``a,b,c``.

    ``seed`` seeds the random initialisation of models without weights. Names are
    checked (:func:`check_model_names`) before anything runs.
    """
    if zoo in PRESETS:
        return [ModelSpec(name, name, weights, seed=seed) for name in PRESETS[zoo]]
    if zoo == "group2":
        raise ValueError(
            "group2 (self-supervised ResNet-50s) is run from local checkpoints: "
            "declare it in a zoo file (see README) and pass --zoo zoo.toml."
        )
    path = Path(zoo)
    if path.suffix == ".toml":
        if not path.is_file():
            raise FileNotFoundError(f"zoo file {path} does not exist.")
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"{path}: not valid TOML ({err}).") from None
        entries = doc.get("model")
        if not isinstance(entries, list) or not entries:
            raise ValueError(f"{path}: expected one or more [[model]] tables.")
        specs = []
        for i, entry in enumerate(entries):
            if "arch" not in entry:
                raise ValueError(f"{path}: [[model]] #{i + 1} has no 'arch'.")
            ckpt = entry.get("checkpoint")
            if ckpt is not None and not Path(ckpt).is_absolute():
                ckpt = str(path.parent / ckpt)
            specs.append(
                ModelSpec(
                    name=entry.get("name", entry["arch"]),
                    arch=entry["arch"],
                    weights=entry.get("weights", weights),
                    checkpoint=ckpt,
                    seed=seed,
                )
            )
        check_model_names([s.name for s in specs], f"zoo file {path}")
    else:
        names = [name.strip() for name in zoo.split(",") if name.strip()]
        check_model_names(names, f"--zoo {zoo!r}")
        specs = [ModelSpec(name, name, weights, seed=seed) for name in names]
    for s in specs:
        _check_arch(s.arch)
    return specs
