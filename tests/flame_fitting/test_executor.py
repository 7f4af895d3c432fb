"""The local executor (flame_fitting/core/executor.py): results in input order, a unit that raises is recorded and
the others complete, a worker process that dies has its unit re-run in a new pool process (the other processes'
units go on; so do they beside a unit stopped for its time limit), and a Ray address nobody answers
is one clear error raised before anything runs."""
import json
import os
import socket
import time
from functools import partial
from pathlib import Path
from typing import Callable

import pytest

from flame_fitting.core.errors import GeofaceError
from flame_fitting.core.executor import ExecutorConfig, ExecutorError, home_module, open_executor, start_pool_early
from flame_fitting.core.unit_keys import KEY_FILE, Unit
from flame_fitting.core.units import UnitWork, run_units, write_unit_failures


def parse(text: str) -> int:
    return int(text)  # raises ValueError on "x"


def stage_waits_once(flag: str, done: Callable[[], bool], seconds: float = 120.0) -> None:
    """In the test's own process (which runs units too, beside the pool): its first unit waits until `done()` holds
    (the pool got as far as the test needs), at most `seconds` (a deadline for a pool that never gets there, not a
    timing under test); its later units, once `flag` (a file) exists, at once. Under load the pool's start (a fork
    server importing this module) took longer than the test's own process needed to run every unit itself at a fixed
    sleep each, and the pool then ran none."""
    if os.path.exists(flag):
        return
    Path(flag).touch()
    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:
        time.sleep(0.02)


def lines(path: str) -> list[str]:
    return Path(path).read_text().split() if os.path.exists(path) else []


def die_once(item: tuple[str, int]) -> int:
    """In a pool process (not the test's, which runs units too), the first unit kills its process (a lost worker), a
    later one logs its pid to `marker`.ran; 0.3 s each. The test's own process waits in its first unit until a unit
    ran in a pool process after the loss. Returns the pid that ran it."""
    marker, parent = item
    path = Path(marker)
    if os.getpid() != parent and not path.exists():
        path.write_text(str(os.getpid()))
        os._exit(1)
    if os.getpid() == parent:
        stage_waits_once(marker + ".waited", lambda: bool(lines(marker + ".ran")))
    else:
        with open(marker + ".ran", "a") as f:
            f.write(f"{os.getpid()}\n")
    time.sleep(0.3)
    return os.getpid()


def die_always(item: tuple[str, int]) -> int:
    """Kill every pool process that runs it (after touching `marker`); in the test's own process, its first unit waits
    until one did, then 0.3 s."""
    marker, parent = item
    if os.getpid() != parent:
        Path(marker).touch()
        os._exit(3)
    stage_waits_once(marker + ".waited", lambda: os.path.exists(marker))
    time.sleep(0.3)
    return parent


def busy_here_fed_there(item: tuple[int, str, int]) -> int:
    """0.05 s in a pool process, which logs its pid to `log`; the test's own process waits in its first unit until
    the pool ran `want` units (its later units take 1 s). Returns the pid that ran it."""
    parent, log, want = item
    if os.getpid() == parent:
        waited = os.path.exists(log + ".waited")
        stage_waits_once(log + ".waited", lambda: len(lines(log)) >= want)
        time.sleep(1.0 if waited else 0)
    else:
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.05)
    return os.getpid()


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_a_unit_that_raises_is_recorded_and_the_others_complete(workers):
    with open_executor(ExecutorConfig(kind="local", workers=workers)) as ex:
        res = ex.map(parse, ["1", "x", "3", "x", "5"], progress=False)
    assert [r.ok for r in res] == [True, False, True, False, True]
    assert [r.value for r in res] == [1, None, 3, None, 5]
    assert res[1].error.startswith("ValueError: invalid literal")


