"""Baselines and foreground / per-noise-band metrics of the evaluation (issue 14 items 1-2), on tiny shards the
tests write themselves: the mean-colour and mean-UV baselines equal the means read back from the shards, the
camera-only attention baseline copies the nearest training camera's targets, a prediction equal to the ground truth
beats every baseline, and the foreground metrics ignore the background."""
import numpy as np
import pytest
import torch

from flame_fitting.geometry.camera import Camera, intrinsics, look_at
from geoface_model.baselines import (NOISE_BANDS, band_ranges, band_timesteps, best_targets, camera_only_hit_rate,
                                     nearest_view, training_stats)
from geoface_model.data import GeoFaceDataset, read_shard
from geoface_model.metrics import PSNR_CAP_DB, image_metrics, psnr, psnr_fg, ssim, ssim_fg, ssim_map
from geoface_model.metrics_geometry import posmap_error_mm
from geoface_model.synthetic import make_synthetic_shard


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("baselines")
    make_synthetic_shard(root / "train.safetensors", n_samples=3, n_views=4, resolution=32, uv_resolution=32,
                         split="train", seed=0, ss=1)
    make_synthetic_shard(root / "test.safetensors", n_samples=1, n_views=4, resolution=32, uv_resolution=32,
                         split="test", seed=1, ss=1)
    return root


def _identity(info):
    return np.eye(4)  # the sphere renderer's world is its canonical frame


def test_foreground_metrics_ignore_the_background():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    mask = np.zeros((32, 32), bool)
    mask[6:26, 8:28] = True
    pred = gt.copy()
    pred[~mask] = rng.integers(0, 256, (int((~mask).sum()), 3), dtype=np.uint8)  # wrong background only
    assert psnr_fg(pred, gt, mask) == float("inf")
    assert np.isfinite(psnr(pred, gt)) and ssim(pred, gt) < 0.9  # whole-image numbers see the background
    # a wrong foreground: PSNR over the mask pixels only, computed separately
    pred2 = gt.astype(np.int16)
    pred2[mask] += 10
    pred2 = pred2.clip(0, 255).astype(np.uint8)
    mse = ((pred2[mask].astype(float) - gt[mask]) ** 2).mean()
    assert psnr_fg(pred2, gt, mask) == pytest.approx(10 * np.log10(255**2 / mse), rel=1e-9)
    # SSIM in the mask = the mean of the SSIM map over the windows centred inside the mask
    smap = ssim_map(pred2, gt)
    centres = mask[5:27, 5:27]
    assert ssim_fg(pred2, gt, mask) == pytest.approx(smap[centres].mean(), rel=1e-12)
    full = np.ones((32, 32), bool)
    assert ssim_fg(pred2, gt, full) == pytest.approx(ssim(pred2, gt), rel=1e-12)
    assert psnr_fg(pred2, gt, full) == pytest.approx(psnr(pred2, gt), rel=1e-12)
    empty = np.zeros((32, 32), bool)
    assert psnr_fg(pred2, gt, empty) is None and ssim_fg(pred2, gt, empty) is None
    im = image_metrics([pred, pred2], [gt, gt], masks=[mask, empty])
    assert im["psnr_fg"] == PSNR_CAP_DB  # the empty mask's view is left out; the identical one counts as the cap
    assert im["ssim_fg"] == pytest.approx(ssim_fg(pred, gt, mask))


def test_ssim_fg_of_a_perfect_foreground_is_one_even_with_a_wrong_background():
    """SSIM in the mask averages the windows centred inside the mask: those that see no background are exactly 1,
    those at the mask edge reach into the (wrong) background and score lower."""
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    mask = np.zeros((40, 40), bool)
    mask[5:35, 5:35] = True
    pred = gt.copy()
    pred[~mask] = 0
    # only windows centred at least 5 px inside the mask edge see no background: their SSIM is exactly 1
    inner = np.zeros_like(mask)
    inner[10:30, 10:30] = True
    assert ssim_fg(pred, gt, inner) == pytest.approx(1.0, abs=1e-12)
    assert ssim_fg(pred, gt, mask) < 1.0  # windows at the mask edge include the wrong background (documented)


