"""The engine's settings and their defaults, stated once.

:func:`ncti_jax.score_zoo`, the command line and the benchmarks take their
defaults and choices from here. This module imports nothing heavy (no JAX), so
that ``ncti --help`` can show them without starting JAX.
"""

from __future__ import annotations

# PCA dimension asked for: the paper's 64 principal directions.
N_COMPONENTS = 64

# Computation dtypes; the first is the default.
DTYPES = ("float32", "float64")

# Matmul precisions (``jax.lax.Precision`` names); the first is the default, exact
# float32 products. "high" is TF32 and "default" bfloat16 passes on GPUs and TPUs.
PRECISIONS = ("highest", "high", "default")

# How the device path solves the PCA's eigenproblem (see ncti_jax._linalg.Linalg); the
# first is the default: the certified top-k solver, which falls back to the full eigh
# for a model it cannot certify. The host path (CPU) always solves in float64.
EIGENSOLVERS = ("topk", "topk-tf32", "topk-bf16", "eigh")

# How a zoo is split into compiled calls (see ncti_jax._plan); the first is the default.
STRATEGIES = ("auto", "fused", "streaming")

# Rows per chunk when the engine slices an in-memory or memory-mapped array for the
# streamed PCA: large enough for BLAS to run at full rate, small enough to stay a few
# tens of MB.
CHUNK_ROWS = 4096
