"""Zoo models cut at the penultimate layer: loading, weights and preprocessing.

A torchvision model (``torchvision.models.get_model``) is loaded in eval mode with
its final classifier replaced by ``Identity``, so its output is the classifier's
input: the pooled penultimate features. With :func:`load_model_with_head` the
classifier removed comes back too, so that the source logits are
``head(features)`` in the same forward pass. ``timm:`` and ``hf:`` entries follow
the same contract (:mod:`ncti_jax.bridges.hub`); zoos themselves are declared in
:mod:`ncti_jax.bridges.zoo` (whose names this module re-exports).

Weights come from the torchvision weights API (``"DEFAULT"`` or an enum name such
as ``"IMAGENET1K_V1"``; downloaded into the torch hub cache when online), timm's
and transformers' own loading (the Hugging Face cache), a local checkpoint
(``.safetensors``, or loaded with ``weights_only=True``), or are left random
(``None``; seeded with the zoo's seed and the model's name, so that a run is
reproducible).
"""

from __future__ import annotations

import difflib
import os
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision import transforms

from . import hf_cache, hub
from .zoo import (  # noqa: F401  (re-exported: the zoo's names, from before zoo.py)
    GROUP1,
    GROUP2,
    PRESETS,
    RESERVED_NAMES,
    ModelSpec,
    check_model_names,
    init_seed,
)
from .zoo import resolve_zoo as _declared_zoo

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


class WeightsError(OSError):
    """Weights that cannot be had: names the file expected and where to put it."""


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
    """Makes sure every pre-trained weights file of ``specs`` is at hand, before any work.

    torchvision weights are looked for in the torch hub cache; timm's in the Hugging
    Face cache (``huggingface_hub.constants.HF_HUB_CACHE``; the torch hub cache for
    weights timm reads from a URL); a Hugging Face model's config and weights in its
    directory or the HF cache (its config only, for random initialisation). Missing
    files are downloaded through each library's own mechanism (``download``; not from
    the HF hub with ``HF_HUB_OFFLINE=1``); after the first failed download (offline)
    no other is tried.

    Raises:
      WeightsError: one message listing every file missing (with where it comes from)
        or corrupt, across all sources.
    """
    problems, offline, caches = [], None, set()
    for spec in specs:
        if spec.source == "hf":
            fetch = download and offline is None and not hf_cache.offline()
            found, error = hub.hf_weights_problem(spec, fetch)
            caches.add("hf")
        elif spec.checkpoint is not None or spec.weights is None:
            continue
        elif spec.source == "timm":
            fetch = download and offline is None and not hf_cache.offline()
            problem, error = hub.timm_weights_problem(spec, fetch)
            found = [problem] if problem else []
            caches.add("hf")
        else:
            found, error = _torchvision_weights_problem(spec, download and offline is None)
            caches.add("torch")
        offline = offline or error
        problems += found
    if problems:
        where = []
        if "torch" in caches:
            where.append(
                f"{Path(torch.hub.get_dir()) / 'checkpoints'} (or point TORCH_HOME at a cache that has them)"
            )
        if "hf" in caches:
            where.append(
                f"the Hugging Face cache {hf_cache.repo_dir('x/y').parent} (or point HF_HOME at one that has them)"
            )
        raise WeightsError(
            f"{len(problems)} pre-trained weights file(s) cannot be had"
            + (f" (download failed: {offline})" if offline else "")
            + ": "
            + "; ".join(problems)
            + ". Download them on a machine with network access into "
            + " and ".join(where)
            + "."
        )


def _torchvision_weights_problem(spec: ModelSpec, download: bool) -> tuple[list[str], str | None]:
    """``(problems, download error)`` of a torchvision spec's weights file."""
    enum = _weights_enum(spec.model_id, spec.weights)
    path, error = hub.torch_hub_file(enum.url, download)
    if not path.is_file():
        return [f"model {spec.name!r}: {path} is missing (from {enum.url})"], error
    if not _looks_loadable(path):
        return [f"model {spec.name!r}: {path} is corrupt (delete it; from {enum.url})"], error
    return [], error


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
                    break  # look again: the key may now be expected (ViT's own encoder.*)
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
    expected = set(model.state_dict())
    head_name = classifier_name(model, arch)
    head_state = (
        {} if head is None else {f"{head_name}.{k}": v for k, v in head.state_dict().items()}
    )
    state = strip_prefixes(read_checkpoint(path), expected | set(head_state))
    if head is not None:
        _load_head(head, head_name, head_state, state, arch, path)
    heads = (classifier_path(arch)[0] + ".", "AuxLogits.", "aux1.", "aux2.")
    state = {k: v for k, v in state.items() if not k.startswith(heads)}
    _check_state(state, model.state_dict(), path, arch)
    model.load_state_dict(state)


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A local checkpoint's state dict, read safely: ``.safetensors`` with safetensors,
    anything else with ``torch.load(weights_only=True)`` (unwrapped from ``state_dict``,
    ``model``, ...)."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(path, device="cpu")
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except ImportError as err:
        raise ValueError(f"{path}: reading safetensors needs safetensors ({err}).") from None
    except Exception as err:
        raise ValueError(
            f"{path}: not a loadable checkpoint ({type(err).__name__}: {err})."
        ) from None
    return _unwrap_state_dict(raw, path)


