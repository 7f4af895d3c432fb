"""The `train` stage keeps earlier runs' resumable states (models/train_state/<run id>/) when parameters change,
prunes the least recently used beyond `train.keep_states`, and still resumes a run it kept. Runs the real stage
script in a scratch folder with a tiny config and a synthetic shard."""
import json
import subprocess
import sys
from pathlib import Path

import yaml

from geoface_model.checkpoint import verify_checkpoint
from geoface_model.synthetic import make_synthetic_shard

REPO = Path(__file__).resolve().parents[2]


def _run(cwd: Path, **train_kw) -> tuple[str, dict]:
    params = {"tokens": dict(resolution=32, patch_size=8, uv_resolution=32, geo_patch_size=8),
              "model": dict(width=32, depth=2, heads=2), "loss": dict(align_weight=0.5),
              "train": dict(steps=2, batch_size=2, n_ref=1, n_tgt=2, warmup_steps=1, checkpoint_every=2,
                            mixed_precision="no") | train_kw}
    (cwd / "params.yaml").write_text(yaml.safe_dump(params))
    args = ["data/dataset", "--state", "models/train_state", "--model", "models/geoface", "--loss-csv",
            "plots/train/loss.csv", "--metrics", "metrics/train.json"]  # as dvc.yaml's cmd gives them
    r = subprocess.run([sys.executable, str(REPO / "stages" / "train.py"), *args], cwd=cwd, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stderr, json.loads((cwd / "metrics" / "train.json").read_text())  # messages go to stderr


def _states(cwd: Path) -> set[str]:
    return {p.name for p in (cwd / "models" / "train_state").iterdir()}


def test_states_of_earlier_runs_are_kept_pruned_by_count_and_resumable(tmp_path):
    make_synthetic_shard(tmp_path / "data" / "dataset" / "train.safetensors", n_samples=4, n_views=4, resolution=32,
                         uv_resolution=32, seed=0)
    (tmp_path / "models" / "train_state" / "my_notes").mkdir(parents=True)  # not a run: never touched
    _run(tmp_path, lr=1e-3, keep_states=2)
    [a] = _states(tmp_path) - {"my_notes"}
    _, m_b = _run(tmp_path, lr=2e-3, keep_states=2)  # another parameter: a new run beside the first
    [b] = _states(tmp_path) - {"my_notes", a}
    for run in (a, b):
        assert verify_checkpoint(tmp_path / "models" / "train_state" / run / "checkpoints" / "step_000002") is None
    out, _ = _run(tmp_path, lr=3e-3, keep_states=2)  # a third run: the least recently used (a) goes
    assert a not in _states(tmp_path) and b in _states(tmp_path) and len(_states(tmp_path)) == 3
    assert f"deleted the state of run {a}" in out
    _, m = _run(tmp_path, lr=2e-3, keep_states=3)  # back to b (keep_states is not part of the run id): resumed
    # at its end, nothing to train: it publishes what b published when it finished (its metrics, to the timing)
    assert m == m_b and m["steps_run"] == 2 and m["completed"]
    assert len(_states(tmp_path)) == 3 and "my_notes" in _states(tmp_path)
