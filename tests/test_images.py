"""Images without torch (bridges/images.py) against torchvision's own folder and transforms."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ncti_jax.bridges import images


@pytest.fixture
def odd_folder(tmp_path, rng):
    """Class folders out of order, a nested folder, upper-case extensions, non-images,
    and images of several sizes and modes (RGB, L, RGBA, P)."""
    root = tmp_path / "odd"
    for name in ("zebra", "Ant", "bee"):
        (root / name / "deep").mkdir(parents=True)
    modes = ("RGB", "L", "RGBA", "P")
    for k, rel in enumerate(
        ["zebra/b.png", "zebra/A.JPG", "zebra/deep/c.bmp", "Ant/x.png", "bee/1.webp", "bee/0.png"]
    ):
        shape = (int(rng.integers(9, 70)), int(rng.integers(9, 70)), 3)
        image = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
        image.convert(modes[k % len(modes)]).save(root / rel)
    (root / "zebra" / "notes.txt").write_text("not an image")
    (root / "bee" / "deep" / "ignored.npy").write_bytes(b"")
    return root


def test_folder_order_labels_and_digest_match_torchvision(odd_folder):
    torchvision = pytest.importorskip("torchvision")
    from ncti_jax.bridges import datasets

    ours = images.image_folder(odd_folder)
    theirs = torchvision.datasets.ImageFolder(str(odd_folder))
    assert list(ours.classes) == theirs.classes
    assert [str(ours.root / p) for p in ours.paths] == [p for p, _ in theirs.samples]
    np.testing.assert_array_equal(ours.labels, theirs.targets)
    assert ours.record("toy") == datasets.sample_record(theirs, "toy")
    sub = datasets.subsample_per_class(theirs, 1, seed=3)
    mine = ours.subsample(1, seed=3)
    assert mine.record("toy") == datasets.sample_record(sub, "toy")
    np.testing.assert_array_equal(mine.labels, np.asarray(theirs.targets)[sub.indices])


@pytest.mark.parametrize("size", [7, 32, 61])
def test_paper_preprocess_is_torchvisions_to_the_bit(odd_folder, size):
    pytest.importorskip("torchvision")
    from ncti_jax.bridges import models

    folder = images.image_folder(odd_folder)
    transform = models.paper_transform(size)
    for path in folder.paths:
        image = images.decode(folder.root / path)
        ours = images.paper_preprocess(image, size)
        theirs = transform(image).numpy().transpose(1, 2, 0)
        assert ours.shape == (size, size, 3) and ours.dtype == np.float32
        np.testing.assert_array_equal(ours, theirs)


def test_per_class_indices(rng):
    labels = rng.integers(0, 4, 50)
    keep = images.per_class_indices(labels, 3, seed=1)
    assert keep == sorted(keep) and len(set(keep)) == len(keep)
    counts = np.bincount(labels[keep], minlength=4)
    np.testing.assert_array_equal(counts, np.minimum(np.bincount(labels, minlength=4), 3))
    assert keep == images.per_class_indices(labels, 3, seed=1)
    assert keep != images.per_class_indices(labels, 3, seed=2)
    with pytest.raises(ValueError, match="samples_per_class must be >= 1"):
        images.per_class_indices(labels, 0)


def test_bad_folders_and_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        images.image_folder(tmp_path / "nope")
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(FileNotFoundError, match="no class folder"):
        images.image_folder(tmp_path / "flat")
    (tmp_path / "flat" / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no image in the class folder.* empty"):
        images.image_folder(tmp_path / "flat")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match=r"broken\.png: not a readable image"):
        images.decode(broken)
