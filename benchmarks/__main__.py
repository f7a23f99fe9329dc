"""``python -m benchmarks``: the same as ``ncti bench``."""

import sys

from .cli import main

sys.exit(main())
