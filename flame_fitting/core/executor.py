"""Where the data stages' work units run: `executor: local | ray` (params.yaml, shared by the data stages).

`open_executor(cfg)` connects first (a Ray cluster that cannot be reached is one GeofaceError line, raised before
a stage deletes or writes anything); `Executor.map(fn, items, desc)` then calls `fn(item)` for every item and
returns one `UnitResult` per item, in input order:
- local, workers = 1 (or a single item): in this process, one after the other (no pool to start);
- local, workers > 1: this process and a pool of `workers - 1` processes forked from a clean server process that
  imported `fn`'s module once (multiprocessing's forkserver); this process runs units while the pool starts. A pool
  process that dies takes its pool with it: its units go to a new pool, up to `retries` times;
- ray: one Ray task per item on the cluster at `ray_address` (or $RAY_ADDRESS; none: a local Ray with `workers`
  CPUs started here). A task whose worker process or node is lost is retried by Ray (`max_retries=retries`).
An exception raised by `fn` is recorded in its UnitResult (ok False, error "Type: message") and the other items go
on; it is never retried (the same input would raise again). `fn` and `items` must be picklable; `fn` a function of
an importable module (workers import it: with Ray on several machines, every node needs this checkout at the same
path, or the package installed, and a shared filesystem for the stage's folders).
"""
from __future__ import annotations

import multiprocessing
import os
import socket
import sys
import time
import traceback
from collections import Counter, deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from tqdm import tqdm

from flame_fitting.core.errors import GeofaceError
from flame_fitting.core.params import build_config, spec

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding flame_fitting/ (workers import from it)


class ExecutorError(GeofaceError, RuntimeError):
    """The executor cannot run: a Ray cluster that does not answer, Ray not installed, a pool that keeps dying."""


@dataclass
class ExecutorConfig:
    kind: str = spec("local", "local: a process pool on this machine; ray: tasks on a Ray cluster", choices=["local", "ray"])
    workers: int = spec(2, "local: processes running units, the stage's own included (1 = the stage's process only); "
                           "ray without an address: CPUs of the local Ray started by the stage", lo=1, hi=4096)
    ray_address: str | None = spec(None, "Ray cluster address (host:port, ray://host:port or auto); null = $RAY_ADDRESS, "
                                         "else a local Ray started by the stage")
    retries: int = spec(3, "times a unit is re-run when its worker process or node is lost (not when it raises)",
                        lo=0, hi=100)


def executor_params(params: dict) -> ExecutorConfig:
    """The `executor` section of params.yaml (shared by the data stages), validated."""
    return build_config(ExecutorConfig, params.get("executor"), "params.yaml:executor")


@dataclass
class UnitResult:
    item: Any
    ok: bool
    value: Any = None
    error: str = ""  # "Type: message" when not ok
    traceback: str = ""
    seconds: float = 0.0


def call_unit(fn: Callable, item) -> UnitResult:
    """`fn(item)` as a UnitResult: an exception is recorded, never raised (runs inside the workers)."""
    t0 = time.perf_counter()
    try:
        value = fn(item)
    except Exception as e:  # noqa: BLE001 - one bad unit is recorded, the others go on
        return UnitResult(item, False, None, f"{type(e).__name__}: {e}", traceback.format_exc(limit=4),
                          time.perf_counter() - t0)
    return UnitResult(item, True, value, "", "", time.perf_counter() - t0)


def _pool_context(fn: Callable):
    """A forkserver context whose server imports `fn`'s module once: workers are forked from that clean server
    (never from the stage's process, which may hold torch / numba / MediaPipe threads), so each starts with the
    imports done instead of paying them again as spawned processes would."""
    ctx = multiprocessing.get_context("forkserver")
    module = getattr(getattr(fn, "func", fn), "__module__", None)
    if module and module != "__main__":
        ctx.set_forkserver_preload([module])
    return ctx


def _set_threads(n: int) -> tuple[int, int]:
    """Set torch's intra-op and numba's thread counts to `n` in this process, for the libraries already imported
    (none is imported for it); returns the previous counts (0: library not loaded)."""
    torch, numba = sys.modules.get("torch"), sys.modules.get("numba")
    old = (torch.get_num_threads() if torch else 0, numba.get_num_threads() if numba else 0)
    if torch and n > 0:
        torch.set_num_threads(n)
    if numba and n > 0:
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    return old


def _restore_threads(old: tuple[int, int]) -> None:
    torch, numba = sys.modules.get("torch"), sys.modules.get("numba")
    if torch and old[0] > 0:
        torch.set_num_threads(old[0])
    if numba and old[1] > 0:
        numba.set_num_threads(old[1])


def _spawn_init(path: list[str], fn: Callable | None = None, threads: int = 0) -> None:
    """A pool process's start: this checkout's path first; unpickling `fn` imports its module before the ping; its
    share of the cores for torch and numba (the rasteriser's parallel kernels), so processes do not oversubscribe."""
    sys.path[:0] = [p for p in path if p not in sys.path]
    _set_threads(threads)


def _stop(pool: ProcessPoolExecutor) -> None:
    """Shut the pool down without waiting for processes still starting (all units are done or re-queued)."""
    for p in list((getattr(pool, "_processes", None) or {}).values()):
        p.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