def test_a_pool_process_never_waits_for_the_stage_process(tmp_path):
    """While the stage's process is busy with one long unit, the pool process takes unit after unit (it is fed as
    soon as it is free, not when the stage's process comes back for more: then the pool ran one unit while the
    stage's process waited out its deadline, and the stage's process ran the rest at 1 s each)."""
    with open_executor(ExecutorConfig(kind="local", workers=2)) as ex:
        res = ex.map(busy_here_fed_there, [(os.getpid(), str(tmp_path / "pool.log"), 14)] * 20, progress=False)
    assert all(r.ok for r in res)
    in_pool = sum(r.value != os.getpid() for r in res)
    assert in_pool >= 14, f"the pool ran {in_pool} of 20 units; the stage's process ran the rest at 1 s each"


def pid_after(item: dict) -> int:
    """busy_here_fed_there for a dict item: the pool must run 1 unit."""
    return busy_here_fed_there((item["parent"], item["log"], 1))


def test_a_result_comes_back_with_the_callers_own_item_not_a_copy(tmp_path):
    """An item travels to its pool process and not back: a data stage's unit carries its share of the capture
    (`Unit.payload`, formats.units.unit_payload: ~160 KB for 800 rows), which would come back with every result and be
    held anew by the stage (2 GB of copies at 10 million manifest rows). Each result holds the very item the caller
    passed."""
    items = [{"parent": os.getpid(), "log": str(tmp_path / "pool.log"), "n": i, "rows": list(range(2000))}
             for i in range(12)]
    with open_executor(ExecutorConfig(kind="local", workers=2)) as ex:
        res = ex.map(pid_after, items, progress=False)
    assert all(r.ok for r in res)
    assert any(r.value != os.getpid() for r in res)  # some ran in the pool process
    assert all(r.item is it for r, it in zip(res, items))


def test_the_pool_preloads_the_unit_functions_module(tmp_path):
    """UnitWork(partial(f)) is run by pool processes forked from a server that imported f's module; starting that
    server early is a no-op for `workers: 1` and Ray, and otherwise leaves a working pool."""
    assert home_module(UnitWork(partial(parse), Path("/nonexistent"))) == __name__
    assert home_module(partial(die_always, 1)) == __name__
    start_pool_early(ExecutorConfig(kind="local", workers=1), "json")  # nothing to start
    start_pool_early(ExecutorConfig(kind="local", workers=2), __name__)
    with open_executor(ExecutorConfig(kind="local", workers=2)) as ex:
        res = ex.map(busy_here_fed_there, [(os.getpid(), str(tmp_path / "pool.log"), 1)] * 6, progress=False)
    assert all(r.ok for r in res) and any(r.value != os.getpid() for r in res)


def test_a_lost_worker_process_gets_its_unit_retried(tmp_path):
    marker = tmp_path / "killed"
    with open_executor(ExecutorConfig(kind="local", workers=2, retries=2)) as ex:
        res = ex.map(die_once, [(str(marker), os.getpid())] * 20, progress=False)
    assert marker.is_file(), "no pool process ran a unit"
    killed = int(marker.read_text())
    assert all(r.ok for r in res) and killed not in {r.value for r in res}
    assert {r.value for r in res} - {os.getpid()}, "no unit ran in a new pool process after the loss"


def test_a_worker_that_always_dies_is_recorded_after_the_retries(tmp_path):
    with open_executor(ExecutorConfig(kind="local", workers=2, retries=0)) as ex:
        res = ex.map(die_always, [(str(tmp_path / "died"), os.getpid())] * 20, progress=False)
    assert all(r.value == os.getpid() for r in res if r.ok)
    lost = [r for r in res if not r.ok]
    assert lost and all(r.error == "WorkerLost: the worker process died 1 times while this unit was running"
                        for r in lost)


def test_unreachable_ray_address_is_one_clear_error():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(ExecutorError) as e:
        with open_executor(ExecutorConfig(kind="ray", ray_address=f"127.0.0.1:{port}")):
            pytest.fail("the block must not run")
    msg = str(e.value)
    assert isinstance(e.value, GeofaceError) and "\n" not in msg
    assert f"executor.ray_address='127.0.0.1:{port}'" in msg and "no Ray cluster answers" in msg


def test_a_malformed_ray_address_is_refused():
    with pytest.raises(ExecutorError, match="not a Ray address"):
        with open_executor(ExecutorConfig(kind="ray", ray_address="nohost")):
            pass


