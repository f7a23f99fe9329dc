"""flax (NNX) ports of torchvision / timm / Hugging Face models, for extraction without torch.

The JAX-native path (TPU VMs have no torch) needs the zoo's models in JAX with the
same numbers as the torch path: a model here, given the torch model's weights
(converted by :mod:`ncti_jax.bridges.convert`), returns the torch cut model's
penultimate features, and ``model.head(features)`` its classifier's logits.
Ported, in eval mode only (BatchNorm on its running statistics, no dropout),
float32, images NHWC:

- the ResNet family as torchvision has it (``resnet18`` .. ``resnet152``; v1.5, the
  stride on the bottleneck's 3x3 conv), which timm's plain ``resnet*`` share key
  for key (``timm:resnet50``);
- ViT-B/16 and ViT-S/16: torchvision's ``vit_b_16``, timm's
  ``vit_base_patch16_224`` / ``vit_small_patch16_224`` (any pretrained tag), and
  Hugging Face ViT (``hf:<repo or directory>`` whose config.json says
  ``model_type: vit``). The three differ in parameter layout and LayerNorm epsilon
  (1e-6; Hugging Face's ``layer_norm_eps``, 1e-12), not in the math: pre-norm
  blocks, exact (erf) GELU, the class token after the final LayerNorm as feature.

Architectures are named as in zoo files: ``resnet50``, ``vit_b_16``,
``timm:vit_small_patch16_224.augreg_in21k``, ``hf:google/vit-base-patch16-224``.
A model is a pure function of its parameters through ``nnx.split`` /
``nnx.merge``, and nothing in it depends on the batch size, so the batch axis
can be sharded over a device mesh::

    model = build("resnet18", seed=0)
    graphdef, state = nnx.split(model)
    features = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, images)

No torch (nor timm, nor transformers) is imported here.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# timm's ViT weights (augreg, orig) and Hugging Face's ViTImageProcessor normalise to [-1, 1].
HALF = (0.5, 0.5, 0.5)

# ResNet depth -> (block, blocks per stage), as torchvision's resnet18 .. resnet152.
_RESNETS = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
    "resnet152": ("bottleneck", (3, 8, 36, 3)),
}
# ViT name -> (width, depth, heads, MLP width); all patch 16, 224 pixels.
_VITS = {
    "vit_b_16": (768, 12, 12, 3072),
    "vit_base_patch16_224": (768, 12, 12, 3072),
    "vit_small_patch16_224": (384, 12, 6, 1536),
}
_TORCHVISION = (*_RESNETS, "vit_b_16")
_TIMM = (*_RESNETS, "vit_base_patch16_224", "vit_small_patch16_224")

JAX_ARCHS: tuple[str, ...] = (
    *_TORCHVISION,
    *(f"timm:{name}" for name in _TIMM),
    "hf:<vit repo or directory>",
)


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """A model's native input: resized to ``size`` x ``size``, scaled to [0, 1], then
    normalised with ``mean`` and ``std`` per channel (what the torch path applies)."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    """torchvision's ResNet: ``block`` ``"basic"`` or ``"bottleneck"``, blocks per stage."""

    block: str
    layers: tuple[int, int, int, int]
    num_classes: int


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """A pre-norm ViT with a class token; ``layout`` names whose parameter names its
    weights come in (``"torchvision"``, ``"timm"``, ``"hf"``); ``num_classes`` 0: no head."""

    layout: str
    image_size: int
    patch_size: int
    width: int
    depth: int
    heads: int
    mlp_width: int
    eps: float
    num_classes: int


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    """What an arch string resolves to: its source library, the model's config, its input."""

    arch: str
    source: str  # "torchvision", "timm" or "hf"
    config: ResNetConfig | ViTConfig
    preprocess: Preprocess


def _split(arch: str) -> tuple[str, str]:
    """``"timm:vit_small_patch16_224.augreg_in21k"`` -> ``("timm", "vit_small_patch16_224")``."""
    source, sep, name = arch.partition(":")
    if not sep:
        return "torchvision", arch
    if source == "torchvision":
        return source, name
    if source == "timm":
        return source, name.partition(".")[0]
    return source, name


