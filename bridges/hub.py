"""timm and Hugging Face models cut at their classifier's input; their weights and preprocessing.

The counterpart of :mod:`ncti_jax.bridges.models` for ``timm:`` and ``hf:`` zoo entries
(:mod:`ncti_jax.bridges.zoo`), with the same contract: a cut model whose output is the
penultimate features, and the classifier removed, so that ``head(features)`` is the
full model's logits.

- timm: features are ``forward_head(forward_features(x), pre_logits=True)``, the head
  ``get_classifier()``.
- Hugging Face: an ``AutoModelForImageClassification`` whose ``classifier`` is replaced
  by ``Identity``: features are exactly the classifier's input (ViT: the CLS token after
  the final layer norm; DINOv2: CLS token and mean patch token, concatenated).

timm and transformers are imported when a spec needs them, so a torchvision zoo runs
without them; a missing one is an error naming the extra to install.
"""

from __future__ import annotations

import difflib
import importlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import hf_cache
from .zoo import ModelSpec, init_seed

_HF_CONFIG = "config.json"
# The weights files transformers reads, in the order it tries them.
_HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
# The files timm reads from a hub repo: the safetensors file first, as timm does.
_TIMM_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def require(module: str, extra: str):
    """``import module``, or a one-line error naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ValueError(
            f"{module} is not installed ({err}); pip install 'ncti-jax[{extra}]'."
        ) from None


# ---- timm ------------------------------------------------------------------------------


class TimmFeatures(nn.Module):
    """A timm model's pre-logits features (its classifier's input)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(x), pre_logits=True)


def check_timm(spec: ModelSpec) -> None:
    """Refuses a timm model (or pretrained tag) that timm does not have, with close matches."""
    timm = require("timm", "timm")
    arch, _, tag = spec.model_id.partition(".")
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=5, cutoff=0.6)
        raise ValueError(
            f"model {spec.name!r}: unknown timm model {arch!r}"
            + (f"; did you mean one of {close}?" if close else ".")
        )
    tags = timm.list_pretrained(f"{arch}.*")
    if tag and spec.model_id not in tags:
        raise ValueError(
            f"model {spec.name!r}: timm has no pretrained tag {spec.model_id!r}; "
            f"available: {tags or 'none'}."
        )
    if spec.weights is not None and spec.checkpoint is None and not tags:
        raise ValueError(
            f"model {spec.name!r}: timm has no pretrained weights for {arch!r}; use "
            "--weights none (random initialisation) or a checkpoint."
        )


def _timm_cfg(spec: ModelSpec):
    return require("timm", "timm").models.get_pretrained_cfg(spec.model_id)


def load_timm(spec: ModelSpec, *, head: bool) -> tuple[nn.Module, nn.Module | None]:
    """``(features model, classifier or None)`` of a timm spec, in eval mode."""
    from .models import WeightsError, load_state

    timm = require("timm", "timm")
    check_timm(spec)
    pretrained = spec.weights is not None and spec.checkpoint is None
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed(spec))
            model = timm.create_model(spec.model_id, pretrained=pretrained)
    except (OSError, RuntimeError) as err:  # offline, or a corrupt cached file
        if not pretrained:
            raise
        raise WeightsError(
            f"model {spec.name!r}: cannot load timm weights {spec.model_id!r} "
            f"({type(err).__name__}: {err}); expected {timm_weights_location(spec)}."
        ) from None
    classifier = model.get_classifier()
    usable = isinstance(classifier, nn.Module) and any(True for _ in classifier.parameters())
    if head and not usable:
        raise ValueError(
            f"model {spec.name!r}: timm model {spec.model_id!r} has no single classifier "
            "(none, or distilled heads); extract it without --with-logits."
        )
    if spec.checkpoint is not None:
        prefix = next(n for n, m in model.named_modules() if m is classifier) if usable else None
        load_state(model, spec.checkpoint, spec.model_id, head_prefix=prefix, with_head=head)
    return TimmFeatures(model).eval(), classifier.eval() if head else None