def test_mean_colour_and_mean_uv_baselines_equal_the_shard_means(shards):
    stats = training_stats(GeoFaceDataset(shards, "train", 1, 1, random_views=False), _identity)
    _, t = read_shard(shards / "train.safetensors")
    imgs = t["images"].numpy().astype(np.float64)  # (N,V,3,S,S) stored uint8
    np.testing.assert_allclose(stats.mean_rgb, imgs.mean((0, 1, 3, 4)), rtol=1e-12)
    np.testing.assert_allclose(stats.mean_posmap, t["uv_posmap"].numpy().mean(0).transpose(1, 2, 0), atol=1e-6)
    c = stats.constant_image(32)
    assert c.shape == (32, 32, 3) and c.dtype == np.uint8 and (c == np.round(stats.mean_rgb).astype(np.uint8)).all()
    assert stats.n_samples == 3 and len(stats.views) == 3 * 4 and stats.n_without_frame == 0
    # a sample without a canonical frame still counts for the means, not for the camera table
    part = training_stats(GeoFaceDataset(shards, "train", 1, 1, random_views=False),
                          lambda info: None if info["subject"].endswith("000") else np.eye(4))
    assert part.n_without_frame == 1 and len(part.views) == 2 * 4
    np.testing.assert_allclose(part.mean_rgb, stats.mean_rgb)


def test_best_targets_takes_the_largest_weight():
    index = np.array([[0, 1, 5], [0, 1, 7], [1, 2, 3], [0, 1, 6]])
    weight = np.array([0.2, 0.5, 1.0, 0.3])
    b = best_targets(index, weight, 2, 4)
    assert b.tolist() == [[-1, 7, -1, -1], [-1, -1, 3, -1]]


def test_camera_only_baseline_copies_the_nearest_training_camera(shards):
    ds = GeoFaceDataset(shards, "train", 1, 1, random_views=False)
    stats = training_stats(ds, _identity)
    points = np.random.default_rng(0).uniform(-0.1, 0.1, (50, 3))
    it = ds.item(1, np.arange(4))
    cams = [t.camera for t in stats.views[4:8]]  # sample 1's own views: its own targets are copied
    r = camera_only_hit_rate(cams, it["a2g_index"].numpy(), it["a2g_weight"].numpy(), 16, (4, 4), stats.views, points)
    assert r["hit_rate"] == 1.0 and r["nearest"] == [4, 5, 6, 7]
    assert r["n_queries"] == len(np.unique(it["a2g_index"].numpy()[:, :2], axis=0))
    # nearest_view: a camera moved slightly is matched to the one it was moved from
    K = intrinsics(40.0, 40.0, 16.0, 16.0)
    table_cams = [Camera(K=K, world_to_cam=look_at(np.array([np.sin(a), 0.0, np.cos(a)]), np.zeros(3)), width=32,
                         height=32) for a in np.radians([-40, 0, 40])]
    probe = Camera(K=K, world_to_cam=look_at(np.array([np.sin(0.6), 0.02, np.cos(0.6)]), np.zeros(3)), width=32, height=32)
    table = [type(stats.views[0])(c, stats.views[0].best_geo) for c in table_cams]
    assert nearest_view(probe, table, points) == 2