def _hf_file(arch: str, filename: str) -> Path | None:
    """``filename`` of ``hf:<repo or directory>``: in the local directory, else in the
    Hugging Face cache (when huggingface_hub is installed); None when neither has it."""
    name = arch.partition(":")[2]
    path = Path(name) / filename
    if path.is_file():
        return path
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        cached = try_to_load_from_cache(name, filename)
    except ValueError:  # not a repository id either (HFValidationError)
        return None
    return Path(cached) if isinstance(cached, str) else None


def _read_json(arch: str, path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"model {arch!r}: cannot read {path} ({err}).") from None


def hf_config(arch: str, config: Mapping[str, Any] | None = None) -> Mapping[str, Any] | None:
    """The config.json of ``hf:<repo or directory>``: ``config`` if given, else the file in
    the local directory or the Hugging Face cache; None when none is found."""
    if config is not None:
        return config
    path = _hf_file(arch, "config.json")
    return None if path is None else _read_json(arch, path)


def supports(arch: str, config: Mapping[str, Any] | None = None) -> bool:
    """Whether the flax path runs ``arch`` (a zoo arch string, ``timm:``/``hf:`` prefixed or
    not; timm's pretrained tag after ``.`` ignored). An ``hf:`` model is supported when its
    config.json (``config``, or found as :func:`hf_config` finds it) says ``model_type: vit``."""
    source, name = _split(arch)
    if source == "torchvision":
        return name in _TORCHVISION
    if source == "timm":
        return name in _TIMM
    if source == "hf":
        found = hf_config(arch, config)
        return found is not None and found.get("model_type") == "vit"
    return False


def resolve(
    arch: str, *, config: Mapping[str, Any] | None = None, num_classes: int = 1000
) -> ArchSpec:
    """The model config and preprocessing of ``arch``.

    ``config``: for ``hf:`` models their config.json (read from the directory or the
    cache when None); for timm models optionally their config.json (its
    ``pretrained_cfg`` mean, std and input size are honoured); for ViTs
    ``{"image_size": 32}`` sets a smaller input (the position embedding follows).
    ``num_classes`` is the head's size (``config["num_classes"]`` wins; an ``hf:``
    model's comes from its config's labels).

    Raises:
      ValueError: an arch the flax path does not port, or an unusable config.
    """
    source, name = _split(arch)
    config = dict(config or {})
    if source == "hf":
        return _resolve_hf(arch, config)
    if not supports(arch):
        raise ValueError(
            f"model {arch!r}: no flax port; the JAX path supports {list(JAX_ARCHS)} "
            "(timm pretrained tags after '.' are fine)."
        )
    if source == "timm":
        cfg = config.get("pretrained_cfg", {})
        size = int(config.get("image_size", cfg.get("input_size", (3, 224, 224))[-1]))
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if name in _RESNETS else (HALF, HALF)
        mean, std = tuple(cfg.get("mean", mean)), tuple(cfg.get("std", std))
    else:
        size = int(config.get("image_size", 224))
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    num_classes = int(config.get("num_classes", num_classes))
    preprocess = Preprocess(size, mean, std)
    if name in _RESNETS:
        block, layers = _RESNETS[name]
        return ArchSpec(arch, source, ResNetConfig(block, layers, num_classes), preprocess)
    width, depth, heads, mlp_width = _VITS[name]
    vit = ViTConfig(source, size, 16, width, depth, heads, mlp_width, 1e-6, num_classes)
    return ArchSpec(arch, source, vit, preprocess)