def timm_transform(spec: ModelSpec) -> tuple[str, Any]:
    """timm's own eval preprocessing of ``spec`` and its key (its resolved data config)."""
    timm = require("timm", "timm")
    config = timm.data.resolve_data_config({}, pretrained_cfg=_timm_cfg(spec).to_dict())
    key = "timm:" + json.dumps(config, sort_keys=True, default=str)
    return key, timm.data.create_transform(**config, is_training=False)


def timm_input_size(spec: ModelSpec) -> int | None:
    """The input size of a timm model whose size is fixed (position embeddings), else None."""
    cfg = _timm_cfg(spec)
    return int(cfg.input_size[-1]) if cfg is not None and cfg.fixed_input_size else None


def timm_weights_location(spec: ModelSpec) -> str:
    """Where timm reads ``spec``'s pre-trained weights from: the HF cache file, or the
    torch hub file of a URL."""
    cfg = _timm_cfg(spec)
    if cfg.hf_hub_id:
        repo = cfg.hf_hub_id.split("@")[0]
        return (
            f"{hf_cache.repo_dir(repo)} (file {_TIMM_WEIGHTS[0]} of https://huggingface.co/{repo})"
        )
    return (
        f"{Path(torch.hub.get_dir()) / 'checkpoints' / os.path.basename(cfg.url)} (from {cfg.url})"
    )


def timm_weights_problem(spec: ModelSpec, download: bool) -> tuple[str | None, str | None]:
    """``(problem, download error)`` of a pretrained timm spec: whether its weights are
    cached (downloaded through the HF hub or torch hub when ``download``)."""
    cfg = _timm_cfg(spec)
    if cfg.hf_hub_id:
        repo, _, revision = cfg.hf_hub_id.partition("@")
        files = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else _TIMM_WEIGHTS
        cached = _cached(repo, files, revision or None)
        error = (
            hf_cache.download(repo, files, revision or None) if not cached and download else None
        )
        if _cached(repo, files, revision or None):
            return None, error
        return f"model {spec.name!r}: {timm_weights_location(spec)} is missing", error
    path, error = torch_hub_file(cfg.url, download)
    if path.is_file():
        return None, error
    return f"model {spec.name!r}: {timm_weights_location(spec)} is missing", error


def torch_hub_file(url: str, download: bool) -> tuple[Path, str | None]:
    """``(path, download error)`` of ``url``'s file in the torch hub cache, downloaded
    there first when it is missing and ``download``; the error of a failed download
    (offline), else None."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    error = None
    if not path.is_file() and download:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(url, str(path), progress=False)
        except Exception as err:  # urllib/HTTP/OS errors offline
            error = f"{type(err).__name__}: {err}"
    return path, error


# ---- Hugging Face ----------------------------------------------------------------------


class HFFeatures(nn.Module):
    """A transformers image classifier whose ``classifier`` is Identity: its input, flat."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits.flatten(1)


def _cached(repo: str, files: tuple[str, ...], revision: str | None = None) -> bool:
    return hf_cache.cached(repo, files, revision) is not None


def _is_local(spec: ModelSpec) -> bool:
    return Path(spec.model_id).is_absolute()


def hf_weights_problem(spec: ModelSpec, download: bool) -> tuple[list[str], str | None]:
    """``(problems, download error)`` of an hf spec: its config (and, pre-trained, its
    weights) in its directory or the HF cache (downloaded there when ``download``)."""
    needed = [(_HF_CONFIG,)] + ([_HF_WEIGHTS] if spec.weights is not None else [])
    if _is_local(spec):
        root = Path(spec.model_id)
        return [
            f"model {spec.name!r}: {root / files[0]} is missing"
            + (f" (or {', '.join(files[1:])})" if len(files) > 1 else "")
            for files in needed
            if not any((root / f).is_file() for f in files)
        ], None
    problems, error = [], None
    for files in needed:
        if not _cached(spec.model_id, files) and download and error is None:
            error = hf_cache.download(spec.model_id, files)
        if not _cached(spec.model_id, files):
            problems.append(
                f"model {spec.name!r}: {hf_cache.repo_dir(spec.model_id)} has no {files[0]}"
                + (f" (nor {', '.join(files[1:])})" if len(files) > 1 else "")
                + f" (from https://huggingface.co/{spec.model_id})"
            )
    return problems, error


