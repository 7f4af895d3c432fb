"""SIGTERM while `ray.init` starts the stage's own local Ray (`executor: ray`, core/executor.py `open_executor`):
ray.init sets a SIGTERM handler of its own (`sys.exit(15)`) at its start and only then spends seconds starting the
node's processes; core/interrupt.py `keeping_sigterm_handler` set the stage's handler again after it, but a SIGTERM
within those seconds was Ray's: the stage exited 15 without its `interrupted` line. A real stage-like process is sent
SIGTERM once Ray's GCS server (a process ray.init starts, before the raylet and the driver's connection) runs."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flame_fitting.core.interrupt import INTERRUPTED

pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[2]

STAGE = '''
import sys, time
sys.path[:0] = [{stages!r}]
from common import run
from flame_fitting.core.executor import ExecutorConfig, open_executor


def main():
    with open_executor(ExecutorConfig(kind="ray", workers=1)):
        print("connected", file=sys.stderr, flush=True)
        time.sleep(600)


if __name__ == "__main__":
    run(main)
'''


def _children(pid: int) -> list[str]:
    """The names of `pid`'s child processes (/proc, Linux)."""
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    names = []
    for kid in kids:
        try:
            names.append(Path(f"/proc/{kid}/comm").read_text().strip())
        except OSError:
            pass
    return names


def _sigterm_during_ray_init(tmp_path: Path) -> tuple[int, str]:
    """The stage's status and stderr, sent SIGTERM once Ray's GCS server runs."""
    err_file = tmp_path / "stderr"
    with err_file.open("w") as err_fh:
        proc = subprocess.Popen([sys.executable, str(tmp_path / "stage.py")], cwd=tmp_path, stderr=err_fh,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.monotonic() + 120  # a deadline for a hung start, not a timing under test
        while not any(n.startswith("gcs_server") for n in _children(proc.pid)):
            assert proc.poll() is None and time.monotonic() < deadline, err_file.read_text()[-3000:]
            time.sleep(0.005)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err_file.read_text()


def test_sigterm_while_ray_init_starts_the_node_exits_130_with_the_line(tmp_path):
    (tmp_path / "stage.py").write_text(STAGE.format(stages=str(REPO / "stages")))
    for _ in range(3):  # ray.init takes seconds after its GCS server starts: a test starved that long tries again
        rc, err = _sigterm_during_ray_init(tmp_path)
        if "connected" not in err:
            break
    assert "connected" not in err, "ray.init had returned three times: the SIGTERM came too late to test anything"
    assert rc == INTERRUPTED, err[-3000:]  # before: 15
    assert err.strip().splitlines()[-1].startswith("stage: interrupted"), err[-3000:]
