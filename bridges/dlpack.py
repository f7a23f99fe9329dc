"""torch -> JAX without a host round trip.

``jax.dlpack.from_dlpack`` wraps a torch tensor's buffer as a JAX array on the
same device (CPU or CUDA): no copy. Where that cannot work (a dtype DLPack
does not carry, a device JAX does not see), the fallback copies through NumPy
and says so.
"""

from __future__ import annotations

import warnings

import jax
import numpy as np
import torch


def to_jax(tensor: torch.Tensor) -> jax.Array:
    """The JAX view of ``tensor`` (zero-copy where possible)."""
    tensor = tensor.detach()
    if not tensor.is_contiguous():
        tensor = tensor.contiguous()
    try:
        return jax.dlpack.from_dlpack(tensor)
    except Exception as err:  # e.g. a CUDA tensor while JAX has only its CPU backend
        warnings.warn(
            f"DLPack handoff failed ({type(err).__name__}: {err}); copying through "
            "host memory instead.",
            RuntimeWarning,
            stacklevel=2,
        )
        host = tensor.cpu()
        if host.dtype == torch.bfloat16:
            host = host.float()
        return jax.numpy.asarray(host.numpy())


def shares_memory(tensor: torch.Tensor, array: jax.Array) -> bool:
    """Whether ``array`` aliases ``tensor``'s buffer (the zero-copy check)."""
    try:
        return array.unsafe_buffer_pointer() == tensor.data_ptr()
    except Exception:
        return False


def to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A host copy, for comparison and for writing feature stores."""
    t = tensor.detach().cpu()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()
