"""Subprocess half of tests/test_regimes.py: every regime on N forced CPU devices.

  python tests/regimes_worker.py N

Prints one JSON line ``{"regime/device-fused": [problems]}`` (empty lists when the engine
agrees with the reference). The seed comes from ``NCTI_TEST_SEED``.
"""

from __future__ import annotations

import json
import os
import sys
import warnings

if __name__ == "__main__":
    n_devices = int(sys.argv[1])
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n_devices}"

    import jax
    import numpy as np

    import ncti_jax
    from ncti_jax import _plan, reference, regimes

    assert len(jax.devices()) == n_devices
    seed = int(os.environ["NCTI_TEST_SEED"])
    reports = {}
    for regime in sorted(regimes.REGIMES):
        feats, y = regimes.make(regime, np.random.default_rng(seed), size="tiny")
        ref = reference.score_zoo({m: np.asarray(x, np.float64) for m, x in feats.items()}, y)
        # Streaming over several devices is checked by tests/test_scale.py (2 and 8 devices);
        # here every regime goes through the sharded fused kernel, the accelerators' path.
        key = f"{regime}/device-fused"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            with _plan.device_numerics():
                result = ncti_jax.score_zoo(feats, y, strategy="fused")
        sys.path.insert(0, os.path.dirname(__file__))
        from test_regimes import device_dropped_directions

        try:
            if device_dropped_directions(result, ref, feats):
                reports[key] = []
                continue
        except AssertionError as err:
            reports[key] = [f"device exception not explained: {err}"]
            continue
        reports[key] = regimes.compare(result, ref)["problems"]
    print(json.dumps(reports))
