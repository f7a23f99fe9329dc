"""Framework bridges (torch, torchvision) that feed features to ncti_jax.

torch is imported here and nowhere else. The extraction bridge is not built yet.
"""
