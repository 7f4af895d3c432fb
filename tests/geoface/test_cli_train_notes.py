"""What `geoface train` (and the DVC train stage, through the same `train_model`) tells its user besides the result:
that it resumed, and from which checkpoint; that bf16 was asked on a machine without a GPU; and, when interrupted
(Ctrl-C, SIGTERM: exit 130), what running it again does: resume from the newest checkpoint of step N, or start over
when none was written. Before, the library knew (`resumed_from`, a log record nobody saw) and the CLI said none of
it: the only sign of a resume was the progress bar starting at 4/8. Real processes and files throughout: a synthetic
shard, a micro training run, SIGSTOP so the process is certainly mid-run when SIGTERM arrives."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cliutil import cli
from flame_fitting.core.interrupt import INTERRUPTED
from geoface_model.checkpoint import list_checkpoints
from geoface_model.synthetic import make_synthetic_shard

REPO = Path(__file__).resolve().parents[2]
MICRO = ["tokens.resolution=32", "tokens.patch_size=8", "tokens.uv_resolution=32", "tokens.geo_patch_size=8",
         "model.width=32", "model.depth=2", "model.heads=2", "batch_size=2", "n_ref=1", "n_tgt=2", "warmup_steps=1",
         "log_every=2", "keep_states=1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1",
       "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


@pytest.fixture
def shard(tmp_path):
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # the shared 2-core machine
    make_synthetic_shard(tmp_path / "ds" / "train.safetensors", n_samples=4, n_views=4, resolution=32,
                         uv_resolution=32, seed=0)
    yield tmp_path / "ds"
    torch.set_num_threads(n)


def _interrupt(argv: list, cwd, ready) -> str:
    """Start `argv`, SIGSTOP it once `ready()` (it is then certainly mid-run: neither failed nor finished), SIGTERM it
    (delivered when it continues); its stderr once it exited 130."""
    proc = subprocess.Popen(argv, env=ENV, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 280  # a deadline for a hung start, not a timing under test
        while not ready():
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the training never got there"
            time.sleep(0.05)
        proc.send_signal(signal.SIGSTOP)
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGCONT)
        _, err = proc.communicate(timeout=280)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == INTERRUPTED and "Traceback" not in err, err[-3000:]
    return err


def test_an_interrupted_training_says_it_resumes_and_the_same_command_does(capsys, shard, tmp_path):
    argv = ["train", shard, "--out", tmp_path / "M", "--state", tmp_path / "ST", "--set", *MICRO, "steps=40",
            "checkpoint_every=2"]
    err = _interrupt([sys.executable, "-m", "geoface", *map(str, argv)], tmp_path,
                     lambda: any(list_checkpoints(p) for p in (tmp_path / "ST").glob("*")))
    [run] = (tmp_path / "ST").iterdir()
    step, ckpt = list_checkpoints(run)[0]  # the newest checkpoint the interrupted run left
    assert 2 <= step < 40 and not (tmp_path / "M").exists()
    assert err.strip().splitlines()[-1] == (
        "geoface train: interrupted; its output folder was not written (the temporary is removed); running the same "
        f"command again resumes from the checkpoint of step {step} ({ckpt})"), err[-3000:]
    # ... and it does, saying so on a line of its own (not inside the progress bar's), before the bar starts
    rc, out, err = cli(capsys, *argv)
    assert rc == 0, err
    said = f"train: resumed from {ckpt} at step {step} of 40\n"
    assert said in err and ("%|" not in err or err.index(said) < err.index("%|")), err
    assert all("%|" not in line for line in err.splitlines() if "resumed from" in line), err
    assert f'"resumed_from": "{ckpt}"' in out and '"steps_run": ' + str(40 - step) in out
    if not torch.cuda.is_available():  # the default train.mixed_precision is bf16: said once, in the CLI's words
        assert err.count("train: train.mixed_precision = bf16 (--set mixed_precision=bf16) needs a GPU and there "
                         "is none: training in fp32\n") == 1, err
    # a finished run run again: nothing left to train, and it says so
    rc, _, err = cli(capsys, *argv[:2], "--out", tmp_path / "M2", *argv[4:])
    assert rc == 0 and f"train: resumed from {run / 'checkpoints' / 'step_000040'} at step 40 of 40: nothing left " \
        "to train\n" in err, err


def test_the_train_stage_interrupted_before_its_first_checkpoint_says_it_starts_over(shard, tmp_path):
    """The DVC stage script (what `dvc repro train` runs, params.yaml beside it) goes through the same train_model:
    interrupted before any checkpoint, it says that running it again starts over, with the key that sets how often
    checkpoints are written (params.yaml's words, no --set)."""
    keys = dict(s.split("=") for s in MICRO)
    sections: dict[str, dict] = {}
    for key, value in keys.items():
        section, _, name = key.rpartition(".")
        sections.setdefault(section or "train", {})[name] = value
    sections["train"].update(steps="400", checkpoint_every="400")
    (tmp_path / "params.yaml").write_text("".join(f"{s}:\n" + "".join(f"  {k}: {v}\n" for k, v in kv.items())
                                                  for s, kv in sections.items()))
    err = _interrupt([sys.executable, str(REPO / "stages" / "train.py"), str(shard), "--state", "ST", "--model", "M",
                      "--loss-csv", "l.csv", "--metrics", "m.json"], tmp_path,
                     lambda: any((p / "run.json").is_file() for p in (tmp_path / "ST").glob("*")))
    [run] = (tmp_path / "ST").iterdir()
    assert list_checkpoints(run) == [] and not (tmp_path / "M").exists()
    assert err.strip().splitlines()[-1] == (
        "train: interrupted; what it had not finished was not written (the temporaries are removed; units and "
        "checkpoints completed before stay); no checkpoint was written yet (one every train.checkpoint_every = 400 "
        "steps): running it again starts over"), err[-3000:]
