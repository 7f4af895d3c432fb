"""Resume never runs code from a checkpoint: a checkpoint whose files were replaced by malicious pickles (with a
manifest re-hashed to match, as an attacker who can write the folder would) is skipped with the reason, the run
falls back to the previous checkpoint, and the payload's marker file never appears. Our own state (EMA, step,
loss rows) is safetensors + JSON."""
import hashlib
import json
import os
import shutil

import pytest
import torch

from geoface_model.checkpoint import MARKER
from geoface_model.config import GeoFaceConfig
from geoface_model.synthetic import make_synthetic_shard
from geoface_model.train import train

pytestmark = pytest.mark.usefixtures("one_thread")


def micro() -> GeoFaceConfig:
    return GeoFaceConfig.from_sections(
        tokens=dict(resolution=32, patch_size=8, uv_resolution=32, geo_patch_size=8), model=dict(width=32, depth=2, heads=2),
        loss=dict(align_weight=0.5), train=dict(steps=4, batch_size=2, n_ref=1, n_tgt=2, lr=1e-3, warmup_steps=1,
                                                checkpoint_every=2, ema_decay=0.9))


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    make_synthetic_shard(root / "ds" / "train.safetensors", n_samples=5, n_views=4, resolution=32, uv_resolution=32, seed=0)
    m = train(micro(), root / "ds", root / "run", progress=False)
    assert m["completed"]
    return root


def _rehash(ckpt) -> None:
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(ckpt.iterdir()) if p.name != MARKER}
    (ckpt / MARKER).write_text(json.dumps({"step": 4, "files": files}))


@pytest.mark.parametrize("name", ["optimizer.bin", "scheduler.bin", "random_states_0.pkl", "custom_checkpoint_0.pkl",
                                  "custom_checkpoint_1.pkl"])
def test_malicious_checkpoint_file_is_never_loaded(trained, tmp_path, name):
    run, marker = tmp_path / "run", tmp_path / "MARKER"
    shutil.copytree(trained / "run", run)
    ckpt = run / "checkpoints" / "step_000004"
    torch.save({"state": _Evil(marker)} if name.endswith(".bin") else _Evil(marker), ckpt / name)
    _rehash(ckpt)
    m = train(micro(), trained / "ds", run, progress=False)
    assert not marker.exists(), f"{name}: the payload ran"
    assert m["resumed_from"].endswith("step_000002") and m["steps_run"] == 2
    [skip] = m["skipped_checkpoints"]
    assert skip["path"].endswith("step_000004") and name in skip["reason"]


def test_resumed_ema_and_rows_come_from_safetensors_and_json(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    assert {p.name for p in run.glob("checkpoints/*/*.pkl")} == {"random_states_0.pkl"}  # no pickled state of ours
    shutil.rmtree(run / "checkpoints" / "step_000004")
    state = json.loads((run / "checkpoints" / "step_000002" / "train_state.json").read_text())
    assert state["step"] == 2 and [r["step"] for r in state["rows"]] == [1, 2] and state["ema"]["optimization_step"] == 2
    m = train(micro(), trained / "ds", run, progress=False)
    assert m["resumed_from"].endswith("step_000002") and m["steps"] == 4
    from safetensors.torch import load_file

    a, b = load_file(trained / "run" / "model" / "diffusion_pytorch_model.safetensors"), \
        load_file(run / "model" / "diffusion_pytorch_model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)


def test_the_run_id_changes_with_the_training_code(micro_shards, tmp_path, monkeypatch):
    """An edited loss must train a new run: with a run id of config and data only, the stage resumed the old code's
    finished run at its last step and published the old weights as the new code's model."""
    from geoface_model import train_run
    from geoface_model.config import GeoFaceConfig

    cfg = GeoFaceConfig.from_sections(tokens=dict(resolution=32, patch_size=8, uv_resolution=32, geo_patch_size=8),
                                      model=dict(width=32, depth=2, heads=2), loss={}, train=dict(steps=2))
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "diffusion.py").write_text("loss = diff + term\n")
    monkeypatch.setattr(train_run, "TRAIN_CODE", (tmp_path / "code",))
    a = train_run.run_id(cfg, micro_shards)
    assert train_run.run_id(cfg, micro_shards) == a
    (tmp_path / "code" / "diffusion.py").write_text("loss = diff + 2.0 * term\n")
    assert train_run.run_id(cfg, micro_shards) != a


def test_the_run_id_changes_with_the_weights_behind_a_path(micro_shards, tmp_path):
    """Replacing the VAE (or SD base) weights behind the same `model.vae_path` is another run, not a resume."""
    from geoface_model.config import GeoFaceConfig
    from geoface_model.train_run import run_id

    vae = tmp_path / "vae"
    vae.mkdir()
    (vae / "diffusion_pytorch_model.safetensors").write_bytes(b"weights v1")
    cfg = GeoFaceConfig.from_sections(tokens=dict(resolution=32, patch_size=8, uv_resolution=32, geo_patch_size=8),
                                      model=dict(width=32, depth=2, heads=2, vae_path=str(vae)), loss={},
                                      train=dict(steps=2))
    a = run_id(cfg, micro_shards)
    (vae / "diffusion_pytorch_model.safetensors").write_bytes(b"weights v2")
    assert run_id(cfg, micro_shards) != a
