"""The fit's decision thresholds in pixels are for images up to 512 px on their longer side and grow with the side
above that: MediaPipe's landmark errors grow with the resolution, and a fixed max_median_px flagged good fits of
full-resolution NeRSemble frames (2200×3208, median 27.5 px, 0.33 mm from the truth) as diverged."""
import numpy as np
import pytest

from flame_fitting.fit import FitConfig
from flame_fitting.fit.fitter import pixel_scaled
from flame_fitting.geometry.camera import Camera, intrinsics, look_at


def rig(width, height, n=3):
    return {f"c{i}": Camera(K=intrinsics(2.0 * width, 2.0 * width, width / 2, height / 2),
                            world_to_cam=look_at(np.array([0.1 * i, 0.0, 1.0]), np.zeros(3)), width=width,
                            height=height, name=f"c{i}") for i in range(n)}


@pytest.mark.parametrize("size", [(64, 64), (512, 512), (512, 384)])
def test_up_to_512_px_the_thresholds_are_as_given(size):
    cfg = FitConfig()
    assert pixel_scaled(cfg, rig(*size)) is cfg


def test_larger_images_scale_the_decision_thresholds_with_their_longer_side():
    cfg = FitConfig(max_median_px=25.0, triangulation_px=12.0)
    big = pixel_scaled(cfg, rig(2200, 3208))
    s = 3208 / 512
    assert big.max_median_px == pytest.approx(25.0 * s) and big.triangulation_px == pytest.approx(12.0 * s)
    assert big.robust_scale_px == cfg.robust_scale_px and big.iterations == cfg.iterations  # nothing else
    # a mixed rig: the median camera's side
    mixed = {**rig(1100, 1604, 3), **{f"s{k}": c for k, c in rig(256, 256, 2).items()}}
    assert pixel_scaled(cfg, mixed).max_median_px == pytest.approx(25.0 * 1604 / 512)
