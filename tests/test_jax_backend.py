"""``--backend jax``: the flax ports against the torch path on the same images and weights,
the sharded extraction on 4 CPU devices, weights, caches and errors; offline, random weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flax")
pytest.importorskip("safetensors")

from ncti_jax import cli
from ncti_jax.bridges import convert, jax_pipeline, zoo

SIZE = 32
pytestmark = pytest.mark.filterwarnings("ignore:.*n_components reduced:UserWarning")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A zoo file of random weights written as the torch libraries write them: a
    torchvision ResNet-18 as safetensors and as a torch checkpoint (BatchNorm statistics
    away from 0 and 1), and a tiny Hugging Face ViT classifier as a save_pretrained
    directory (image size 32)."""
    torch = pytest.importorskip("torch")
    torchvision = pytest.importorskip("torchvision")
    transformers = pytest.importorskip("transformers")
    from safetensors.numpy import save_file

    root = tmp_path_factory.mktemp("jax-weights")
    gen = torch.Generator().manual_seed(11)
    torch.manual_seed(11)
    resnet = torchvision.models.resnet18().eval()
    with torch.no_grad():
        for module in resnet.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.3, generator=gen)
                module.running_var.uniform_(0.3, 3.0, generator=gen)
    state = resnet.state_dict()
    save_file({k: v.numpy() for k, v in state.items()}, root / "resnet18.safetensors")
    torch.save(state, root / "resnet18.pth")
    config = transformers.ViTConfig(
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=3,
        intermediate_size=96,
        image_size=SIZE,
        patch_size=8,
        num_labels=7,
    )
    transformers.ViTForImageClassification(config).eval().save_pretrained(root / "tiny-vit")
    transformers.ViTImageProcessor(size={"height": SIZE, "width": SIZE}).save_pretrained(
        root / "tiny-vit"
    )
    transformers.ViTModel(config, add_pooling_layer=False).save_pretrained(root / "backbone")
    st = '[[model]]\nname = "r18-st"\narch = "resnet18"\ncheckpoint = "resnet18.safetensors"\n'
    pth = '[[model]]\nname = "r18-pth"\narch = "resnet18"\ncheckpoint = "resnet18.pth"\n'
    vit = '[[model]]\nname = "vit"\narch = "hf:./tiny-vit"\n'
    (root / "zoo.toml").write_text(st + pth + vit)
    (root / "small.toml").write_text(st + vit)
    return root


