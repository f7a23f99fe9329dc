"""The torchvision bridge, offline: random-initialised models on a generated ImageFolder."""

from __future__ import annotations

import copy
import json
import socket

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from ncti_jax import cli, io  # noqa: E402
from ncti_jax.bridges import datasets, dlpack, extract, models  # noqa: E402

SIZE = 64  # a small input size keeps random-initialised CNNs fast on CPU
pytestmark = pytest.mark.filterwarnings("ignore:.*n_components reduced:UserWarning")


def spec(arch, name=None):
    return models.ModelSpec(name or arch, arch, weights=None)


def to_store(specs_, ds, store):
    return extract.extract_to_store(
        specs_,
        ds,
        store,
        dataset_name="toy",
        image_size=SIZE,
        batch_size=5,
        device="cpu",
        progress=False,
    )


def run(specs_, ds, **kw):
    zoo = {s.name: models.load_model(s) for s in specs_}
    transforms = {s.name: extract.transform_for(s, "paper", SIZE) for s in specs_}
    return extract.extract_features(
        zoo, ds, transforms, batch_size=5, device="cpu", progress=False, **kw
    ), zoo


@pytest.mark.parametrize(
    ("arch", "dim", "head"),
    [
        ("resnet18", 512, "fc"),
        ("mobilenet_v3_small", 1024, "classifier.3"),
        ("densenet121", 1024, "classifier"),
    ],
)
def test_features_equal_a_forward_hook(image_folder, arch, dim, head):
    torch.manual_seed(0)
    full = torchvision.models.get_model(arch, weights=None).eval()
    cut = models.cut_classifier(copy.deepcopy(full), arch).eval()
    seen = []
    full.get_submodule(head).register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    x = torch.stack(
        [
            models.paper_transform(SIZE)(img.convert("RGB"))
            for img, _ in torchvision.datasets.ImageFolder(str(image_folder))
        ][:6]
    )
    with torch.inference_mode():
        full(x)
        feats = cut(x)
    assert feats.shape == (6, dim)
    torch.testing.assert_close(feats, seen[0].reshape(6, -1), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("arch", "dim"),
    [
        ("googlenet", 1024),
        ("mnasnet0_5", 1280),
        ("efficientnet_b0", 1280),
        ("swin_t", 768),
        ("convnext_tiny", 768),
        ("mobilenet_v2", 1280),
    ],
)
def test_feature_width_per_family(arch, dim):
    model = models.load_model(spec(arch))
    with torch.inference_mode():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, dim)


def test_vit_and_inception_families():
    with torch.inference_mode():
        assert models.load_model(spec("vit_b_32"))(torch.randn(1, 3, 224, 224)).shape == (1, 768)
        assert models.load_model(spec("inception_v3"))(torch.randn(1, 3, 75, 75)).shape == (1, 2048)


def test_one_pass_equals_per_model(image_folder):
    ds = datasets.load_dataset(str(image_folder))
    specs_ = [spec("resnet18"), spec("mobilenet_v3_small")]
    together, zoo = run(specs_, ds)
    assert together.labels.tolist() == [0] * 8 + [1] * 8 + [2] * 8
    for s in specs_:
        alone = extract.extract_features(
            {s.name: zoo[s.name]},
            ds,
            {s.name: extract.transform_for(s, "paper", SIZE)},
            batch_size=7,
            device="cpu",
            progress=False,
        )
        torch.testing.assert_close(alone.features[s.name], together.features[s.name])


def test_dlpack_handoff_is_zero_copy_and_equal(image_folder):
    ds = datasets.load_dataset(str(image_folder))
    result, _ = run([spec("resnet18")], ds)
    tensor = result.features["resnet18"]
    array = dlpack.to_jax(tensor)
    expected = dlpack.to_numpy(tensor)
    assert array.shape == expected.shape and array.dtype == expected.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(array), expected)
    assert dlpack.shares_memory(tensor, array)


