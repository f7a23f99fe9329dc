"""timm and Hugging Face zoo entries next to torchvision ones, offline, random weights."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

from torchvision import transforms  # noqa: E402

from ncti_jax import cli  # noqa: E402
from ncti_jax.bridges import models, zoo  # noqa: E402

SIZE = 32  # the paper preprocessing's size here; test_vit keeps its fixed 160
pytestmark = pytest.mark.filterwarnings("ignore:.*n_components reduced:UserWarning")


def vit_config():
    return transformers.ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=SIZE,
        patch_size=8,
        num_labels=5,
    )


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """A tiny ViT classifier and a tiny ViT backbone (no classifier), as save_pretrained
    writes them, with an image processor."""
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(3)
    processor = transformers.ViTImageProcessor(size={"height": SIZE, "width": SIZE})
    for name, cls in (
        ("tiny-vit", transformers.ViTForImageClassification),
        ("tiny-backbone", transformers.ViTModel),
    ):
        cls(vit_config()).save_pretrained(root / name)
        processor.save_pretrained(root / name)
    return root


def batch(image_folder, size):
    """The tiny folder's 24 images, resized and normalised here (not by the bridge)."""
    from PIL import Image

    t = transforms.Compose(
        [
            transforms.Resize((size, size)),
            transforms.ToTensor(),
            transforms.Normalize(models.IMAGENET_MEAN, models.IMAGENET_STD),
        ]
    )
    paths = sorted(image_folder.glob("*/*.png"))
    return torch.stack([t(Image.open(p).convert("RGB")) for p in paths])


def classifier_input(model, classifier, x):
    """``(classifier's input, logits)`` of a whole model, through a forward hook."""
    seen = []
    hook = classifier.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    with torch.inference_mode():
        out = model(x)
    hook.remove()
    logits = out.logits if hasattr(out, "logits") else out
    return seen[0].reshape(len(x), -1), logits


