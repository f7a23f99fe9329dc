"""Subprocess half of tests/test_jax_backend.py: the JAX path on N forced CPU devices, in a
process where torch, torchvision, timm and transformers cannot be imported.

  python tests/jax_extract_worker.py N ZOO_TOML IMAGE_FOLDER OUT_DIR

Extracts the zoo (converted weights cached under $XDG_CACHE_HOME), saves each model's
features to OUT_DIR/features.npz and prints the mesh and each array's sharding; then
runs ``ncti rank --backend jax`` on the same zoo into OUT_DIR/rank.
"""

from __future__ import annotations

import os
import sys


class NotInstalled:
    """An import hook that refuses the torch side, as if it were not installed."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("torch", "torchvision", "timm", "transformers"):
            raise ModuleNotFoundError(f"No module named {name!r}")


if __name__ == "__main__":
    n_devices, zoo_file, folder, out = sys.argv[1:]
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n_devices}"
    sys.meta_path.insert(0, NotInstalled())

    import jax
    import numpy as np

    from ncti_jax import cli
    from ncti_jax.bridges import jax_pipeline

    assert jax.device_count() == int(n_devices)
    result = jax_pipeline.extract_zoo(zoo_file, folder, image_size=32, batch_size=8, progress=False)
    print(result.extraction.device)
    for name, x in result.features.items():
        print(f"{name}: {x.shape} sharded over {len(x.sharding.device_set)} devices")
    np.savez(
        os.path.join(out, "features.npz"), **{n: np.asarray(x) for n, x in result.features.items()}
    )
    argv = ["rank", "--backend", "jax", "--zoo", zoo_file, "--dataset", folder]
    argv += ["--image-size", "32", "--no-progress", "--out", os.path.join(out, "rank"), "-q"]
    code = cli.main(argv)
    assert "torch" not in sys.modules
    sys.exit(code)