def bar_in_pool(item: tuple[int, str]) -> int:
    """What the stages' units do in a pool process: a disabled tqdm bar (the fitter's LM loop) and numba's parallel
    threads (the rasteriser); 0.2 s, logged to `log` in a pool process; the test's own process waits in its first unit
    until a pool process ran one. Returns the pid that ran it."""
    import numba
    from tqdm import tqdm

    parent, log = item
    if os.getpid() == parent:
        stage_waits_once(log + ".waited", lambda: bool(lines(log)))
    numba.get_num_threads()  # launches numba's threads
    for _ in tqdm(range(3), disable=True):
        time.sleep(0.07)
    if os.getpid() != parent:
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
    return os.getpid()


def test_a_finished_pool_leaves_no_semaphore_behind(tmp_path):
    """tqdm (even for a disabled bar) and numba's thread launch make multiprocessing locks, named semaphores in a
    pool process; they are unlinked by the process's exit handlers, which a terminated process skips: the pool
    used to be terminated when its units were done, and every stage with `workers: 2` ended with "resource_tracker:
    There appear to be 1 leaked semaphore objects". A fresh process runs such units on a pool of 2 and exits: no
    such warning."""
    import subprocess
    import sys

    code = ("import os, sys; sys.path[:0] = {path!r}\n"
            "from {module} import bar_in_pool\n"
            "from flame_fitting.core.executor import ExecutorConfig, open_executor\n"
            "if __name__ == '__main__':\n"
            "    with open_executor(ExecutorConfig(kind='local', workers=2)) as ex:\n"
            "        res = ex.map(bar_in_pool, [(os.getpid(), {log!r})] * 8, progress=False)\n"
            "    print(sum(r.ok for r in res), len({{r.value for r in res}}))\n").format(path=sys.path, module=__name__,
                                                                                     log=str(tmp_path / "pool.log"))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["8", "2"], out.stdout  # every unit ran, in both processes
    assert "leaked" not in out.stderr, out.stderr


def test_closing_a_finished_pool_never_hangs_on_a_stuck_process():
    """A finished pool's processes are left to exit normally, but one stuck (here in a sleep of a minute, as in a
    start that never ends) is terminated after the timeout instead of holding the stage's end."""
    import multiprocessing

    from flame_fitting.core.pool import _close

    proc = multiprocessing.get_context("forkserver").Process(target=time.sleep, args=(60,))
    proc.start()
    t0 = time.perf_counter()
    _close([proc], timeout=1.0)
    assert time.perf_counter() - t0 < 20  # a plain join waits the minute out
    assert not proc.is_alive()


def run_or_hang(item: tuple) -> tuple[str, int]:
    """Logs its name (one line per run) to the file `item[1]`; "hang" then sleeps 10 minutes (a unit that never
    returns), the others `item[2]` s (default 0.3). Returns its name and the pid that ran it."""
    name, log, *secs = item
    with open(log, "a") as f:
        f.write(name + "\n")
    time.sleep(600 if name == "hang" else (secs or [0.3])[0])
    return name, os.getpid()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_unit_past_the_time_limit_is_stopped_recorded_and_not_retried(workers, tmp_path):
    """unit_timeout_s: the unit that hangs (10 min) is stopped after ~5 s and recorded as UnitTimeout, having run once;
    the others (0.3 s) complete, in pool processes only (the stage's process could not stop one). Under load a 1 s limit
    stopped units of 0.3 s too, and a total under 30 s (with a hang of 60 s) failed at 37-40 s."""
    log = tmp_path / "runs.txt"
    names = ["a", "hang", "b", "c", "d", "e", "f"]
    t0 = time.monotonic()
    with open_executor(ExecutorConfig(kind="local", workers=workers, retries=0, unit_timeout_s=5.0)) as ex:
        res = ex.map(run_or_hang, [(n, str(log)) for n in names], progress=False)
    assert time.monotonic() - t0 < 300, "the stage waited for the unit that hangs"
    assert [r.ok for r in res] == [n != "hang" for n in names], [r.error for r in res]
    assert res[1].error == "UnitTimeout: ran past unit_timeout_s=5 s" and 5.0 <= res[1].seconds < 300
    assert log.read_text().split().count("hang") == 1, "the unit that timed out was retried"
    assert [r.value[0] for r in res if r.ok] == [n for n in names if n != "hang"]
    assert os.getpid() not in {r.value[1] for r in res if r.ok}