def _resolve_hf(arch: str, config: Mapping[str, Any]) -> ArchSpec:
    found = hf_config(arch, config or None)
    if found is None:
        raise ValueError(
            f"model {arch!r}: no config.json found (not a local directory, nor in the "
            "Hugging Face cache); pass its config."
        )
    if found.get("model_type") != "vit":
        raise ValueError(
            f"model {arch!r}: model_type {found.get('model_type')!r} has no flax port "
            "(the JAX path supports Hugging Face ViT, model_type 'vit')."
        )
    problems = [
        f"{key}={found.get(key, default)!r} (need {want!r})"
        for key, default, want in (
            ("hidden_act", "gelu", "gelu"),
            ("qkv_bias", True, True),
            ("num_channels", 3, 3),
        )
        if found.get(key, default) != want
    ]
    if problems:
        raise ValueError(f"model {arch!r}: unsupported ViT config: {', '.join(problems)}.")
    architectures = found.get("architectures") or ["ViTForImageClassification"]
    classifier = "ViTForImageClassification" in architectures
    labels = found.get("id2label")
    num_classes = len(labels) if labels else int(found.get("num_labels", 2))
    size = int(found.get("image_size", 224))
    vit = ViTConfig(
        layout="hf",
        image_size=size,
        patch_size=int(found.get("patch_size", 16)),
        width=int(found.get("hidden_size", 768)),
        depth=int(found.get("num_hidden_layers", 12)),
        heads=int(found.get("num_attention_heads", 12)),
        mlp_width=int(found.get("intermediate_size", 3072)),
        eps=float(found.get("layer_norm_eps", 1e-12)),
        num_classes=num_classes if classifier else 0,
    )
    return ArchSpec(arch, "hf", vit, _hf_preprocess(arch, size))


def _hf_preprocess(arch: str, size: int) -> Preprocess:
    """From the model's preprocessor_config.json when there is one, else
    ViTImageProcessor's defaults (mean and std 0.5) at the model's image size."""
    path = _hf_file(arch, "preprocessor_config.json")
    processor = {} if path is None else _read_json(arch, path)
    target = processor.get("size", {})
    if isinstance(target, Mapping):
        size = int(target.get("height", size))
    elif target:
        size = int(target)
    return Preprocess(
        size, tuple(processor.get("image_mean", HALF)), tuple(processor.get("image_std", HALF))
    )


def _check_images(images: jax.Array, arch: str, size: int | None) -> None:
    """Shapes are static under jit: a wrong one fails here, at trace time, by name."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"model {arch!r}: expected images (B, H, W, 3); got {images.shape}.")
    if size is not None and images.shape[1:3] != (size, size):
        raise ValueError(
            f"model {arch!r}: expected {size} x {size} images; got {images.shape[1:3]}."
        )


# ---------------------------------------------------------------- ResNet


def _conv(cin: int, cout: int, k: int, stride: int, rngs: nnx.Rngs) -> nnx.Conv:
    """torchvision's conv: padding k // 2 on each side, explicitly (not SAME: a strided
    SAME pads asymmetrically), no bias."""
    pad = k // 2
    return nnx.Conv(
        cin, cout, (k, k), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
        use_bias=False, rngs=rngs,
    )  # fmt: skip


def _bn(features: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(features, use_running_average=True, epsilon=1e-5, rngs=rngs)


class Downsample(nnx.Module):
    """The shortcut's 1x1 strided conv and BatchNorm (torchvision's ``downsample.0/1``)."""

    def __init__(self, cin: int, cout: int, stride: int, rngs: nnx.Rngs):
        self.conv = _conv(cin, cout, 1, stride, rngs)
        self.bn = _bn(cout, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.bn(self.conv(x))


class BasicBlock(nnx.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int, rngs: nnx.Rngs):
        self.conv1 = _conv(cin, width, 3, stride, rngs)
        self.bn1 = _bn(width, rngs)
        self.conv2 = _conv(width, width, 3, 1, rngs)
        self.bn2 = _bn(width, rngs)
        needs = stride != 1 or cin != width
        self.downsample = Downsample(cin, width, stride, rngs) if needs else None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jax.nn.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        shortcut = x if self.downsample is None else self.downsample(x)
        return jax.nn.relu(y + shortcut)


class Bottleneck(nnx.Module):
    """ResNet v1.5: the stride on the 3x3 conv, as torchvision and timm."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int, rngs: nnx.Rngs):
        cout = width * self.expansion
        self.conv1 = _conv(cin, width, 1, 1, rngs)
        self.bn1 = _bn(width, rngs)
        self.conv2 = _conv(width, width, 3, stride, rngs)
        self.bn2 = _bn(width, rngs)
        self.conv3 = _conv(width, cout, 1, 1, rngs)
        self.bn3 = _bn(cout, rngs)
        needs = stride != 1 or cin != cout
        self.downsample = Downsample(cin, cout, stride, rngs) if needs else None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jax.nn.relu(self.bn1(self.conv1(x)))
        y = jax.nn.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        shortcut = x if self.downsample is None else self.downsample(x)
        return jax.nn.relu(y + shortcut)