class Executor:
    """Runs units; made by `open_executor` (module docstring)."""

    def __init__(self, cfg: ExecutorConfig, ray=None):
        self.cfg, self.ray = cfg, ray

    def map(self, fn: Callable, items: Sequence, desc: str = "units", progress: bool = True) -> list[UnitResult]:
        items = list(items)
        if not items:
            return []
        bar = tqdm(total=len(items), desc=desc, disable=not progress)
        try:
            if self.ray is not None:
                return self._map_ray(fn, items, bar)
            if self.cfg.workers == 1 or len(items) == 1:
                out = []
                for it in items:
                    out.append(call_unit(fn, it))
                    bar.update()
                return out
            return self._map_pool(fn, items, bar)
        finally:
            bar.close()

    def _map_pool(self, fn, items, bar) -> list[UnitResult]:
        """`workers - 1` pool processes plus this one. A pool process gets a unit only once it is ready (it answered
        a ping, i.e. it has imported `fn`'s module): meanwhile this process runs units itself, so the pool's start-up
        never holds a unit back and costs no throughput. Every process gets its share of the cores for torch and
        numba (`cpu_count // workers` threads)."""
        results: dict[int, UnitResult] = {}
        pending, lost, n_pool = deque(range(len(items))), Counter(), self.cfg.workers - 1
        threads = max(1, (os.cpu_count() or 1) // self.cfg.workers)  # each process's share of the cores
        old_threads = _set_threads(threads)
        try:
            return self._pool_loop(fn, items, bar, results, pending, lost, n_pool, threads)
        finally:
            _restore_threads(old_threads)

    def _pool_loop(self, fn, items, bar, results, pending, lost, n_pool, threads) -> list[UnitResult]:
        while pending:
            pool = ProcessPoolExecutor(n_pool, mp_context=_pool_context(fn), initializer=_spawn_init,
                                       initargs=([str(PACKAGE_ROOT)] + sys.path, fn, threads))
            in_flight: dict = {pool.submit(os.getpid): None for _ in range(n_pool)}  # None: a ping
            free = 0
            try:
                while pending or any(i is not None for i in in_flight.values()):
                    while pending and free > 0:
                        i = pending.popleft()
                        in_flight[pool.submit(call_unit, fn, items[i])] = i
                        free -= 1
                    if pending:  # this process takes the next unit itself
                        i = pending.popleft()
                        results[i] = call_unit(fn, items[i])
                        bar.update()
                    if not pending and all(i is None for i in in_flight.values()):
                        break  # every unit done; pool processes still starting are not waited for
                    done, _ = wait(in_flight, timeout=0 if pending else None, return_when=FIRST_COMPLETED)
                    for fut in done:
                        value = fut.result()  # BrokenProcessPool when a worker died
                        if (i := in_flight.pop(fut)) is not None:
                            results[i] = value
                            bar.update()
                        free += 1
            except BrokenProcessPool:  # a worker process died: its units go to a new pool, `retries` times at most
                for i in (i for i in in_flight.values() if i is not None):
                    lost[i] += 1
                    if lost[i] > self.cfg.retries:
                        results[i] = UnitResult(items[i], False, None, f"WorkerLost: the worker process died "
                                                f"{lost[i]} times while this unit was running")
                        bar.update()
                    else:
                        pending.append(i)
            finally:
                _stop(pool)
        return [results[i] for i in range(len(items))]

    def _map_ray(self, fn, items, bar) -> list[UnitResult]:
        ray = self.ray
        task = ray.remote(num_cpus=1, max_retries=self.cfg.retries)(call_unit)
        fn_ref = ray.put(fn)
        refs = [task.remote(fn_ref, it) for it in items]
        index = {r: i for i, r in enumerate(refs)}
        results: dict[int, UnitResult] = {}
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for r in done:
                i = index[r]
                try:
                    results[i] = ray.get(r)
                except Exception as e:  # noqa: BLE001 - retries exhausted (worker/node lost every time)
                    results[i] = UnitResult(items[i], False, None, f"WorkerLost: {type(e).__name__}: "
                                            f"{str(e).splitlines()[0] if str(e) else ''}")
                bar.update()
        return [results[i] for i in range(len(items))]


def _check_reachable(address: str, where: str, timeout: float = 5.0) -> None:
    """ExecutorError unless something listens at host:port of a Ray address (before ray.init, which may hang)."""
    if address == "auto" or address.startswith("local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ExecutorError(f"{where}={address!r}: not a Ray address (host:port, ray://host:port or auto)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise ExecutorError(f"{where}={address!r}: no Ray cluster answers at {host}:{port} ({e.strerror or e}); "
                            "start one (`ray start --head`) or set executor.kind: local; nothing was changed") from None


@contextmanager
def _quiet_stderr() -> Iterator[None]:
    """File descriptor 2 sent to /dev/null for the block (native libraries write there directly)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@contextmanager
def open_executor(cfg: ExecutorConfig) -> Iterator[Executor]:
    """An Executor for `cfg`, connected (Ray) before the block runs; a Ray the block started is shut down after."""
    if cfg.kind == "local":
        yield Executor(cfg)
        return
    try:
        import ray
    except ImportError:
        raise ExecutorError("executor.kind=ray: the ray package is not installed (pip install 'geoface[ray]')") from None
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS") or None
    where = "executor.ray_address" if cfg.ray_address else "RAY_ADDRESS"
    started = False
    if not ray.is_initialized():
        if address:
            _check_reachable(address, where)
        env = {"PYTHONPATH": os.pathsep.join([str(PACKAGE_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(
            os.pathsep) if p])}
        kw = {"address": address} if address else {"num_cpus": cfg.workers, "include_dashboard": False}
        try:
            with _quiet_stderr():  # Ray's C++ client logs every failed attempt; the error below is the one line
                ray.init(runtime_env={"env_vars": env}, log_to_driver=False, logging_level="ERROR", **kw)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ExecutorError(f"{where}={address!r}: cannot connect to Ray ({str(e).splitlines()[0]}); "
                                "nothing was changed") from None
        started = True
    try:
        yield Executor(cfg, ray)
    finally:
        if started:
            ray.shutdown()