def beside_a_hang(item: tuple) -> tuple[str, int]:
    """run_or_hang for "hang" and the units that start with it (3 s each, beside a 6 s limit); a unit that starts
    after them (`waits`, 3 s after "hang") waits until the process of "hang" is gone (stopped for its time limit),
    then ends: it runs while that process is stopped, however slowly the machine runs (at 1.5 s each beside a 2 s
    limit, a loaded machine could make a unit time out, or the later ones start after "hang" was stopped)."""
    name, log, waits = item
    if name == "hang":
        Path(log + ".hang").write_text(str(os.getpid()))
    if not waits:
        return run_or_hang((name, log, 3.0))
    with open(log, "a") as f:
        f.write(name + "\n")
    hang = int(Path(log + ".hang").read_text())
    deadline = time.monotonic() + 60  # a deadline for a unit never stopped, not a timing under test
    while os.path.exists(f"/proc/{hang}") and time.monotonic() < deadline:
        time.sleep(0.02)
    return name, os.getpid()


@pytest.mark.parametrize("workers", [2, 3])
def test_a_timed_out_unit_stops_only_its_own_process(workers, tmp_path):
    """The units running beside one that times out are not stopped with it: each ran once and succeeded, in time
    (they used to be killed with the whole pool and re-run from the start: with workers=3, "c" and "d" ran twice)."""
    log = tmp_path / "runs.txt"
    names = ["hang", "a", "b", "c", "d"]  # the first `workers` start together; the others after them, and run when
    items = [(n, str(log), i >= workers) for i, n in enumerate(names)]  # "hang" is stopped
    with open_executor(ExecutorConfig(kind="local", workers=workers, retries=0, unit_timeout_s=6.0)) as ex:
        res = ex.map(beside_a_hang, items, progress=False)
    assert res[0].error == "UnitTimeout: ran past unit_timeout_s=6 s"
    assert [r.ok for r in res[1:]] == [True] * 4, [r.error for r in res]
    runs = log.read_text().split()
    assert {n: runs.count(n) for n in names} == dict.fromkeys(names, 1), runs


def die_or_sleep(item: tuple[str, str, int]) -> str:
    """Logs its name (one line per run) to the file `item[1]`; "die" kills its pool process after 0.5 s (never the
    test's own, `item[2]`), the others take 1.5 s; in the test's own process a unit waits until every unit started
    (so that the pool runs the others, however slow its start)."""
    name, log, parent = item
    with open(log, "a") as f:
        f.write(name + "\n")
    if os.getpid() == parent:
        stage_waits_once(log + ".waited", lambda: {"a", "die", "b", "c"} <= set(lines(log)))
        return name
    time.sleep(0.5)
    if name == "die":
        os._exit(1)
    time.sleep(1.0)
    return name


@pytest.mark.parametrize("limit", [None, 30.0])
def test_a_lost_worker_takes_no_other_unit_with_it(limit, tmp_path):
    """retries=0: the unit whose process died is WorkerLost; the units the other pool processes were running meanwhile
    finish, each run once (they used to be lost with the whole pool: WorkerLost too, or re-run with retries > 0)."""
    log = tmp_path / "runs.txt"
    names = ["a", "die", "b", "c"]  # without a limit the test's process takes "a" first, its 2 pool processes the next
    with open_executor(ExecutorConfig(kind="local", workers=3, retries=0, unit_timeout_s=limit)) as ex:
        res = ex.map(die_or_sleep, [(n, str(log), os.getpid()) for n in names], progress=False)
    runs = log.read_text().split()
    assert {n: runs.count(n) for n in names} == dict.fromkeys(names, 1), runs
    assert [r.value for r in res] == ["a", None, "b", "c"], [r.error for r in res]
    assert res[1].error == "WorkerLost: the worker process died 1 times while this unit was running"


