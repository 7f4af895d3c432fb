"""`geoface` interrupted (Ctrl-C, SIGTERM), then sent SIGTERM again and again while it exits (Ctrl-C then `kill`, a
scheduler that repeats its SIGTERM): it still ends with its `interrupted` line and status 130
(flame_fitting/core/interrupt.py `exiting_interrupted`). Before, a SIGTERM landing in the exit of a process that
imported torch (~0.5 s) raised inside its exit handlers or, once the interpreter's teardown had set SIGTERM's default
action back, killed it: status -15. A real `python -m geoface train` process on a synthetic shard (micro model)."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from flame_fitting.core.interrupt import INTERRUPTED
from geoface_model.synthetic import make_synthetic_shard

REPO = Path(__file__).resolve().parents[2]
MICRO = ["tokens.resolution=32", "tokens.patch_size=8", "tokens.uv_resolution=32", "tokens.geo_patch_size=8",
         "model.width=32", "model.depth=2", "model.heads=2", "batch_size=2", "n_ref=1", "n_tgt=2", "warmup_steps=1",
         "log_every=2", "keep_states=1", "steps=100000", "checkpoint_every=100000"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1",
       "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def test_sigterms_while_an_interrupted_command_exits_leave_status_130(tmp_path):
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the shared 2-core machine
    try:
        make_synthetic_shard(tmp_path / "ds" / "train.safetensors", n_samples=4, n_views=4, resolution=32,
                             uv_resolution=32, seed=0)
    finally:
        torch.set_num_threads(n)
    err_file = tmp_path / "stderr"
    with err_file.open("w") as err_fh:
        proc = subprocess.Popen([sys.executable, "-m", "geoface", "train", str(tmp_path / "ds"), "--out",
                                 str(tmp_path / "M"), "--state", str(tmp_path / "ST"), "--set", *MICRO], env=ENV,
                                cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=err_fh)
    try:
        deadline = time.monotonic() + 280  # a deadline for a hung start, not a timing under test
        while not any((p / "loss.csv.partial").is_file() for p in (tmp_path / "ST").glob("*")):  # it trains
            assert proc.poll() is None and time.monotonic() < deadline, err_file.read_text()[-3000:]
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        while "interrupted" not in err_file.read_text() and proc.poll() is None:
            assert time.monotonic() < deadline, err_file.read_text()[-3000:]
            time.sleep(0.001)
        while proc.poll() is None:  # and again while it exits
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.001)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    err = err_file.read_text()
    assert proc.returncode == INTERRUPTED and "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("geoface train: interrupted"), err[-3000:]