class ResNet(nnx.Module):
    """torchvision's ResNet, cut before ``fc``: ``model(images)`` is the pooled features,
    ``model.head`` the classifier (``fc``)."""

    def __init__(self, spec: ArchSpec, rngs: nnx.Rngs):
        config = spec.config
        self.arch, self.config, self.preprocess = spec.arch, config, spec.preprocess
        block = BasicBlock if config.block == "basic" else Bottleneck
        self.conv1 = _conv(3, 64, 7, 2, rngs)
        self.bn1 = _bn(64, rngs)
        cin = 64
        for stage, (count, width) in enumerate(
            zip(config.layers, (64, 128, 256, 512), strict=True), 1
        ):
            blocks = []
            for i in range(count):
                blocks.append(block(cin, width, 2 if i == 0 and stage > 1 else 1, rngs))
                cin = width * block.expansion
            setattr(self, f"layer{stage}", nnx.List(blocks))
        self.feature_dim = cin
        self.head = nnx.Linear(cin, config.num_classes, rngs=rngs)

    def __call__(self, images: jax.Array) -> jax.Array:
        _check_images(images, self.arch, None)
        x = jax.nn.relu(self.bn1(self.conv1(images)))
        # torchvision's MaxPool2d(3, 2, padding=1): the padding never wins a max.
        x = jax.lax.reduce_window(
            x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
            ((0, 0), (1, 1), (1, 1), (0, 0)),
        )  # fmt: skip
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                x = block(x)
        return jnp.mean(x, axis=(1, 2))


# ---------------------------------------------------------------- ViT


