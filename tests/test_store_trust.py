"""Feature stores that can be trusted: one sample list, safe names, reproducible random
initialisation, every missing weights file at once, resumable extraction. Offline:
random-initialised models on a generated ImageFolder."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

from ncti_jax import cli, io  # noqa: E402
from ncti_jax.bridges import datasets, extract, models  # noqa: E402

SIZE = 32  # tiny inputs keep random-initialised CNNs fast on CPU
ROOT = Path(__file__).resolve().parents[1]
# extract_to_store's arguments for the toy folder, on CPU.
STORE_KW = {
    "dataset_name": "toy",
    "image_size": SIZE,
    "batch_size": 5,
    "device": "cpu",
    "progress": False,
}


def common(image_folder, zoo="resnet18", *extra):
    return [
        "--zoo",
        zoo,
        "--weights",
        "none",
        "--dataset",
        str(image_folder),
        "--image-size",
        str(SIZE),
        "--workers",
        "0",
        "--batch-size",
        "5",
        "--device",
        "cpu",
        "--no-progress",
        *extra,
    ]


def features(store):
    feats, _ = io.load_feature_store(store)
    return {name: np.asarray(x) for name, x in feats.items()}


# ---- 1. one sample list per store --------------------------------------------------------


def test_store_records_its_samples_and_refuses_others(image_folder, tmp_path, capsys):
    store = tmp_path / "store"
    run0 = common(image_folder, "resnet18", "--samples-per-class", "3", "--seed", "0")
    assert cli.main(["extract", *run0, "--out", str(store)]) == 0
    samples = json.loads((store / "meta.json").read_text())["samples"]
    sub = datasets.subsample_per_class(datasets.load_dataset(str(image_folder)), 3, seed=0)
    paths = [
        os.path.relpath(p, image_folder) for p, _ in (sub.dataset.samples[i] for i in sub.indices)
    ]
    assert samples == {
        "dataset": str(image_folder),
        "split": "all images of the folder",
        "samples_per_class": 3,
        "seed": 0,
        "n_samples": 9,
        "identity": "relative paths",
        "digest": hashlib.sha256("\0".join(paths).encode()).hexdigest(),
    }

    # Another seed draws other images with the same labels: refused, both runs named.
    capsys.readouterr()
    run1 = common(image_folder, "mobilenet_v3_small", "--samples-per-class", "3", "--seed", "1")
    assert cli.main(["extract", *run1, "--out", str(store)]) == 2
    found, err = capsys.readouterr().err.strip().splitlines()  # what it found; one error line
    assert found == f"9 images of 3 classes from {image_folder}"
    assert f"store {store} holds samples of <" in err and "seed 0, 3 per class" in err
    assert "this run has <" in err and "seed 1, 3 per class" in err and "another --out" in err
    assert not (store / "mobilenet_v3_small.npy").exists()
    # The whole folder is other samples too.
    assert cli.main(["extract", *common(image_folder), "--out", str(store)]) == 2
    assert "all samples, 24 samples" in capsys.readouterr().err


def test_a_store_without_sample_record_is_read_but_not_extended(image_folder, tmp_path, capsys):
    store = tmp_path / "old"
    assert cli.main(["extract", *common(image_folder), "--out", str(store)]) == 0
    meta = json.loads((store / "meta.json").read_text())
    del meta["samples"]  # as written before sample lists were recorded
    (store / "meta.json").write_text(json.dumps(meta))
    feats, labels = io.load_feature_store(store)  # what `ncti score` reads
    assert sorted(feats) == ["resnet18"] and labels.shape == (24,)
    capsys.readouterr()
    more = common(image_folder, "resnet18,mobilenet_v3_small")
    assert cli.main(["extract", *more, "--out", str(store)]) == 2
    err = capsys.readouterr().err
    assert "written before stores recorded their samples" in err and "another --out" in err
    assert not (store / "mobilenet_v3_small.npy").exists()


# ---- 2. model names are file names -------------------------------------------------------


@pytest.mark.parametrize(
    ("names", "bad"),
    [
        (["../../x"], "'../../x' is not a safe file name"),
        (["ok", "a/b"], "'a/b' is not a safe file name"),
        (["x" * 101], "is not a safe file name"),
        (["a..b"], "'a..b' is not a safe file name"),
        ([".hidden"], "'.hidden' is not a safe file name"),
        (["labels"], "'labels' is reserved"),
        (["META"], "'META' is reserved"),
        (["moco", "MoCo"], "'moco' and 'MoCo' clash"),
    ],
)
def test_zoo_file_names_are_checked(tmp_path, names, bad):
    zoo = tmp_path / "zoo.toml"
    zoo.write_text("".join(f'[[model]]\nname = "{n}"\narch = "resnet18"\n\n' for n in names))
    with pytest.raises(
        ValueError, match=re.escape(f"zoo file {zoo}: model name") + ".*" + re.escape(bad)
    ):
        models.resolve_zoo(str(zoo))


def test_unsafe_names_write_nothing(image_folder, tmp_path, capsys):
    zoo = tmp_path / "zoo.toml"
    zoo.write_text('[[model]]\nname = "../escaped"\narch = "resnet18"\n')
    store = tmp_path / "deep" / "store"
    args = common(image_folder, str(zoo))
    assert cli.main(["extract", *args, "--out", str(store)]) == 2
    err = capsys.readouterr().err
    assert str(zoo) in err and "'../escaped'" in err
    assert not (tmp_path / "deep" / "escaped.npy").exists() and not store.exists()
    # Specs built in code are checked by the writer too.
    with pytest.raises(ValueError, match=r"model name 'labels' is reserved"):
        extract.extract_to_store(
            [models.ModelSpec("labels", "resnet18", None)],
            datasets.load_dataset(str(image_folder)),
            store,
            dataset_name="toy",
        )
    assert not store.exists()


# ---- 3. --weights none follows --seed ----------------------------------------------------


def test_random_initialisation_follows_the_seed(image_folder, tmp_path):
    def state(spec):
        torch.manual_seed(len(spec.name) + torch.randint(100, ()).item())  # global state varies
        return models.load_model(spec).state_dict()

    a0 = state(models.ModelSpec("a", "resnet18", None, seed=0))
    again = state(models.ModelSpec("a", "resnet18", None, seed=0))
    assert all(torch.equal(a0[k], again[k]) for k in a0)
    for other in (
        models.ModelSpec("a", "resnet18", None, seed=1),
        models.ModelSpec("b", "resnet18", None),
    ):
        b = state(other)
        assert not torch.equal(a0["conv1.weight"], b["conv1.weight"])
    before = torch.random.get_rng_state()
    models.load_model(models.ModelSpec("a", "resnet18", None))
    assert torch.equal(before, torch.random.get_rng_state())  # the global generator is untouched

    stores = [tmp_path / "s0", tmp_path / "s0-again", tmp_path / "s1"]
    for store, seed in zip(stores, ("0", "0", "1"), strict=True):
        assert (
            cli.main(
                ["extract", *common(image_folder, "resnet18", "--seed", seed), "--out", str(store)]
            )
            == 0
        )
    f0, f0_again, f1 = (features(s)["resnet18"] for s in stores)
    np.testing.assert_array_equal(f0, f0_again)
    assert not np.allclose(f0, f1)
    assert json.loads((stores[2] / "meta.json").read_text())["models"]["resnet18"]["weights"] == (
        "random, seed 1"
    )


# ---- 4. every missing weights file at once -----------------------------------------------


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    """An empty torch hub cache and no network."""
    hub = tmp_path / "torch-home" / "hub"
    monkeypatch.setenv("TORCH_HOME", str(hub.parent))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # restored after the test
    torch.hub.set_dir(str(hub))

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable (blocked by the test)")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    return hub


def test_every_missing_weights_file_is_listed_before_extracting(
    image_folder, tmp_path, empty_hub, monkeypatch, capsys
):
    weights = torchvision.models.get_model_weights
    resnet18 = models.expected_weights_file(weights("resnet18").IMAGENET1K_V1)
    mobilenet = models.expected_weights_file(weights("mobilenet_v3_small").DEFAULT)
    resnet34 = models.expected_weights_file(weights("resnet34").DEFAULT)
    resnet34.parent.mkdir(parents=True)
    resnet34.write_bytes(b"<html>502 Bad Gateway</html>")  # a failed download, cached
    monkeypatch.setattr(extract, "load_model", lambda s: pytest.fail("no model may be loaded"))
    store = tmp_path / "store"
    args = common(image_folder, "resnet18,mobilenet_v3_small,resnet34")
    args[args.index("none")] = "DEFAULT"
    assert cli.main(["extract", *args, "--out", str(store)]) == 2
    found, err = capsys.readouterr().err.strip().splitlines()  # what it found; one error line
    assert found.startswith("24 images of 3 classes from ")
    assert err.startswith("ncti extract: error: ") and "3 pre-trained weights file(s)" in err
    assert f"model 'resnet18': {resnet18} is missing (from https://" in err
    assert f"model 'mobilenet_v3_small': {mobilenet} is missing (from https://" in err
    assert f"model 'resnet34': {resnet34} is corrupt" in err
    assert "network is unreachable" in err
    assert not list(store.glob("*.npy"))


def test_a_corrupt_cached_file_is_named_as_such(empty_hub):
    path = models.expected_weights_file(torchvision.models.get_model_weights("resnet18").DEFAULT)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(models.WeightsError, match=r"cached weights file .* is corrupt") as err:
        models.load_model(models.ModelSpec("resnet18", "resnet18", "DEFAULT"))
    assert "place it there" not in str(err.value)


# ---- 5. resumable extraction -------------------------------------------------------------


class Counter:
    """An image loader that counts the images decoded, and can raise at one of them."""

    def __init__(self, stop_at=None, exc=KeyboardInterrupt):
        self.count, self.stop_at, self.exc = 0, stop_at, exc

    def __call__(self, path):
        if self.count == self.stop_at:
            raise self.exc
        self.count += 1
        return torchvision.datasets.folder.default_loader(path)


def test_ctrl_c_flushes_and_the_rerun_resumes(image_folder, tmp_path, monkeypatch, capsys):
    args = common(image_folder, "resnet18,mobilenet_v3_small")
    assert cli.main(["extract", *args, "--out", str(tmp_path / "reference")]) == 0
    reference = features(tmp_path / "reference")

    loader = Counter(stop_at=13)  # in the third batch of 5: 10 images are done
    folder = torchvision.datasets.ImageFolder(str(image_folder), loader=loader)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: folder)
    store = tmp_path / "store"
    capsys.readouterr()
    try:
        code = cli.main(["extract", *args, "--out", str(store)])
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped `ncti extract` (a traceback, exit status 1)")
    assert code == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == (
        "ncti extract: interrupted after 10/24 images; rerun the same command to resume"
    )
    assert "Traceback" not in err
    progress = json.loads((store / ".partial" / "progress.json").read_text())
    assert progress["rows"] == 10
    assert progress["digest"] == json.loads((store / "meta.json").read_text())["samples"]["digest"]

    loader.count, loader.stop_at = 0, None
    assert cli.main(["extract", *args, "--out", str(store)]) == 0
    assert loader.count == 14  # only the images not flushed
    assert "(resumed at image 10)" in capsys.readouterr().err
    got = features(store)
    assert sorted(got) == sorted(reference)
    for name in reference:
        np.testing.assert_array_equal(got[name], reference[name])
    assert sorted(p.name for p in store.iterdir()) == [
        "labels.npy",
        "meta.json",
        "mobilenet_v3_small.npy",
        "resnet18.npy",
    ]


def test_an_interrupted_extension_keeps_the_store_readable(image_folder, tmp_path):
    ds = datasets.load_dataset(str(image_folder))
    store = tmp_path / "store"
    a, b = (
        models.ModelSpec("a", "resnet18", None),
        models.ModelSpec("b", "mobilenet_v3_small", None),
    )
    kw = {**STORE_KW, "flush_every": 0}
    extract.extract_to_store([a], ds, store, **kw)
    loader = Counter(stop_at=7)
    folder = torchvision.datasets.ImageFolder(str(image_folder), loader=loader)
    with pytest.raises(extract.ExtractionInterrupted) as err:
        extract.extract_to_store([a, b], folder, store, **kw)
    assert (err.value.done, err.value.total) == (5, 24)
    assert sorted(features(store)) == ["a"]  # the partial model is not a stored one
    loader.count, loader.stop_at = 0, None
    done, result = extract.extract_to_store([a, b], folder, store, **kw)
    assert done == ["b"] and result.start == 5 and loader.count == 19


_KILLED = """
import os, signal, sys
import torchvision
from ncti_jax.bridges import extract, models

