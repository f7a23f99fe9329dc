"""TransRate in plain NumPy, float64, one model at a time.

TransRate (Huang et al., ICML 2022, "Frustratingly easy transferability estimation") is the
rate-distortion gap of the features ``Z`` (centred by their global mean)::

    TrR = R(Z, eps) - (1 / C) sum_c R(Z_c, eps),
    R(A, eps) = 1/2 logdet(I_D + A^T A / (n eps))          (A: n x D)

``Z_c`` the rows of class ``c`` (not re-centred: offsets from the global mean), ``n`` the number
of rows of the block being coded, ``eps`` the distortion (default ``1e-4``). Source of truth:
TLlib ``tllib/ranking/transrate.py`` (the same as the authors' code): its conditional term is
the unweighted mean over classes, and it calls ``slogdet`` on the ``D x D`` matrix.

Route taken here: by Sylvester's identity ``logdet(I_D + A^T A / (n eps)) =
sum_i log1p(s_i^2 / (n eps))`` over the singular values ``s_i`` of ``A``: thin SVDs, no
``D x D`` matrices, no determinant.

Differences from the original: none in value. Labels are any hashable values
(``remap_labels``); the original takes ``C = max + 1`` and returns NaN when a label in
``0..C-1`` has no sample.

Zero-padded columns: invariant (a zero column adds a zero singular value, ``log1p(0) = 0``;
in ``slogdet`` terms, a block of the identity).

A quirk of the definition (the class blocks are coded around the global mean): with two
balanced classes the class offsets ``+-m`` raise ``R(Z)`` and every ``R(Z_c)`` alike, and
TransRate does not grow (it drifts down slightly) as the classes separate; from three classes
on it grows with the separation.

Not invariant to a rescaling of the features (``eps`` is absolute), as in the original.

Checked against TLlib ``tllib/ranking/transrate.py`` (transcribed outside the repository) on
random inputs, N in {30, 200, 1000}, D in {5, 64, 300} (N < D included), C in {2, 5, 20},
two draws each (Gaussian and non-negative, scale 0.01 to 3): max rel diff 6.4e-12.
"""

from __future__ import annotations

import numpy as np

from .ncti import remap_labels

EPS = 1e-4  # TLlib's default distortion


def coding_rate(block: np.ndarray, eps: float = EPS) -> float:
    """``1/2 logdet(I_D + A^T A / (n eps))`` of an (n, D) block ``A``, through its SVD."""
    a = np.asarray(block, dtype=np.float64)
    n = a.shape[0]
    if n == 0:
        return 0.0
    s = np.linalg.svd(a, compute_uv=False)
    return float(0.5 * np.sum(np.log1p(s**2 / (n * eps))))


def transrate(features: np.ndarray, labels, *, eps: float = EPS) -> float:
    """TransRate of (N, D) features: ``R(Z) - mean_c R(Z_c)``; invariant to zero padding."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {x.shape}")
    y, n_classes = remap_labels(labels)
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"{y.shape[0]} labels for {x.shape[0]} samples")
    z = x - x.mean(axis=0)
    conditional = sum(coding_rate(z[y == c], eps) for c in range(n_classes)) / n_classes
    return coding_rate(z, eps) - conditional
