"""Source classifier logits for the parity tests of the metrics that read them (LEEP, NCE,
ETran): a random linear head on each model's standardised features plus noise, with a
different number of source classes per model (a ragged zoo: 3 and 100 among them)."""

from __future__ import annotations

import numpy as np

# Source classes per model, in zoo order (cycled): few and many beside each other.
SOURCE_CLASSES = (3, 100, 17, 41, 8)


def source_logits(feats: dict[str, np.ndarray], rng, *, strength: float = 3.0) -> dict:
    """``{model: (N, S_m) float64 logits}``: ``strength`` times a random unit-variance head
    on the model's centred features scaled to unit overall spread, plus N(0, 1) noise."""
    out = {}
    for j, (name, x) in enumerate(feats.items()):
        x = np.asarray(x, np.float64)
        xc = x - x.mean(axis=0)
        spread = xc.std() or 1.0
        s = SOURCE_CLASSES[j % len(SOURCE_CLASSES)]
        head = rng.normal(size=(x.shape[1], s)) * strength / np.sqrt(x.shape[1])
        out[name] = (xc / spread) @ head + rng.normal(size=(x.shape[0], s))
    return out
