"""Where the data stages' work units run: `executor: local | ray` (params.yaml, shared by the data stages).

`open_executor(cfg)` connects first (a Ray cluster that cannot be reached is one GeofaceError line, raised before
a stage deletes or writes anything); `Executor.map(fn, items, desc)` then calls `fn(item)` for every item and
returns one `UnitResult` per item, in input order:
- local, workers = 1 (or a single item): in this process, one after the other (no pool to start);
- local, workers > 1: this process and a pool of `workers - 1` processes forked from a clean server process that
  imported `fn`'s module once (multiprocessing's forkserver), fed by a dispatcher thread while this process runs
  units too (flame_fitting/core/pool.py). A pool process that dies is replaced: its unit is re-run, up to `retries`
  times, while the other pool processes' units go on. `retries + 1` pool processes in a row that die before they
  are ready (a unit module that fails to import in a fresh process, processes killed as they start; with
  `unit_timeout_s`, also one not ready within max(unit_timeout_s, 120 s): an import that blocks) stop the pool:
  the units running finish, none not yet started is run, and `map` raises ExecutorError naming the module;
- local with `unit_timeout_s`: a pool of `workers` processes (even for workers = 1) and this process runs none, so
  that a unit running past the limit can be stopped (its process only: the units the others run go on);
- ray: one Ray task per item on the cluster at `ray_address` (or $RAY_ADDRESS; none or "local": a local Ray with
  `workers` CPUs started here, listening on loopback only, without dashboard, with a fresh token it asks of every
  client and a temporary folder of this user's only (core/ray_session.py), shut down when the block ends: whoever
  reaches it with its token runs code; docs/scaling.md "Who can reach the Ray"). A task whose worker
  process or node is lost is retried by Ray (`max_retries=retries`). Each task runs in the stage's working folder
  (relative paths mean the same folders everywhere), with one thread per library, and only on a node whose geoface
  code is the stage's (workers.ray_unit): a node without the folder or with other code fails the unit with a line
  saying so. With `unit_timeout_s`, each task tells a small actor
  (workers.StartClock) when it starts, and one still running `unit_timeout_s` after the stage learnt of its start
  (polled once a second) is cancelled (`ray.cancel(force=True)`: its worker process is killed; Ray retries no
  cancelled task).
A unit stopped for running past `unit_timeout_s` is recorded as failed (error "UnitTimeout: ran past
unit_timeout_s=… s") and never retried (it would hang again); its output is not written (a unit's folder is renamed
into place only when complete, core/units.py, and `run_units` removes a failed unit's).
An exception raised by `fn` is recorded in its UnitResult (ok False, error "Type: message") and the other items go
on; it is never retried (the same input would raise again). `fn` and `items` must be picklable; `fn` a function of
an importable module (workers import it: with Ray on several machines, every node needs this checkout at the same
path, or the package installed, and a shared filesystem for the stage's folders).
"""
from __future__ import annotations

import ipaddress
import os
import socket
import sys
import time
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from tqdm import tqdm

from flame_fitting.core.errors import ExecutorError
from flame_fitting.core.interrupt import keeping_sigterm_handler
from flame_fitting.core.params import build_config, spec
from flame_fitting.core.fork_server import start_pool_early
from flame_fitting.core.pool import map_pool
from flame_fitting.core.ray_session import private_ray_session
from flame_fitting.core.workers import (PACKAGE_ROOT, StartClock, UnitResult, call_unit, home_module, package_digest,
                                        ray_unit, timeout_result)

__all__ = ["Executor", "ExecutorConfig", "ExecutorError", "UnitResult", "call_unit", "executor_params", "home_module",
           "open_executor", "start_pool_early"]