def load_state(
    model: nn.Module,
    path: str | os.PathLike,
    arch: str,
    *,
    head_prefix: str | None,
    with_head: bool,
) -> None:
    """Loads a local checkpoint into a whole (uncut) model whose classifier is the
    module ``head_prefix`` (a timm model's ``get_classifier()``).

    A checkpoint without the classifier's weights (self-supervised) leaves it as
    initialised, unless ``with_head`` asks for the source classifier: then it is an
    error. Any other missing, unexpected or misshapen key is an error that lists them.
    """
    path = Path(path)
    expected = model.state_dict()
    state = strip_prefixes(read_checkpoint(path), set(expected))
    if head_prefix is not None:
        head_keys = [k for k in expected if k.startswith(head_prefix + ".")]
        has_head = all(
            k in state and tuple(state[k].shape) == tuple(expected[k].shape) for k in head_keys
        )
        if with_head and not has_head:
            raise ValueError(
                f"{path}: no source classifier for {arch!r} (expected {head_keys}); the "
                "source logits need the model's own classifier: extract this model without "
                "--with-logits."
            )
        if not has_head:
            state = {k: v for k, v in state.items() if not k.startswith(head_prefix + ".")}
            state |= {k: expected[k] for k in head_keys}
    _check_state(state, expected, path, arch)
    model.load_state_dict(state)


def _check_state(
    state: Mapping[str, torch.Tensor],
    shapes: Mapping[str, torch.Tensor],
    path: Path,
    arch: str,
) -> None:
    """Refuses a checkpoint whose keys or tensor shapes differ from the model's."""
    missing = sorted(set(shapes) - set(state))
    unexpected = sorted(set(state) - set(shapes))
    if missing or unexpected:
        raise ValueError(
            f"{path}: does not match {arch!r}: missing keys {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''}, unexpected keys {unexpected[:10]}"
            f"{' ...' if len(unexpected) > 10 else ''}."
        )
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
    if spec.source == "timm":
        return hub.load_timm(spec, head=head)
    if spec.source == "hf":
        return hub.load_hf(spec, head=head)
    _check_arch(spec.model_id)
    if spec.checkpoint is not None or spec.weights is None:
        kwargs = {}
        if spec.model_id in ("inception_v3", "googlenet"):
            kwargs = {"aux_logits": False, "init_weights": True}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed(spec))
            model = torchvision.models.get_model(spec.model_id, weights=None, **kwargs)
    else:
        enum = _weights_enum(spec.model_id, spec.weights)
        try:
            model = torchvision.models.get_model(spec.model_id, weights=enum, progress=False)
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
    model, classifier = split_classifier(model, spec.model_id)
    if spec.checkpoint is not None:
        load_checkpoint(model, spec.model_id, spec.checkpoint, classifier if head else None)
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
    """The model's own inference preprocessing: the torchvision weights' transforms (e.g.
    342 -> 299 for inception_v3), timm's data config, or the Hugging Face image processor."""
    return _native(spec)[1]


def _native(spec: ModelSpec) -> tuple[str, Any]:
    if spec.source == "timm":
        return hub.timm_transform(spec)
    if spec.source == "hf":
        return hub.hf_transform(spec)
    key = f"native:{spec.model_id}:{spec.weights}"
    if spec.weights is None or spec.checkpoint is not None:
        return key, paper_transform(299 if spec.model_id == "inception_v3" else 224)
    return key, _weights_enum(spec.model_id, spec.weights).transforms()


def fixed_input_size(spec: ModelSpec) -> int | None:
    """The input size a model must have (a timm or Hugging Face model whose position
    embeddings fix it), or None where any size works."""
    if spec.source == "timm":
        return hub.timm_input_size(spec)
    if spec.source == "hf":
        return hub.hf_input_size(spec)
    return None


def transform_for(spec: ModelSpec, preprocess: str, image_size: int) -> tuple[str, Any]:
    """``(key, transform)`` of ``spec``'s preprocessing; models with one key share a batch.

    ``"paper"``: resize to ``image_size`` (to a model's own size instead where its input
    size is fixed, e.g. a ViT at 384: :func:`fixed_input_size`) and ImageNet mean and
    std. ``"native"``: :func:`native_transform`, keyed by its settings (timm, Hugging
    Face) or by the torchvision weights.
    """
    if preprocess == "paper":
        size = fixed_input_size(spec) or image_size
        return ("paper" if size == image_size else f"paper:{size}"), paper_transform(size)
    if preprocess == "native":
        return _native(spec)
    raise ValueError(f"preprocess must be 'paper' or 'native'; got {preprocess!r}.")


def check_specs(specs: Sequence[ModelSpec]) -> list[ModelSpec]:
    """Refuses a model its library does not have (with close matches): torchvision
    architectures and timm models and tags; Hugging Face ids are checked with the
    weights (:func:`check_weights`). Returns ``specs``."""
    for spec in specs:
        if spec.source == "timm":
            hub.check_timm(spec)
        elif spec.source == "torchvision":
            _check_arch(spec.model_id)
    return list(specs)


def resolve_zoo(zoo: str, *, weights: str | None = "DEFAULT", seed: int = 0) -> list[ModelSpec]:
    """:func:`ncti_jax.bridges.zoo.resolve_zoo`, then :func:`check_specs`: a preset, a
    TOML zoo file, or ``a,b,c``, each model checked to exist in its library."""
    return check_specs(_declared_zoo(zoo, weights=weights, seed=seed))