def _layer_norm(width: int, eps: float, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # Two-pass variance as torch computes it (flax's fast E[x^2] - E[x]^2 loses digits).
    return nnx.LayerNorm(width, epsilon=eps, use_fast_variance=False, rngs=rngs)


class Attention(nnx.Module):
    """Multi-head self-attention with one fused q/k/v projection (q, k, v in that order
    along its outputs, heads contiguous within each, as torch's ``in_proj`` and timm's
    ``qkv``)."""

    def __init__(self, width: int, heads: int, rngs: nnx.Rngs):
        self.heads = heads
        self.qkv = nnx.Linear(width, 3 * width, rngs=rngs)
        self.proj = nnx.Linear(width, width, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        batch, length, width = x.shape
        head_dim = width // self.heads
        qkv = self.qkv(x).reshape(batch, length, 3, self.heads, head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(head_dim)
        out = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(scores, axis=-1), v)
        return self.proj(out.reshape(batch, length, width))


class Mlp(nnx.Module):
    def __init__(self, width: int, hidden: int, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(width, hidden, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, width, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class EncoderBlock(nnx.Module):
    def __init__(self, config: ViTConfig, rngs: nnx.Rngs):
        self.norm1 = _layer_norm(config.width, config.eps, rngs)
        self.attn = Attention(config.width, config.heads, rngs)
        self.norm2 = _layer_norm(config.width, config.eps, rngs)
        self.mlp = Mlp(config.width, config.mlp_width, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nnx.Module):
    """A ViT cut before its classifier: ``model(images)`` is the class token after the
    final LayerNorm; ``model.head`` the classifier, None for a backbone without one."""

    def __init__(self, spec: ArchSpec, rngs: nnx.Rngs):
        config = spec.config
        self.arch, self.config, self.preprocess = spec.arch, config, spec.preprocess
        if config.image_size % config.patch_size:
            raise ValueError(
                f"model {spec.arch!r}: image size {config.image_size} is not a multiple "
                f"of the patch size {config.patch_size}."
            )
        p, width = config.patch_size, config.width
        tokens = (config.image_size // p) ** 2 + 1
        self.patch_embed = nnx.Conv(3, width, (p, p), strides=(p, p), padding="VALID", rngs=rngs)
        self.cls_token = nnx.Param(0.02 * jax.random.normal(rngs.params(), (1, 1, width)))
        self.pos_embed = nnx.Param(0.02 * jax.random.normal(rngs.params(), (1, tokens, width)))
        self.blocks = nnx.List([EncoderBlock(config, rngs) for _ in range(config.depth)])
        self.norm = _layer_norm(width, config.eps, rngs)
        self.feature_dim = width
        self.head = nnx.Linear(width, config.num_classes, rngs=rngs) if config.num_classes else None

    def __call__(self, images: jax.Array) -> jax.Array:
        _check_images(images, self.arch, self.config.image_size)
        x = self.patch_embed(images)  # (B, h, w, D): tokens row-major, as torch's flatten(2)
        batch = x.shape[0]
        x = x.reshape(batch, -1, self.config.width)
        cls = jnp.broadcast_to(self.cls_token[...], (batch, 1, self.config.width))
        x = jnp.concatenate([cls, x], axis=1) + self.pos_embed[...]
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 0]


class _OneKey:
    """Stands in for ``nnx.Rngs`` where only a model's structure is wanted (under
    ``nnx.eval_shape``): every draw gets the same key and no counter is updated inside
    the trace (flax's checks of a traced counter make tracing ResNet-152 take 5 s, not 1)."""

    def __init__(self) -> None:
        self._key = jax.random.key(0)

    def params(self) -> jax.Array:
        return self._key


def abstract_model(spec: ArchSpec) -> ResNet | VisionTransformer:
    """The model of ``spec`` with shapes in place of parameters, nothing initialised."""
    kind = ResNet if isinstance(spec.config, ResNetConfig) else VisionTransformer
    return nnx.eval_shape(lambda: kind(spec, _OneKey()))


def random_model(spec: ArchSpec, *, seed: int) -> ResNet | VisionTransformer:
    """The model of ``spec`` with parameters drawn by NumPy from ``seed``: kernels
    normal / sqrt(fan-in), class token and position embedding normal x 0.02, norms and
    BatchNorm statistics at their identity (scale and variance 1, shift and mean 0).

    Drawn on the host rather than by each layer's flax initialiser, which run eagerly
    compile one random kernel per parameter shape (seconds per model on a CPU).
    """
    graphdef, state = nnx.split(abstract_model(spec))
    rng = np.random.default_rng(seed)
    pure = nnx.to_pure_dict(state)

    def draw(path: tuple[jax.tree_util.DictKey, ...], leaf: jax.ShapeDtypeStruct) -> jax.Array:
        name, shape = path[-1].key, leaf.shape
        if name == "kernel":
            scale = 1.0 / math.sqrt(math.prod(shape[:-1]))
        elif name in ("cls_token", "pos_embed"):
            scale = 0.02
        else:
            fill = 1.0 if name in ("scale", "var") else 0.0
            return jnp.asarray(np.full(shape, fill, np.float32))
        return jnp.asarray(scale * rng.standard_normal(shape, dtype=np.float32))

    nnx.replace_by_pure_dict(state, jax.tree_util.tree_map_with_path(draw, pure))
    return nnx.merge(graphdef, state)


def build(
    arch: str,
    *,
    seed: int,
    config: Mapping[str, Any] | None = None,
    num_classes: int = 1000,
) -> ResNet | VisionTransformer:
    """A randomly initialised model of ``arch`` (see :func:`resolve` for ``config`` and
    ``num_classes``, :func:`random_model` for the draw);
    :func:`ncti_jax.bridges.convert.convert` gives one with weights.

    Example::

        model = build("timm:vit_small_patch16_224", seed=0, config={"image_size": 32})
        features = model(jnp.zeros((2, 32, 32, 3)))  # (2, 384)
        logits = model.head(features)  # (2, 1000)
    """
    return random_model(resolve(arch, config=config, num_classes=num_classes), seed=seed)
