"""The model axis over a device mesh, on one host or many.

Models are independent until the zoo-wide min-max normalisation, so the model
axis is sharded with no communication at all: :func:`over_models` wraps a
vmapped per-model kernel in :func:`jax.shard_map`, each device scoring its own
block of models. Every call's model count is padded to a multiple of the
local device count with dummy models, which the caller drops.

With ``jax.distributed`` initialised, the mesh spans every process's devices and
each process feeds the rows of the global arrays that its own devices hold
(:func:`put_models`): the zoo is scored as one global array, and
:func:`allgather` then gives every process the whole zoo's raw components.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "models"


def model_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: every device of every process)."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices: pass at least one device.")
    if len({d.platform for d in devices}) > 1:
        raise ValueError(
            "devices: every device must be of one platform; got "
            f"{sorted({d.platform for d in devices})}."
        )
    if len(set(devices)) != len(devices):
        raise ValueError("devices: a device is listed twice.")
    # Group each process's devices together, so a process owns one contiguous block.
    devices.sort(key=lambda d: (d.process_index, d.id))
    return Mesh(np.array(devices), (AXIS,))


def local_count(mesh: Mesh) -> int:
    """The devices of ``mesh`` that this process drives."""
    return sum(d.process_index == jax.process_index() for d in mesh.devices.flat)


def over_models(kernel: Callable, mesh: Mesh, n_replicated: int) -> Callable:
    """``kernel(*per_model, *replicated)`` run by every device on its block of models.

    The first arguments have the model axis first and are split over the mesh; the
    last ``n_replicated`` are whole on every device. Outputs are split likewise.
    """

    def sharded(*args):
        n_split = len(args) - n_replicated
        specs = (P(AXIS),) * n_split + (P(),) * n_replicated
        # Each device runs the kernel on its own models with no collective, so there is
        # nothing for shard_map's replication types to check; with the check on, every
        # loop carry a kernel starts from a constant (NLEEP's EM, LogME's fixed point)
        # would need an explicit pcast to "varying".
        return jax.shard_map(kernel, mesh=mesh, in_specs=specs, out_specs=P(AXIS), check_vma=False)(
            *args
        )

    return sharded


def put_models(local: Any, mesh: Mesh) -> jax.Array:
    """This process's block of models (model axis first) as a global array on ``mesh``."""
    sharding = NamedSharding(mesh, P(AXIS))
    if not multi_process():
        return jax.device_put(local, sharding)  # device arrays stay on the devices
    local = np.asarray(jax.device_get(local))
    n_proc = mesh.devices.size // local_count(mesh)
    shape = (local.shape[0] * n_proc, *local.shape[1:])
    return jax.make_array_from_process_local_data(sharding, local, shape)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Host arrays placed whole on every device of ``mesh``."""
    sharding = NamedSharding(mesh, P())
    if not multi_process():
        return jax.device_put(tree, sharding)
    return jax.tree.map(
        lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)), tree
    )


def local_rows(tree: Any) -> Any:
    """The rows of globally sharded outputs that this process's devices hold, on the host."""

    def rows(a: jax.Array) -> np.ndarray:
        if a.is_fully_addressable:
            return np.asarray(jax.device_get(a))
        shards = sorted(a.addressable_shards, key=lambda s: s.index[0].start or 0)
        return np.concatenate([np.asarray(s.data) for s in shards])

    return jax.tree.map(rows, tree)


def multi_process() -> bool:
    return jax.process_count() > 1


def allgather(local: np.ndarray) -> np.ndarray:
    """Every process's (same-shaped) array, stacked along a new leading axis."""
    if not multi_process():
        return np.asarray(local)[None]
    return np.asarray(multihost_utils.process_allgather(np.asarray(local), tiled=False))


def agree_max(value: int) -> int:
    """The largest of every process's ``value``."""
    return int(allgather(np.array([value], np.int64)).max())


def check_same(what: str, digest: bytes) -> None:
    """Raises unless every process passed the same ``digest`` (e.g. of the labels)."""
    got = allgather(np.frombuffer(digest, np.uint8))
    if not (got == got[0]).all():
        bad = [i for i in range(got.shape[0]) if not (got[i] == got[0]).all()]
        raise ValueError(
            f"{what} differ between processes (process(es) {bad} disagree with process 0); "
            "every process must pass the same samples in the same order."
        )


def allgather_names(names: Sequence[str]) -> list[list[str]]:
    """Every process's list of names, in process order."""
    if not multi_process():
        return [list(names)]
    encoded = "\n".join(names).encode()
    width = agree_max(len(encoded))
    buf = np.zeros(width + 1, np.uint8)
    buf[: len(encoded)] = np.frombuffer(encoded, np.uint8)
    buf[-1] = 1 if names else 0
    out = []
    for row in allgather(buf):
        text = bytes(row[:-1]).rstrip(b"\0").decode()
        out.append(text.split("\n") if row[-1] else [])
    return out


def gather_models(
    names: Sequence[str], fields: dict[str, np.ndarray]
) -> tuple[tuple[str, ...], dict[str, np.ndarray]]:
    """Every process's models and their per-model ``fields`` (rows in ``names``' order),
    in process order: the whole zoo, on every process.

    Raises:
      ValueError: two processes scored models of the same name.
    """
    all_names = allgather_names(names)
    if len(all_names) == 1:
        return tuple(names), fields
    width = max(len(n) for n in all_names)
    gathered = {}
    for f, a in fields.items():
        padded = np.zeros((width, *a.shape[1:]), a.dtype)
        padded[: a.shape[0]] = a
        rows = allgather(padded)
        gathered[f] = np.concatenate([rows[p, : len(n)] for p, n in enumerate(all_names)])
    models = tuple(m for group in all_names for m in group)
    if len(set(models)) != len(models):
        dup = sorted({m for m in models if models.count(m) > 1})
        raise ValueError(f"model names must be unique across processes; repeated: {dup}.")
    return models, gathered
