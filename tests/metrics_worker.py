"""Subprocess half of tests/test_metrics_engine.py: score_metrics on N forced CPU devices.

  python tests/metrics_worker.py N METRICS

Prints one JSON line ``{metric: [values in model order]}`` for the zoo of
:func:`test_metrics_engine.zoo_with_logits` (seed from ``NCTI_TEST_SEED``).
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

    sys.path.insert(0, os.path.dirname(__file__))
    from test_metrics_engine import zoo_with_logits

    assert len(jax.devices()) == n_devices
    feats, y, logits = zoo_with_logits(np.random.default_rng(int(os.environ["NCTI_TEST_SEED"])))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = ncti_jax.score_metrics(feats, y, metrics=sys.argv[2], logits=logits)
    print(json.dumps({m: result[m].values.tolist() for m in result.metrics}))
