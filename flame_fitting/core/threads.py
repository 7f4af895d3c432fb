"""torch's intra-op thread count, set for a block and always restored."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def torch_threads(n: int = 0) -> Iterator[None]:
    """Run the block with `n` torch intra-op threads (n <= 0: leave the count as it is) and restore the count
    on exit. Restoring also matters with n <= 0: numba's OpenMP threading layer (the rasteriser's parallel
    kernels) resets the process's OpenMP thread count, which silently gives torch more threads than the caller
    chose (measured: a 2-core machine under load ran the model 30× slower)."""
    old = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