def extract(backend, zoo_file, image_folder, **kw):
    if backend == "jax":
        return jax_pipeline.extract_zoo(
            str(zoo_file), str(image_folder), image_size=SIZE, batch_size=5, progress=False, **kw
        )
    from ncti_jax.bridges import pipeline

    return pipeline.extract_zoo(
        str(zoo_file),
        str(image_folder),
        image_size=SIZE,
        batch_size=5,
        device="cpu",
        workers=0,  # no fork of this process, where JAX's threads run
        progress=False,
        **kw,
    )


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_jax_features_logits_and_scores_equal_the_torch_paths(
    weights, image_folder, tmp_path, capsys, monkeypatch
):
    """Same images, same weights: the flax ports' features and logits are the torch
    models' to 1e-4 relative (measured ~1e-6), and ``ncti rank --backend jax`` scores
    the zoo as the torch path's features score it."""
    import ncti_jax

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # where the CLI caches conversions
    cache = jax_pipeline.default_cache_dir()
    ours = extract("jax", weights / "zoo.toml", image_folder, with_logits=True, cache_dir=cache)
    theirs = extract("torch", weights / "zoo.toml", image_folder, with_logits=True)
    np.testing.assert_array_equal(ours.labels, theirs.labels)
    for name in ("r18-st", "r18-pth", "vit"):
        assert rel_err(ours.features[name], theirs.features[name]) < 1e-4, name
        assert rel_err(ours.logits[name], theirs.logits[name]) < 1e-4, name
    assert ours.features["vit"].shape == (24, 48)

    out = tmp_path / "out"
    argv = ["rank", "--backend", "jax", "--zoo", str(weights / "zoo.toml")]
    argv += ["--dataset", str(image_folder), "--image-size", str(SIZE), "--device", "cpu"]
    argv += ["--metrics", "ncti,hscore,leep", "--no-progress", "--out", str(out), "-q"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    assert "converting" not in capsys.readouterr().err  # the conversions above were cached
    doc = json.loads((out / "scores.json").read_text())
    want = ncti_jax.score_metrics(
        *theirs.arrays(), metrics="ncti,hscore,leep", logits=theirs.source_logits()
    )
    for metric, records in doc["results"].items():
        got = {r["model"]: r[metric] for r in records}
        expected = dict(zip(want[metric].models, want[metric].values.tolist(), strict=True))
        for model, value in expected.items():
            assert got[model] == pytest.approx(value, rel=1e-3, abs=1e-5), (metric, model)


def test_four_devices_without_torch_give_the_features_of_one(weights, image_folder, tmp_path):
    """In a process where torch, torchvision, timm and transformers cannot be imported (what
    ``pip install 'ncti-jax[tpu]'`` gives a TPU VM), on 4 forced CPU devices: the batch
    axis sharded over them (24 images in batches of 8, the last padded) gives the features
    of the 1-device run here, and ``ncti rank --backend jax`` ranks the zoo."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "XDG_CACHE_HOME": str(tmp_path)}
    proc = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("jax_extract_worker.py")),
            "4",
            str(weights / "small.toml"),
            str(image_folder),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "4 x cpu" in proc.stdout and "sharded over 4" in proc.stdout
    four = np.load(tmp_path / "features.npz", allow_pickle=False)
    cache = tmp_path / "ncti-jax" / "flax"  # the worker's conversions, reused here
    one = extract("jax", weights / "small.toml", image_folder, cache_dir=cache)
    for name in ("r18-st", "vit"):
        np.testing.assert_allclose(four[name], np.asarray(one.features[name]), rtol=1e-5, atol=1e-6)
    records = json.loads((tmp_path / "rank" / "scores.json").read_text())["results"]["ncti"]
    assert sorted(r["model"] for r in records) == ["r18-st", "vit"]
    assert all(np.isfinite(r["ncti"]) for r in records)


def params(model) -> dict:
    """``{path: array}`` of a flax model's parameters and BatchNorm statistics."""
    from flax import nnx

    return {path: np.asarray(v) for path, v in nnx.to_flat_state(nnx.state(model))}


def test_converted_weights_are_cached_and_refreshed(weights, tmp_path, monkeypatch):
    specs = [s for s in zoo.resolve_zoo(str(weights / "zoo.toml")) if s.name == "r18-st"]
    first = params(jax_pipeline.load_models(specs, cache_dir=tmp_path)["r18-st"])
    (entry,) = list(tmp_path.iterdir())
    with monkeypatch.context() as m:
        m.setattr(convert, "convert", lambda *a, **k: pytest.fail("converted twice"))
        again = params(jax_pipeline.load_models(specs, cache_dir=tmp_path)["r18-st"])
    assert again.keys() == first.keys()
    for path, value in first.items():
        np.testing.assert_array_equal(again[path], value)
    assert list(tmp_path.iterdir()) == [entry]
    # Other weights under the same file name: a new digest, converted again, not the stale cache.
    from safetensors.numpy import load_file, save_file

    changed = load_file(weights / "resnet18.safetensors")
    changed["fc.bias"] = changed["fc.bias"] + 1.0
    path = tmp_path / "other" / "resnet18.safetensors"
    path.parent.mkdir()
    save_file(changed, path)
    other = zoo.ModelSpec("r18", "resnet18", checkpoint=str(path))
    new = params(jax_pipeline.load_models([other], cache_dir=tmp_path)["r18"])
    bias = ("head", "bias")  # torchvision's fc
    np.testing.assert_allclose(new[bias], first[bias] + 1.0, rtol=1e-6)
    assert all(np.array_equal(new[k], v) for k, v in first.items() if k != bias)
    assert len(list(tmp_path.glob("resnet18-*"))) == 2


def test_random_initialisation_is_seeded_per_model(tmp_path, monkeypatch):
    """No weights: the flax model's own initialisation, seeded as the torch path seeds
    its own (the zoo's seed plus a stable offset per name); nothing is cached."""
    from ncti_jax.bridges import flax_models

    built = []
    monkeypatch.setattr(flax_models, "build", lambda arch, seed: built.append((arch, seed)))
    specs = [zoo.ModelSpec(n, a, None, seed=4) for n, a in (("a", "resnet50"), ("b", "vit_b_16"))]
    models = jax_pipeline.load_models(specs, cache_dir=tmp_path)
    assert built == [("resnet50", zoo.init_seed(specs[0])), ("vit_b_16", zoo.init_seed(specs[1]))]
    assert list(models) == ["a", "b"] and len({seed for _, seed in built}) == 2
    assert not list(tmp_path.iterdir())


def test_missing_weights_are_all_named_before_any_work(image_folder, tmp_path, monkeypatch, capsys):
    """Offline with empty caches: one line naming every model's file and where it was
    looked for (the Hugging Face cache, the torch hub cache, a checkpoint), exit 2."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    from ncti_jax.bridges import jax_extract

    extracted = []
    monkeypatch.setattr(jax_extract, "extract_features", lambda *a, **k: extracted.append(a))
    zoo_file = tmp_path / "zoo.toml"
    zoo_file.write_text(
        '[[model]]\narch = "timm:vit_small_patch16_224.augreg_in21k"\n'
        '[[model]]\narch = "hf:google/vit-base-patch16-224"\n'
        '[[model]]\nname = "ckpt"\narch = "resnet50"\ncheckpoint = "nowhere.safetensors"\n'
        '[[model]]\narch = "resnet34"\n'
    )
    argv = ["rank", "--backend", "jax", "--zoo", str(zoo_file), "--dataset", str(image_folder)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "4 model(s) without weights" in err
    for what in (
        "model.safetensors of timm/vit_small_patch16_224.augreg_in21k",
        "config.json of google/vit-base-patch16-224",
        str(tmp_path / "hf" / "models--google--vit-base-patch16-224"),
        "nowhere.safetensors does not exist",
    ):
        assert what in err
    if "resnet34" in err:  # torchvision's file, named where torch is installed
        assert str(tmp_path / "torch") in err
    assert not extracted


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--zoo", "resnet18,densenet121"], "without a flax port for --backend jax: 'densenet121'"),
        (["--dataset", "cifar10"], "--backend jax reads image folders"),
        (["--store", "STORE"], "--store needs --backend torch"),
        (["--preprocess", "native"], "the JAX path has the paper's preprocessing only"),
        (["--device", "cuda:1"], "--backend jax runs on every device of a platform"),
    ],
)
def test_bad_requests_are_one_line(image_folder, tmp_path, capsys, argv, message):
    base = ["rank", "--backend", "jax", "--zoo", "resnet18", "--weights", "none"]
    base += ["--dataset", str(image_folder), "--out", str(tmp_path / "out")]
    argv = [str(tmp_path / a) if a == "STORE" else a for a in argv]
    assert cli.main(base + argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out" / "scores.json").exists()


def test_a_backbone_without_classifier_is_refused_for_logits(weights, image_folder, tmp_path):
    """A Hugging Face backbone (no classifier) gives features, but a run that needs the
    source logits names it before any image is decoded."""
    from ncti_jax.bridges import jax_extract

    specs = [zoo.ModelSpec("bb", f"hf:{weights / 'backbone'}")]
    cache = tmp_path / "cache"
    features = jax_pipeline.extract_zoo(
        specs, str(image_folder), image_size=SIZE, progress=False, cache_dir=cache
    )
    assert features.features["bb"].shape == (24, 48)
    called = []
    with pytest.MonkeyPatch.context() as m:
        m.setattr(jax_extract, "extract_features", lambda *a, **k: called.append(a))
        with pytest.raises(ValueError, match="'bb': no source classifier"):
            jax_pipeline.extract_zoo(
                specs,
                str(image_folder),
                image_size=SIZE,
                progress=False,
                cache_dir=cache,
                with_logits=True,
            )
    assert not called
