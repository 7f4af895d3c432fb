"""Two trainings at once on one state folder, as real processes: a second training of the same run (a second
terminal, a resume started while the first still trains) wrote its checkpoints into the same temporary folder,
removing the first one's half-written checkpoint, and one of them died mid-run ("cannot be written (... No such
file or directory ...; a full disk?)"); another config's training pruned (deleted) the state of a run that was
training. The first training here is stopped (SIGSTOP) once its first checkpoint is written, so it is certainly
still running, holding its run folder, while the second starts."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flame_fitting.core.errors import GeofaceError
from geoface_model.checkpoint import list_checkpoints, prune_runs
from geoface_model.config import GeoFaceConfig
from geoface_model.sd21.tiny import write_tiny_sd21
from geoface_model.synthetic import make_synthetic_shard
from geoface_model.train_run import train_model

REPO = Path(__file__).resolve().parents[2]
SECTIONS = dict(
    tokens=dict(resolution=64, patch_size=16, uv_resolution=64, geo_patch_size=16),
    model=dict(backbone="sd21_mv", align_head="mlp", qk_norm=True),
    loss=dict(align_weight=0.5),
    train=dict(steps=12, batch_size=1, n_ref=1, n_tgt=2, lr=1e-3, warmup_steps=1, checkpoint_every=1, ema_decay=0.9,
               log_every=1, keep_states=1))
TRAIN_SCRIPT = """
import json, sys
import torch
torch.set_num_threads(1)
from geoface_model.config import GeoFaceConfig
from geoface_model.train_run import train_model
root, sections = sys.argv[1], json.loads(sys.argv[2])
train_model(GeoFaceConfig.from_sections(**sections), root + "/ds", root + "/state", root + "/model_a",
            root + "/loss_a.csv")
"""


def config(root: Path, **train) -> tuple[GeoFaceConfig, dict]:
    sections = json.loads(json.dumps(SECTIONS))
    sections["model"]["base_path"] = str(root / "base")
    sections["train"].update(train)
    return GeoFaceConfig.from_sections(**sections), sections


@pytest.fixture
def stopped_training(tmp_path, one_thread):
    """A training process (12 steps, a checkpoint every step) stopped after its first checkpoint: (process, its run
    folder). Killed at the end."""
    write_tiny_sd21(tmp_path / "base", seed=0)
    make_synthetic_shard(tmp_path / "ds" / "train.safetensors", n_samples=4, n_views=3, resolution=64,
                         uv_resolution=64, patch_size=16, geo_patch_size=16, seed=0)
    (tmp_path / "train.py").write_text(TRAIN_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, str(tmp_path / "train.py"), str(tmp_path),
                             json.dumps(config(tmp_path)[1])], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 280  # a deadline for a hung start, not a timing under test
        while not (runs := [p for p in (tmp_path / "state").glob("*") if list_checkpoints(p)]):
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "the first training wrote no checkpoint"
            time.sleep(0.05)
        proc.send_signal(signal.SIGSTOP)
        assert proc.poll() is None and not (tmp_path / "model_a").exists(), "the first training ended too soon"
        yield proc, runs[0]
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def test_a_second_training_of_a_run_in_progress_is_refused_and_resumes_once_it_ends(stopped_training, tmp_path):
    proc, run_dir = stopped_training
    cfg, _ = config(tmp_path)
    before = {p.name: sorted(q.name for q in p.iterdir()) for _, p in list_checkpoints(run_dir)}
    with pytest.raises(GeofaceError, match="another training of this run is in progress") as e:
        train_model(cfg, tmp_path / "ds", tmp_path / "state", tmp_path / "model_b", tmp_path / "loss_b.csv")
    assert str(run_dir) in str(e.value) and f"process {proc.pid}" in str(e.value)
    # the running training's checkpoints are untouched, nothing of the second one was written
    assert {p.name: sorted(q.name for q in p.iterdir()) for _, p in list_checkpoints(run_dir)} == before
    assert not (tmp_path / "model_b").exists() and not (tmp_path / "loss_b.csv").exists()
    proc.kill()  # SIGKILL: no clean-up runs, the system releases the lock
    proc.wait()
    m = train_model(cfg, tmp_path / "ds", tmp_path / "state", tmp_path / "model_b", tmp_path / "loss_b.csv")
    last = max(int(n.split("_")[1]) for n in before)
    assert m["completed"] and m["resumed_from"] is not None and m["steps_run"] <= 12 - last
    assert (tmp_path / "model_b" / "geoface_config.json").is_file()


def test_another_config_does_not_prune_a_run_that_is_training(stopped_training, tmp_path):
    _, run_dir = stopped_training
    idle = tmp_path / "state" / "0123456789abcdef"  # an older run nobody trains: pruned as before
    idle.mkdir()
    (idle / "run.json").write_text(json.dumps({"run_id": idle.name, "last_used": 0.0}))
    current = tmp_path / "state" / "fedcba9876543210"
    gone = prune_runs(tmp_path / "state", keep=1, current=current)
    assert gone == [idle] and not idle.exists()
    assert run_dir.is_dir() and list_checkpoints(run_dir)
