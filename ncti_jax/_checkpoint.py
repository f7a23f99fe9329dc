"""Resumable zoo runs: finished models' raw components, checkpointed with orbax.

A run with ``checkpoint=DIR`` saves, after every compiled call, the raw
components of every model finished so far, with a fingerprint of what they were
computed from (model names, shapes and a digest of each model's feature values,
the labels, ``k``, dtype, precision): a model re-extracted with the same shape
but new values does not get its old score back. A
restarted run restores them and scores only the rest, so a preempted job loses at
most one call's work and ends with the result of an uninterrupted run.

Orbax writes each step to a temporary directory and renames it when complete, so
a job killed mid-save leaves the previous step intact. The saved arrays also
carry a digest (:func:`content_digest` of each field) that is checked on restore: a checkpoint that does not
match its digest or its fingerprint raises :class:`CheckpointError` instead of
being reused.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import numpy as np


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used for this run (corrupt, or another zoo's)."""


def content_digest(x: Any, rows: int = 8192) -> str:
    """BLAKE2b of an array's values (a model's features, the labels), read in row
    blocks (memory-mapped files and :class:`ncti_jax.RowChunks` too), with its dtype
    and shape: the one content digest of the engine."""
    from ._stream import iter_rows

    h = hashlib.blake2b(digest_size=16)
    h.update(f"{np.dtype(x.dtype)}:{tuple(int(s) for s in x.shape)}".encode())
    for block in iter_rows(x, rows):
        h.update(np.ascontiguousarray(np.asarray(block)).tobytes())
    return h.hexdigest()


def _changed(ours: dict[str, Any], theirs: dict[str, Any]) -> str:
    """What differs between two fingerprints, in words."""
    if not isinstance(theirs, dict):
        return "it has no fingerprint"
    mine, old = ours.get("models", {}), theirs.get("models", {})
    changed = sorted(m for m in mine if m in old and mine[m] != old[m])
    if changed:
        return f"the features of {changed[:5]} changed since it was written"
    if set(mine) != set(old):
        return f"it holds other models ({sorted(set(old) ^ set(mine))[:5]} differ)"
    keys = sorted(k for k in ours if ours.get(k) != theirs.get(k))
    return f"other {', '.join(keys)}"


def _digest(names: list[str], tree: dict[str, np.ndarray]) -> str:
    """The digest of a saved step: its model names and each field's content digest."""
    parts = ["\n".join(names), *(f"{f}:{content_digest(a)}" for f, a in sorted(tree.items()))]
    return hashlib.blake2b("\n".join(parts).encode(), digest_size=16).hexdigest()


class Checkpoint:
    """The finished models of one zoo run, saved under ``directory``.

    Args:
      directory: where the steps live (created if missing).
      fingerprint: JSON-serialisable description of the run; a restore from a
        different fingerprint raises.
      fields: the names of each model's saved arrays (the kernel's
        :data:`ncti_jax._kernel.RAW_FIELDS`).
    """

    def __init__(
        self, directory: str | os.PathLike, fingerprint: dict[str, Any], *, fields: tuple[str, ...]
    ):
        try:
            import orbax.checkpoint as ocp
        except ImportError:  # pragma: no cover - orbax is a dependency of resumable runs
            raise ImportError(
                "checkpoint= needs orbax-checkpoint: pip install 'ncti-jax[resume]'"
            ) from None
        self._ocp = ocp
        self.fields = tuple(fields)
        self.directory = os.path.abspath(os.fspath(directory))
        self.fingerprint = json.loads(json.dumps(fingerprint))  # normalised, e.g. tuples
        # Every process keeps its own models' results in its own directory: no primary host.
        local = ocp.options.MultiprocessingOptions(primary_host=None)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=2,
            enable_async_checkpointing=False,  # a step is on disk when save() returns
            multiprocessing_options=local,
        )
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={
                "state": ocp.StandardCheckpointHandler(multiprocessing_options=local),
                "meta": ocp.JsonCheckpointHandler(multiprocessing_options=local),
            },
        )

    def restore(self) -> dict[str, dict[str, np.ndarray]]:
        """``{model name: its raw fields}`` of the latest step; empty if there is none."""
        step = self._manager.latest_step()
        if step is None:
            return {}
        ocp = self._ocp
        where = f"checkpoint {self.directory} (step {step})"
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()
                ),
            )
            meta, state = restored["meta"], restored["state"]
            tree = {f: np.asarray(state[f]) for f in self.fields}
            names = list(meta["names"])
        except Exception as err:
            raise CheckpointError(
                f"{where} cannot be read ({type(err).__name__}: {err}); it is corrupt or "
                "from another version. Delete it to start over."
            ) from err
        if meta.get("fingerprint") != self.fingerprint:
            raise CheckpointError(
                f"{where} was written for a different run "
                f"({_changed(self.fingerprint, meta.get('fingerprint'))}); "
                "pass another checkpoint directory or delete it."
            )
        if meta.get("digest") != _digest(names, tree):
            raise CheckpointError(
                f"{where} does not match its digest: its files were modified or "
                "truncated. Delete it to start over."
            )
        return {name: {f: tree[f][i] for f in self.fields} for i, name in enumerate(names)}

    def save(self, done: dict[str, dict[str, np.ndarray]]) -> None:
        """Saves every finished model (step = how many)."""
        names = list(done)
        tree = {f: np.stack([np.asarray(done[m][f]) for m in names]) for f in self.fields}
        meta = {"fingerprint": self.fingerprint, "names": names, "digest": _digest(names, tree)}
        ocp = self._ocp
        self._manager.save(
            len(names),
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()