def test_a_prediction_equal_to_the_ground_truth_beats_every_baseline(shards):
    """On the held-out shard: the ground truth as the answer vs the mean colour, copy-the-reference, mean-UV and
    camera-only baselines, with the evaluation's own metric functions."""
    train = GeoFaceDataset(shards, "train", 1, 1, random_views=False)
    stats = training_stats(train, _identity)
    test = GeoFaceDataset(shards, "test", 1, 3, random_views=False)
    it = test.item(0, np.arange(4))
    img = ((it["images"].permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().astype(np.uint8)
    gt, masks = list(img[1:]), list(it["masks"][1:, 0].numpy() > 0.5)
    assert all(m.any() and not m.all() for m in masks)
    perfect = image_metrics(gt, gt, masks=masks)
    for answer in ([img[0]] * 3, [stats.constant_image(32)] * 3):
        b = image_metrics(answer, gt, masks=masks)
        assert b["psnr_fg"] < perfect["psnr_fg"] == PSNR_CAP_DB and b["ssim_fg"] < perfect["ssim_fg"] == 1.0
        assert b["psnr"] < perfect["psnr"] and b["ssim"] < perfect["ssim"]
    gt_pm, uv_mask = it["uv_posmap"].permute(1, 2, 0).numpy(), it["uv_mask"][0].numpy() > 0.5
    assert posmap_error_mm(gt_pm, gt_pm, uv_mask)["geo_mean_mm"] == 0.0
    assert posmap_error_mm(stats.mean_posmap, gt_pm, uv_mask)["geo_mean_mm"] > 0.0
    cams = [Camera(K=it["K"][v].numpy(), world_to_cam=it["world_to_cam"][v].numpy(), width=32, height=32) for v in range(4)]
    points = np.random.default_rng(0).uniform(-0.1, 0.1, (50, 3))
    r = camera_only_hit_rate(cams, it["a2g_index"].numpy(), it["a2g_weight"].numpy(), 16, (4, 4), stats.views, points)
    assert 0.0 <= r["hit_rate"] < 1.0  # the truth's own hit rate is 1 by definition


def test_noise_bands_cover_the_timesteps():
    T = 1000
    ranges = band_ranges(T)
    assert list(ranges) == list(NOISE_BANDS) == ["low", "mid", "high"]
    assert ranges == {"low": [0, 333], "mid": [334, 666], "high": [667, 999]}
    for name, ts in band_timesteps(T).items():
        lo, hi = ranges[name]
        assert len(ts) == 3 and all(lo <= t <= hi for t in ts)
    assert band_timesteps(4, 3)["high"][-1] <= 3


def test_hit_rate_at_a_fixed_noise_level(shards):
    """`timestep` puts every generated frame at that level: the model input is the one built by hand."""
    from geoface_model.config import GeoFaceConfig
    from geoface_model.data import collate
    from geoface_model.diffusion import make_noise_scheduler, prepare_inputs
    from geoface_model.latents import LatentCodec
    from geoface_model.metrics_geometry import attention_hit_rate_batch
    from geoface_model.model import GeoFaceTransformer, model_kwargs

    cfg = GeoFaceConfig.from_sections(tokens=dict(resolution=32, uv_resolution=32), model=dict(width=32, depth=2, heads=2),
                                      train=dict(n_ref=1, n_tgt=2))
    ds = GeoFaceDataset(shards, "train", 1, 2)
    batch = collate([ds[0]])
    codec, sched = LatentCodec(None), make_noise_scheduler(cfg)
    kw, _, _ = prepare_inputs(batch, codec, sched, cfg, torch.Generator().manual_seed(0), "cpu", timestep=777)
    assert kw["timesteps"].tolist() == [[0, 777, 777, 777]]  # reference clean; 2 targets + the UV map at 777
    with pytest.raises(ValueError, match="timestep 1000"):
        prepare_inputs(batch, codec, sched, cfg, torch.Generator().manual_seed(0), "cpu", timestep=1000)
    torch.manual_seed(0)
    model = GeoFaceTransformer(**model_kwargs(cfg, 3, 1)).eval()
    rates = {t: attention_hit_rate_batch(model, batch, codec, sched, cfg, torch.Generator().manual_seed(0), "cpu", t)
             for t in (5, 500, 995)}
    assert all(0 <= r["hit_rate_l1"] <= 1 for r in rates.values())
    again = attention_hit_rate_batch(model, batch, codec, sched, cfg, torch.Generator().manual_seed(9), "cpu", 5)
    assert again["n_queries"] == rates[5]["n_queries"]
