"""Subprocess half of tests/test_jax_backend.py: the JAX extraction on N forced CPU devices.

  python tests/jax_extract_worker.py N ZOO_TOML IMAGE_FOLDER CACHE_DIR OUT.npz

Saves each model's features to OUT.npz and prints the mesh and the features' sharding.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    n_devices, zoo_file, folder, cache, out = sys.argv[1:]
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n_devices}"

    import jax
    import numpy as np

    from ncti_jax.bridges import jax_pipeline

    assert jax.device_count() == int(n_devices)
    result = jax_pipeline.extract_zoo(
        zoo_file, folder, image_size=32, batch_size=8, progress=False, cache_dir=cache
    )
    print(result.extraction.device)
    for name, x in result.features.items():
        print(f"{name}: {x.shape} sharded over {len(x.sharding.device_set)} devices")
    np.savez(out, **{name: np.asarray(x) for name, x in result.features.items()})
