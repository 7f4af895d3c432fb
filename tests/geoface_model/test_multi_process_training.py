"""Training on several processes (what several GPUs run under `accelerate launch`), as a CPU DDP group (gloo):
a reference-dropped micro-batch leaves the sd21 MLP alignment head without gradients, which DDP refuses unless
it looks for unused parameters ("Expected to have finished reduction in the prior iteration" before the fix), and
only the main process publishes the model, loss CSV and metrics (every process renamed them before)."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path


from geoface_model.checkpoint import read_csv
from geoface_model.sd21.tiny import write_tiny_sd21
from geoface_model.synthetic import make_synthetic_shard

REPO = Path(__file__).resolve().parents[2]
RANK_SCRIPT = """
import sys
import torch
torch.set_num_threads(1)
from accelerate import PartialState
PartialState(cpu=True)  # the processes form a DDP group on the CPU (gloo), as several GPUs would
from geoface_model.config import GeoFaceConfig
from geoface_model.train_run import train_model
root = sys.argv[1]
cfg = GeoFaceConfig.from_sections(
    tokens=dict(resolution=64, patch_size=16, uv_resolution=64, geo_patch_size=16),
    model=dict(backbone="sd21_mv", base_path=root + "/base", align_head="mlp", qk_norm=True),
    loss=dict(align_weight=0.5),
    train=dict(steps=3, batch_size=1, n_ref=1, n_tgt=2, lr=1e-3, warmup_steps=1, checkpoint_every=3, ema_decay=0.9,
               cond_dropout=0.5, log_every=1))
m = train_model(cfg, root + "/ds", root + "/state", root + "/model", root + "/loss.csv", root + "/train.json")
print("steps_run", m["steps_run"])
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_with_reference_dropout_and_publish_once(tmp_path):
    write_tiny_sd21(tmp_path / "base", seed=0)
    make_synthetic_shard(tmp_path / "ds" / "train.safetensors", n_samples=4, n_views=3, resolution=64,
                         uv_resolution=64, patch_size=16, geo_patch_size=16, seed=0)
    (tmp_path / "rank.py").write_text(RANK_SCRIPT)
    port = free_port()
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        procs.append(subprocess.Popen([sys.executable, str(tmp_path / "rank.py"), str(tmp_path)], env=env, cwd=tmp_path,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=280)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
        assert "steps_run 3" in out
    rows = read_csv(tmp_path / "loss.csv")
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert json.loads((tmp_path / "train.json").read_text())["steps_run"] == 3
    assert (tmp_path / "model" / "geoface_config.json").is_file()
    assert not [p.name for p in tmp_path.iterdir() if ".geoface-tmp-" in p.name]  # no race left a temporary