@dataclass
class ExecutorConfig:
    kind: str = spec("local", "local: a process pool on this machine; ray: tasks on a Ray cluster", choices=["local", "ray"])
    workers: int = spec(2, "local: processes running units, the stage's own included (1 = the stage's process only); "
                           "ray without an address: CPUs of the local Ray started by the stage", lo=1, hi=4096)
    ray_address: str | None = spec(None, "Ray cluster address (host:port, ray://host:port or auto); null = $RAY_ADDRESS, "
                                         "else a local Ray started by the stage, on loopback only")
    retries: int = spec(3, "times a unit is re-run when its worker process or node is lost (not when it raises); "
                           "local: retries + 1 pool processes in a row dying before they are ready stop the pool",
                        lo=0, hi=100)
    ray_memory_gb: float | None = spec(None, "ray: memory one unit needs, in GiB (Ray places no more units on a node "
                                             "than its memory holds); null = no request", lo=0.0, hi=4096.0)
    unit_timeout_s: float | None = spec(None, "seconds one unit may run: one running longer is stopped and recorded as "
                                              "failed (UnitTimeout), never retried; null = no limit. local: units then "
                                              "run in `workers` pool processes, none in the stage's own; ray: from "
                                              "when the task starts on its node", lo=1.0, hi=1e7)


def executor_params(params: dict) -> ExecutorConfig:
    """The `executor` section of params.yaml (shared by the data stages), validated."""
    return build_config(ExecutorConfig, params.get("executor"), "params.yaml:executor")


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
            limit = self.cfg.unit_timeout_s
            if limit is None and (self.cfg.workers == 1 or len(items) == 1):
                out = []
                for it in items:
                    out.append(call_unit(fn, it))
                    bar.update()
                return out
            return map_pool(fn, items, bar, self.cfg.workers, self.cfg.retries, limit)
        finally:
            bar.close()

    def _map_ray(self, fn, items, bar) -> list[UnitResult]:
        ray = self.ray
        memory = {"memory": int(self.cfg.ray_memory_gb * 2**30)} if self.cfg.ray_memory_gb else {}
        task = ray.remote(num_cpus=1, max_retries=self.cfg.retries, **memory)(ray_unit)
        fn_ref, cwd, code = ray.put(fn), os.getcwd(), package_digest()
        limits = None if self.cfg.unit_timeout_s is None else _RayLimits(ray, self.cfg.unit_timeout_s)
        clocked = (lambda i: (limits.clock, i)) if limits else (lambda i: ())  # ray_unit's clock and unit index
        refs = [task.remote(fn_ref, it, cwd, code, *clocked(i)) for i, it in enumerate(items)]
        index = {r: i for i, r in enumerate(refs)}
        results: dict[int, UnitResult] = {}
        pending = list(refs)
        while pending:  # every result ready within a second per call: not one call per unit (O(n²) for many units)
            done, pending = ray.wait(pending, num_returns=len(pending), timeout=1.0)
            for r in done:
                i = index[r]
                try:
                    results[i] = ray.get(r)
                    results[i].item = items[i]  # sent back without it (workers.ray_unit)
                except Exception as e:  # noqa: BLE001 - retries exhausted (worker/node lost every time), or cancelled
                    if limits and i in limits.cancelled:
                        results[i] = limits.stopped(i, items[i])
                    else:
                        results[i] = UnitResult(items[i], False, None, f"WorkerLost: {type(e).__name__}: "
                                                f"{str(e).splitlines()[0] if str(e) else ''}")
                bar.update()
            if limits:
                for r in limits.poll({index[r]: r for r in pending}):  # cancelled, and not gone after a grace period
                    pending.remove(r)
                    results[index[r]] = limits.stopped(index[r], items[index[r]])
                    bar.update()
        return [results[i] for i in range(len(items))]


