"""flame_fitting/core/interrupt.py `interrupts_held` in a process with more than one thread, as every training process
is (torch's threads, a data loader's): CI failed on test_shards' interrupt test with SIGINT and SIGTERM left blocked
in the main thread after 300 interrupts. The old hold blocked both signals in the main thread while it swapped the
handlers; the kernel then handed a signal to another thread, Python ran its handler in the main thread all the same,
and a KeyboardInterrupt raised inside the mask's own `with` left the mask set for good — or a SIGINT landing while the
handlers were set back left SIGTERM's holding handler set, and every later `kill PID` was swallowed (the loop below
never ended: within 84 to 1635 interrupts in five runs)."""
from __future__ import annotations

import os
import random
import signal
import threading
import time

from flame_fitting.core.interrupt import interrupts_held


def test_interrupts_of_both_kinds_with_another_thread_leave_handlers_and_mask_as_they_were():
    stop = threading.Event()
    other_thread = threading.Thread(target=lambda: [time.sleep(0.0005) for _ in iter(stop.is_set, True)], daemon=True)
    other_thread.start()

    def terminate(signum, frame):
        raise KeyboardInterrupt

    rng = random.Random(0)
    sent: list[int] = []

    def alarm(signum, frame):
        sent.append(rng.choice((signal.SIGINT, signal.SIGTERM)))
        os.kill(os.getpid(), sent[-1])

    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGALRM, alarm)
    unwound, failures = 0, []
    try:
        for it in range(5000):
            try:
                signal.setitimer(signal.ITIMER_REAL, 1e-6 * (1 + it % 50))
                for _ in range(200_000):  # an interrupt comes within a few hundred blocks; none: it was swallowed
                    with interrupts_held():
                        [{"x": i} for i in range(20)]  # work inside the block, bytecodes where a handler could run
                failures.append(f"interrupt {it} ({signal.Signals(sent[-1]).name}) was swallowed")
            except KeyboardInterrupt:
                unwound += 1
            blocked = {signal.SIGINT, signal.SIGTERM} & signal.pthread_sigmask(signal.SIG_BLOCK, ())
            handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
            if blocked or handlers != (signal.default_int_handler, terminate):
                failures.append(f"after interrupt {it}: blocked {sorted(blocked)}, handlers {handlers}")
            if failures:
                break
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGINT, signal.SIGTERM))
        for s, h in old.items():
            signal.signal(s, h)
        stop.set()
    assert not failures and unwound == 5000, failures


def test_a_signal_inside_the_block_runs_its_handler_once_at_the_end():
    """Held, not lost nor doubled: two SIGTERMs inside the block run the handler once, after the block's work."""
    calls, done = [], []
    before = signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(done[:]))
    try:
        with interrupts_held():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):
                pass
            done.append(True)
            assert calls == []
        assert calls == [[True]]
    finally:
        signal.signal(signal.SIGTERM, before)