def seeded(spec, build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(zoo.init_seed(spec))
        return build().eval()


def test_one_pass_over_three_sources_through_the_cli(image_folder, hf_dirs, tmp_path, capsys):
    arch_hf = f"hf:{hf_dirs / 'tiny-vit'}"
    store = tmp_path / "store"
    argv = ["extract", "--zoo", f"resnet18,timm:test_vit,{arch_hf}", "--weights", "none"]
    argv += ["--dataset", str(image_folder), "--image-size", str(SIZE), "--workers", "0"]
    argv += ["--no-progress", "--batch-size", "10", "--with-logits", "--out", str(store)]
    assert cli.main(argv) == 0, capsys.readouterr().err
    meta = json.loads((store / "meta.json").read_text())
    assert sorted(meta["models"]) == ["resnet18", "test_vit", "tiny-vit"]

    specs = {
        s.name: s for s in models.resolve_zoo(f"resnet18,timm:test_vit,{arch_hf}", weights=None)
    }
    tv = seeded(specs["resnet18"], lambda: torchvision.models.resnet18())
    tm = seeded(specs["test_vit"], lambda: timm.create_model("test_vit"))
    hf = seeded(
        specs["tiny-vit"],
        lambda: transformers.ViTForImageClassification(vit_config()),
    )
    cases = [
        ("resnet18", tv, tv.fc, SIZE, 512),
        ("test_vit", tm, tm.head, 160, tm.num_features),
        ("tiny-vit", hf, hf.classifier, SIZE, 32),
    ]
    for name, full, head, size, dim in cases:
        want_feats, want_logits = classifier_input(full, head, batch(image_folder, size))
        feats = np.load(store / f"{name}.npy")
        logits = np.load(store / "logits" / f"{name}.npy")
        assert feats.shape == (24, dim), name
        np.testing.assert_allclose(feats, want_feats.numpy(), rtol=1e-4, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(logits, want_logits.numpy(), rtol=1e-4, atol=1e-5, err_msg=name)
    assert meta["models"]["tiny-vit"]["source_classes"] == 5


def test_heads_and_pretrained_local_directories(hf_dirs):
    x = torch.randn(3, 3, SIZE, SIZE)
    spec = zoo.ModelSpec("vit", f"hf:{hf_dirs / 'tiny-vit'}")  # the saved weights
    cut, head = models.load_model_with_head(spec)
    saved = transformers.ViTForImageClassification.from_pretrained(hf_dirs / "tiny-vit").eval()
    want_feats, want_logits = classifier_input(saved, saved.classifier, x)
    with torch.inference_mode():
        feats = cut(x)
        torch.testing.assert_close(feats, want_feats, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(head(feats), want_logits, rtol=1e-5, atol=1e-6)

    backbone = zoo.ModelSpec("bb", f"hf:{hf_dirs / 'tiny-backbone'}")
    with torch.inference_mode():
        assert models.load_model(backbone)(x).shape == (3, 32)
    with pytest.raises(ValueError, match=r"'bb'.*no trained classifier.*without --with-logits"):
        models.load_model_with_head(backbone)

    timm_spec = zoo.ModelSpec("tr", "timm:test_resnet", weights=None)
    cut, head = models.load_model_with_head(timm_spec)
    full = seeded(timm_spec, lambda: timm.create_model("test_resnet"))
    with torch.inference_mode():
        torch.testing.assert_close(head(cut(x)), full(x), rtol=1e-5, atol=1e-5)


def test_timm_checkpoints(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(2)
    source = timm.create_model("test_resnet").eval()
    state = source.state_dict()
    save_file(state, tmp_path / "w.safetensors")
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "w.pth")
    torch.save({k: v for k, v in state.items() if not k.startswith("fc.")}, tmp_path / "ssl.pt")
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.inference_mode():
        want = source(x)
    for file in ("w.safetensors", "w.pth"):
        cut, head = models.load_model_with_head(
            zoo.ModelSpec("r", "timm:test_resnet", checkpoint=str(tmp_path / file))
        )
        with torch.inference_mode():
            torch.testing.assert_close(head(cut(x)), want)
    ssl = zoo.ModelSpec("ssl", "timm:test_resnet", checkpoint=str(tmp_path / "ssl.pt"))
    with torch.inference_mode():
        torch.testing.assert_close(
            models.load_model(ssl)(x), source.forward_head(source.forward_features(x), True)
        )
    with pytest.raises(ValueError, match=r"ssl\.pt: no source classifier"):
        models.load_model_with_head(ssl)


def test_names_prefixes_and_errors(tmp_path, hf_dirs):
    specs = zoo.resolve_zoo(
        "resnet18,torchvision:resnet34,timm:resnet10t.c3_in1k,hf:facebook/dinov2-small,"
        f"hf:{hf_dirs / 'tiny-vit'}"
    )
    assert [(s.name, s.source, s.model_id) for s in specs] == [
        ("resnet18", "torchvision", "resnet18"),
        ("resnet34", "torchvision", "resnet34"),
        ("resnet10t.c3_in1k", "timm", "resnet10t.c3_in1k"),
        ("facebook--dinov2-small", "hf", "facebook/dinov2-small"),
        ("tiny-vit", "hf", str(hf_dirs / "tiny-vit")),
    ]
    (tmp_path / "models").symlink_to(hf_dirs)
    (tmp_path / "zoo.toml").write_text(
        '[[model]]\narch = "hf:./models/tiny-vit"\nweights = "DEFAULT"\n\n'
        '[[model]]\nname = "rn"\narch = "timm:test_resnet"\ncheckpoint = "w.pth"\n'
    )
    local, rn = zoo.resolve_zoo(str(tmp_path / "zoo.toml"), weights=None)
    assert (local.name, local.model_id, local.weights) == (
        "tiny-vit",
        str(tmp_path.resolve() / "models" / "tiny-vit"),
        "DEFAULT",
    )
    assert (rn.source, rn.checkpoint, rn.weights) == ("timm", str(tmp_path / "w.pth"), None)
    assert [len(zoo.PRESETS[p]) for p in ("group1", "timm-small")] == [11, 12]
    assert set(zoo.PRESET_DESCRIPTIONS) == set(zoo.PRESETS)
    assert all(s.model_id in timm.list_pretrained() for s in zoo.resolve_zoo("timm-small"))

    refused = {
        "tf:resnet18": "unknown source 'tf'",
        "hf:google/vit base": "hub id 'org/name'",
        "hf:a/b/c": "hub id 'org/name'",
        "hf:../nowhere/at-all": "is not a directory",
        "timm:resnet18,resnet18": "'resnet18' and 'resnet18' clash",
        "hf:x/labels": None,  # x--labels: a fine name
    }
    for spec_text, message in refused.items():
        if message is None:
            zoo.resolve_zoo(spec_text)
            continue
        with pytest.raises(ValueError, match=message):
            zoo.resolve_zoo(spec_text)
    with pytest.raises(ValueError, match=r"'resnet10t': weights 'IMAGENET1K_V1' are torchvision"):
        zoo.resolve_zoo("timm:resnet10t", weights="IMAGENET1K_V1")
    with pytest.raises(
        ValueError, match=r"unknown timm model 'resnt18'; did you mean .*'resnet18'"
    ):
        models.resolve_zoo("timm:resnt18")
    with pytest.raises(ValueError, match=r"no pretrained tag 'resnet18.nope'; available: \["):
        models.resolve_zoo("timm:resnet18.nope")


def test_offline_message_lists_every_missing_model(image_folder, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub read its environment when imported: its constants follow it here.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable (blocked by the test)")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    argv = ["extract", "--zoo", "resnet18,timm:resnet10t.c3_in1k,hf:facebook/dinov2-small"]
    argv += ["--dataset", str(image_folder), "--out", str(tmp_path / "store"), "--no-progress"]
    assert cli.main(argv) == 2
    said = capsys.readouterr().err.strip().splitlines()
    assert said[0] == f"24 images of 3 classes from {image_folder}" and len(said) == 2
    err = said[1]
    assert err.startswith("ncti extract: error: 4 pre-trained weights file(s) cannot be had")
    assert "(download failed: URLError" in err  # torchvision's try; none after it
    hub = tmp_path / "hf" / "hub"
    for expected in (
        f"'resnet18': {tmp_path / 'torch' / 'hub' / 'checkpoints' / 'resnet18-f37072fd.pth'}",
        f"'resnet10t.c3_in1k': {hub / 'models--timm--resnet10t.c3_in1k'} (file model.safetensors",
        f"'facebook--dinov2-small': {hub / 'models--facebook--dinov2-small'} has no config.json",
        f"{hub / 'models--facebook--dinov2-small'} has no model.safetensors",
    ):
        assert expected in err
    assert not (tmp_path / "store" / "labels.npy").exists()


def test_preprocessing_keys_and_sizes(hf_dirs):
    from PIL import Image

    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), np.uint8))
    tv = zoo.ModelSpec("rn", "resnet18", weights=None)
    vit = zoo.ModelSpec("vit", "timm:test_vit", weights=None)
    conv = zoo.ModelSpec("conv", "timm:test_convnext", weights=None)
    local = zoo.ModelSpec("local", f"hf:{hf_dirs / 'tiny-vit'}", weights=None)
    # paper: one batch for every model whose size is free; fixed-size models get their own.
    keys = {s.name: models.transform_for(s, "paper", 64)[0] for s in (tv, vit, conv, local)}
    assert keys == {"rn": "paper", "vit": "paper:160", "conv": "paper", "local": "paper:32"}
    # native: timm's data config and the image processor, keyed by their settings.
    native = {s.name: models.transform_for(s, "native", 64) for s in (vit, conv, local)}
    assert native["vit"][0].startswith("timm:") and native["local"][0].startswith("hf:")
    assert native["vit"][0] == native["conv"][0]  # the same data config: one shared batch
    assert native["vit"][1](image).shape == (3, 160, 160)
    assert native["local"][1](image).shape == (3, SIZE, SIZE)
    assert native["local"][1](image).dtype == torch.float32


def test_missing_library_names_its_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "timm", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "transformers", None)
    assert [s.name for s in models.resolve_zoo("resnet18", weights=None)] == ["resnet18"]
    with pytest.raises(ValueError, match=r"timm is not installed .*pip install 'ncti-jax\[timm\]'"):
        models.resolve_zoo("timm:resnet10t")
    with pytest.raises(ValueError, match=r"pip install 'ncti-jax\[hf\]'"):
        models.transform_for(zoo.ModelSpec("x", "hf:org/name"), "paper", 224)
