"""Seeded generators of the input regimes real penultimate features come in.

Friendly Gaussian clusters hide most numerical trouble; these generators make
the shapes and spectra that broke earlier versions of the engine (see
``docs/algorithm.md``, "Input regimes"). The differential tests and the accuracy
benchmarks both draw from here, so a regime is defined once.

Every generator takes a NumPy ``Generator`` and returns ``(features, labels)``
with ``features`` a ``{model name: (N, D) array}`` zoo of a few models that
differ in how separated their classes are.

Example:
  >>> import numpy as np
  >>> from ncti_jax import regimes
  >>> feats, y = regimes.make("collapsed", np.random.default_rng(0), size="tiny")
  >>> sorted(feats)[:1], y.shape
  (['collapsed_0'], (400,))
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Zoo = tuple[dict[str, np.ndarray], np.ndarray]

# (n, d, n_classes) per size; "tiny" keeps the test suite inside its time budget.
_SIZES = {"tiny": (400, 48, 6), "small": (1500, 128, 10), "large": (5000, 512, 10)}


def _balanced(rng: np.random.Generator, n: int, c: int) -> np.ndarray:
    return rng.permutation(np.arange(n) % c)


def longtail_labels(rng: np.random.Generator, n: int, c: int, head: float = 0.4) -> np.ndarray:
    """One head class with ``head`` of the ``n`` samples, the other classes 1-3 samples
    each (the last class takes what is left over), in random order."""
    tail = rng.integers(1, 4, c - 1)
    counts = np.concatenate([[max(int(head * n), 2)], tail])
    counts[0] += n - counts.sum()
    if counts[0] < 2:
        raise ValueError(f"longtail_labels: {n} samples are too few for {c} classes.")
    return rng.permutation(np.repeat(np.arange(c), counts))


def fidelity_issue_model(seed: int, n: int = 5000, d: int = 512, c: int = 10) -> np.ndarray:
    """The fidelity issue's generator: :func:`relu_features` of balanced labels
    ``arange(n) % c`` with separation 1.1, drawn from ``default_rng(1000 + seed)``
    (seeds 20 and 28 gave NaN vc before sub-eps^2 probabilities were flushed)."""
    return relu_features(np.random.default_rng(1000 + seed), np.arange(n) % c, d, 1.1)


def relu_features(
    rng: np.random.Generator, y: np.ndarray, d: int, sep: float, latent: int = 32, noise=0.3
) -> np.ndarray:
    """Post-ReLU features of a latent class structure, as in the fidelity issue:
    larger ``sep``, classes further apart (``sep`` >= 1: ncc near 1)."""
    c = int(y.max()) + 1
    lat = rng.normal(size=(c, latent))[y] * sep + rng.normal(size=(y.shape[0], latent))
    mix = rng.normal(size=(latent, d)) / 5
    return np.maximum(lat @ mix + noise * rng.normal(size=(y.shape[0], d)), 0).astype(np.float32)


def collapsed(rng: np.random.Generator, size: str = "small") -> Zoo:
    """Strong models on an easy target: ncc -> 1, near one-hot probability blocks."""
    n, d, c = _SIZES[size]
    y = _balanced(rng, n, c)
    seps = (0.4, 1.1, 2.5, 6.0)
    return {f"collapsed_{i}": relu_features(rng, y, d, s) for i, s in enumerate(seps)}, y


def binary(rng: np.random.Generator, size: str = "small") -> Zoo:
    """Two classes, from mild to full separation (the softmax of two logits)."""
    n, d, _ = _SIZES[size]
    y = _balanced(rng, n, 2)
    seps = (0.3, 1.0, 4.0)
    return {f"binary_{i}": relu_features(rng, y, d, s) for i, s in enumerate(seps)}, y


def chance(rng: np.random.Generator, size: str = "small") -> Zoo:
    """From chance to mild separation."""
    n, d, c = _SIZES[size]
    y = _balanced(rng, n, c)
    seps = (0.0, 0.05, 0.2)
    return {f"chance_{i}": relu_features(rng, y, d, s) for i, s in enumerate(seps)}, y


def massive(rng: np.random.Generator, size: str = "small") -> Zoo:
    """A few columns with offsets up to 1e4 and a 30x larger spread (ViT-like)."""
    feats, y = collapsed(rng, size)
    out = {}
    for i, x in enumerate(feats.values()):
        x = x.copy()
        cols = rng.choice(x.shape[1], size=3, replace=False)
        x[:, cols] = x[:, cols] * 30 + np.array([1e2, 1e3, 1e4], np.float32)
        out[f"massive_{i}"] = x
    # The unshifted copy of one model beside its shifted twin: they must tie.
    out["massive_twin"] = next(iter(feats.values()))
    return out, y


def scaled(rng: np.random.Generator, size: str = "small", scale: float = 1e-20) -> Zoo:
    """The collapsed zoo multiplied by a global constant."""
    feats, y = collapsed(rng, size)
    return {f"x{scale:g}_{name}": (x * np.float32(scale)) for name, x in feats.items()}, y


def fewshot_wide(rng: np.random.Generator, size: str = "small") -> Zoo:
    """N < D: a few samples per class on wide models; the narrowest one scaled down onto
    the eigen (shrinkage) solver, which, unlike the svd solver, sees how the PCA scales
    each principal direction."""
    n, d, c = _SIZES[size]
    n = 10 * c if size != "tiny" else 5 * c
    y = _balanced(rng, n, c)
    dims = (2 * d, 8 * d, 32 * d) if size == "tiny" else (2 * d, 4 * d, 8 * d)
    feats = {f"wide_{i}_d{dm}": relu_features(rng, y, dm, 0.5 + i) for i, dm in enumerate(dims)}
    first = next(iter(feats))
    feats[first] = feats[first] * np.float32(0.02)
    return feats, y


def longtail(rng: np.random.Generator, size: str = "small") -> Zoo:
    """Many classes: one head class with 40% of the samples, tails of 1-3, singletons."""
    n, d, _ = _SIZES[size]
    c = {"tiny": 60, "small": 300, "large": 1000}[size]
    y = longtail_labels(rng, n, c)
    return {f"longtail_{i}": relu_features(rng, y, d, s) for i, s in enumerate((0.5, 2.0))}, y


def low_rank(rng: np.random.Generator, size: str = "small") -> Zoo:
    """Features of rank below k, with duplicated rows."""
    n, d, c = _SIZES[size]
    y = _balanced(rng, n, c)
    out = {}
    for i, r in enumerate((5, 20)):
        base = rng.normal(size=(c, r))[y] * (1 + i) + rng.normal(size=(n, r))
        x = (base @ rng.normal(size=(r, d))).astype(np.float32)
        x[1::7] = x[0::7][: x[1::7].shape[0]]  # duplicated rows
        out[f"lowrank_{i}_r{r}"] = x
    return out, y


def low_precision(rng: np.random.Generator, size: str = "small") -> Zoo:
    """float16 and bfloat16 features (the engine computes in float32)."""
    import ml_dtypes

    feats, y = collapsed(rng, size)
    names = list(feats)
    out = {}
    for i, name in enumerate(names):
        dt = np.float16 if i % 2 == 0 else ml_dtypes.bfloat16
        out[f"{np.dtype(dt).name}_{name}"] = feats[name].astype(dt)
    return out, y


def ill_conditioned(rng: np.random.Generator, size: str = "small", decades: float = 3.0) -> Zoo:
    """A steep spectrum in a random basis: ``lambda_1 / lambda_64 ~ 10**decades``, with a
    clear gap after 64.

    A float32 scatter resolves eigenvalues to about ``eps * lambda_1``, so in a random
    basis the smallest kept directions carry a relative error of ``eps * 10**decades``:
    1e-4 at 3 decades; at 5 (the fidelity issue's 6e4) only ``dtype=float64`` is exact.
    """
    n, d, c = _SIZES[size]
    y = _balanced(rng, n, c)
    out = {}
    for i in range(2):
        r = min(d, 96)
        scales = np.geomspace(1.0, 10 ** -(decades / 2 + i * 0.1), r)
        scales[64:] *= 0.05  # the top-64 subspace is well defined
        basis = np.linalg.qr(rng.normal(size=(d, r)))[0]
        codes = rng.normal(size=(n, r)) * scales
        codes[:, :c] += rng.normal(size=(c, c))[y] * scales[:c] * (1 + i)
        out[f"steep_{i}"] = (codes @ basis.T + 5.0).astype(np.float32)
    return out, y


REGIMES: dict[str, Callable[..., Zoo]] = {
    "binary": binary,
    "collapsed": collapsed,
    "chance": chance,
    "massive": massive,
    "tiny-scale": lambda rng, size="small": scaled(rng, size, 1e-20),
    "huge-scale": lambda rng, size="small": scaled(rng, size, 1e18),
    "fewshot-wide": fewshot_wide,
    "longtail": longtail,
    "low-rank": low_rank,
    "low-precision": low_precision,
    "ill-conditioned": ill_conditioned,
}


def make(regime: str, rng: np.random.Generator, size: str = "small") -> Zoo:
    """The zoo of ``regime`` (a key of :data:`REGIMES`) at ``size`` ("tiny", "small", "large")."""
    if regime not in REGIMES:
        raise ValueError(f"regime must be one of {sorted(REGIMES)}; got {regime!r}.")
    return REGIMES[regime](rng, size)


def compare(result, ref, *, rtol: float = 1e-4, tie: float = 1e-3) -> dict[str, object]:
    """Differences between an engine result and a reference result on the same zoo.

    Returns a dict with the largest relative error of each raw component, the
    largest error of each normalised field beyond what ``rtol`` on the raw
    components explains, and ``problems``: a list of strings, empty when the
    result agrees with the reference (every published field; the ranking
    wherever two reference scores differ by more than ``tie``).
    """
    problems: list[str] = []
    out: dict[str, object] = {}
    models = list(result.models)
    if models != list(ref.models):
        return {"problems": [f"models differ: {models} vs {list(ref.models)}"]}
    for f in ("etf", "ncc", "vc"):
        a = np.asarray(getattr(result, f), np.float64)
        b = np.asarray(getattr(ref, f), np.float64)
        for who, values in (("", a), ("the reference's ", b)):
            if not np.isfinite(values).all():
                bad = [m for m, v in zip(models, values, strict=True) if not np.isfinite(v)]
                problems.append(f"{who}{f} not finite for {bad}")
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            continue
        err = np.abs(a - b) / np.maximum(np.abs(b), 1e-300)
        out[f] = float(err.max())
        if err.max() > rtol:
            worst = int(np.argmax(err))
            problems.append(
                f"{f} of {models[worst]}: {a[worst]!r} vs {b[worst]!r} ({err[worst]:.1e})"
            )
        span = b.max() - b.min()
        slack = 3 * rtol * np.abs(b).max() / span if span > 0 else 0.0
        norm_err = np.abs(np.asarray(getattr(result, f + "_norm")) - getattr(ref, f + "_norm"))
        out[f + "_norm"] = float(norm_err.max())
        if norm_err.max() > slack + 1e-9:
            problems.append(f"{f}_norm off by {norm_err.max():.2e} (allowed {slack:.1e})")
    score_err = np.abs(np.asarray(result.ncti) - ref.ncti)
    allowed = sum(
        3 * rtol * np.abs(getattr(ref, f)).max() / max(np.ptp(getattr(ref, f)), 1e-300)
        if np.ptp(getattr(ref, f)) > 0
        else 0.0
        for f in ("etf", "ncc", "vc")
    )
    out["ncti"] = float(score_err.max())
    if score_err.max() > allowed + 1e-9:
        problems.append(f"ncti off by {score_err.max():.2e} (allowed {allowed:.1e})")
    s_ref, s_eng = np.asarray(ref.ncti), np.asarray(result.ncti)
    for i in range(len(models)):
        for j in range(len(models)):
            if s_ref[i] - s_ref[j] > max(tie, 2 * allowed) and not s_eng[i] > s_eng[j]:
                problems.append(f"ranking: {models[i]} must rank above {models[j]}")
    solvers = [str(s) for s in np.asarray(result.solver)]
    if solvers != list(ref.solver):
        problems.append(f"solver {solvers} vs {list(ref.solver)}")
    if not np.array_equal(np.asarray(result.pca_rank), ref.pca_rank):
        problems.append(f"pca_rank {list(result.pca_rank)} vs {list(ref.pca_rank)}")
    shrink_err = np.abs(np.log(np.asarray(result.shrinkage, np.float64) / ref.shrinkage))
    out["shrinkage"] = float(shrink_err.max())
    if shrink_err.max() > 10 * rtol:
        problems.append(f"shrinkage off by a factor exp({shrink_err.max():.1e})")
    out["problems"] = problems
    return out
