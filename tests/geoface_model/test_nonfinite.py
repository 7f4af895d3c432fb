"""NaN and inf in training: a shard whose float arrays hold them is refused where a sample is read (naming the
file and sample), and a run whose gradients become non-finite stops before that step changes the weights, with
nothing published (before: it trained on, every logged loss `nan`, and published a model of NaN weights that the
toolkit's own loader then refused)."""
from __future__ import annotations

import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from geoface_model.config import GeoFaceConfig
from geoface_model.data import GeoFaceDataset, ShardError
from geoface_model.synthetic import make_synthetic_shard
from geoface_model.train import DivergedError, train

pytestmark = pytest.mark.usefixtures("one_thread")


def micro(**train_kw) -> GeoFaceConfig:
    return GeoFaceConfig.from_sections(
        tokens=dict(resolution=32, patch_size=8, uv_resolution=32, geo_patch_size=8),
        model=dict(width=32, depth=2, heads=2), loss=dict(align_weight=0.5),
        train=dict(steps=4, batch_size=2, n_ref=1, n_tgt=2, lr=1e-3, warmup_steps=1, checkpoint_every=2,
                   ema_decay=0.9) | train_kw)


def _damaged(tmp_path, key: str, value: float):
    """A shard of 5 samples whose array `key` holds `value` in sample 1 only (header and shapes untouched)."""
    path = tmp_path / "ds" / "train.safetensors"
    make_synthetic_shard(path, n_samples=5, n_views=4, resolution=32, uv_resolution=32, seed=0)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors = load_file(path)
    t = tensors[key]
    if key.endswith("_weight"):
        o0 = int(tensors[key.replace("_weight", "_offsets")][1])
        t[o0] = value
    else:
        t[1].view(-1)[0] = value
    save_file(tensors, path, metadata=meta)
    return path


@pytest.mark.parametrize("key", ["K", "world_to_cam", "uv_posmap", "a2g_weight", "g2a_weight"])
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_a_sample_with_nan_or_inf_is_refused_where_it_is_read(tmp_path, key, value):
    path = _damaged(tmp_path, key, value)
    ds = GeoFaceDataset(path.parent, "train", n_ref=1, n_tgt=3)
    ds.item(0, [0, 1, 2, 3])  # the other samples read as before
    ds.item(2, [0, 1, 2, 3])
    with pytest.raises(ShardError, match=rf"train\.safetensors#1: {key} contains NaN or inf$"):
        ds.item(1, [0, 1, 2, 3])


def test_training_on_a_damaged_sample_stops_with_its_name(tmp_path):
    path = _damaged(tmp_path, "uv_posmap", math.nan)
    with pytest.raises(ShardError, match=r"train\.safetensors#1: uv_posmap contains NaN or inf"):
        train(micro(), path.parent, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "model").exists()


def test_diverging_gradients_stop_the_run_before_they_change_the_weights(tmp_path, micro_shards):
    with pytest.raises(DivergedError, match=r"^step (\d+): the gradient norm is (nan|inf) .*nothing is published") as e:
        train(micro(lr=1e30, steps=20, checkpoint_every=1), micro_shards, tmp_path, progress=False)
    step = int(e.value.args[0].split(":")[0].split()[1])
    assert not (tmp_path / "model").exists()
    ckpts = sorted((tmp_path / "checkpoints").glob("step_*"))
    assert ckpts and ckpts[-1].name == f"step_{step - 1:06d}"  # the last checkpoint is the step before
    assert all(torch.isfinite(t).all() for t in load_file(ckpts[-1] / "ema.safetensors").values())
