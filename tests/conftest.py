"""Shared fixtures: fresh random generators (seed printed on failure), x64, zoos."""

from __future__ import annotations

import os
import secrets

import jax
import numpy as np
import pytest
from hypothesis import settings

# Property tests: CI runs a pinned, derandomised profile (the same examples every run, so a
# red CI is reproducible); elsewhere hypothesis explores. The seeded generators of the other
# tests stay fresh in both (see the ``seed`` fixture).
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

# The CLI turns on JAX's persistent compilation cache (in ~/.cache by default) for the rest
# of its process: tests that call it in this process leave the cache off, and the cache's
# own test names a directory of its own.
os.environ.setdefault("NCTI_JAX_CACHE", "off")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def seed(request) -> int:
    """A fresh seed per test (NCTI_TEST_SEED pins it); shown in the failure report."""
    value = int(os.environ.get("NCTI_TEST_SEED", secrets.randbits(32)))
    request.node.user_properties.append(("seed", value))
    print(f"seed = {value}  (rerun with NCTI_TEST_SEED={value})")
    return value


@pytest.fixture
def rng(seed) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.fixture
def x64():
    """64-bit JAX for the duration of one test, restored afterwards."""
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """A tiny ImageFolder for the torch bridge: 3 classes x 8 images, each class a
    different mean colour."""
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for c, name in enumerate(("cat", "dog", "fox")):
        (root / name).mkdir()
        for i in range(8):
            base = np.zeros((48, 40, 3)) + 60 * c + 30
            pixels = np.clip(base + rng.normal(0, 40, base.shape), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root
