"""An error of one process of a multi-process training (several GPUs under `accelerate launch`) stops every process:
`with stop_together("could not start"): ...` in place of a `wait_for_everyone()` after the block.

Before, the main process alone took the run lock, pruned old runs, wrote the checkpoint's own files and published
the model, then met the others at `wait_for_everyone()`. When it raised instead (the run folder locked by another
training, a full disk), the others waited at that barrier for as long as its process lived: with NCCL, which does
not notice a peer that died, until the process group's timeout (10 min for NCCL, 30 min for gloo, PyTorch's
defaults) or the launcher stopped them; on the CPU (gloo) they died of "Connection closed by peer" when it exited,
and a caller that caught the error (a notebook, a sweep) kept them waiting for good. Now every process runs the block,
then all exchange their verdicts (one small all-gather, accelerate's `gather`, the same on CUDA and on the CPU):
the process that failed raises its own error; every other one raises `PeerError`, one line naming that process
and its error (cut to MESSAGE_BYTES on a character boundary). A single process runs the block as it is.
Training also reads each micro-batch in such a block (train.py): a sample one process cannot read stops every
process before the forward pass, where the others would have waited in DDP's collectives for it.

The block must hold no collective operation that a failing process could skip (a barrier, DDP's forward and
backward): a process that failed before one would meet the others' collective with its all-gather. A data loader's
first batch of an epoch broadcasts the sampler's seed, but before it reads any sample: a process that cannot read
its batch has met that broadcast, so reading a batch may be such a block.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from accelerate import PartialState
from accelerate.utils import gather

from flame_fitting.core.errors import GeofaceError, error_line
from flame_fitting.core.names import terminal_safe

MESSAGE_BYTES = 1024  # of the failed process's error line, passed to the others (longer ones are cut)


class PeerError(GeofaceError, RuntimeError):
    """Another process of the run failed: this one stops with it."""


def _line(e: Exception) -> str:
    line = error_line(e) if isinstance(e, (GeofaceError, OSError)) else f"{type(e).__name__}: {terminal_safe(e)}"
    return line or type(e).__name__  # an error without a message (`OSError()`)


def _cut(line: str) -> bytes:
    """`line` in UTF-8, cut to MESSAGE_BYTES on a character boundary (a character cut in two was read as U+FFFD)."""
    return line.encode()[:MESSAGE_BYTES].decode(errors="ignore").encode()


@contextmanager
def stop_together(what: str) -> Iterator[None]:
    """Run the block on every process; when it raises on any, raise on every one (see the module's docstring).
    `what` completes "stopping with process N, which ..." (e.g. "could not start")."""
    state = PartialState()
    if state.num_processes == 1:
        yield
        return
    error = None
    try:
        yield
    except Exception as e:  # noqa: BLE001 - any error: passed to the others, then raised here as it was
        error = e
    verdict = torch.zeros(1, 1 + MESSAGE_BYTES, dtype=torch.uint8)
    if error is not None:
        text = _cut(_line(error))
        verdict[0, 0] = 1
        verdict[0, 1:1 + len(text)] = torch.tensor(list(text), dtype=torch.uint8)  # b"" too (an empty message)
    try:
        verdicts = gather(verdict.to(state.device)).cpu()  # (processes, 1 + MESSAGE_BYTES)
    finally:
        if error is not None:  # its own error, even when the exchange failed too (a peer that died)
            raise error
    failed = verdicts[:, 0].nonzero().flatten().tolist()
    if failed:
        text = bytes(verdicts[failed[0], 1:].tolist()).rstrip(b"\0").decode(errors="replace")
        raise PeerError(f"stopping with process {failed[0]} of {state.num_processes}, which {what}: {text}")
