"""Geometry normalisation (geo_norm.py): the statistics of the training maps, the codec's round trip, and that a
trained model carries them through save_pretrained / from_pretrained into the pipeline."""
import numpy as np
import pytest
import torch

from geoface_model.config import GeoFaceConfig
from geoface_model.data import GeoFaceDataset
from geoface_model.geo_norm import COVER_QUANTILE, GeometryNorm, posmap_statistics
from geoface_model.latents import LatentCodec
from geoface_model.model import GeoFaceTransformer
from geoface_model.pipeline import GeoFacePipeline
from geoface_model.train import train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(micro_shards):
    return micro_shards


def test_statistics_are_the_mean_map_and_a_scale_that_fills_the_unit_range(data):
    ds = GeoFaceDataset(data, "train", 1, 2, 0)
    maps = np.stack([ds.item(i, np.array([0]))["uv_posmap"].numpy() for i in range(len(ds))]).astype(np.float64)
    covered = np.stack([ds.item(i, np.array([0]))["uv_mask"].numpy()[0] > 0.5 for i in range(len(ds))])
    mean, scale = posmap_statistics(ds)
    np.testing.assert_allclose(mean, maps.mean(0), atol=1e-6)
    g = (maps - mean) / scale
    inside = np.abs(g.transpose(0, 2, 3, 1)[covered]) <= 1 + 1e-6
    assert inside.mean() == pytest.approx(COVER_QUANTILE, abs=2e-3)
    assert scale < 0.5 * np.abs(maps).max()  # residuals are a small part of the map: normalising magnifies them


def test_codec_round_trip_and_zero_is_the_mean_map():
    rng = np.random.default_rng(0)
    mean = torch.from_numpy(rng.uniform(-0.5, 0.5, (3, 16, 16)).astype(np.float32))
    codec = LatentCodec(None, GeometryNorm(mean, 0.02))
    posmap = mean[None] + 0.02 * torch.from_numpy(rng.uniform(-1, 1, (2, 3, 16, 16)).astype(np.float32))
    z = codec.encode_geometry(posmap)
    assert z.abs().max() <= 1 + 1e-5 and z.std() > 0.3  # the residuals fill the unit range
    torch.testing.assert_close(codec.decode_geometry(z), posmap, atol=1e-6, rtol=0)
    torch.testing.assert_close(codec.decode_geometry(torch.zeros(1, 3, 16, 16)), mean[None], atol=0, rtol=0)
    plain = LatentCodec(None)  # no normalisation: the maps as they are
    torch.testing.assert_close(plain.encode_geometry(posmap), posmap, atol=0, rtol=0)


def test_a_trained_model_carries_its_statistics_into_the_pipeline(data, tmp_path):
    cfg = GeoFaceConfig.from_sections(
        tokens=dict(resolution=32, patch_size=8, uv_resolution=32, geo_patch_size=8),
        model=dict(width=32, depth=2, heads=2, prediction_type="sample"),
        train=dict(steps=2, batch_size=2, n_ref=1, n_tgt=2, lr=1e-3, warmup_steps=1, checkpoint_every=2,
                   zero_terminal_snr=True))
    train(cfg, data, tmp_path, progress=False)
    mean, scale = posmap_statistics(GeoFaceDataset(data, "train", 1, 2, 0))
    model = GeoFaceTransformer.from_pretrained(tmp_path / "model")
    assert model.config.geo_norm_scale == pytest.approx(scale, rel=1e-6)
    np.testing.assert_allclose(model.geo_norm_mean.numpy(), mean, atol=0)
    pipe = GeoFacePipeline.from_training(tmp_path / "model", cfg)
    norm = pipe.codec.geometry_norm
    assert norm is not None and norm.scale == pytest.approx(scale, rel=1e-6)
    pipe.save_pretrained(tmp_path / "pipe")
    again = GeoFacePipeline.from_pretrained(tmp_path / "pipe")
    torch.testing.assert_close(again.codec.geometry_norm.mean, norm.mean, atol=0, rtol=0)
    off = GeoFaceTransformer(width=32, depth=2, heads=2)  # built without it (geometry_norm: none)
    assert off.geometry_norm() is None and not hasattr(off, "geo_norm_mean")


def test_statistics_of_a_large_dataset_stay_bounded_and_close(data):
    """Bounded passes (what keeps paper-scale datasets out of memory): with 300 residual values per sample the scale
    is near the exact one; with 2 samples the mean is that of the first and the last."""
    ds = GeoFaceDataset(data, "train", 1, 2, 0)
    mean, full = posmap_statistics(ds)
    sub_mean, sub = posmap_statistics(ds, values_per_sample=300)
    np.testing.assert_array_equal(sub_mean, mean)
    assert sub == pytest.approx(full, rel=0.1)
    two, _ = posmap_statistics(ds, max_samples=2)
    chosen = [ds.item(i, np.array([0]))["uv_posmap"].numpy().astype(np.float64) for i in (0, len(ds) - 1)]
    np.testing.assert_allclose(two, np.mean(chosen, 0), atol=1e-6)


def test_one_step_geometry_error_in_mm_matches_the_evaluation_metric(data):
    """`geo_x0_mm_t<t>` of denoising_errors = posmap_error_mm (the metric of geometry_error_mm) of the decoded
    one-step estimate: same units (box half-size 0.25 m), same covered texels."""
    from geoface_model.data import collate
    from geoface_model.diffusion import denoising_errors, make_noise_scheduler, prepare_inputs, x0_from_prediction
    from geoface_model.evaluate import batch_geometry_error_mm
    from geoface_model.metrics_geometry import posmap_error_mm

    cfg = GeoFaceConfig.from_sections(tokens=dict(resolution=32, patch_size=8, uv_resolution=32, geo_patch_size=8),
                                      model=dict(width=32, depth=2, heads=2, prediction_type="sample"),
                                      train=dict(n_ref=1, n_tgt=2, zero_terminal_snr=True))
    ds = GeoFaceDataset(data, "train", 1, 2, 0)
    model = GeoFaceTransformer(width=32, depth=2, heads=2, patch_size=8, geo_patch_size=8, prediction_type="sample",
                               geo_norm_resolution=32)
    model.set_geometry_norm(*posmap_statistics(ds))
    codec, sched = LatentCodec(None, model.geometry_norm()), make_noise_scheduler(cfg)
    batch = collate([ds.item(0, np.arange(3))])
    with torch.no_grad():
        got = denoising_errors(model, batch, codec, sched, cfg, torch.Generator().manual_seed(3), "cpu", timesteps=(300,),
                               geometry_error_mm=batch_geometry_error_mm)
        kw, _, _ = prepare_inputs(batch, codec, sched, cfg, torch.Generator().manual_seed(3), "cpu", timestep=300)
        est = codec.decode_geometry(x0_from_prediction("sample", sched, kw["geo"], model(**kw).geo, 300, 0.5))
    want = posmap_error_mm(est[0].permute(1, 2, 0).numpy(), batch["uv_posmap"][0].permute(1, 2, 0).numpy(),
                           batch["uv_mask"][0, 0].numpy() > 0.5)["geo_mean_mm"]
    assert got["geo_x0_mm_t300"] == pytest.approx(want, rel=1e-4) and want > 0
