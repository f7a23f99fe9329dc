"""Benchmarks of ncti-jax: the JAX engine against the float64 reference and the
authors' scikit-learn pipeline, on synthetic zoos. See benchmarks/README.md.

Run as ``ncti bench ...`` or ``python -m benchmarks ...``.
"""