class Loader:
    count = 0
    def __call__(self, path):
        if self.count == 13:
            os.kill(os.getpid(), signal.SIGKILL)
        self.count += 1
        return torchvision.datasets.folder.default_loader(path)

folder = torchvision.datasets.ImageFolder(sys.argv[1], loader=Loader())
extract.extract_to_store(
    [models.ModelSpec("a", "resnet18", None)], folder, sys.argv[2], dataset_name="toy",
    image_size=int(sys.argv[3]), batch_size=5, device="cpu", progress=False, flush_every=0,
)
"""


def test_a_killed_extraction_resumes_from_the_last_flush(image_folder, tmp_path):
    store = tmp_path / "store"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED, str(image_folder), str(store), str(SIZE)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert json.loads((store / ".partial" / "progress.json").read_text())["rows"] == 10

    kw = dict(STORE_KW)
    spec = models.ModelSpec("a", "resnet18", None)
    loader = Counter()
    folder = torchvision.datasets.ImageFolder(str(image_folder), loader=loader)
    done, result = extract.extract_to_store([spec], folder, store, **kw)
    assert done == ["a"] and result.start == 10 and loader.count == 14
    extract.extract_to_store(
        [spec], datasets.load_dataset(str(image_folder)), tmp_path / "ref", **kw
    )
    np.testing.assert_array_equal(features(store)["a"], features(tmp_path / "ref")["a"])
    assert not (store / ".partial").exists()


# ---- clear refusals from the torch side -------------------------------------------------


def test_an_input_size_a_model_cannot_take_is_one_line(image_folder, tmp_path, capsys):
    code = cli.main(["extract", *common(image_folder, "inception_v3"), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    line = [ln for ln in err.splitlines() if "error" in ln]
    assert len(line) == 1
    assert "model 'inception_v3' cannot take (32, 32) images" in line[0]
    assert "use a larger --image-size" in line[0]


def test_a_checkpoint_with_a_wrong_tensor_shape_names_the_key(tmp_path):
    import torch
    import torchvision

    state = torchvision.models.resnet18(weights=None).state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 5, 5)
    torch.save(state, tmp_path / "bad.pth")
    model = models.cut_classifier(torchvision.models.resnet18(weights=None), "resnet18")
    with pytest.raises(ValueError, match=r"layer1\.0\.conv1\.weight \(64, 64, 5, 5\) \(expected"):
        models.load_checkpoint(model, "resnet18", tmp_path / "bad.pth")