def _refuse_to_load(name: str):
    raise RuntimeError(f"{name} cannot be rebuilt here")


class Unloadable:
    """Pickled fine in a pool process; unpickling it in the stage's process raises."""

    def __init__(self, name: str):
        self.name = name

    def __reduce__(self):
        return _refuse_to_load, (self.name,)


def unloadable_or_name(name: str):
    time.sleep(0.2)
    return Unloadable(name) if name == "bad" else name


def test_a_result_the_stage_cannot_unpickle_fails_only_its_unit():
    """A pool process's result that cannot be unpickled in the stage's process is that unit's failure, with a clear
    error; the other units complete (it used to kill the pool's dispatcher thread: map then failed with KeyError 0,
    or, when the stage's process runs units too, waited forever for the unit)."""
    names = ["a", "bad", "b", "c"]
    with open_executor(ExecutorConfig(kind="local", workers=2, retries=0, unit_timeout_s=30.0)) as ex:
        res = ex.map(unloadable_or_name, names, progress=False)
    assert [r.value for r in res] == ["a", None, "b", "c"], [r.error for r in res]
    assert res[1].item == "bad"
    assert res[1].error == ("RuntimeError: the unit's result cannot be read back from its pool process: "
                            "bad cannot be rebuilt here")


def test_a_unit_function_a_pool_process_cannot_get_is_one_clear_error():
    """A unit function that cannot be pickled to a pool process (a lambda) is the pickling error, raised by map
    (it used to be KeyError: 0 once the dispatcher thread had died)."""
    with open_executor(ExecutorConfig(kind="local", workers=2, unit_timeout_s=30.0)) as ex:
        with pytest.raises(Exception, match="pickle"):
            ex.map(lambda x: x, [1, 2, 3], progress=False)


def write_or_hang(unit: Unit, tmp: Path, extras) -> tuple[dict, list]:
    """A stage's unit function: writes its file into the unit's temporary folder; subject "hang" then hangs."""
    (tmp / "out.txt").write_text(unit.rel)
    if unit.subject == "hang":
        time.sleep(600)
    return {"subject": unit.subject}, []


def test_a_stopped_unit_leaves_no_output(tmp_path):
    """Through run_units (what the stages call): the unit that hangs after writing half its output has neither a
    folder nor a temporary left, and is a UnitTimeout failure; the others are written."""
    units = [Unit(s, "seq", key=f"k{s}") for s in ("a", "hang", "b", "c")]
    with open_executor(ExecutorConfig(kind="local", workers=2, unit_timeout_s=5.0)) as ex:  # 1 s stopped "a" under
        run = run_units(ex, write_or_hang, units, tmp_path / "out", "test", progress=False)  # load as well
    assert run.ran == ["a/seq", "b/seq", "c/seq"]
    assert [(f["subject"], f["error"]) for f in run.failures] == [("hang", "UnitTimeout: ran past unit_timeout_s=5 s")]
    left = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*"))
    assert not [p for p in left if p.startswith("hang") or "geoface-tmp" in p], left
    assert [p for p in left if p.endswith("out.txt")] == ["a/seq/out.txt", "b/seq/out.txt", "c/seq/out.txt"]


def write_or_raise(unit: Unit, tmp: Path, extras) -> tuple[dict, list]:
    """A stage's unit function: subject "bad" raises (an unreadable input), the others write their file."""
    if unit.subject == "bad":
        raise ValueError(f"{unit.rel}/cam0.png: cannot read")
    (tmp / "out.txt").write_text(unit.rel)
    return {"subject": unit.subject}, []


