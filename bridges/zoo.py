"""Zoo declarations: which models, from which library, with which weights. No torch.

A zoo is a preset name (``group1``, ``timm-small``), a TOML file, or a comma list
(``resnet18,timm:resnet10t,hf:facebook/dinov2-small``). Each entry's ``arch`` names
its source by a prefix:

- none or ``torchvision:``: a torchvision architecture (``resnet50``);
- ``timm:``: a timm model, optionally with its pretrained tag
  (``timm:convnext_tiny.fb_in22k_ft_in1k``);
- ``hf:``: a Hugging Face image-classification model, by hub id (``hf:google/vit-base-patch16-224``)
  or as a directory written by ``save_pretrained`` (``hf:/models/vit`` or ``hf:./vit``).

This module checks syntax only (and that an ``hf:`` directory exists): it imports no
torch, timm or transformers, so that the JAX extraction path reads the same zoos.
Whether each model exists in its library is :func:`ncti_jax.bridges.models.check_specs`.
Model names become file names in feature stores: letters, digits, ``.``, ``_`` and
``-`` only (see :func:`check_model_names`). A TOML zoo::

    [[model]]
    name = "moco-v2"
    arch = "resnet50"
    checkpoint = "checkpoints/moco_v2_800ep.pth.tar"

    [[model]]
    arch = "timm:convnext_tiny.fb_in22k_ft_in1k"

    [[model]]
    name = "vit-b16"
    arch = "hf:google/vit-base-patch16-224"
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SOURCES = ("torchvision", "timm", "hf")

# The paper's supervised zoo (group1).
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
# A dozen diverse timm architectures under 30M parameters, each with its ImageNet-1k
# classifier (none distilled into two heads, so that --with-logits works for all).
TIMM_SMALL = {
    "timm:resnet50.a1_in1k": "ResNet-50 (25.6M), ResNet Strikes Back A1 recipe",
    "timm:convnext_nano.in12k_ft_in1k": "ConvNeXt-Nano (15.6M), ImageNet-12k then 1k",
    "timm:efficientnet_b0.ra_in1k": "EfficientNet-B0 (5.3M), RandAugment recipe",
    "timm:mobilenetv3_large_100.ra_in1k": "MobileNetV3-Large (5.5M)",
    "timm:regnety_016.tv2_in1k": "RegNetY-1.6GF (11.2M), torchvision v2 recipe",
    "timm:vit_small_patch16_224.augreg_in21k_ft_in1k": "ViT-S/16 (22.1M), AugReg, "
    "ImageNet-21k then 1k",
    "timm:deit_small_patch16_224.fb_in1k": "DeiT-S (22.1M), ImageNet-1k only",
    "timm:swin_tiny_patch4_window7_224.ms_in1k": "Swin-T (28.3M), shifted-window transformer",
    "timm:ghostnet_100.in1k": "GhostNet 1.0 (5.2M), cheap ghost feature maps",
    "timm:densenet121.ra_in1k": "DenseNet-121 (8.0M), RandAugment recipe",
    "timm:mobilevit_s.cvnets_in1k": "MobileViT-S (5.6M), convolutions with transformer blocks",
    "timm:poolformer_s12.sail_in1k": "PoolFormer-S12 (11.9M), a MetaFormer with pooling as mixer",
}
PRESETS: dict[str, tuple[str, ...]] = {"group1": GROUP1, "timm-small": tuple(TIMM_SMALL)}
# One line per preset (``ncti rank --zoo`` help, README).
PRESET_DESCRIPTIONS = {
    "group1": "the paper's 11 supervised torchvision ImageNet classifiers",
    "timm-small": "12 diverse timm architectures under 30M parameters (CNNs, ViT, DeiT, Swin, "
    "MobileViT, PoolFormer), ImageNet-1k classifiers",
}

# Model names are file names in a feature store: a safe character set, and not the store's own files.
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
RESERVED_NAMES = ("labels", "meta")
# torchvision and timm model names (timm's with an optional ``.tag``); a hub repo id ``org/name``.
_LIBRARY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_LOCAL_PREFIXES = ("/", "./", "../", "~")


def parse_arch(arch: Any) -> tuple[str, str]:
    """``(source, model id)`` of a zoo entry's ``arch``: ``"timm:resnet10t"`` ->
    ``("timm", "resnet10t")``; no prefix is torchvision.

    An ``hf:`` id is a hub repo ``org/name`` (letters, digits, ``.``, ``_``, ``-``) or
    a local directory, written as a path (``/...``, ``./...``, ``../...``, ``~/...``)
    that must exist; ``~`` is expanded.

    Raises:
      ValueError: an unknown prefix, an id with unsafe characters, a missing directory.
    """
    if not isinstance(arch, str):
        raise ValueError(f"arch {arch!r}: expected a string such as 'resnet50' or 'timm:resnet50'.")
    source, sep, model_id = arch.partition(":")
    if not sep:
        source, model_id = "torchvision", arch
    if source not in SOURCES:
        raise ValueError(
            f"arch {arch!r}: unknown source {source!r}; prefixes are 'timm:', 'hf:' and "
            "'torchvision:' (or none, for torchvision)."
        )
    if source == "hf":
        if model_id.startswith(_LOCAL_PREFIXES):
            path = Path(model_id).expanduser()
            if not path.is_dir():
                raise ValueError(
                    f"arch {arch!r}: {path} is not a directory (expected one written by "
                    "save_pretrained)."
                )
            return source, str(path)
        if not _HUB_ID.fullmatch(model_id) or ".." in model_id:
            raise ValueError(
                f"arch {arch!r}: a Hugging Face model is a hub id 'org/name' (letters, digits, "
                "'.', '_', '-') or a local directory written as a path ('/...', './...')."
            )
        return source, model_id
    if not _LIBRARY_NAME.fullmatch(model_id) or ".." in model_id:
        raise ValueError(
            f"arch {arch!r}: a {source} model name is letters, digits, '.', '_' and '-'."
        )
    return source, model_id


def default_name(arch: str) -> str:
    """A model's name when its zoo entry gives none: the torchvision or timm name,
    ``org--name`` for a hub id, a local directory's base name."""
    source, model_id = parse_arch(arch)
    if source != "hf":
        return model_id
    if _HUB_ID.fullmatch(model_id) and not model_id.startswith(_LOCAL_PREFIXES):
        return model_id.replace("/", "--")
    return Path(model_id).resolve().name


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One model of a zoo: a display name, an architecture (with its source prefix) and
    its weights.

    ``weights`` is ``"DEFAULT"`` (the library's pre-trained weights: for timm, those of
    the tag in the name), a torchvision weights enum name, or None (random);
    ``checkpoint`` a local file that overrides ``weights`` (torchvision and timm);
    ``seed`` seeds random initialisation (with a stable offset per model name, see
    :func:`init_seed`). ``source`` (``"torchvision"``, ``"timm"`` or ``"hf"``) and
    ``model_id`` (the name in that library) are parsed from ``arch`` once, here.

    Raises:
      ValueError: an ``arch`` that :func:`parse_arch` refuses, weights other than
        DEFAULT or None for a timm or Hugging Face model, a checkpoint for a Hugging
        Face model (give its directory instead).
    """

    name: str
    arch: str
    weights: str | None = "DEFAULT"
    checkpoint: str | None = None
    seed: int = 0
    source: str = dataclasses.field(init=False, repr=False, compare=False)
    model_id: str = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            source, model_id = parse_arch(self.arch)
        except ValueError as err:
            raise ValueError(f"model {self.name!r}: {err}") from None
        if source != "torchvision" and self.weights not in ("DEFAULT", None):
            raise ValueError(
                f"model {self.name!r}: weights {self.weights!r} are torchvision's; a {source} "
                "model takes 'DEFAULT' (its pre-trained weights"
                + (", chosen by the tag in its name" if source == "timm" else "")
                + ") or none (random initialisation)."
            )
        if source == "hf" and self.checkpoint is not None:
            raise ValueError(
                f"model {self.name!r}: a Hugging Face model loads from a hub id or a "
                "save_pretrained directory (arch = 'hf:/path/to/dir'), not a checkpoint file."
            )
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "model_id", model_id)


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
                "no '..'); name the model in a zoo file."
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


def resolve_zoo(zoo: str, *, weights: str | None = "DEFAULT", seed: int = 0) -> list[ModelSpec]:
    """Model specs from a preset name (``group1``, ``timm-small``), a TOML zoo file, or
    ``a,b,c`` (entries with source prefixes, mixed freely).

    ``weights`` applies to entries that do not set their own; ``seed`` seeds the random
    initialisation of models without weights. In a zoo file, relative ``checkpoint``
    paths and ``hf:./dir`` directories are relative to the file. Names are checked
    (:func:`check_model_names`) before anything runs; whether the models exist in their
    libraries is not (:func:`ncti_jax.bridges.models.check_specs`).
    """
    if zoo in PRESETS:
        return [ModelSpec(default_name(a), a, weights, seed=seed) for a in PRESETS[zoo]]
    if zoo == "group2":
        raise ValueError(
            "group2 (self-supervised ResNet-50s) is run from local checkpoints: "
            "declare it in a zoo file (see README) and pass --zoo zoo.toml."
        )
    path = Path(zoo)
    if path.suffix == ".toml":
        return _read_zoo_file(path, weights, seed)
    archs = [a.strip() for a in zoo.split(",") if a.strip()]
    where = f"--zoo {zoo!r}"
    try:
        names = [default_name(a) for a in archs]
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    check_model_names(names, where)
    return [ModelSpec(n, a, weights, seed=seed) for n, a in zip(names, archs, strict=True)]


def _read_zoo_file(path: Path, weights: str | None, seed: int) -> list[ModelSpec]:
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
        arch = entry["arch"]
        if isinstance(arch, str) and arch.startswith(("hf:./", "hf:../")):
            arch = "hf:" + str(path.parent.resolve() / arch[3:])
        ckpt = entry.get("checkpoint")
        if ckpt is not None and not Path(ckpt).is_absolute():
            ckpt = str(path.parent / ckpt)
        try:
            name = entry["name"] if "name" in entry else default_name(arch)
            specs.append(
                ModelSpec(name, arch, entry.get("weights", weights), checkpoint=ckpt, seed=seed)
            )
        except ValueError as err:
            raise ValueError(f"{path}: [[model]] #{i + 1}: {err}") from None
    check_model_names([s.name for s in specs], f"zoo file {path}")
    return specs
