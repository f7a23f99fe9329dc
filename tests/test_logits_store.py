"""Source logits in feature stores (``ncti extract --with-logits``, ``io.load_logits``).
Offline: random-initialised torchvision models on a generated ImageFolder."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from ncti_jax import cli, io  # noqa: E402
from ncti_jax.bridges import datasets, extract, models  # noqa: E402

SIZE = 32  # tiny inputs keep random-initialised CNNs fast on CPU
ARCHS = ("resnet18", "mobilenet_v3_small")  # a head at .fc, and one at the end of a Sequential
STORE_KW = {
    "dataset_name": "toy",
    "image_size": SIZE,
    "batch_size": 5,
    "device": "cpu",
    "progress": False,
}


def specs(*archs):
    return [models.ModelSpec(a, a, None) for a in archs or ARCHS]


def cli_args(image_folder, zoo=",".join(ARCHS)):  # noqa: B008
    return [
        *("--zoo", zoo, "--weights", "none", "--dataset", str(image_folder)),
        *("--image-size", str(SIZE), "--workers", "0", "--batch-size", "5"),
        *("--device", "cpu", "--no-progress"),
    ]


def source_outputs(spec, image_folder):
    """The full torchvision classifier's own output on the folder's images, in order."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(models.init_seed(spec))
        full = torchvision.models.get_model(spec.arch, weights=None).eval()
    transform = models.paper_transform(SIZE)
    images = torchvision.datasets.ImageFolder(str(image_folder))
    x = torch.stack([transform(img.convert("RGB")) for img, _ in images])
    with torch.inference_mode():
        return full(x).numpy()


@pytest.fixture(scope="module")
def stores(image_folder, tmp_path_factory):
    """The same extraction twice: ``ncti extract --with-logits``, and without logits."""
    root = tmp_path_factory.mktemp("logits")
    args = cli_args(image_folder)
    assert cli.main(["extract", *args, "--with-logits", "--out", str(root / "with")]) == 0
    assert cli.main(["extract", *args, "--out", str(root / "without")]) == 0
    return root / "with", root / "without"


def test_stored_logits_are_the_source_models_output(stores, image_folder):
    with_logits, _ = stores
    logits = io.load_logits(with_logits, list(ARCHS))
    assert list(logits) == list(ARCHS)
    meta = json.loads((with_logits / "meta.json").read_text())
    for spec in specs():
        got = logits[spec.name]
        assert isinstance(got, np.memmap) and got.dtype == np.float32 and got.shape == (24, 1000)
        np.testing.assert_allclose(got, source_outputs(spec, image_folder), rtol=1e-5, atol=1e-5)
        assert meta["models"][spec.name]["logits"] is True
        assert meta["models"][spec.name]["source_classes"] == 1000


def test_features_are_unchanged_and_the_model_listing_too(stores):
    with_logits, without = stores
    feats, labels = io.load_feature_store(with_logits)
    plain, plain_labels = io.load_feature_store(without)
    assert sorted(feats) == sorted(plain) == sorted(ARCHS)
    np.testing.assert_array_equal(labels, plain_labels)
    for name in ARCHS:
        assert (with_logits / f"{name}.npy").read_bytes() == (without / f"{name}.npy").read_bytes()
    assert sorted(p.name for p in with_logits.iterdir()) == sorted(
        ["labels.npy", "logits", "meta.json", *(f"{a}.npy" for a in ARCHS)]
    )
    assert sorted(p.name for p in without.iterdir()) == sorted(
        ["labels.npy", "meta.json", *(f"{a}.npy" for a in ARCHS)]
    )


def test_in_memory_extraction_keeps_the_same_logits(stores, image_folder):
    from ncti_jax.bridges import ZooFeatures, extract_zoo

    kw = {"weights": "none", "image_size": SIZE, "batch_size": 8, "workers": 0}
    zoo = extract_zoo(
        "resnet18", str(image_folder), device="cpu", progress=False, with_logits=True, **kw
    )
    stored = io.load_logits(stores[0], ["resnet18"])["resnet18"]
    np.testing.assert_allclose(
        np.asarray(zoo.source_logits()["resnet18"]), stored, rtol=1e-6, atol=1e-6
    )
    features, _ = zoo.arrays()
    np.testing.assert_allclose(
        np.asarray(features["resnet18"]), np.load(stores[1] / "resnet18.npy"), rtol=1e-6, atol=1e-6
    )
    plain = ZooFeatures(["a"], ["a"], [], None, None, {"a": features["resnet18"]}, None)
    with pytest.raises(ValueError, match="without their source logits"):
        plain.source_logits()


class Counter:
    """An image loader that counts the images decoded, and can raise at one of them."""

    def __init__(self, stop_at=None):
        self.count, self.stop_at = 0, stop_at

    def __call__(self, path):
        if self.count == self.stop_at:
            raise KeyboardInterrupt
        self.count += 1
        return torchvision.datasets.folder.default_loader(path)


