"""Overlay drawing: the PNG is written, landmarks land where they should, bad sizes are refused."""
import cv2
import numpy as np
import pytest

from flame_fitting.fit.overlay import FIT_COLOR, OBS_COLOR, overlay_png
from flame_fitting.fit.synthetic import model_outputs


def test_overlay_png(tmp_path, head, cams, truth, exact_obs):
    cam = cams["cam05"]
    verts, _ = model_outputs(head, truth[3])
    obs = exact_obs[3]["cam05"].astype(np.float64)
    fit = obs + np.array([12.0, 0.0])                        # a visibly shifted "fit"
    image = np.full((cam.height, cam.width, 3), 30, np.uint8)
    out = overlay_png(image, cam, verts, head.faces.numpy(), obs, fit, tmp_path / "o" / "view.png")
    back = cv2.cvtColor(cv2.imread(str(tmp_path / "o" / "view.png")), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(back, out)
    inside = np.all((obs > 4) & (obs < cam.width - 16), 1)
    i = np.flatnonzero(inside)[0]
    x, y = np.round(obs[i] - 0.5).astype(int)                 # pixel (row y, col x) has centre (x + .5, y + .5)
    near = lambda color: np.abs(out[y, x].astype(int) - color).sum() < 120  # noqa: E731
    assert near(OBS_COLOR) or near(FIT_COLOR)
    x, y = np.round(fit[i] - 0.5).astype(int)
    assert near(FIT_COLOR)
    assert (np.abs(out.astype(int) - 30).sum(-1) > 0).mean() > 0.05   # the wireframe covers the head
    with pytest.raises(ValueError, match="camera 'cam05' is 512×512"):
        overlay_png(image[:100], cam, verts, head.faces.numpy(), obs, fit, tmp_path / "x.png")