class _RayLimits:
    """`unit_timeout_s` on Ray (module docstring): when each unit started (a StartClock actor the tasks report to,
    read without blocking once a second), and which were cancelled for running past the limit."""

    GRACE_S = 30.0  # a cancelled task whose result has not come back by then is recorded without it

    def __init__(self, ray, limit: float):
        self.ray, self.limit = ray, limit
        self.clock = ray.remote(num_cpus=0)(StartClock).remote()
        self.reading = self.clock.take.remote()
        self.started: dict[int, float] = {}  # unit index -> time.monotonic() when the stage learnt it started
        self.cancelled: dict[int, float] = {}  # unit index -> when it was cancelled

    def poll(self, pending: dict) -> list:
        """Read the starts reported since the last call, cancel the units of `pending` (index -> ref) that have run
        past the limit; returns the refs cancelled more than GRACE_S ago that are still pending (their worker could
        not be reached: the stage stops waiting for them)."""
        now = time.monotonic()
        if self.reading is not None and self.ray.wait([self.reading], timeout=0)[0]:
            try:
                self.started.update((i, now) for i in self.ray.get(self.reading))
                self.reading = self.clock.take.remote()
            except Exception:  # noqa: BLE001 - the clock's node was lost: units not seen starting are timed from now
                self.started.update((i, now) for i in pending if i not in self.started)
                self.reading = None
        for i, ref in pending.items():
            if i not in self.cancelled and i in self.started and now - self.started[i] > self.limit:
                self.ray.cancel(ref, force=True)  # kills the worker process; a cancelled task is not retried
                self.cancelled[i] = now
        return [ref for i, ref in pending.items() if i in self.cancelled and now - self.cancelled[i] > self.GRACE_S]

    def stopped(self, i: int, item) -> UnitResult:
        return timeout_result(item, self.limit, self.cancelled[i] - self.started[i])


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
def _loopback_node(ray) -> Iterator[None]:
    """A Ray started in the block takes 127.0.0.1 as its node's address, so its GCS, raylet, agents and workers listen
    on loopback only (with the machine's address as the node's, they listened on every interface). On
    Linux `ray.init(_node_ip_address="127.0.0.1")` alone does not do it: Ray replaces a loopback address by the
    machine's (`services.resolve_ip_for_localhost`) unless it runs as a single-machine Ray, as on macOS and Windows
    (`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, read when Ray is imported: set here for the processes the block starts,
    and in this process's copy of the constant)."""
    constants = ray._private.ray_constants
    saved, env = constants.ENABLE_RAY_CLUSTER, os.environ.get(constants.ENABLE_RAY_CLUSTERS_ENV_VAR)
    constants.ENABLE_RAY_CLUSTER, os.environ[constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = False, "0"
    try:
        yield
    finally:
        constants.ENABLE_RAY_CLUSTER = saved
        if env is None:
            os.environ.pop(constants.ENABLE_RAY_CLUSTERS_ENV_VAR, None)
        else:
            os.environ[constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = env


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
    if address == "local":  # Ray's word for "start a new local Ray": the stage's own, below
        address = None
    own = not address and not ray.is_initialized()  # a local Ray of the stage's own: started below
    with private_ray_session(ray) if own else nullcontext():  # a fresh token, a folder of this user's only
        started = False
        if not ray.is_initialized():
            if address:
                _check_reachable(address, where)
            path = [str(PACKAGE_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
            env = {"PYTHONPATH": os.pathsep.join(path),
                   # a task holds one CPU: one thread for numba and the BLAS (set when Ray starts the worker process)
                   **{k: "1" for k in ("NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                       "MKL_NUM_THREADS")}}
            # a local Ray of the stage's own: reachable from this machine only (whoever reaches its GCS with its
            # token runs code), no dashboard, no client server (ray.init starts none)
            kw = ({"address": address} if address else {"address": "local", "num_cpus": cfg.workers,
                                                         "include_dashboard": False, "_node_ip_address": "127.0.0.1"})
            try:
                # Ray's C++ client logs every failed attempt (the error below is the one line); ray.init sets a
                # SIGTERM handler of its own: the stage's (core/interrupt.py) is set again after
                with _quiet_stderr(), (_loopback_node(ray) if not address else nullcontext()), \
                        keeping_sigterm_handler():
                    ray.init(runtime_env={"env_vars": env}, log_to_driver=False, logging_level="ERROR", **kw)
            except Exception as e:  # Ray raises plain Exception, OSError, ... (a node that timed out starting)
                with suppress(Exception):
                    ray.shutdown()  # whatever of its node started
                first = (str(e).splitlines() or [type(e).__name__])[0]
                raise ExecutorError((f"{where}={address!r}: cannot connect to Ray" if address else
                                     "executor.kind=ray: the stage's local Ray did not start") +
                                    f" ({first}); nothing was changed") from None
            started = True
            if not address and not ipaddress.ip_address(node_ip := ray.util.get_node_ip_address()).is_loopback:
                ray.shutdown()  # its servers listen beyond this machine: fail closed
                raise ExecutorError(f"executor.kind=ray: the local Ray started at {node_ip!r}, not on loopback; set "
                                    "executor.kind: local, or give the executor.ray_address of a Ray on a private "
                                    "network; nothing was changed")
        try:
            yield Executor(cfg, ray)
        finally:
            if started:
                ray.shutdown()
