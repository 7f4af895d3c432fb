"""The local executor (flame_fitting/core/executor.py): results in input order, a unit that raises is recorded and
the others complete, a worker process that dies has its unit re-run in a new pool, and a Ray address nobody answers
is one clear error raised before anything runs."""
import os
import socket
from pathlib import Path

import pytest

from flame_fitting.core.errors import GeofaceError
from flame_fitting.core.executor import ExecutorConfig, ExecutorError, open_executor


def parse(text: str) -> int:
    return int(text)  # raises ValueError on "x"


def die_once(marker: str) -> int:
    """Kill the worker process the first time it sees `marker` (a lost worker), return its pid after."""
    path = Path(marker)
    if marker.endswith("killed") and not path.exists():
        path.write_text("killed")
        os._exit(1)
    return os.getpid()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_unit_that_raises_is_recorded_and_the_others_complete(workers):
    with open_executor(ExecutorConfig(kind="local", workers=workers)) as ex:
        res = ex.map(parse, ["1", "x", "3"], progress=False)
    assert [r.ok for r in res] == [True, False, True]
    assert [r.value for r in res] == [1, None, 3]
    assert res[1].error.startswith("ValueError: invalid literal")


def test_a_lost_worker_process_gets_its_unit_retried(tmp_path):
    marker = tmp_path / "killed"
    with open_executor(ExecutorConfig(kind="local", workers=2, retries=2)) as ex:
        res = ex.map(die_once, [str(marker), str(tmp_path / "other")], progress=False)
    assert marker.read_text() == "killed"
    assert all(r.ok for r in res) and all(isinstance(r.value, int) for r in res)


def test_a_worker_that_always_dies_is_recorded_after_the_retries(tmp_path):
    with open_executor(ExecutorConfig(kind="local", workers=2, retries=1)) as ex:
        res = ex.map(os._exit, [3, 3], progress=False)
    assert [r.ok for r in res] == [False, False]
    assert "WorkerLost" in res[0].error


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
