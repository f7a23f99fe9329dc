"""JAX-native extraction: image files to penultimate features on a device mesh, no torch.

The flax models of :mod:`ncti_jax.bridges.flax_models` run jit-compiled, data
parallel: each batch of images is split over a 1-D mesh of every device (the
``batch`` axis), the parameters are replicated, and each model's features stay
sharded on the devices, so that scoring (:func:`ncti_jax.score_metrics`) reads
them where they are, with no host round trip.

Images are decoded once each (:func:`ncti_jax.bridges.images.decode`, in a pool of
threads: Pillow releases the GIL while it decodes and resizes), each distinct input
size is prepared once per image and every model of that size sees the same array;
the next batch is decoded while the devices run the current one. One process
drives the mesh (the devices of one host): the engine's multi-process scoring
gives each process whole models, which rows sharded over hosts are not.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .images import ImageFolder, decode, paper_preprocess

BATCH_AXIS = "batch"


@dataclasses.dataclass
class JaxExtraction:
    """Features of every model, sharded over ``mesh``'s devices, in sample order."""

    features: dict[str, jax.Array]  # {model: (N, D) float32}
    labels: np.ndarray
    seconds: float  # compilation included
    device: str  # e.g. "4 x cpu", "8 x TPU v5 lite"
    logits: dict[str, jax.Array] = dataclasses.field(default_factory=dict)
    start: int = 0  # rows resumed (always 0: in-memory extraction does not resume)

    @property
    def images_per_second(self) -> float:
        done = len(self.labels) - self.start
        return done / self.seconds if self.seconds else float("nan")


