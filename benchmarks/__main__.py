"""``python -m ncti_jax.benchmarks`` (``python -m benchmarks`` in a checkout): ``ncti bench``."""

import sys

from .cli import main

sys.exit(main())
