"""flax ports vs the torch models they port: same weights, same features and logits.

Each torch model (torchvision, timm, or Hugging Face from a config built here) gets
random weights, with BatchNorm running statistics, norm affines, biases and the
class / position embeddings redrawn away from their initial values (so that a
wrong epsilon, a missed statistic or a swapped q/k/v shows); its state dict is
converted and the flax model's features and head logits must match the torch
cut model's to 1e-4 relative (max abs difference / max abs value). Small images
keep it fast: 64 px for ResNets, 32 px ViTs (position embeddings follow the size).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

jax = pytest.importorskip("jax")
nnx = pytest.importorskip("flax.nnx")
torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from ncti_jax.bridges import convert as cv  # noqa: E402
from ncti_jax.bridges import flax_models as fm  # noqa: E402
from ncti_jax.bridges.models import split_classifier  # noqa: E402

RTOL = 1e-4
VIT_SIZE = 32


def _rel(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def _randomised(make, gen: torch.Generator) -> torch.nn.Module:
    """``make()``'s model (built on torch's meta device, which skips its own slow
    initialisation) in eval mode with every tensor drawn from ``gen``: weights scaled by
    their fan-in, norm scales near 1, biases, class token and position embedding away from
    0, BatchNorm running statistics away from (0, 1)."""
    with torch.device("meta"):
        model = make()
    model.to_empty(device="cpu").eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if "token" in name or "pos" in name:
                param.copy_(0.5 * noise)
            elif param.ndim > 1:
                param.copy_(noise / param[0].numel() ** 0.5)
            else:
                param.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * noise)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(0.3 * torch.randn(module.num_features, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(module.num_features, generator=gen))
                module.num_batches_tracked.zero_()
    return model


def _state(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {key: value.detach().numpy() for key, value in model.state_dict().items()}


def _flax_forward(model, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, float]:
    """Features through a jit of split/merge (the lead's path), logits from the head;
    and the compile + first run's seconds."""
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
    start = time.perf_counter()
    features = np.asarray(forward(state, images.transpose(0, 2, 3, 1)))
    seconds = time.perf_counter() - start
    logits = None if model.head is None else np.asarray(model.head(features))
    return features, logits, seconds


def _torchvision(arch: str, gen: torch.Generator, **kwargs):
    model = _randomised(lambda: torchvision.models.get_model(arch, weights=None, **kwargs), gen)
    state = _state(model)
    cut, head = split_classifier(model, arch)

    def reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = cut(x)
        return features, head(features)

    return state, reference


def _timm(name: str, gen: torch.Generator, **kwargs):
    timm = pytest.importorskip("timm")
    model = _randomised(lambda: timm.create_model(name, pretrained=False, **kwargs), gen)

    def reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = model.forward_head(model.forward_features(x), pre_logits=True)
        return features, model(x)

    return _state(model), reference


def _hf_vit(gen: torch.Generator, directory):
    """A Hugging Face ViTForImageClassification at ViT-S/16's size (google/vit-base-patch16-224's
    layout and epsilon, 1e-12), 32 px, 10 labels, saved with save_pretrained as the hub's are."""
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(
        hidden_size=384,
        num_attention_heads=6,
        intermediate_size=1536,
        image_size=VIT_SIZE,
        num_labels=10,
        layer_norm_eps=1e-12,
    )
    model = _randomised(lambda: transformers.ViTForImageClassification(config), gen)
    model.save_pretrained(directory)

    def reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = model.vit(x).last_hidden_state[:, 0]
        return features, model(x).logits

    return reference


def _check_parity(arch, state, reference, size, rng, *, config=None):
    images = rng.standard_normal((2, 3, size, size)).astype(np.float32)
    start = time.perf_counter()
    model = cv.convert(arch, state, config=config)
    converted = time.perf_counter() - start
    with torch.no_grad():
        features, logits = (t.numpy() for t in reference(torch.from_numpy(images)))
    got, got_logits, seconds = _flax_forward(model, images)
    assert got.shape == features.shape == (2, model.feature_dim)
    errors = _rel(got, features), _rel(got_logits, logits)
    print(
        f"{arch}: features {errors[0]:.2e}, logits {errors[1]:.2e} relative; "
        f"convert {converted:.2f} s, jit compile + run {seconds:.2f} s"
    )
    assert errors[0] < RTOL and errors[1] < RTOL, errors
    return model, images, got


# resnet34, timm's resnet50 and ViT-B run the code of resnet18, resnet50 and ViT-S with other
# sizes: numerically checked with --runslow; their parameter trees are checked in every run.
@pytest.mark.parametrize(
    "arch", ["resnet18", pytest.param("resnet34", marks=pytest.mark.slow), "resnet50"]
)
def test_torchvision_resnet_parity(arch, rng, seed):
    state, reference = _torchvision(arch, torch.Generator().manual_seed(seed))
    _check_parity(arch, state, reference, 64, rng)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet101", "resnet152"])
def test_torchvision_deep_resnet_parity(arch, rng, seed):
    state, reference = _torchvision(arch, torch.Generator().manual_seed(seed))
    _check_parity(arch, state, reference, 64, rng)


@pytest.mark.parametrize(
    "arch",
    [
        pytest.param("timm:resnet50.a1_in1k", marks=pytest.mark.slow),
        "timm:vit_small_patch16_224",
        pytest.param("timm:vit_base_patch16_224", marks=pytest.mark.slow),
    ],
)
def test_timm_parity(arch, rng, seed):
    name = arch.removeprefix("timm:").partition(".")[0]
    kwargs = {"img_size": VIT_SIZE} if name.startswith("vit") else {}
    state, reference = _timm(name, torch.Generator().manual_seed(seed), **kwargs)
    _check_parity(arch, state, reference, VIT_SIZE if kwargs else 64, rng)


def test_hf_vit_parity_from_safetensors(rng, seed, tmp_path):
    """hf:<directory>: config.json read from it, weights through read_safetensors."""
    reference = _hf_vit(torch.Generator().manual_seed(seed), tmp_path)
    arch = f"hf:{tmp_path}"
    assert fm.supports(arch)
    assert fm.resolve(arch).config.eps == 1e-12
    state = cv.read_safetensors(tmp_path / "model.safetensors")
    _check_parity(arch, state, reference, VIT_SIZE, rng)


def test_hf_vit_backbone_has_no_head(rng, seed, tmp_path):
    """A ViTModel checkpoint (no classifier): the same features, its pooler left unused,
    and no head (source logits need a classifier)."""
    transformers = pytest.importorskip("transformers")
    config = transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        image_size=VIT_SIZE,
    )  # fmt: skip
    model = _randomised(lambda: transformers.ViTModel(config), torch.Generator().manual_seed(seed))
    model.save_pretrained(tmp_path)
    state = cv.read_safetensors(tmp_path / "model.safetensors")
    assert "pooler.dense.weight" in state
    converted = cv.convert(f"hf:{tmp_path}", state)
    images = rng.standard_normal((2, 3, VIT_SIZE, VIT_SIZE)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(images)).last_hidden_state[:, 0].numpy()
    features, logits, _ = _flax_forward(converted, images)
    assert converted.head is None and logits is None
    assert _rel(features, expected) < RTOL


