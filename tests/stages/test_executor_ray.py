"""`executor: ray` (issue 16 item 2) on a real local Ray cluster with two worker nodes (ray.cluster_utils.Cluster,
one per module): the landmarks and fit stages give the outputs of the local executor, a worker process killed
while it runs a unit has that unit retried by Ray, the stage completing with identical results, and a unit that runs
past `unit_timeout_s` is cancelled and recorded, not retried. Before that cluster starts: the Ray a stage starts
itself (no address) listens on loopback only, from the OS's socket table, and is gone once the stage is done."""
from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import pathlib
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pandas as pd
import psutil
import pytest
import ray  # a dev dependency: its absence fails this module, it is not skipped
from ray.cluster_utils import Cluster
from unit_capture import build

from flame_fitting.core.executor import ExecutorConfig
from flame_fitting.fit import FitConfig
from flame_fitting.fit.run import fit_folder
from flame_fitting.formats.landmarks import load_landmarks
from flame_fitting.landmarks.capture import LandmarksParams, detect_folder

FIT = FitConfig(iterations=5)


def _command(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:  # exited meanwhile (a zombie until its parent reaps it)
        return "?"


def _listening(pids: set[int]) -> list[tuple[str, int, str]]:
    """(address, port, command line) of every listening TCP socket of `pids`, from the OS's socket table."""
    return sorted((c.laddr.ip, c.laddr.port, _command(c.pid)[:80]) for c in psutil.net_connections("tcp")
                  if c.status == psutil.CONN_LISTEN and c.pid in pids)


def _loopback(ip: str) -> bool:
    a = ipaddress.ip_address(ip.split("%")[0])
    return a.is_loopback or (a.version == 6 and a.ipv4_mapped is not None and a.ipv4_mapped.is_loopback)


@pytest.mark.parametrize("address", [None, "local"])
def test_the_local_ray_listens_on_loopback_only_and_is_gone_after(monkeypatch, address):
    """kind ray, no ray_address (or Ray's "local") and no RAY_ADDRESS: the stage starts a local Ray with `workers`
    CPUs and shuts it down after; a unit that raises is recorded, the others complete; a unit's memory request
    (`ray_memory_gb`) is passed to Ray. That Ray can be reached from this machine only: every listening socket of its
    processes (the stage's own included) is on loopback, none is the dashboard's or the Ray client server's; and once
    the executor is closed none of its processes and none of those sockets is left. Before, the GCS, the raylet, the
    agents and every worker listened on all interfaces or the machine's address (anyone who reaches the GCS can run
    code: Ray has no authentication), and "local" started Ray with its own defaults (every CPU of the machine, not
    `workers`; the dashboard where its packages are installed). (Runs before the module's cluster.)"""
    from flame_fitting.core.executor import open_executor

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert not ray.is_initialized()
    me = psutil.Process()
    before = _listening({me.pid})
    # children this process had already (an earlier test's pool, multiprocessing's resource tracker under
    # pytest-xdist) are not the Ray's: in the full suite two of them outlived the check below
    earlier = {p.pid for p in me.children(recursive=True)}
    with open_executor(ExecutorConfig(kind="ray", workers=2, ray_address=address, ray_memory_gb=0.05)) as ex:
        assert ray.cluster_resources().get("CPU") == 2
        res = ex.map(int, ["1", "x", "3"], progress=False)  # the workers started and listening
        assert [r.value for r in res] == [1, None, 3]
        assert res[1].error.startswith("ValueError: invalid literal")
        procs = [p for p in me.children(recursive=True) if p.pid not in earlier]
        pids = {p.pid for p in procs}
        names = [_command(p.pid) for p in procs]
        assert any("gcs_server" in n for n in names) and any("raylet" in n for n in names)
        sockets = _listening(pids | {me.pid})
        assert len(sockets) >= 3  # the GCS, the raylet, a worker: the check below looks at real sockets
        assert [s for s in sockets if not _loopback(s[0])] == []
        assert not {8265, 10001} & {s[1] for s in sockets}  # no dashboard (job submission), no Ray client server
        assert not [s for s in sockets if "dashboard" in s[2]]
    assert not ray.is_initialized()
    gone, alive = psutil.wait_procs(procs, timeout=60)  # the workers and agents exit once their raylet has
    assert [p.pid for p in alive] == []
    assert _listening({me.pid}) == before
    # the single-machine switch was for that start only: connecting to a cluster later in this process still works
    assert ray._private.ray_constants.ENABLE_RAY_CLUSTER and "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ


def test_a_local_ray_not_on_loopback_is_refused(monkeypatch):
    """Should Ray ignore the request for a loopback node (a later Ray, another platform), the stage stops with one
    line, before any unit runs, and leaves no Ray running."""
    from flame_fitting.core import executor

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if _loopback(ray.util.get_node_ip_address()):  # before ray.init: the address Ray would take by default
        pytest.skip("this machine's only address is loopback: Ray's default node address is already loopback")
    monkeypatch.setattr(executor, "_loopback_node", lambda ray: contextlib.nullcontext())  # Ray's Linux default
    with pytest.raises(executor.ExecutorError, match=r"the local Ray started at '[0-9.:a-f]+', not on loopback") as e:
        with executor.open_executor(ExecutorConfig(kind="ray", workers=1)):
            pytest.fail("the block ran")
    assert len(str(e.value).splitlines()) == 1
    assert not ray.is_initialized()


# a second process that knows the local Ray's address (another user finds it with `ps`, `ss` or in Ray's folder),
# asks it to run a task that writes a file; exit status 3: Ray refused it
_CLIENT = """
import os, sys, ray
@ray.remote
def write(path):
    with open(path, "w") as f:
        f.write(str(os.getuid()))
try:
    ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
except Exception as e:
    print("refused:", type(e).__name__, str(e).splitlines()[0] if str(e) else "")
    sys.exit(3)
ray.get(write.remote(sys.argv[2]), timeout=120)
"""


def test_the_local_ray_runs_only_what_a_holder_of_its_fresh_token_submits(monkeypatch, tmp_path, request):
    """The Ray the stage starts itself runs in token mode with a fresh random token held in the stage's environment
    only: a second process that knows its address but not the token is refused, with no token or with the user's
    `~/.ray/auth_token` (before, Ray 2.60 took that file's token, mode 0644, the same for every Ray of the user: the
    second process ran its task); one given the stage's token runs its task (the check is real), and the stage's own
    units run. Ray's folder is one only this user can enter, holds the token in no file, and is removed after; no
    command line holds the token; Ray's settings in the environment are as before once the executor is closed.
    And that Ray is the stage's own even where `ray start` left its address in Ray's temporary folder
    ($RAY_TMPDIR/ray/ray_current_cluster, written by whoever ran `ray start` on the machine, or left by a killed one).
    Before, `ray.init()` without an address took that file's cluster for the one to join and the stage failed ("When
    connecting to an existing cluster, num_cpus and num_gpus must not be provided"). (Runs before the module's
    cluster; one Ray start for both.)"""
    from flame_fitting.core.executor import open_executor

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    tmp = tempfile.mkdtemp(prefix="gf-", dir="/tmp")  # short: Ray's socket paths live under it (twice nested)
    request.addfinalizer(lambda: shutil.rmtree(tmp, ignore_errors=True))
    monkeypatch.setenv("RAY_TMPDIR", tmp)
    os.mkdir(os.path.join(tmp, "ray"))
    with open(os.path.join(tmp, "ray", "ray_current_cluster"), "w") as f:
        f.write("127.0.0.1:9\n")  # the discard port: no Ray there
    before = dict(os.environ)
    with open_executor(ExecutorConfig(kind="ray", workers=1)) as ex:
        assert ray.get_runtime_context().gcs_address != "127.0.0.1:9"
        assert ray.cluster_resources().get("CPU") == 1
        assert [r.value for r in ex.map(int, ["1", "2"], progress=False)] == [1, 2]
        address, token = ray.get_runtime_context().gcs_address, os.environ.get("RAY_AUTH_TOKEN", "")
        outsider = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_TMPDIR"))}
        outsider["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # a client on this machine: keep 127.0.0.1 as it is
        # three tries to connect, not Ray's 20 (one a second): a refusal is the GCS's answer to every try
        # ("InvalidAuthToken"), so it came after 20 s before; the token's holder connects at the first
        outsider["RAY_NUM_REDIS_GET_RETRIES"] = "3"
        clients = {"no token": outsider, "~/.ray/auth_token": {**outsider, "RAY_AUTH_MODE": "token"},
                   "the stage's token": {**outsider, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}}
        procs = {name: subprocess.Popen([sys.executable, "-c", _CLIENT, address, str(tmp_path / str(i))], env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for i, (name, env) in enumerate(clients.items())}  # at once: each imports Ray
        out = {name: (p.wait(timeout=180), p.stdout.read()[-2000:]) for name, p in procs.items()}
        assert {name: rc for name, (rc, _) in out.items()} == {"no token": 3, "~/.ray/auth_token": 3,
                                                               "the stage's token": 0}, out
        assert sorted(f.name for f in tmp_path.iterdir()) == ["2"]  # only the holder of the token ran code
        assert len(token) == 64 and token != before.get("RAY_AUTH_TOKEN")
        folder = pathlib.Path(ray._private.worker._global_node.get_session_dir_path()).parents[1]
        assert folder.stat().st_uid == os.getuid() and stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert [f for f in folder.rglob("*") if f.is_file() and token.encode() in f.read_bytes()] == []
        assert [p.pid for p in psutil.process_iter() if token in _command(p.pid)] == []
    assert not ray.is_initialized() and not folder.exists()
    mine = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_TMPDIR")  # what the stage set for its Ray
    assert {k: os.environ.get(k) for k in mine} == {k: before.get(k) for k in mine}


def test_a_long_temporary_folder_does_not_stop_the_local_ray(monkeypatch, tmp_path):
    """Ray's socket paths (…/ray/session_<date>_<pid>/sockets/plasma_store) must fit in 107 bytes; under a long
    $RAY_TMPDIR or $TMPDIR (a cluster job's per-job folder) every start of the stage's own Ray failed with an OSError
    traceback ("AF_UNIX path length cannot exceed 107 bytes"). Now its private folder is made in /tmp then: the units
    run, nothing is left in either folder. A temporary folder that is missing is one line naming it, no Ray started.
    (Runs before the module's cluster.)"""
    from flame_fitting.core.executor import ExecutorError, open_executor
    from flame_fitting.core.ray_session import PREFIX

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    long = tmp_path / ("job-" + "0123456789" * 6)
    long.mkdir()
    assert len(str(long)) > 80
    monkeypatch.setenv("RAY_TMPDIR", str(long))
    with open_executor(ExecutorConfig(kind="ray", workers=1)) as ex:
        assert [r.value for r in ex.map(int, ["1", "2"], progress=False)] == [1, 2]
        folder = pathlib.Path(ray._private.worker._global_node.get_session_dir_path()).parents[1]
        assert folder.parent == pathlib.Path("/tmp") and folder.name.startswith(PREFIX)
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert not ray.is_initialized() and not folder.exists() and list(long.iterdir()) == []
    assert os.environ["RAY_TMPDIR"] == str(long)

    monkeypatch.setenv("RAY_TMPDIR", "/gf-missing")  # short: a long one that is missing is also replaced by /tmp
    with pytest.raises(ExecutorError, match=r"cannot make the local Ray's folder in /gf-missing .*No such file") as e:
        with open_executor(ExecutorConfig(kind="ray", workers=1)):
            pytest.fail("the block ran")
    assert len(str(e.value).splitlines()) == 1 and not ray.is_initialized()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray")
    head, cap = build(root, subjects=4)
    local = ExecutorConfig(kind="local", workers=1)
    detect_folder(cap, root / "lmk_local", LandmarksParams(workers=1), executor=local)
    fit_folder(cap, root / "lmk_local", head, root / "fits_local", FIT, executor=local)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield dict(root=root, head=head, cap=cap, ray=ExecutorConfig(kind="ray", ray_address=cluster.address, retries=3))
    if ray.is_initialized():
        ray.shutdown()
    cluster.shutdown()


def assert_same_fits(a, b):
    fa, fb = sorted(p.relative_to(a) for p in a.glob("*/*/fit.npz")), sorted(p.relative_to(b) for p in b.glob("*/*/fit.npz"))
    assert fa == fb and len(fa) == 4
    for rel in fa:
        with np.load(a / rel) as x, np.load(b / rel) as y:
            assert sorted(x.files) == sorted(y.files)
            for k in x.files:
                np.testing.assert_array_equal(x[k], y[k], err_msg=f"{rel}: {k}")
        for name in ("cameras.json", "history.csv"):
            assert (a / rel.parent / name).read_bytes() == (b / rel.parent / name).read_bytes(), rel.parent / name
        pd.testing.assert_frame_equal(pd.read_parquet(a / rel.parent / "residuals.parquet"),
                                      pd.read_parquet(b / rel.parent / "residuals.parquet"))


def test_ray_landmarks_and_fit_equal_local(setup):
    root, cap, head = setup["root"], setup["cap"], setup["head"]
    m = detect_folder(cap, root / "lmk_ray", LandmarksParams(workers=1), executor=setup["ray"])
    assert (m["units_run"], m["units_failed"]) == (4, 0)
    a, b = load_landmarks(root / "lmk_local"), load_landmarks(root / "lmk_ray")
    pd.testing.assert_frame_equal(a.table, b.table)
    np.testing.assert_array_equal(a.points, b.points)
    m = fit_folder(cap, root / "lmk_local", head, root / "fits_ray", FIT, executor=setup["ray"])
    assert (m["units_run"], m["units_failed"]) == (4, 0)
    assert_same_fits(root / "fits_local", root / "fits_ray")


def test_a_killed_worker_has_its_unit_retried(setup):
    root, cap, head = setup["root"], setup["cap"], setup["head"]
    out, killed, stop = root / "fits_killed", [], threading.Event()
    pattern = re.compile(r"\.geoface-tmp-[A-Za-z0-9]+-(\d+)-")

    def kill_first_worker():  # a unit's temporary folder is named after the pid of the worker writing it
        while not stop.is_set() and not killed:
            for p in out.glob("*/.*"):
                if (hit := pattern.search(p.name)) and int(hit.group(1)) != os.getpid():
                    os.kill(int(hit.group(1)), signal.SIGKILL)
                    killed.append((p.parent.name, int(hit.group(1))))
                    return
            time.sleep(0.005)

    watcher = threading.Thread(target=kill_first_worker, daemon=True)
    watcher.start()
    try:
        m = fit_folder(cap, root / "lmk_local", head, out, FIT, executor=setup["ray"])
    finally:
        stop.set()
        watcher.join()
    assert killed, "no worker was caught running a unit"
    assert (m["units_run"], m["units_failed"]) == (4, 0), m
    assert_same_fits(root / "fits_local", out)
    assert not [p for p in out.rglob("*") if "geoface-tmp" in p.name], "a killed unit left its temporary behind"


def run_or_hang(item: tuple[str, str]) -> str:
    """Logs its name (one line per run) to the file `item[1]`; "hang" then sleeps two minutes (a unit that never
    returns), the others 4 s."""
    name, log = item
    with open(log, "a") as f:
        f.write(name + "\n")
    time.sleep(120 if name == "hang" else 4)
    return name


def test_a_unit_past_the_time_limit_is_cancelled_and_not_retried(setup, tmp_path):
    """unit_timeout_s=10 on the two one-CPU nodes: the unit that hangs is cancelled and recorded as UnitTimeout,
    having run once (retries=3 is for lost workers); the others complete, although the last queued for a CPU for
    8 s or more before running 4 s (the limit runs from a task's start, not its submission). A 4 s unit against a
    10 s limit: with 1.5 s against 2 s, a unit on the loaded 2-core machine (a `dvc repro` beside the suite) ran past
    the limit."""
    from flame_fitting.core.executor import open_executor

    log, names = tmp_path / "runs.txt", ["hang", "a", "b", "c"]
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the Ray workers do not import the tests
    try:
        t0 = time.monotonic()
        with open_executor(dataclasses.replace(setup["ray"], unit_timeout_s=10.0)) as ex:
            res = ex.map(run_or_hang, [(n, str(log)) for n in names], progress=False)
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    assert time.monotonic() - t0 < 80, "the stage waited for the unit that hangs"
    assert [r.ok for r in res] == [False, True, True, True], [r.error for r in res]
    assert res[0].error == "UnitTimeout: ran past unit_timeout_s=10 s"
    assert [r.value for r in res[1:]] == ["a", "b", "c"]
    time.sleep(1.0)  # a retry, had there been one, would have logged by now
    assert sorted(log.read_text().split()) == ["a", "b", "c", "hang"], "a unit ran twice"
