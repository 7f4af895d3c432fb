"""Backbone sd21_mv end to end on a tiny random SD 2.x folder (no download): training steps with the alignment
loss (layer 10, MLP logit head, QK-norm), exact resume, save/from_pretrained, generation through GeoFacePipeline."""
import json
import math

import numpy as np
import pytest
import torch

from flame_fitting.geometry.camera import Camera, intrinsics, look_at
from geoface_model.checkpoint import read_csv
from geoface_model.config import GeoFaceConfig
from geoface_model.pipeline import GeoFacePipeline
from geoface_model.sd21 import BaseModelError, SD21MultiView, check_base_folder
from geoface_model.sd21.tiny import write_tiny_sd21
from geoface_model.synthetic import make_synthetic_shard
from geoface_model.train import train

pytestmark = pytest.mark.usefixtures("one_thread")
S = 64  # 8×8 latents; layer 10 sees 4×4 tokens of 16×16 pixels


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd21train")
    base = write_tiny_sd21(root / "base", seed=0)
    make_synthetic_shard(root / "ds" / "train.safetensors", n_samples=3, n_views=3, resolution=S, uv_resolution=S,
                         patch_size=16, geo_patch_size=16, seed=0)
    return base, root / "ds"


def config(base, **train_kw) -> GeoFaceConfig:
    return GeoFaceConfig.from_sections(
        tokens=dict(resolution=S, patch_size=16, uv_resolution=S, geo_patch_size=16),
        model=dict(backbone="sd21_mv", base_path=str(base), align_head="mlp", qk_norm=True),
        loss=dict(align_weight=0.5),
        train=dict(steps=4, batch_size=1, n_ref=1, n_tgt=2, lr=1e-3, warmup_steps=1, checkpoint_every=2,
                   ema_decay=0.9) | train_kw)


def _params(path):
    return [p.detach().clone() for p in SD21MultiView.from_pretrained(str(path)).parameters()]


def test_train_with_alignment_resume_and_generate(setup, tmp_path):
    base, data = setup
    cfg = config(base)
    full = train(cfg, data, tmp_path / "full", progress=False)
    assert full["completed"] and full["steps"] == 4 and full["n_params"] > 2_000_000
    rows = read_csv(tmp_path / "full" / "loss.csv")
    assert all(r["align_loss"] > 0 and math.isfinite(r["loss"]) for r in rows)
    assert all(abs(r["loss"] - r["diffusion_loss"] - 0.5 * r["align_loss"]) < 1e-5 for r in rows)
    # the UNet's weights moved away from the base's
    trained = SD21MultiView.from_pretrained(str(tmp_path / "full" / "model"))
    start = SD21MultiView.from_base(check_base_folder(base), align_head="mlp", qk_norm=True)
    moved = {n for (n, a), b in zip(trained.named_parameters(), start.parameters()) if not torch.equal(a, b)}
    assert {"unet.conv_in.weight", "unet.up_blocks.2.attentions.0.transformer_blocks.0.attn1.to_q.weight"} <= moved

    # interrupted after step 3, resumed from the step-2 checkpoint: the same final weights and losses
    train(cfg, data, tmp_path / "cut", progress=False, max_steps=3)
    res = train(cfg, data, tmp_path / "cut", progress=False)
    assert res["resumed_from"].endswith("step_000002") and res["steps"] == 4
    for a, b in zip(_params(tmp_path / "full" / "model"), _params(tmp_path / "cut" / "model"), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    for a, b in zip(rows, read_csv(tmp_path / "cut" / "loss.csv")):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)

    # generation through GeoFacePipeline from the train output, and its save/load round trip
    pipe = GeoFacePipeline.from_training(tmp_path / "full" / "model", cfg)
    pipe.set_progress_bar_config(disable=True)
    K = intrinsics(80, 80, 32, 24)
    cams = [Camera(K=K, world_to_cam=look_at(3 * np.array([np.sin(a), 0.1, np.cos(a)]), np.zeros(3)), width=64,
                   height=48, name=f"c{i}") for i, a in enumerate(np.radians([0.0, 30.0, -30.0]))]
    ref = (np.random.default_rng(0).random((48, 64, 3)) * 255).astype(np.uint8)
    out = pipe(ref, cams[0], cams[1:], num_inference_steps=2, seed=1, mesh=False)
    assert out.images.shape == (2, S, S, 3) and out.posmap.shape == (S, S, 3) and np.isfinite(out.posmap).all()
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = GeoFacePipeline.from_pretrained(tmp_path / "pipe")
    assert type(loaded.transformer) is SD21MultiView
    again = loaded(ref, cams[0], cams[1:], num_inference_steps=2, seed=1, mesh=False)
    np.testing.assert_allclose(again.posmap, out.posmap, atol=1e-5)
    np.testing.assert_allclose(again.images.astype(np.float32), out.images.astype(np.float32), atol=1.0)


def test_train_refuses_bad_base_or_another_backbones_run_before_building(setup, tmp_path):
    base, data = setup
    hub = config(base).replace(model={"base_path": "stabilityai/stable-diffusion-2-1"})
    with pytest.raises(BaseModelError, match="'stabilityai/stable-diffusion-2-1': not an existing local folder"):
        train(hub, data, tmp_path / "hub", progress=False)
    run = tmp_path / "dit_run"  # a run directory with checkpoints written by the dit backbone
    (run / "checkpoints" / "step_000002").mkdir(parents=True)
    (run / "geoface_config.json").write_text(json.dumps(GeoFaceConfig().to_dict()))
    with pytest.raises(BaseModelError, match=r"dit_run/geoface_config.json: model.backbone is 'dit', the config asks 'sd21_mv'"):
        train(config(base), data, run, progress=False)