@pytest.mark.parametrize(
    "arch",
    [
        *(f"{p}resnet{d}" for p in ("", "timm:") for d in (18, 34, 50, 101, 152)),
        "vit_b_16",
        "timm:vit_small_patch16_224",
        "timm:vit_base_patch16_224",
    ],
)
def test_parameter_tree_matches_torch_keys_and_shapes(arch):
    """Full size, without numerics (on shapes alone, under jax.eval_shape): every key and
    shape of the torch model's state dict (built on torch's meta device) converts, and the
    flax model has as many parameters as the torch one."""
    source, name = fm._split(arch)
    with torch.device("meta"):
        if source == "timm":
            model = pytest.importorskip("timm").create_model(name, pretrained=False)
        else:
            model = torchvision.models.get_model(name, weights=None)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    _check_converts_on_shapes(arch, shapes, sum(p.numel() for p in model.parameters()))


def _check_converts_on_shapes(arch, shapes, count, config=None):
    state = {k: jax.ShapeDtypeStruct(tuple(v), np.float32) for k, v in shapes.items()}
    convert = lambda s: nnx.state(cv.convert(arch, s, config=config), nnx.Param)  # noqa: E731
    params = jax.eval_shape(convert, state)
    assert sum(v.size for v in jax.tree.leaves(params)) == count


def test_hf_vit_base_file_keys_and_shapes(tmp_path):
    """google/vit-base-patch16-224 at full size: the keys and shapes of the file that
    save_pretrained writes (the hub's names, vit.encoder.layer.N.attention.attention.query,
    which transformers 5 maps from its own in-memory names) convert on shapes alone."""
    transformers = pytest.importorskip("transformers")
    safetensors = pytest.importorskip("safetensors")
    config = transformers.ViTConfig(num_labels=1000)  # that repository's config
    with torch.device("meta"):
        model = transformers.ViTForImageClassification(config)
    model.to_empty(device="cpu").save_pretrained(tmp_path)
    with safetensors.safe_open(tmp_path / "model.safetensors", "np") as f:
        shapes = {key: f.get_slice(key).get_shape() for key in f.keys()}  # noqa: SIM118
    assert "vit.encoder.layer.11.attention.attention.query.weight" in shapes
    count = sum(p.numel() for p in model.parameters())
    _check_converts_on_shapes(f"hf:{tmp_path}", shapes, count)


