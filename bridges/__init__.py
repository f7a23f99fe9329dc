"""Framework bridges: torchvision models -> penultimate features -> JAX.

torch is imported by these modules and nowhere else in the project; importing
this package itself imports nothing heavy.

- :mod:`bridges.models`: torchvision models cut at the penultimate layer; weights,
  checkpoints, zoo files, preprocessing.
- :mod:`bridges.datasets`: the paper's target datasets, ImageFolder, subsampling.
- :mod:`bridges.extract`: one pass over the data for the whole zoo; feature stores.
- :mod:`bridges.dlpack`: zero-copy torch -> JAX handoff.
"""
