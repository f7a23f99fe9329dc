"""LEEP and NCE in plain NumPy, float64: metrics of the source model's class probabilities.

Both take ``probs``, the pre-trained (source) classifier's class probabilities on
the N target samples, shape (N, C_s) with rows summing to 1, and the target
labels (any hashable values, remapped by :func:`~ncti_jax.reference.ncti.remap_labels`).
Neither depends on the feature dimension (no padding question); the source
classes are whatever columns ``probs`` has.

LEEP (Nguyen et al., "LEEP: A New Measure to Evaluate Transferability of Learned
Representations", ICML 2020)::

    P(y, z) = 1/N sum_{i: y_i = y} probs[i, z]        empirical joint (C_t, C_s)
    P(y | z) = P(y, z) / P(z),  P(z) = sum_y P(y, z)
    EEP_i    = sum_z probs[i, z] P(y_i | z)             expected empirical prediction
    LEEP     = 1/N sum_i log EEP_i                      (<= 0; higher is better)

Source of truth: TLlib (thuml/Transfer-Learning-Library) ``tllib/ranking/leep.py``
(``log_expected_empirical_prediction``), which follows the paper. The ``LEEP``
of TencentARC/SFDA ``metrics.py`` and of the NCTI authors' (BUserName/NCTI)
``metrics.py`` returns ``1/N sum_i EEP_i`` instead: the mean of the probabilities,
without the paper's log (it also hard-codes 1000 source classes and computes
``probs`` from a checkpoint's fc layer). ``variant="repository"`` gives that
number; the default ``variant="paper"`` gives the paper's (and TLlib's). By
Jensen, repository >= exp(paper); both rank models by how well the source
predictions, pushed through P(y|z), predict the target labels, but they are
different numbers and can order models differently.

NCE (Tran et al., "Transferability and Hardness of Supervised Classification
Tasks", ICCV 2019): with the source model's hard predictions ``z_i = argmax_z
probs[i, z]`` (first maximum on ties, as ``np.argmax``)::

    P(y, z) = #{i: y_i = y, z_i = z} / N
    NCE     = -H(Y | Z) = sum_{y, z} P(y, z) log(P(y, z) / P(z))   (<= 0)

Source of truth: TLlib ``tllib/ranking/nce.py`` (``negative_conditional_entropy``,
which takes the argmax labels; :func:`nce_from_predictions` takes them too).

Differences from the originals, all outside their domain of agreement:

- TLlib's LEEP divides ``0 / 0`` when a source class has zero total probability
  (``P(z) = 0``, e.g. one-hot ``probs`` never predicting some class), and the NaN
  spreads to every sample through the matrix product: TLlib returns NaN. Such a
  class contributes ``probs[i, z] P(y|z) = 0`` to every EEP_i, so we drop it and
  return the finite limit (tested: a deterministic source-to-target mapping gives
  LEEP = 0 where TLlib gives NaN).
- TLlib's NCE adds 1e-20 to P(y|z) inside ``-p log p`` to avoid log 0; we use
  ``0 log 0 = 0`` exactly (a difference of at most ~5e-19 per (y, z) cell, so
  NCE of a bijective mapping is exactly 0 here).
- TLlib sizes its tables as max(label) + 1; labels are remapped to 0..C-1 here
  (empty rows/columns change nothing in either formula).

Parity (scratch transcriptions of the originals, never committed; fresh random
inputs: softmax of random logits or Dirichlet rows; N in {50, 300, 2000},
C_s in {5, 40, 1000}, C_t in {2, 10, 100} with C_t <= N/3; 1008 cases for LEEP, 288 for NCE):

- ``leep`` vs TLlib ``tllib/ranking/leep.py``: max rel diff 8.9e-16
- ``leep(variant="repository")`` vs SFDA/NCTI ``metrics.py`` ``LEEP`` (the part
  after its ``softmax``, with C_s in place of the hard-coded 1000): max rel diff 5.5e-16
- ``nce`` vs TLlib ``tllib/ranking/nce.py`` on the argmax: max rel diff 9.7e-16
  where NCE != 0; where the argmax mapping is deterministic (NCE = 0, 11 of 288)
  TLlib gives -4e-18 at most (its 1e-20 offset), this module exactly 0
"""

from __future__ import annotations

import numpy as np

from .ncti import remap_labels

VARIANTS = ("paper", "repository")


def _check_probs(probs, n: int) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != n:
        raise ValueError(f"probs must be (N, C_source) with N = {n} labels, got {p.shape}")
    return p


def joint_distribution(probs, codes: np.ndarray, n_classes: int) -> np.ndarray:
    """Empirical joint P(y, z), shape (C_t, C_s): ``1/N`` times the per-class sums of ``probs``."""
    p = np.asarray(probs, dtype=np.float64)
    joint = np.zeros((n_classes, p.shape[1]))
    np.add.at(joint, codes, p)
    return joint / p.shape[0]


def expected_empirical_prediction(probs, labels) -> np.ndarray:
    """EEP_i = sum_z probs[i, z] P(y_i | z), shape (N,); source classes with P(z) = 0 dropped."""
    y, n_classes = remap_labels(labels)
    p = _check_probs(probs, y.shape[0])
    joint = joint_distribution(p, y, n_classes)
    p_z = joint.sum(axis=0)
    seen = p_z > 0
    conditional = joint[:, seen] / p_z[seen]  # P(y | z), (C_t, C_s')
    return np.einsum("iz,iz->i", p[:, seen], conditional[y])


def leep(probs, labels, *, variant: str = "paper") -> float:
    """LEEP of the source model's ``probs`` (N, C_s) on target ``labels``.

    ``variant="paper"`` (default): mean log EEP, as the paper and TLlib.
    ``variant="repository"``: mean EEP without the log, as SFDA's/NCTI's ``metrics.py``.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    eep = expected_empirical_prediction(probs, labels)
    return float(np.mean(np.log(eep)) if variant == "paper" else np.mean(eep))


def nce_from_predictions(source_labels, labels) -> float:
    """NCE = -H(Y | Z) of hard source predictions ``source_labels`` (N,) and target ``labels``."""
    z, n_source = remap_labels(source_labels)
    y, n_classes = remap_labels(labels)
    if z.shape != y.shape:
        raise ValueError(f"{z.shape[0]} source predictions for {y.shape[0]} labels")
    counts = np.zeros((n_classes, n_source))
    np.add.at(counts, (y, z), 1.0)
    joint = counts / y.shape[0]
    p_z = joint.sum(axis=0)  # every remapped source class occurs: p_z > 0
    nz = joint > 0
    return float(np.sum(joint[nz] * np.log((joint / p_z)[nz])))


def nce(probs, labels) -> float:
    """NCE of the source model's argmax predictions ``argmax_z probs[i, z]`` on ``labels``."""
    y, _ = remap_labels(labels)
    p = _check_probs(probs, y.shape[0])
    return nce_from_predictions(np.argmax(p, axis=1), y)