def test_torchvision_vit_parity_from_wrapped_checkpoint(rng, seed, tmp_path):
    """vit_b_16 through a .pth as training scripts leave them (the state dict under
    'state_dict', DataParallel's module. prefix): read back key for key, torchvision ViT's
    own encoder.* keys kept, then converted."""
    gen = torch.Generator().manual_seed(seed)
    state, reference = _torchvision("vit_b_16", gen, image_size=VIT_SIZE)
    path = tmp_path / "vit.pth"
    wrapped = {f"module.{k}": torch.from_numpy(v) for k, v in state.items()}
    torch.save({"state_dict": wrapped, "epoch": 3}, path)
    read = cv.read_torch_checkpoint(path, "vit_b_16")
    assert set(read) == set(state)
    assert all(np.array_equal(read[k], state[k]) for k in state)
    _check_parity("vit_b_16", read, reference, VIT_SIZE, rng)


_WITHOUT_TORCH = """
import sys
import numpy as np
sys.modules["torch"] = None  # a TPU VM: importing torch fails
import jax
from flax import nnx
from ncti_jax.bridges import convert
model = convert.convert("resnet18", convert.read_safetensors(sys.argv[1]))
graphdef, state = nnx.split(model)
features = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, np.load(sys.argv[2]))
np.save(sys.argv[3], np.asarray(features))
assert all(sys.modules.get(m) is None for m in ("torch", "torchvision", "timm", "transformers"))
"""


def test_safetensors_without_torch(tmp_path, rng, seed):
    """A safetensors file read and converted in a process where torch cannot be imported
    gives the torch model's features (torchvision's resnet18, random weights)."""
    safetensors_torch = pytest.importorskip("safetensors.torch")
    state, reference = _torchvision("resnet18", torch.Generator().manual_seed(seed))
    weights = tmp_path / "r18.safetensors"
    safetensors_torch.save_file({k: torch.from_numpy(v) for k, v in state.items()}, weights)
    assert all(np.array_equal(v, state[k]) for k, v in cv.read_safetensors(weights).items())
    images = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "images.npy", images.transpose(0, 2, 3, 1))
    subprocess.run(
        [sys.executable, "-c", _WITHOUT_TORCH, weights, tmp_path / "images.npy",
         tmp_path / "features.npy"],
        check=True, cwd=Path(__file__).parents[1],
    )  # fmt: skip
    with torch.no_grad():
        expected = reference(torch.from_numpy(images))[0].numpy()
    assert _rel(np.load(tmp_path / "features.npy"), expected) < RTOL
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match=r"bad\.safetensors: not a readable safetensors"):
        cv.read_safetensors(tmp_path / "bad.safetensors")


def test_orbax_cache_round_trip(tmp_path, rng, seed):
    state = {
        k: v.numpy()
        for k, v in _randomised(
            lambda: torchvision.models.resnet18(num_classes=7), torch.Generator().manual_seed(seed)
        )
        .state_dict()
        .items()
    }
    model = cv.convert("resnet18", state)
    cache = tmp_path / "cache" / "resnet18"
    cv.save_converted(model, cache, source_digest="abc")
    loaded = cv.load_converted("resnet18", cache, source_digest="abc")
    assert loaded is not None and loaded.preprocess == model.preprocess
    assert loaded.config == model.config and loaded.config.num_classes == 7
    graphdef, params = nnx.split(model)
    loaded_graphdef, loaded_params = nnx.split(loaded)
    assert loaded_graphdef == graphdef
    forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))  # one compile serves both
    images = rng.standard_normal((2, 32, 32, 3)).astype(np.float32)
    features = np.asarray(forward(params, images))
    np.testing.assert_array_equal(np.asarray(forward(loaded_params, images)), features)
    np.testing.assert_array_equal(loaded.head(features), model.head(features))
    # Another source or arch: a miss; a rewrite replaces the cache whole.
    assert cv.load_converted("resnet18", cache, source_digest="abd") is None
    assert cv.load_converted("resnet34", cache, source_digest="abc") is None
    assert cv.load_converted("resnet18", tmp_path / "none", source_digest="abc") is None
    cv.save_converted(model, cache, source_digest="abd")
    assert json.loads((cache / "meta.json").read_text())["source_digest"] == "abd"
    assert cv.load_converted("resnet18", cache, source_digest="abd") is not None
    assert sorted(p.name for p in cache.parent.iterdir()) == ["resnet18"]  # no temporaries


