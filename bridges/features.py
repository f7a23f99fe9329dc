"""A zoo's extracted features, whichever backend made them (no torch imported).

:func:`ncti_jax.bridges.pipeline.extract_zoo` (torch) and
:func:`ncti_jax.bridges.jax_pipeline.extract_zoo` (flax) both return a
:class:`ZooFeatures`; ``ncti rank`` scores either the same way.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .extract import Extraction
    from .jax_extract import JaxExtraction


@dataclasses.dataclass
class ZooFeatures:
    """A zoo's penultimate features on a dataset, ready to score (:meth:`arrays`)."""

    models: list[str]  # the zoo's models, in its order
    extracted: list[str]  # extracted by this call
    stored: list[str]  # already in ``store`` with the same settings: not extracted again
    extraction: Extraction | JaxExtraction | None  # this call's; None: nothing to extract
    store: Path | None  # the feature store, or None for features held in memory
    features: dict[str, Any] | None = dataclasses.field(default=None, repr=False)
    labels: np.ndarray | None = dataclasses.field(default=None, repr=False)
    # In memory, with ``with_logits``: {model: (N, S) source logits}; None otherwise.
    logits: dict[str, Any] | None = dataclasses.field(default=None, repr=False)

    def arrays(self) -> tuple[dict[str, Any], np.ndarray]:
        """``({model: (N, D) features}, labels)`` in the zoo's order: JAX arrays handed
        over from torch without a copy (in memory), or the store's files memory-mapped."""
        if self.store is None:
            return self.features, self.labels
        from ncti_jax import io as ncti_io

        return ncti_io.load_feature_store(self.store, models=self.models)

    def source_logits(self) -> dict[str, Any]:
        """``{model: (N, S) logits of its own classifier}`` in the zoo's order, rows as in
        :meth:`arrays`: JAX arrays (in memory), or the store's ``logits/`` files
        memory-mapped (:func:`ncti_jax.io.load_logits`).

        Raises:
          ValueError: features extracted in memory without ``with_logits``.
          ncti_jax.io.FeatureStoreError: models of the store without logits, all named.
        """
        if self.store is None:
            if self.logits is None:
                raise ValueError(
                    "these features were extracted without their source logits; "
                    "extract again with with_logits=True."
                )
            return {m: self.logits[m] for m in self.models}
        from ncti_jax import io as ncti_io

        return ncti_io.load_logits(self.store, self.models)
