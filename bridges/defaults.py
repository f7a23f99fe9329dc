"""The torch bridge's defaults, stated once.

:func:`ncti_jax.bridges.rank_zoo`, :func:`ncti_jax.bridges.extract_zoo` and the
``ncti rank`` / ``ncti extract`` options take their defaults and choices from here.
This module imports nothing (no torch), so that ``ncti rank --help`` shows them
without starting torch.
"""

from __future__ import annotations

# torchvision weights of a zoo's models: an enum name, DEFAULT, or "none" (random init).
WEIGHTS = "DEFAULT"

# Seed of per-class subsampling and of random initialisation (weights "none").
SEED = 0

# Preprocessing; the first is the default. "paper": resize to IMAGE_SIZE, ImageNet
# mean/std for every model; "native": each weights' own transforms.
PREPROCESS = ("paper", "native")

# Input size of "paper" preprocessing.
IMAGE_SIZE = 224

# Images per batch, and data loader worker processes.
BATCH_SIZE = 64
WORKERS = 2

# Where the models run: "auto" (CUDA when torch sees it), "cpu", "cuda", "cuda:N".
DEVICE = "auto"

# What runs the models; the first is the default. "torch": torchvision, timm and Hugging
# Face models in torch; "jax": their flax ports, data parallel over every JAX device.
BACKENDS = ("torch", "jax")