def _hf_classes():
    transformers = require("transformers", "hf")
    return transformers.AutoConfig, transformers.AutoModelForImageClassification


def load_hf(spec: ModelSpec, *, head: bool) -> tuple[nn.Module, nn.Module | None]:
    """``(features model, classifier or None)`` of an hf spec, in eval mode, float32.

    A checkpoint whose classifier weights are missing (a backbone such as DINOv2) gives
    features; asked for its head, it is refused. Other missing weights are an error.
    """
    from .models import WeightsError

    auto_config, auto_model = _hf_classes()
    head_trained = True
    try:
        if spec.weights is None:
            config = auto_config.from_pretrained(spec.model_id)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(init_seed(spec))
                model = auto_model.from_config(config, dtype=torch.float32)
        else:
            model, info = auto_model.from_pretrained(
                spec.model_id, dtype=torch.float32, output_loading_info=True
            )
            missing = sorted(info.get("missing_keys", ()))
            head_trained = not any(k.startswith("classifier.") for k in missing)
            lost = [k for k in missing if not k.startswith("classifier.")]
            if lost:
                raise ValueError(
                    f"model {spec.name!r}: {spec.model_id} lacks weights of the image "
                    f"classifier's backbone: {lost[:10]}{' ...' if len(lost) > 10 else ''}."
                )
    except OSError as err:  # not cached offline, a corrupt file
        raise WeightsError(
            f"model {spec.name!r}: cannot load {spec.model_id} ({type(err).__name__}: "
            f"{str(err).splitlines()[0]})."
        ) from None
    classifier = getattr(model, "classifier", None)
    if not isinstance(classifier, nn.Module):
        raise ValueError(
            f"model {spec.name!r}: {type(model).__name__} has no single .classifier layer "
            "whose input would be the features."
        )
    model.classifier = nn.Identity()
    if head and not (head_trained and any(True for _ in classifier.parameters())):
        raise ValueError(
            f"model {spec.name!r}: {spec.model_id} has no trained classifier (a backbone); "
            "the source logits need the model's own classifier: extract it without "
            "--with-logits."
        )
    return HFFeatures(model).eval(), classifier.eval() if head else None


class _ProcessorTransform:
    """A transformers image processor as a PIL image -> (3, H, W) float tensor callable."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, image) -> torch.Tensor:
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0].float()


def hf_transform(spec: ModelSpec) -> tuple[str, Any]:
    """The model's own image processor and its key (the processor's settings)."""
    transformers = require("transformers", "hf")
    processor = transformers.AutoImageProcessor.from_pretrained(spec.model_id)
    settings = {k: v for k, v in processor.to_dict().items() if not k.startswith("_")}
    return "hf:" + json.dumps(settings, sort_keys=True, default=str), _ProcessorTransform(processor)


def hf_input_size(spec: ModelSpec) -> int | None:
    """``config.image_size`` of a model whose position embeddings fix it (its forward
    takes ``interpolate_pos_encoding``: ViT, DeiT, BEiT, ...), else None."""
    import inspect

    auto_config, auto_model = _hf_classes()
    config = auto_config.from_pretrained(spec.model_id)
    cls = auto_model._model_mapping.get(type(config), None)
    size = getattr(config, "image_size", None)
    if cls is None or not isinstance(size, int):
        return None
    return size if "interpolate_pos_encoding" in inspect.signature(cls.forward).parameters else None
