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

from geoface_model.checkpoint import MARKER, MAX_STATE_BYTES
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


DEEP = "[" * 100_000 + "]" * 100_000  # beyond the JSON parser's depth: a RecursionError traceback before


def _sparse(path, size: int) -> None:
    """A file of `size` zero bytes that takes no disk space (what a huge download would look like to `stat`)."""
    path.unlink(missing_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)


@pytest.mark.parametrize("case, reason", [
    ("deep complete.json", "unreadable complete.json (not valid JSON (nested too deeply))"),
    ("complete.json without files", "unreadable complete.json (no 'files' object)"),
    ("deep train_state.json", "train_state.json: not valid JSON (nested too deeply)"),
    ("huge train_state.json", f"train_state.json: {MAX_STATE_BYTES + 1} bytes, more than a training state file holds "
                              f"({MAX_STATE_BYTES})")])
def test_hostile_json_in_a_checkpoint_skips_it_with_one_reason(trained, tmp_path, capsys, case, reason):
    """A run folder handed over by someone else: a checkpoint whose JSON is nested beyond the parser's depth (its
    sha256 re-hashed into complete.json), too large to read (MAX_STATE_BYTES + 1: a train_state.json is ~220 bytes a loss row)
    or of the wrong shape is skipped with one reason naming the file, and the run falls back to the previous one."""
    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    ckpt = run / "checkpoints" / "step_000004"
    if case == "deep complete.json":
        (ckpt / MARKER).write_text(DEEP)
    elif case == "complete.json without files":
        (ckpt / MARKER).write_text('{"step": 4, "files": ["model.safetensors"]}')
    else:
        if case.startswith("deep"):
            (ckpt / "train_state.json").write_text(DEEP)
        else:
            _sparse(ckpt / "train_state.json", MAX_STATE_BYTES + 1)
        _rehash(ckpt)
    capsys.readouterr()
    m = train(micro(), trained / "ds", run, progress=False)
    assert m["resumed_from"].endswith("step_000002") and m["steps_run"] == 2
    [skip] = m["skipped_checkpoints"]
    assert skip["path"] == str(ckpt) and reason in skip["reason"] and "\n" not in skip["reason"], skip
    assert f"train: checkpoint {ckpt} is unusable ({skip['reason']}); falling back" in capsys.readouterr().err


def test_a_run_config_nested_too_deeply_is_one_line_naming_it(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained / "run", run)
    (run / "geoface_config.json").write_text(DEEP)
    with pytest.raises(ValueError) as e:
        train(micro(), trained / "ds", run, progress=False)
    assert str(e.value).startswith(f"{run / 'geoface_config.json'}: not valid JSON (nested too deeply); it records "
                                   "the config of the checkpoints beside it") and "\n" not in str(e.value)


def test_run_stamps_nested_too_deeply_are_read_as_unknown(tmp_path):
    """run.json (which run was used last, who holds it) of a state folder from elsewhere: a file nested too deeply or
    too large is a run of unknown age / holder, not a traceback of the training that prunes or waits for it."""
    from geoface_model.checkpoint import prune_runs, touch_run
    from geoface_model.run_lock import RunBusyError, run_lock

    root = tmp_path / "state"
    for name in ("old", "deep", "huge", "current"):
        touch_run(root / name, name)
    (root / "deep" / "run.json").write_text(DEEP)
    _sparse(root / "huge" / "run.json", 2 << 20)  # run.json is ~0.1 KB: read up to 1 MiB
    os.utime(root / "old", (1, 1))  # the oldest of the three besides the current one, by its stamp
    os.utime(root / "deep", (2e9, 2e9)), os.utime(root / "huge", (2e9, 2e9))  # unknown: aged by the folder's mtime
    (root / "old" / "run.json").write_text(json.dumps({"run_id": "old", "last_used": 10.0}))
    assert prune_runs(root, keep=3, current=root / "current") == [root / "old"]
    with run_lock(root / "deep"):
        with pytest.raises(RunBusyError) as e:
            with run_lock(root / "deep"):
                pass
    assert str(e.value).startswith(f"{root / 'deep'}: another training of this run is in progress; wait")


def test_the_training_state_of_a_long_run_is_read_back(tmp_path):
    """train_state.json as save_extra_state writes it for a run of 320 000 steps with a loss row each (train.log_every
    1, the default): over 64 MiB (~220 bytes a row), which the 64 MiB bound refused, so a resume skipped each such
    checkpoint as unusable. The state read back is the one written, every float to the last bit, NaN included (the
    writer is json's C encoder now, compact: it was indent=1's pure-Python one, 2.1× the CPU time,
    benchmarks/train_state_write.py)."""
    import math

    from diffusers.training_utils import EMAModel

    from geoface_model.checkpoint import STATE_FILE, TrainState, load_extra_state, save_extra_state
    net = torch.nn.Linear(2, 2)
    row = {"step": 299_999, "loss": 0.12345678901234567, "diffusion_loss": 0.11345678901234567,
           "align_loss": 0.013456789012345678, "lr": 9.876543210987654e-05, "grad_norm_diffusion": 1.2345678901234567,
           "grad_norm_align": 0.5234567890123456}
    state = TrainState()
    state.step = 320_000
    state.rows = [dict(row, step=i + 1, loss=row["loss"] + i * 1e-12) for i in range(320_000)]
    state.rows[7]["align_loss"] = state.rows[8]["grad_norm_align"] = float("nan")  # not measured at that row
    state.measured = [{"grad_norm_diffusion": 0.1 + 2 ** -50, "grad_norm_align": float("nan")}]
    save_extra_state(tmp_path, EMAModel(net.parameters()), state)
    assert (tmp_path / STATE_FILE).stat().st_size > 64 << 20
    back = TrainState()
    load_extra_state(tmp_path, EMAModel(net.parameters()), back)
    same = (lambda a, b: a.keys() == b.keys()
            and all(x == y or (math.isnan(x) and math.isnan(y)) for x, y in zip(a.values(), b.values())))
    assert back.step == 320_000 and len(back.rows) == 320_000 and len(back.measured) == 1
    assert all(same(a, b) for a, b in zip(back.rows + back.measured, state.rows + state.measured))
    assert math.isnan(back.rows[7]["align_loss"]) and back.rows[-1]["loss"] == row["loss"] + 319_999 * 1e-12