def batch_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: every local device)."""
    devices = list(jax.local_devices() if devices is None else devices)
    return Mesh(np.asarray(devices), (BATCH_AXIS,))


def platform_devices(device: str = "auto") -> list[jax.Device]:
    """The devices of ``--device``: ``auto`` (JAX's default backend), ``cpu``, ``gpu`` (or
    ``cuda``), ``tpu``.

    Raises:
      ValueError: a platform JAX does not have here, or a single device (``cuda:1``).
    """
    if device == "auto":
        return jax.devices()
    platform = {"cuda": "gpu"}.get(device, device)
    if platform not in ("cpu", "gpu", "tpu"):
        raise ValueError(
            f"--device {device!r}: --backend jax runs on every device of a platform: "
            "auto, cpu, gpu (cuda) or tpu."
        )
    try:
        return jax.devices(platform)
    except RuntimeError as err:
        raise ValueError(f"--device {device!r}: JAX has no {platform} devices ({err}).") from None


def describe_mesh(mesh: Mesh) -> str:
    kinds = sorted({d.device_kind for d in mesh.devices.flat})
    return f"{mesh.devices.size} x {', '.join(kinds)}"


def extract_features(
    models: Mapping[str, object],
    folder: ImageFolder,
    sizes: Mapping[str, int],
    *,
    batch_size: int = 64,
    workers: int = 2,
    mesh: Mesh | None = None,
    with_logits: Sequence[str] = (),
    progress: Callable[[int], None] | None = None,
) -> JaxExtraction:
    """Runs every model over ``folder``'s images in one pass, data parallel.

    Args:
      models: ``{name: flax model}``: ``model(images)`` maps (B, H, W, 3) normalised
        float32 images to (B, D) penultimate features; ``model.head(features)`` gives
        the source logits.
      folder: the samples (:func:`ncti_jax.bridges.images.image_folder`).
      sizes: ``{name: input size}`` of the paper's preprocessing for each model;
        models of one size share the prepared batch.
      batch_size: images per step over the whole mesh; rounded up to a multiple of
        the mesh's devices. The last batch is padded (and the padding dropped), so
        each model compiles once.
      workers: threads decoding and preprocessing images.
      mesh: a 1-D mesh with axis ``"batch"`` (default: :func:`batch_mesh`).
      with_logits: the models whose source logits are wanted too, computed in the
        same pass from the features.
      progress: called with the number of images done after each batch.
    """
    if jax.process_count() > 1:
        raise ValueError(
            "--backend jax extracts in one process (the devices of one host); under "
            f"jax.distributed there are {jax.process_count()}: extract per host, or use "
            "--backend torch and a feature store."
        )
    mesh = batch_mesh() if mesh is None else mesh
    n_dev = mesh.devices.size
    batch = -(-batch_size // n_dev) * n_dev
    n = len(folder)
    if n == 0:
        raise ValueError(f"image folder {folder.root}: no samples.")
    rows = NamedSharding(mesh, PartitionSpec(BATCH_AXIS))
    replicated = NamedSharding(mesh, PartitionSpec())
    steps = {
        name: _compiled_step(model, replicated, rows, name in set(with_logits))
        for name, model in models.items()
    }
    features: dict[str, list[jax.Array]] = {name: [] for name in models}
    logits: dict[str, list[jax.Array]] = {name: [] for name in with_logits}
    start = time.perf_counter()
    done = 0
    for inputs in _batches(folder, sorted(set(sizes.values())), batch, rows, workers):
        for name, (params, step) in steps.items():
            out = step(params, inputs[sizes[name]])
            if name in logits:
                features[name].append(out[0])
                logits[name].append(out[1])
            else:
                features[name].append(out)
        done = min(done + batch, n)
        if progress is not None:
            progress(done)
    gathered = {name: _rows(parts, n) for name, parts in features.items()}
    gathered_logits = {name: _rows(parts, n) for name, parts in logits.items()}
    jax.block_until_ready((gathered, gathered_logits))
    return JaxExtraction(
        gathered,
        folder.labels.copy(),
        time.perf_counter() - start,
        describe_mesh(mesh),
        logits=gathered_logits,
    )


# Jitted steps by (graph, logits or not, shardings): the models of one architecture share
# one, and a later extraction in the same process reuses its compilations.
_STEPS: dict[tuple, Callable] = {}


def _compiled_step(model, replicated: NamedSharding, rows: NamedSharding, with_logits: bool):
    """``(params on the mesh, jitted step(params, images) -> features[, logits])``."""
    from flax import nnx

    graphdef, state = nnx.split(model)
    params = jax.device_put(state, replicated)
    key = (graphdef, with_logits, replicated, rows)
    if key in _STEPS:
        return params, _STEPS[key]

    def step(state, images):
        # float32 products in full (a TPU's default passes them through bfloat16, 1e-3
        # off): the features are the torch models' to 1e-4 on every backend.
        with jax.default_matmul_precision("float32"):
            net = nnx.merge(graphdef, state)
            feats = net(images).astype(jnp.float32)
            if with_logits:
                return feats, net.head(feats).astype(jnp.float32)
            return feats

    out = (rows, rows) if with_logits else rows
    _STEPS[key] = jax.jit(step, in_shardings=(replicated, rows), out_shardings=out)
    return params, _STEPS[key]


def _rows(parts: list[jax.Array], n: int) -> jax.Array:
    """The batches' rows, concatenated and trimmed of the last batch's padding."""
    return jnp.concatenate(parts, axis=0)[:n]


def _batches(
    folder: ImageFolder,
    sizes: Sequence[int],
    batch: int,
    rows: NamedSharding,
    workers: int,
) -> Iterator[dict[int, jax.Array]]:
    """Yields ``{size: (batch, size, size, 3) images sharded by rows}``, in order, the
    last batch padded with zeros; the next batch is decoded by the pool while the
    caller runs the current one."""
    n = len(folder)

    def prepare(offset: int) -> dict[int, np.ndarray]:
        out = {s: np.zeros((batch, s, s, 3), np.float32) for s in sizes}
        for i, images in enumerate(pool.map(load, range(offset, min(offset + batch, n)))):
            for s in sizes:
                out[s][i] = images[s]
        return out

    def load(index: int) -> dict[int, np.ndarray]:
        image = decode(folder.root / folder.paths[index])
        return {s: paper_preprocess(image, s) for s in sizes}

    with (
        concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool,
        concurrent.futures.ThreadPoolExecutor(1) as ahead,
    ):
        offsets = range(0, n, batch)
        pending = ahead.submit(prepare, offsets[0])
        for k in range(len(offsets)):
            host = pending.result()
            if k + 1 < len(offsets):
                pending = ahead.submit(prepare, offsets[k + 1])
            yield {s: jax.device_put(x, rows) for s, x in host.items()}