def test_a_run_where_some_units_failed_says_so_on_stderr(tmp_path, capsys):
    """A stage (or `geoface fit --unit-timeout-s`) where some sequences failed exits 0 with the others' outputs; it
    used to say so only in failures.json and the metrics' units_failed, so a command-line user saw a clean run. Now
    one warning line names failures.json, how many failed and the first error; a run with no failure prints none."""
    out = tmp_path / "out"
    units = [Unit(s, "seq", key=f"k{s}") for s in ("a", "bad", "c")]
    with open_executor(ExecutorConfig(kind="local", workers=1)) as ex:
        run = run_units(ex, write_or_raise, units, out, "test", progress=False)
        capsys.readouterr()
        write_unit_failures(out / "failures.json", run)
        err = capsys.readouterr().err
        assert err.splitlines() == [f"warning: {out / 'failures.json'}: 1 of 3 work unit(s) failed, the others are in "
                                    "the output; the next run tries them again (first, bad/seq: ValueError: "
                                    "bad/seq/cam0.png: cannot read)"]
        again = run_units(ex, write_or_raise, units[:1] + units[2:], out, "test", progress=False)
        capsys.readouterr()
        write_unit_failures(out / "failures.json", again)
    assert again.kept == ["a/seq", "c/seq"] and capsys.readouterr().err == ""


def test_without_a_time_limit_workers_1_runs_units_in_the_stages_process(tmp_path):
    log = tmp_path / "runs.txt"
    with open_executor(ExecutorConfig(kind="local", workers=1)) as ex:
        assert ex.cfg.unit_timeout_s is None  # the default: no limit
        res = ex.map(run_or_hang, [(n, str(log)) for n in "ab"], progress=False)
    assert [r.value for r in res] == [("a", os.getpid()), ("b", os.getpid())]


def test_the_time_limit_is_validated():
    from flame_fitting.core.executor import executor_params
    from flame_fitting.core.params import ParamsError

    assert executor_params({"executor": {"unit_timeout_s": None}}).unit_timeout_s is None
    assert executor_params({"executor": {"unit_timeout_s": 600}}).unit_timeout_s == 600.0
    for bad, why in ((0, "below the minimum 1.0"), (-5.0, "below the minimum"), ("1h", "is not of type")):
        with pytest.raises(ParamsError, match=why):
            executor_params({"executor": {"unit_timeout_s": bad}})


def write_and_rewrite_a(out: str, unit: Unit, tmp: Path, extras: Path) -> tuple[dict, list]:
    """A stage's unit function with a preview; unit "b" also rewrites kept unit "a"'s key file meanwhile (another
    process's write between the run's currency check and its end): another record, no extras listed."""
    (tmp / "out.txt").write_text(unit.rel)
    (extras / f"{unit.subject}.png").write_text(unit.rel)
    if unit.subject == "b":
        key = Path(out) / "a" / "seq" / KEY_FILE
        rec = json.loads(key.read_text())
        key.write_text(json.dumps({**rec, "record": {"subject": "rewritten"}, "extras": {}}))
    return {"subject": unit.subject}, [f"{unit.subject}.png"]


def test_a_kept_units_key_file_is_read_once_a_run(tmp_path):
    """run_units parsed each unit's key file up to three times a run: the currency check, the extras listing and
    the records (1.2 ms a time for a 2,400-view sequence's record, at 10^4 sequences). It is now parsed once: a kept
    unit's record and listed previews are those of the key file its currency check accepted, even when that file
    is rewritten before the run ends (here by the next unit)."""
    out, extras = tmp_path / "out", tmp_path / "previews"
    fn = partial(write_and_rewrite_a, str(out))
    with open_executor(ExecutorConfig(kind="local", workers=1)) as ex:
        first = run_units(ex, fn, [Unit("a", "seq", key="ka")], out, "test", extras=extras, progress=False)
        assert first.ran == ["a/seq"] and (extras / "a.png").is_file()
        run = run_units(ex, fn, [Unit("a", "seq", key="ka"), Unit("b", "seq", key="kb")], out, "test",
                        extras=extras, progress=False)
    assert (run.kept, run.ran) == (["a/seq"], ["b/seq"])
    assert run.records == {"a/seq": {"subject": "a"}, "b/seq": {"subject": "b"}}
    assert (extras / "a.png").read_text() == "a/seq" and (extras / "b.png").is_file()