def test_bad_keys_are_listed_in_one_error(tmp_path):
    torch.manual_seed(0)
    state = _state(torchvision.models.resnet18(weights=None))
    del state["layer2.0.downsample.1.running_var"]
    del state["fc.bias"]
    state["layer5.0.conv1.weight"] = np.zeros((3, 3), np.float32)
    state["layer1.0.conv2.weight"] = np.zeros((64, 64, 1, 1), np.float32)
    with pytest.raises(ValueError, match="the weights do not match") as err:
        cv.convert("resnet18", state, source=tmp_path / "r18.pth")
    message = str(err.value)
    assert str(tmp_path / "r18.pth") in message and "'resnet18'" in message
    for piece in (
        "2 missing keys: fc.bias, layer2.0.downsample.1.running_var",
        "1 unexpected keys: layer5.0.conv1.weight",
        "layer1.0.conv2.weight (64, 64, 1, 1) (expected (64, 64, 3, 3))",
    ):
        assert piece in message


def test_torch_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.pth"):
        cv.read_torch_checkpoint(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"junk\.pth: not a loadable checkpoint"):
        cv.read_torch_checkpoint(tmp_path / "junk.pth")


def test_supports_and_resolve(tmp_path):
    for arch in ("resnet18", "resnet152", "vit_b_16", "timm:resnet50.tv_in1k"):
        assert fm.supports(arch), arch
    for arch in ("timm:vit_small_patch16_224.augreg_in21k", "timm:vit_base_patch16_224"):
        assert fm.supports(arch), arch
    for arch in ("densenet121", "timm:resnet50d", "timm:convnext_tiny", "hf:nowhere/none"):
        assert not fm.supports(arch), arch
    assert fm.supports("hf:x/y", {"model_type": "vit"})
    assert not fm.supports("hf:x/y", {"model_type": "dinov2"})
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit", "image_size": 64}))
    assert fm.supports(f"hf:{tmp_path}")
    spec = fm.resolve(f"hf:{tmp_path}")
    assert spec.preprocess == fm.Preprocess(64, fm.HALF, fm.HALF)
    assert spec.config.num_classes == 2 and spec.config.eps == 1e-12  # ViTConfig's defaults
    assert fm.resolve("resnet50").preprocess == fm.Preprocess(
        224, fm.IMAGENET_MEAN, fm.IMAGENET_STD
    )
    timm_cfg = {"pretrained_cfg": {"input_size": [3, 384, 384], "mean": [0.1] * 3}}
    spec = fm.resolve("timm:vit_base_patch16_224.augreg", config=timm_cfg)
    assert spec.preprocess == fm.Preprocess(384, (0.1,) * 3, fm.HALF)
    with pytest.raises(ValueError, match="'densenet121': no flax port"):
        fm.resolve("densenet121")
    with pytest.raises(ValueError, match="model_type 'dinov2' has no flax port"):
        fm.resolve("hf:x/y", config={"model_type": "dinov2"})
    with pytest.raises(ValueError, match=r"hidden_act='gelu_new' \(need 'gelu'\)"):
        fm.resolve("hf:x/y", config={"model_type": "vit", "hidden_act": "gelu_new"})


def test_build_is_batch_independent_and_checks_images(rng):
    """One jit of split/merge serves any batch size; a ViT refuses a wrong image size by name."""
    model = fm.build("timm:vit_small_patch16_224", seed=0, config={"image_size": VIT_SIZE})
    assert model.feature_dim == 384 and model.head.out_features == 1000
    graphdef, state = nnx.split(model)
    forward = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
    images = rng.standard_normal((2, VIT_SIZE, VIT_SIZE, 3)).astype(np.float32)
    whole = np.asarray(forward(state, images))
    parts = np.concatenate([np.asarray(forward(state, images[:1])), forward(state, images[1:])])
    assert _rel(parts, whole) < 1e-5  # the same up to the rounding of another matmul tiling
    with pytest.raises(ValueError, match=r"expected 32 x 32 images; got \(64, 64\)"):
        model(np.zeros((1, 64, 64, 3), np.float32))
    with pytest.raises(ValueError, match=r"expected images \(B, H, W, 3\)"):
        model(np.zeros((1, 3, 32, 32), np.float32))
