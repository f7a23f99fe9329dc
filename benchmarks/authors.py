"""The authors' NCTI pipeline as they ran it: scikit-learn, one model after another.

Per model: ``PCA(n_components=64)`` with scikit-learn's default solver
(``"auto"``: an unseeded randomized SVD for D > 1000, the covariance eigh for
tall data with D <= 1000), the shrinkage rule, ``LinearDiscriminantAnalysis``
with the solver it selects, and the three components; then min-max
normalisation over the zoo. Features are cast to float64 first, so scikit-learn
computes in float64 throughout. Needs scikit-learn.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def model_components(
    x: np.ndarray, y: np.ndarray, n_components: int = 64, *, svd_solver: str = "auto"
) -> dict:
    """``{"etf", "ncc", "vc", "pca_solver", "lda_solver"}`` of one model.

    ``svd_solver="auto"`` is what the authors ran; the tests use ``"full"`` (exact PCA)
    to check the reference against scikit-learn.
    """
    from sklearn.decomposition import PCA
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    x = np.asarray(x, dtype=np.float64)
    pca = PCA(n_components=n_components, svd_solver=svd_solver)
    z = pca.fit_transform(x)
    shrinkage = max(np.exp(-np.sum(pca.explained_variance_[:32])), 1e-10)
    if shrinkage == 1e-10:
        lda = LinearDiscriminantAnalysis(solver="svd")
    else:
        lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage=float(shrinkage))
    low = lda.fit_transform(z, y)
    etf = np.linalg.norm(low - low.mean(axis=0), ord="nuc")
    probs = lda.predict_proba(z)
    ncc = probs[np.arange(len(y)), np.searchsorted(lda.classes_, y)].mean()
    vc = np.log(sum(np.linalg.norm(probs[y == c], ord="nuc") for c in lda.classes_))
    return {
        "etf": float(etf),
        "ncc": float(ncc),
        "vc": float(vc),
        # The solver "auto" resolved to (scikit-learn keeps it in a private attribute).
        "pca_solver": pca._fit_svd_solver,
        "lda_solver": lda.solver,
    }


def score_zoo(features: Mapping[str, np.ndarray], labels: np.ndarray) -> dict:
    """Raw components, NCTI ranking (model names, best first) and PCA solvers of a zoo."""
    y = np.asarray(labels).reshape(-1)
    models = list(features)
    comps = [model_components(features[m], y) for m in models]
    raw = np.array([[c["etf"], c["ncc"], c["vc"]] for c in comps])
    norm = (raw - raw.min(axis=0)) / (raw.max(axis=0) - raw.min(axis=0))
    ncti = norm[:, 0] + norm[:, 1] - norm[:, 2]
    return {
        "models": models,
        "etf": raw[:, 0].tolist(),
        "ncc": raw[:, 1].tolist(),
        "vc": raw[:, 2].tolist(),
        "ranking": [models[i] for i in np.argsort(-ncti, kind="stable")],
        "details": {"pca_solver": sorted({c["pca_solver"] for c in comps})},
    }
