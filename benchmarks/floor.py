"""The floor: the least data any implementation must read, the arithmetic it must do,
and the least time those take on the measured machine.

Per model with N samples, width D, C classes, k = min(64, N - 1, D) principal
directions, r = min(C - 1, k) LDA directions and m = min(N, D):

- bytes: the float32 features, read once: 4 N D;
- covariance: N D m, the D x D covariance (or the N x N sample Gram when N < D)
  as a symmetric rank-N update (BLAS syrk, which NumPy uses for ``x.T @ x``); a
  full matrix product does twice that, 2 N D m, but a floor must not count work
  that an implementation can skip;
- eigh: (4/3) m^3, the Householder reduction to tridiagonal form that a dense
  symmetric eigensolver starts with, which dominates when only k << m eigenpairs
  are wanted; plus 2 m^2 k to back-transform those k eigenvectors;
- projection: 2 N D k, the data onto the top-k directions;
- lda: 2 N k^2 + (4/3) k^3 for the within-class scatter and its decomposition,
  2 N k (r + C) for the LDA transform and the decision function;
- nuclear_norms: 2 N r^2 + (4/3) r^3 for etf, and for vc, per class (N_c = N / C
  rows, b = min(N_c, C)), 2 N_c C b + (4/3) b^3 through the smaller Gram matrix.

Terms linear in N D (centring, softmax) are left out. The time floor on a
machine is ``max(bytes / bandwidth, flops / matmul rate)``: it treats every flop
as if it ran at the dense matmul rate, so it is a bound no implementation can
beat, not a target all of it can reach.
"""

from __future__ import annotations

from .scenarios import Scenario

N_COMPONENTS = 64


def model_flops(n: int, d: int, n_classes: int, n_components: int = N_COMPONENTS) -> dict:
    """FLOPs of NCTI for one model, by term."""
    k = min(n_components, n - 1, d)
    r = min(n_classes - 1, k)
    m = min(n, d)
    per_class = n / n_classes
    b = min(per_class, n_classes)
    return {
        "covariance": n * d * m,
        "eigh": 4 / 3 * m**3 + 2 * m**2 * k,
        "projection": 2 * n * d * k,
        "lda": 2 * n * k**2 + 4 / 3 * k**3 + 2 * n * k * (r + n_classes),
        "nuclear_norms": 2 * n * r**2
        + 4 / 3 * r**3
        + n_classes * (2 * per_class * n_classes * b + 4 / 3 * b**3),
    }


def scenario_cost(scenario: Scenario) -> dict:
    """``{"bytes", "flops", "flops_by_term"}`` of a whole zoo."""
    terms: dict[str, float] = {}
    for _, d in scenario.dims:
        for term, value in model_flops(scenario.n_samples, d, scenario.n_classes).items():
            terms[term] = terms.get(term, 0.0) + value
    return {
        "bytes": scenario.feature_bytes,
        "flops": sum(terms.values()),
        "flops_by_term": terms,
    }


def floor_seconds(cost: dict, bandwidth_gbps: float, matmul_gflops: float) -> float:
    return max(cost["bytes"] / (bandwidth_gbps * 1e9), cost["flops"] / (matmul_gflops * 1e9))
