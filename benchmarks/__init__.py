"""Benchmarks of ncti-jax: the JAX engine against the float64 reference and the
authors' scikit-learn pipeline, on synthetic zoos. See benchmarks/README.md.

Installed as ``ncti_jax.benchmarks``. Run as ``ncti bench ...``, ``python -m
ncti_jax.benchmarks ...`` or, in a source checkout, ``python -m benchmarks ...``:
the modules import each other relatively, so they work under either name.
"""
