"""A small mutation check: plants plausible bugs one at a time and runs the tests.

``python -m benchmarks.mutations [--only NAME,...] [--tests PATHS] [--timeout S]``

Each mutant is a one-line edit of the engine in a scratch copy of the working tree
(the tree itself is never touched). The fidelity tests run against it; a mutant
the tests fail on is *caught*, one they pass is *missed*: a hole in the suite.
Not part of CI (about 1-2 minutes per mutant on 2 cores). Exit code 1 when a
mutant is missed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class Mutant:
    name: str
    path: str  # relative to the repository root
    old: str
    new: str
    what: str


MUTANTS = (
    Mutant(
        "swap-normalised",
        "ncti_jax/_result.py",
        "return norm[:, 0], norm[:, 1], norm[:, 2], norm[:, 0] + norm[:, 1] - norm[:, 2]",
        "return norm[:, 1], norm[:, 0], norm[:, 2], norm[:, 0] + norm[:, 1] - norm[:, 2]",
        "normalise_zoo swaps etf_norm and ncc_norm",
    ),
    Mutant(
        "uncentred-gram",
        "ncti_jax/_pca.py",
        "evals, evecs = linalg.top_eigh(xc @ xc.T, k)",
        "evals, evecs = linalg.top_eigh((x / scale) @ (x / scale).T, k)",
        "the fused path's N < D PCA uses the uncentred Gram",
    ),
    Mutant(
        "ridge-1e-3",
        "ncti_jax/_lda.py",
        "ridge = 16 * jnp.finfo(z.dtype).eps * jnp.max(jnp.diag(sw))",
        "ridge = 1e-3 * jnp.max(jnp.diag(sw))",
        "the Cholesky fallback ridge set to 1e-3",
    ),
    Mutant(
        "labels-from-zero",
        "ncti_jax/_validate.py",
        "    classes, codes = np.unique(y, return_inverse=True)\n    return _labels_from(classes, codes, what)\n\n\ndef _labels_from",
        "    classes, codes = np.unique(y, return_inverse=True)\n"
        "    if kind in 'iu' and y.min() == 0:  # already codes\n"
        "        classes, codes = np.arange(y.max() + 1), y\n"
        "    return _labels_from(classes, codes, what)\n\n\ndef _labels_from",
        "integer labels that start at 0 skip the remap",
    ),
    Mutant(
        "shrinkage-floor-1e-8",
        "ncti_jax/_kernel.py",
        "SHRINKAGE_FLOOR = 1e-10",
        "SHRINKAGE_FLOOR = 1e-8",
        "the shrinkage floor moved from 1e-10 to 1e-8",
    ),
    Mutant(
        "sqrt-gram-singular-values",
        "ncti_jax/_nuclear.py",
        "    _, v = linalg.eigh(g)\n    v = v[:, ::-1]\n    return jnp.linalg.norm(a @ v, axis=0), v",
        "    w, v = linalg.eigh(g)\n    v = v[:, ::-1]\n    return jnp.sqrt(jnp.clip(w[::-1], 0.0)), v",
        "singular values as square roots of Gram eigenvalues",
    ),
    Mutant(
        "no-probability-flush",
        "ncti_jax/_kernel.py",
        "probs = jnp.where(probs < jnp.finfo(probs.dtype).eps ** 2, 0.0, probs)",
        "probs = probs",
        "probabilities below eps**2 reach the eigensolvers (NaN vc on collapsed models)",
    ),
    Mutant(
        "normwise-floor",
        "ncti_jax/_pca.py",
        "return xp.maximum(16 * eps * spread, 2 * solve_eps * evals[0])",
        "return 16 * eps * xp.maximum(xp.sum(col_sq), evals[0])",
        "the variance floor scales with the largest column, not each direction",
    ),
    Mutant(
        "gram-floor-overcount",
        "ncti_jax/_pca.py",
        "spread = xp.sum(col_sq) if evecs is None",
        "spread = xp.sum(root) ** 2 if evecs is None",
        "the N x N Gram's rounding level taken as eps * D * trace (drops real directions)",
    ),
    Mutant(
        "shrinkage-ignores-scale",
        "ncti_jax/_kernel.py",
        "top = jnp.sum(variances[:SHRINKAGE_TOP]) * scale * scale",
        "top = jnp.sum(variances[:SHRINKAGE_TOP])",
        "the shrinkage rule sees the rescaled features' variances",
    ),
    Mutant(
        "eigen-lda-unshifted",
        "ncti_jax/_lda.py",
        "m = cov_t - (mu_t / jnp.where(mu_w > 0, mu_w, 1.0)) * cov_w",
        "m = cov_t - cov_w",
        "the eigen solver's between-class matrix without the isotropic shift",
    ),
    Mutant(
        "wide-gram-no-sqrt",
        "ncti_jax/_stream.py",
        "z = (evecs * np.sqrt(np.clip(evals, 0.0, None))).astype(dtype)",
        "z = (evecs * np.clip(evals, 0.0, None)).astype(dtype)",
        "the host N < D projection scaled by the eigenvalues, not their square roots",
    ),
    Mutant(
        "padded-class-blocks",
        "ncti_jax/_kernel.py",
        "        elif rows < c:",
        "        elif False:",
        "wide per-class probability blocks through the Gram instead of a direct SVD",
    ),
)

TESTS = (
    "tests/test_regimes.py",
    "tests/test_fidelity.py",
    "tests/test_engine.py",
    "tests/test_edge_cases.py",
    "tests/test_cli.py",
    "tests/test_properties.py",
)


def _copy_tree(dest: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for rel in files:
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def run_mutant(mutant: Mutant, tests: list[str], timeout: float) -> tuple[str, float]:
    with tempfile.TemporaryDirectory(prefix=f"mutant-{mutant.name}-") as tmp:
        tree = Path(tmp)
        _copy_tree(tree)
        target = tree / mutant.path
        text = target.read_text()
        if text.count(mutant.old) != 1:
            return "not applicable (the line has changed: update the mutant)", 0.0
        target.write_text(text.replace(mutant.old, mutant.new))
        seed = os.environ.get("NCTI_TEST_SEED") or str(secrets.randbits(32))
        env = dict(os.environ, PYTHONPATH=str(tree), NCTI_JAX_CACHE="off", NCTI_TEST_SEED=seed)
        start = time.perf_counter()
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
                cwd=tree,
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return "caught (timed out)", time.perf_counter() - start
        seconds = time.perf_counter() - start
        if proc.returncode == 0:
            return "MISSED", seconds
        failed = [ln for ln in proc.stdout.splitlines() if ln.startswith("FAILED")]
        by = failed[0].removeprefix("FAILED ")[:90] if failed else "an error"
        return f"caught by {by} (NCTI_TEST_SEED={seed})", seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated mutant names")
    parser.add_argument("--tests", default=",".join(TESTS))
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--list", action="store_true")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only.split(",")]
    if args.list:
        for m in chosen:
            print(f"{m.name:28s} {m.what}")
        return 0
    missed = 0
    for m in chosen:
        verdict, seconds = run_mutant(m, args.tests.split(","), args.timeout)
        missed += verdict == "MISSED"
        print(f"{m.name:28s} {verdict}  ({seconds:.0f} s)  - {m.what}", flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