def test_store_resume_recomputes_nothing_and_loses_nothing(image_folder, tmp_path, monkeypatch):
    ds = datasets.load_dataset(str(image_folder))
    store = tmp_path / "store"
    a, b, c = spec("resnet18", "a"), spec("mobilenet_v3_small", "b"), spec("resnet18", "c")
    done, _ = to_store([a, b], ds, store)
    assert done == ["a", "b"]
    before = {n: (store / f"{n}.npy").read_bytes() for n in ("a", "b")}

    class Broken(torch.utils.data.Dataset):  # dies part-way through the pass
        def __len__(self):
            return len(ds)

        def __getitem__(self, i):
            if i == 17:
                raise KeyboardInterrupt
            return ds[i]

    broken = Broken()
    broken.targets = ds.targets
    with pytest.raises(KeyboardInterrupt):
        to_store([a, b, c], broken, store)
    assert sorted(p.name for p in store.iterdir()) == ["a.npy", "b.npy", "labels.npy", "meta.json"]
    assert {n: (store / f"{n}.npy").read_bytes() for n in ("a", "b")} == before

    loaded = []
    real = extract.load_model
    monkeypatch.setattr(extract, "load_model", lambda s: loaded.append(s.name) or real(s))
    done, _ = to_store([a, b, c], ds, store)
    assert done == ["c"] and loaded == ["c"]
    assert {n: (store / f"{n}.npy").read_bytes() for n in ("a", "b")} == before
    meta = json.loads((store / "meta.json").read_text())
    assert sorted(meta["models"]) == ["a", "b", "c"]
    assert meta["models"]["c"]["dim"] == 512 and meta["models"]["c"]["torch"] == torch.__version__
    assert meta["models"]["c"]["split"] == "all images of the folder"
    assert {"weights", "dataset", "preprocess", "torchvision", "date"} <= set(meta["models"]["c"])
    feats, labels = io.load_feature_store(store)
    assert sorted(feats) == ["a", "b", "c"] and labels.shape == (24,)


def test_checkpoints(tmp_path):
    torch.manual_seed(1)
    reference = models.load_model(spec("resnet18"))
    state = reference.state_dict()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.inference_mode():
        want = reference(x)
    # DataParallel + MoCo-style prefixes, a state_dict wrapper and a projection head in fc's place.
    wrapped = {f"module.encoder_q.{k}": v for k, v in state.items()}
    wrapped["module.encoder_q.fc.0.weight"] = torch.randn(3, 3)
    torch.save({"state_dict": wrapped, "epoch": 200}, tmp_path / "moco.pth.tar")
    loaded = models.load_model(
        models.ModelSpec("moco", "resnet18", None, str(tmp_path / "moco.pth.tar"))
    )
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), want)

    torch.save({k.replace("layer1", "stage1"): v for k, v in state.items()}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=r"missing keys \['layer1.*unexpected keys \['stage1"):
        models.load_model(models.ModelSpec("bad", "resnet18", None, str(tmp_path / "bad.pt")))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match=r"junk\.pt: not a loadable checkpoint"):
        models.load_model(models.ModelSpec("junk", "resnet18", None, str(tmp_path / "junk.pt")))
    torch.save({"weights": [1, 2, 3]}, tmp_path / "list.pt")
    with pytest.raises(ValueError, match="not a checkpoint"):
        models.load_model(models.ModelSpec("l", "resnet18", None, str(tmp_path / "list.pt")))


def test_unsafe_pickle_is_refused(tmp_path):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("this must not run",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"state_dict": Evil()}))
    with pytest.raises(ValueError, match="not a loadable checkpoint"):
        models.load_model(models.ModelSpec("e", "resnet18", None, str(tmp_path / "evil.pt")))


def test_bad_names_and_missing_data(tmp_path):
    with pytest.raises(ValueError, match="unknown torchvision model 'resnet19'; did you mean"):
        models.load_model(spec("resnet19"))
    with pytest.raises(ValueError, match="unknown dataset 'cifar11'"):
        datasets.load_dataset("cifar11", tmp_path)
    with pytest.raises(FileNotFoundError, match="dataset 'cifar10' not found under"):
        datasets.load_dataset("cifar10", tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"place the Stanford Cars devkit"):
        datasets.load_dataset("cars", tmp_path)
    with pytest.raises(ValueError, match="needs --data-root"):
        datasets.load_dataset("dtd", None)
    with pytest.raises(ValueError, match=r"group2 .* local checkpoints"):
        models.resolve_zoo("group2")


def test_offline_weights_request_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable (blocked by the test)")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    expected = tmp_path / "hub" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(models.WeightsError, match=str(expected).replace(".", r"\.")):
        models.load_model(models.ModelSpec("resnet18", "resnet18", "IMAGENET1K_V1"))


def test_zoo_file_and_presets(tmp_path):
    assert [s.name for s in models.resolve_zoo("group1")] == list(models.GROUP1)
    (tmp_path / "zoo.toml").write_text(
        '[[model]]\nname = "moco-v2"\narch = "resnet50"\ncheckpoint = "ckpt/moco_v2.pth"\n\n'
        '[[model]]\narch = "resnet18"\nweights = "IMAGENET1K_V1"\n'
    )
    zoo = models.resolve_zoo(str(tmp_path / "zoo.toml"))
    assert zoo[0] == models.ModelSpec(
        "moco-v2", "resnet50", "DEFAULT", str(tmp_path / "ckpt" / "moco_v2.pth")
    )
    assert zoo[1] == models.ModelSpec("resnet18", "resnet18", "IMAGENET1K_V1", None)
    (tmp_path / "bad.toml").write_text("[[model]]\nname = 'x'\n")
    with pytest.raises(ValueError, match="has no 'arch'"):
        models.resolve_zoo(str(tmp_path / "bad.toml"))