def test_an_interrupted_extraction_resumes_with_its_logits(stores, image_folder, tmp_path):
    store, kw = tmp_path / "store", {**STORE_KW, "flush_every": 0}
    loader = Counter(stop_at=13)  # in the third batch of 5: 10 images are done
    folder = torchvision.datasets.ImageFolder(str(image_folder), loader=loader)
    with pytest.raises(extract.ExtractionInterrupted):
        extract.extract_to_store(specs("resnet18"), folder, store, with_logits=True, **kw)
    assert (store / ".partial" / "logits" / "resnet18.npy").is_file()
    assert not (store / "logits").exists()
    loader.count, loader.stop_at = 0, None
    done, result = extract.extract_to_store(
        specs("resnet18"), folder, store, with_logits=True, **kw
    )
    assert done == ["resnet18"] and result.start == 10 and loader.count == 14
    assert not (store / ".partial").exists()
    got = io.load_logits(store, ["resnet18"])["resnet18"]
    np.testing.assert_array_equal(got, io.load_logits(stores[0], ["resnet18"])["resnet18"])
    assert (store / "resnet18.npy").read_bytes() == (stores[1] / "resnet18.npy").read_bytes()


def test_a_store_without_logits_is_completed_and_stale_logits_removed(
    stores, image_folder, tmp_path, monkeypatch
):
    # The store extracted without logits (by `ncti extract`, so the same settings).
    store = tmp_path / "store"
    shutil.copytree(stores[1], store)
    ds = datasets.load_dataset(str(image_folder))
    kw = {**STORE_KW, "dataset_name": str(image_folder)}
    resnet, mobilenet = specs()
    loaded = []
    real = extract.load_model_with_head
    monkeypatch.setattr(extract, "load_model_with_head", lambda s: loaded.append(s.name) or real(s))
    assert extract.extract_to_store([resnet], ds, store, with_logits=True, **kw)[0] == ["resnet18"]
    with pytest.raises(io.FeatureStoreError) as err:
        io.load_logits(store, list(ARCHS))
    assert "1 model(s) ['mobilenet_v3_small']" in str(err.value)
    # With logits asked for, only the model stored without them is extracted again.
    done, _ = extract.extract_to_store([resnet, mobilenet], ds, store, with_logits=True, **kw)
    assert done == ["mobilenet_v3_small"] and loaded == ["resnet18", "mobilenet_v3_small"]
    got = io.load_logits(store, list(ARCHS))
    want = io.load_logits(stores[0], list(ARCHS))
    for name in ARCHS:
        np.testing.assert_array_equal(got[name], want[name])
    # Other weights, without logits: the old logits go with the old features.
    other = models.ModelSpec("resnet18", "resnet18", None, seed=1)
    assert extract.extract_to_store([other], ds, store, **kw)[0] == ["resnet18"]
    assert not (store / "logits" / "resnet18.npy").exists()
    assert "logits" not in json.loads((store / "meta.json").read_text())["models"]["resnet18"]


def test_a_checkpoint_without_its_classifier_is_refused(image_folder, tmp_path):
    spec = models.ModelSpec("r", "resnet18", None)
    full = models.load_model(spec).state_dict()
    torch.save({f"module.{k}": v for k, v in full.items()}, tmp_path / "ssl.pt")
    ckpt = models.ModelSpec("ssl", "resnet18", None, str(tmp_path / "ssl.pt"))
    with pytest.raises(ValueError, match=r"ssl\.pt: no source classifier for 'resnet18'"):
        models.load_model_with_head(ckpt)
    # A checkpoint of the whole classifier gives back its head, whatever the wrapper prefix.
    torch.manual_seed(3)
    whole = torchvision.models.resnet18(weights=None).eval()
    torch.save({f"module.{k}": v for k, v in whole.state_dict().items()}, tmp_path / "sup.pt")
    cut, head = models.load_model_with_head(
        models.ModelSpec("sup", "resnet18", None, str(tmp_path / "sup.pt"))
    )
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.inference_mode():
        torch.testing.assert_close(head(cut(x)), whole(x), rtol=0, atol=0)


def test_load_logits_errors(stores, tmp_path):
    without = stores[1]
    with pytest.raises(io.FeatureStoreError) as err:
        io.load_logits(without, list(ARCHS))
    message = str(err.value)
    assert str(without) in message and "['resnet18', 'mobilenet_v3_small']" in message
    assert "re-extract them with 'ncti extract --with-logits'" in message
    assert len(message.splitlines()) == 1

    store = tmp_path / "store"
    store.mkdir()
    np.save(store / "labels.npy", np.zeros(24, dtype=np.int64))
    (store / "logits").mkdir()
    np.save(store / "logits" / "short.npy", np.zeros((23, 10), dtype=np.float32))
    np.save(store / "logits" / "flat.npy", np.zeros(24, dtype=np.float32))
    np.save(store / "logits" / "good.npy", np.zeros((24, 10), dtype=np.float32))
    assert io.load_logits(store, ["good"])["good"].shape == (24, 10)
    with pytest.raises(io.FeatureStoreError, match=r"short\.npy: .* shape \(23, 10\), expected"):
        io.load_logits(store, ["good", "short"])
    with pytest.raises(
        io.FeatureStoreError, match=r"flat\.npy: .* shape \(24,\), expected \(24, S\)"
    ):
        io.load_logits(store, ["flat"])
    with pytest.raises(io.FeatureStoreError, match="not model names"):
        io.load_logits(store, ["../labels"])
    with pytest.raises(io.FeatureStoreError, match="not a directory"):
        io.load_logits(tmp_path / "nowhere", ["good"])
    (store / "labels.npy").unlink()
    with pytest.raises(io.FeatureStoreError, match=r"no labels\.npy"):
        io.load_logits(store, ["good"])
