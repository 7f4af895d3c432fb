"""SIGTERM unwinds a command like Ctrl-C: `unwind_on_sigterm()`, called first by the `geoface` command
(geoface/cli/__init__.py) and by every stage script (stages/common.py `run`), makes SIGTERM (`kill PID`, a cluster
scheduler's job cancel, a CI timeout) raise KeyboardInterrupt in the process's main thread. Its `with` and `finally`
blocks then run as on Ctrl-C: the local pool's busy processes are stopped (core/pool.py), a local Ray is shut down
(core/executor.py), the temporaries being written are removed (core/fileio.py, core/units.py), and the command exits
with INTERRUPTED. With SIGTERM's default action the process died at once, and the pool's processes (forked from their
own server, not from the stage) ran on: a hung unit for ever.

Only the main thread of the command's own process installs it: the pool's processes are forked from a server that
never calls it, so they keep SIGTERM's default action, which is how the pool stops them (`pool._stop`). A handler
installed before (a caller's own) is left as it is.
"""
from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Iterator

INTERRUPTED = 130  # the exit status of a command interrupted by Ctrl-C or SIGTERM (a shell's for SIGINT: 128 + 2)


def _terminated(signum, frame):
    raise KeyboardInterrupt  # SIGTERM unwinds the `with` blocks that remove temporaries, as Ctrl-C does


def unwind_on_sigterm() -> bool:
    """Make SIGTERM raise KeyboardInterrupt in this process (module docstring); True when installed now. Nothing in a
    thread other than the main one (Python runs handlers there only), nor when SIGTERM already has a handler."""
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return False
    signal.signal(signal.SIGTERM, _terminated)
    return True


def exiting_interrupted() -> int:
    """INTERRUPTED, once SIGINT and SIGTERM are ignored: for the command's top level (stages/common.py `run`, the
    `geoface` command's own process), the moment it caught the interrupt and before it prints its `interrupted` line
    and exits. Before, a second Ctrl-C or `kill` while it exited (a scheduler's SIGTERM after its Ctrl-C, the exit of a
    process that imported torch taking ~0.5 s) raised again inside the print, its `sys.exit` or the exit handlers,
    or, once the interpreter had set SIGTERM's default action back in its teardown, killed it: a KeyboardInterrupt
    traceback or status -15 instead of the line and 130. Nothing outside the main thread (signal.signal raises)."""
    if threading.current_thread() is threading.main_thread():
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)  # kept by the teardown, which sets back only the handlers it runs
    return INTERRUPTED


@contextmanager
def keeping_sigterm_handler() -> Iterator[None]:
    """The SIGTERM handler set before the block is set again after it, unless it was the default action: `ray.init`
    replaces it by Ray's own (`sys.exit(15)`, behind Ray's C++ signal report), and a stage using Ray then ended with
    status 1 and that report instead of the `interrupted` line and 130. A SIGTERM inside the block that the handler set
    in it answered with SystemExit (Ray's, during the seconds `ray.init` starts its node) is answered by the handler
    set before instead, once that is set again (KeyboardInterrupt: before, the stage exited 15 without its line)."""
    old = signal.getsignal(signal.SIGTERM)
    try:
        yield
    except SystemExit as e:
        if not (callable(old) and _raised_by(e, signal.getsignal(signal.SIGTERM)) and e.code == signal.SIGTERM):
            raise
        signal.signal(signal.SIGTERM, old)
        old(signal.SIGTERM, None)  # the stage's: KeyboardInterrupt
        raise
    finally:
        if old not in (None, signal.SIG_DFL) and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, old)


def _raised_by(e: BaseException, handler) -> bool:
    """Whether `e` was raised in a call of `handler` (its innermost frame runs the handler's code)."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code is getattr(handler, "__code__", None)


def _run(handler, signum: int, frame) -> None:
    """What `signal` would have done with `signum` under `handler` (a callable, SIG_DFL or SIG_IGN)."""
    if callable(handler):
        handler(signum, frame)
    elif handler == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)  # its default action


@contextmanager
def interrupts_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM inside the block are held and delivered at its end (the handler that was set runs then:
    KeyboardInterrupt here). For native code that calls back into Python: an exception a handler raises inside such a
    callback is turned into the library's own error (safetensors' slices: 1 in 3 interrupts became "ValueError: could
    not determine the shape of object type 'torch.storage.UntypedStorage'", a traceback and exit 1 instead of the
    interrupted line and 130). Nothing is held outside the main thread (Python runs handlers there only).

    No signal mask: blocking the signals in the main thread held nothing in a process with other threads (torch's, a
    data loader's: the kernel hands the signal to one of them and Python runs the handler in the main thread all the
    same), and a handler raising inside the mask's own `with` left SIGINT and SIGTERM blocked for good. Instead each
    old handler is recorded before it is replaced, so whatever a handler raises on the way in or out, what was set is
    set again; and the holding handler, should a signal leave it set, passes signals to the old one once the block
    has ended."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    old: dict = {}
    is_open = [True]

    def hold(signum, frame):
        if is_open:
            held.append(signum)
        else:  # the block has ended, but a signal raising while the handlers were set again left this one set
            _run(old[signum], signum, frame)

    hold.passes_to = old
    try:
        for s in (signal.SIGINT, signal.SIGTERM):
            handler = signal.getsignal(s)
            handler = getattr(handler, "passes_to", {}).get(s, handler)  # an ended block's `hold`: the one before it
            if handler is not None:  # None: set from outside Python, nothing to set it back to
                old[s] = handler  # recorded before it is replaced: what raises next finds it set again below
                signal.signal(s, hold)
        yield
    finally:
        try:  # still holding: `signal.signal` runs the pending signals' handlers before it sets one, `hold` here
            for s, handler in old.items():
                signal.signal(s, handler)
        finally:  # reached too when a signal's own handler, set again, raised before the next one was set again
            is_open.clear()  # from here `hold` passes signals on (should a second raise leave it set)
            for s, handler in old.items():
                if signal.getsignal(s) is not handler:
                    signal.signal(s, handler)
        for s in dict.fromkeys(held):  # each signal once, in the order they came
            _run(old[s], s, None)