def test_subsample_per_class(image_folder):
    ds = datasets.load_dataset(str(image_folder))
    sub = datasets.subsample_per_class(ds, 3, seed=5)
    labels = datasets.dataset_labels(sub)
    assert np.bincount(labels).tolist() == [3, 3, 3]
    assert sub.indices == datasets.subsample_per_class(ds, 3, seed=5).indices
    assert sub.indices != datasets.subsample_per_class(ds, 3, seed=6).indices


def test_rank_end_to_end_and_extract_then_score(image_folder, tmp_path, capsys):
    common = [
        "--zoo",
        "resnet18,mobilenet_v3_small",
        "--weights",
        "none",
        "--dataset",
        str(image_folder),
        "--image-size",
        str(SIZE),
        "--workers",
        "0",
        "--no-progress",
        "--batch-size",
        "6",
    ]
    torch.manual_seed(0)
    assert (
        cli.main(
            ["rank", *common, "--out", str(tmp_path / "ranked"), "--store", str(tmp_path / "store")]
        )
        == 0
    )
    doc = io.read_results(tmp_path / "ranked")
    assert sorted(r["model"] for r in io.metric_records(doc)) == ["mobilenet_v3_small", "resnet18"]
    assert doc["settings"]["n_samples"] == 24
    assert "rank" in capsys.readouterr().out
    # The stored features score to the same numbers through `ncti score`.
    assert cli.main(["score", str(tmp_path / "store"), "--out", str(tmp_path / "scored")]) == 0
    again = {r["model"]: r for r in io.metric_records(io.read_results(tmp_path / "scored"))}
    for r in io.metric_records(doc):
        assert again[r["model"]]["etf"] == pytest.approx(r["etf"], rel=1e-6)
    # In memory (no store): the same pipeline, features handed over through DLPack.
    assert cli.main(["rank", *common, "--out", str(tmp_path / "mem"), "-q"]) == 0
    assert len(io.metric_records(io.read_results(tmp_path / "mem"))) == 2
    assert cli.main(["extract", *common, "--out", str(tmp_path / "store")]) == 0
    assert "already stored, skipped: resnet18, mobilenet_v3_small" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore:.*normalise to 0:UserWarning")
def test_rank_zoo_is_images_to_ranking_in_one_call(image_folder, tmp_path):
    """The Python API that ``ncti rank`` wraps: in memory, then into a resumable store."""
    import ncti_jax
    from ncti_jax.bridges import ZooFeatures, extract_zoo, rank_zoo

    kw = {"weights": "none", "image_size": SIZE, "batch_size": 6, "workers": 0}
    kw |= {"device": "cpu", "progress": False}
    zoo = "resnet18,mobilenet_v3_small"
    in_memory = rank_zoo(zoo, str(image_folder), **kw)
    assert isinstance(in_memory, ncti_jax.NCTIResult)
    assert list(in_memory.models) == ["resnet18", "mobilenet_v3_small"]

    said = []
    stored = rank_zoo(zoo, str(image_folder), store=tmp_path / "store", log=said.append, **kw)
    assert said == [f"24 images of 3 classes from {image_folder}"]
    np.testing.assert_allclose(stored.etf, in_memory.etf, rtol=1e-6)
    np.testing.assert_allclose(stored.ncti, in_memory.ncti, rtol=1e-5, atol=1e-6)
    assert sorted(p.name for p in (tmp_path / "store").glob("*.npy")) == [
        "labels.npy",
        "mobilenet_v3_small.npy",
        "resnet18.npy",
    ]

    # A rerun extracts nothing, says so before extracting, and scores the same features.
    said.clear()
    again = extract_zoo(zoo, str(image_folder), store=tmp_path / "store", log=said.append, **kw)
    assert isinstance(again, ZooFeatures)
    assert again.extraction is None and again.extracted == []
    assert again.stored == ["resnet18", "mobilenet_v3_small"]
    assert said[-1] == "already stored, skipped: resnet18, mobilenet_v3_small"
    features, labels = again.arrays()
    assert list(features) == again.models and labels.shape == (24,)
    rescored = ncti_jax.score_zoo(features, labels)
    np.testing.assert_array_equal(rescored.etf, stored.etf)

    # A zoo of specs, a dataset object, subsampling: the same call.
    ds = datasets.load_dataset(str(image_folder))
    few = extract_zoo([spec("resnet18")], ds, samples_per_class=2, **kw)
    assert few.store is None and few.extracted == ["resnet18"]
    features, labels = few.arrays()
    assert features["resnet18"].shape == (6, 512) and np.bincount(labels).tolist() == [2, 2, 2]
    with pytest.raises(ValueError, match="unknown dataset"):
        rank_zoo(zoo, "no-such-dataset", **kw)
