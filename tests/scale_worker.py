"""Subprocess half of tests/test_scale.py: runs that need their own JAX runtime.

  python tests/scale_worker.py devices N STRATEGY DTYPE OUT
      score the test zoo on N forced CPU devices
  python tests/scale_worker.py process I NPROC PORT OUT
      process I of NPROC (jax.distributed on 127.0.0.1:PORT), scoring its share
  python tests/scale_worker.py resume CKPT KILL_AFTER OUT
      score with checkpoint=CKPT; SIGKILL itself after KILL_AFTER saves (0: never)

Each run writes its result (scores and raw components) to OUT as JSON.
"""

from __future__ import annotations

import json
import os
import signal
import sys


def zoo(seed: int = 7):
    """The test zoo: 5 models (not a multiple of 2, 4 or 8 devices), ragged widths."""
    import numpy as np

    sys.path.insert(0, os.path.dirname(__file__))
    import zoos

    rng = np.random.default_rng(seed)
    return zoos.zoo(rng, n=1500, n_classes=6, dims=(40, 72, 96, 64, 80))


def dump(result, out: str) -> None:
    fields = ("etf", "ncc", "vc", "ncti", "ranking", "pca_rank", "status")
    payload = {"models": list(result.models)}
    payload.update({f: getattr(result, f).tolist() for f in fields})
    with open(out + ".tmp", "w") as fh:
        json.dump(payload, fh)
    os.replace(out + ".tmp", out)


def main(argv: list[str]) -> None:
    mode = argv[0]
    if mode == "devices":
        n_dev, strategy, dtype, out = int(argv[1]), argv[2], argv[3], argv[4]
        os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n_dev}"
        import jax

        jax.config.update("jax_enable_x64", dtype == "float64")
        import ncti_jax

        assert len(jax.devices()) == n_dev
        feats, y = zoo()
        dump(ncti_jax.score_zoo(feats, y, strategy=strategy, dtype=dtype), out)
    elif mode == "process":
        pid, nproc, port, out = int(argv[1]), int(argv[2]), int(argv[3]), argv[4]
        import jax

        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=nproc, process_id=pid)
        import ncti_jax

        feats, y = zoo()
        names = list(feats)
        mine = {m: feats[m] for i, m in enumerate(names) if i % nproc == pid}
        dump(ncti_jax.score_zoo(mine, y), out)
        jax.distributed.shutdown()
    elif mode == "resume":
        ckpt, kill_after, out = argv[1], int(argv[2]), argv[3]
        import ncti_jax
        from ncti_jax import _checkpoint

        saves = 0
        save = _checkpoint.Checkpoint.save

        def save_then_maybe_die(self, done):
            nonlocal saves
            save(self, done)
            saves += 1
            if saves == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)

        _checkpoint.Checkpoint.save = save_then_maybe_die
        feats, y = zoo()
        dump(ncti_jax.score_zoo(feats, y, checkpoint=ckpt), out)
        with open(out + ".saves", "w") as fh:
            fh.write(str(saves))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
