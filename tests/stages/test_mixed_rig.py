"""A mixed rig: one capture whose cameras differ in size and aspect (portrait 3:4, landscape 4:3, square; principal
points off-centre, focal lengths scaled), made from a synthetic capture by cropping and resizing views with K
adjusted exactly (`Camera.cropped`, `Camera.resized`), masks rasterised from the true mesh. The five data stages run
by their library functions; the correspondences of every view agree with those computed for that view alone at its
own size, their visibility with the true mesh's, and the dataset shards' K / world_to_cam put the fitted mesh on
the shards' masks. Before 2026-12-07 the correspondences stage refused such a frame ("all views must share one
size"): every unit failed and the dataset stage had nothing to pack."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from unit_capture import TOKENS, build, run_data_stages

from flame_fitting.core.executor import ExecutorConfig
from flame_fitting.formats.capture import CaptureWriter, load_capture
from flame_fitting.formats.capture_checks import load_cameras
from flame_fitting.formats.fits import load_sequence_fit
from flame_fitting.geometry.raster import rasterize
from flame_fitting.head.head_model import load_head_model
from flame_fitting.uv import UVLayout
from flame_fitting.uv.correspondence_files import load_correspondences
from flame_fitting.uv.correspondences import TokenGrid, compute_correspondences
from geoface_model.data import read_shard

# per camera (sorted names): crop (x0, y0, w, h) of the 192² view, then resize to (W, H); every side divisible by
# the 4 appearance tokens per side of TOKENS
PLAN = [((30, 0, 144, 192), (144, 192)),   # portrait 3:4, crop only, principal point 30 px left of the crop centre
        ((0, 20, 192, 144), (160, 120)),   # landscape 4:3, crop + resize (f × 5/6)
        ((0, 0, 192, 192), (192, 192)),    # square, as rendered
        ((16, 0, 144, 192), (120, 160))]   # portrait 3:4, crop + resize (f × 5/6)


def mixed_capture(src: Path, dst: Path, faces: np.ndarray) -> Path:
    """`src`'s views cropped / resized by PLAN, cameras adjusted, masks rasterised from the true vertices."""
    cap = load_capture(src)
    with CaptureWriter(dst, source="synthetic") as w:
        for (subject, sequence), rows in cap.manifest.groupby(["subject", "sequence"]):
            cams = cap.cameras(subject, sequence)
            plan = dict(zip(sorted(cams), PLAN))
            new = {n: cams[n].cropped(*plan[n][0]).resized(*plan[n][1]) for n in cams}
            w.set_cameras(subject, sequence, new)
            for row in rows.to_dict("records"):
                (x0, y0, cw, ch), (W, H) = plan[row["camera"]]
                img = cv2.resize(cap.image(row)[y0:y0 + ch, x0:x0 + cw], (W, H), interpolation=cv2.INTER_AREA)
                verts = np.load(src / row["gt_path"])["vertices"]
                c = new[row["camera"]]
                mask = rasterize(verts, faces, c.K[None], c.world_to_cam[None], W, H).face_id[0] >= 0
                w.add_image(subject, sequence, row["frame"], row["camera"], np.ascontiguousarray(img), row["split"],
                            mask.astype(np.uint8) * 255, gt_path=row["gt_path"])
            for gt in {r for r in rows.gt_path}:  # the true vertices (world frame: no camera in them)
                (w.work_dir / gt).parent.mkdir(parents=True, exist_ok=True)
                (w.work_dir / gt).write_bytes((src / gt).read_bytes())
    return dst


@pytest.fixture(scope="module")
def rig(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixed_rig")
    head, uniform = build(root, subjects=1, cameras=4, resolution=192)
    model = load_head_model(head, n_shape=10, n_expr=10)
    faces = model.faces.numpy().astype(np.int32)
    cap = mixed_capture(uniform, root / "mixed", faces)
    data = root / "data"
    metrics = run_data_stages(cap, head, data, ExecutorConfig(workers=1))
    return cap, data, metrics, UVLayout.from_head_model(model), faces


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_the_rig_is_mixed(rig):
    cap = load_capture(rig[0])
    sizes = {(r.width, r.height) for r in cap.manifest.itertuples()}
    assert sizes == {(144, 192), (160, 120), (192, 192), (120, 160)}


def test_every_stage_runs_every_unit(rig):
    _, _, metrics, _, _ = rig
    for stage, m in metrics.items():
        assert m["units_failed"] == 0, stage
    assert metrics["correspondences"]["frames"] == 1
    assert metrics["dataset"]["samples_train"] + metrics["dataset"]["samples_val"] + \
        metrics["dataset"]["samples_test"] == 1


def test_correspondences_per_view_match_the_view_alone(rig):
    """Token targets per view = those of the same view computed alone at its own size (sampling differences only);
    visible pixels = the true mesh's (rasterised with the fit's cameras on the maps' grid)."""
    cap, data, _, layout, faces = rig
    (f,) = sorted((data / "correspondences").glob("*/*/*.npz"))
    corr = load_correspondences(f)
    fit_dir = data / "fits" / f.parent.parent.name / f.parent.name
    fit, cams = load_sequence_fit(fit_dir), load_cameras(fit_dir / "cameras.json")
    truth = np.load(cap / load_capture(cap).manifest.gt_path.iloc[0])["vertices"]
    grid = TokenGrid(TOKENS.app_tokens, TOKENS.geo_tokens)
    A, G = TOKENS.app_tokens ** 2, TOKENS.geo_tokens ** 2
    W, H = corr.size
    assert (W, H) == (192, 192)  # the largest width × height of the frame's views
    for v, name in enumerate(corr.views):
        cam = cams[name]
        alone = compute_correspondences(fit["vertices"][0], layout, [cam], grid, frame_id=name)
        dense_alone, dense = np.zeros((A, G)), np.zeros((A, G))
        np.add.at(dense_alone, (alone.a2g_index[:, 1], alone.a2g_index[:, 2]), alone.a2g_weight)
        sel = corr.a2g_index[:, 0] == v
        np.add.at(dense, (corr.a2g_index[sel, 1], corr.a2g_index[sel, 2]), corr.a2g_weight[sel])
        assert np.abs(dense - dense_alone).sum(1).max() < 0.1, name  # L1 per appearance token (2 = disjoint; measured ≤ 0.023)
        g = cam.resized(W, H)
        true_vis = rasterize(truth, faces, g.K[None], g.world_to_cam[None], W, H).face_id[0] >= 0
        assert iou(corr.visible[v], true_vis) > 0.93, name  # measured 0.967–0.979 (5-iteration fit)


def test_shard_cameras_put_the_fitted_mesh_on_the_shard_masks(rig):
    _, data, _, _, faces = rig
    (shard,) = sorted((data / "dataset").glob("*/*/shard_*.safetensors"))
    meta, t = read_shard(shard)
    S = meta.resolution
    (sample,) = meta.samples
    fit = load_sequence_fit(data / "fits" / sample["subject"] / sample["sequence"])
    for v, name in enumerate(sample["cameras"]):
        K, w2c = t["K"][0, v].numpy(), t["world_to_cam"][0, v].numpy()
        drawn = rasterize(fit["vertices"][0], faces, K[None], w2c[None], S, S).face_id[0] >= 0
        assert iou(drawn, t["masks"][0, v, 0].numpy() > 0) > 0.9, name  # 0.95–0.99; K resized ignoring aspect: 0.44–0.75
