"""3DGS export: transforms.json + COLMAP text read back by the project's own readers (cameras within 1e-5),
quaternion / OpenGL conversions, PLY round trip, point colours from the most head-on view, atomic failure."""
import json

import numpy as np
import pytest

from flame_fitting.geometry.camera import Camera, intrinsics, look_at
from flame_fitting.formats.capture import load_capture
from geoface_model.export import (ExportError, export_3dgs, opengl_c2w, read_ply, rotmat_to_qvec, vertex_colors)
from pipelines.colmap import qvec_to_rotmat
from pipelines.import_config import ImportConfig
from pipelines.registry import import_capture
from pipelines.transforms_json import world_to_cam_from_gl


def sphere(radius=0.1, rows=12, cols=24):
    """Closed lat-long sphere with outward counter-clockwise faces: verts (V,3), faces (F,3)."""
    th = np.linspace(0, np.pi, rows + 1)[1:-1]
    ph = np.linspace(0, 2 * np.pi, cols, endpoint=False)
    t, p = np.meshgrid(th, ph, indexing="ij")
    ring = np.stack([np.sin(t) * np.cos(p), np.cos(t), np.sin(t) * np.sin(p)], -1).reshape(-1, 3)
    v = np.concatenate([[[0, 1, 0]], ring, [[0, -1, 0]]]) * radius
    idx = lambda r, c: 1 + r * cols + c % cols  # noqa: E731
    f = [[0, idx(0, c + 1), idx(0, c)] for c in range(cols)]
    for r in range(rows - 2):
        for c in range(cols):
            f += [[idx(r, c), idx(r, c + 1), idx(r + 1, c)], [idx(r, c + 1), idx(r + 1, c + 1), idx(r + 1, c)]]
    last = len(v) - 1
    f += [[last, idx(rows - 2, c), idx(rows - 2, c + 1)] for c in range(cols)]
    f = np.array(f)
    n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
    assert ((n * v[f].mean(1)).sum(1) > 0).all()  # outward
    return v.astype(np.float32), f


def rig(n=3, size=(48, 40)):
    rng = np.random.default_rng(0)
    cams = []
    for i, a in enumerate(np.radians(np.linspace(-50, 50, n))):
        K = intrinsics(60 + 5 * i, 62 + 5 * i, size[0] / 2 + rng.uniform(-2, 2), size[1] / 2 + rng.uniform(-2, 2))
        eye = 0.5 * np.array([np.sin(a), 0.2, np.cos(a)])
        cams.append(Camera(K=K, world_to_cam=look_at(eye, rng.uniform(-0.01, 0.01, 3)), width=size[0], height=size[1],
                           name=f"view_{i:02d}"))
    return cams


def images(cams, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.random((c.height, c.width, 3)) * 255).astype(np.uint8) for c in cams]


def test_qvec_round_trip():
    rng = np.random.default_rng(1)
    for _ in range(20):
        R, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        R *= np.sign(np.linalg.det(R))
        q = rotmat_to_qvec(R)
        assert q[0] >= 0 and abs(np.linalg.norm(q) - 1) < 1e-12
        np.testing.assert_allclose(qvec_to_rotmat(q), R, atol=1e-12)


def test_opengl_matches_reader():
    for cam in rig():
        np.testing.assert_allclose(world_to_cam_from_gl(opengl_c2w(cam)), cam.world_to_cam, atol=1e-6)
        c2w = opengl_c2w(cam)
        np.testing.assert_allclose(c2w[:3, 3], cam.center, atol=1e-6)
        np.testing.assert_allclose(c2w[:3, 2], -cam.R[2], atol=1e-6)  # OpenGL looks along -z


@pytest.mark.parametrize("source", ["transforms_json", "colmap"])
def test_round_trip_through_readers(tmp_path, source):
    cams, imgs = rig(), images(rig())
    v, f = sphere()
    rep = export_3dgs(tmp_path / "gs", imgs, cams, v, f)
    assert rep["n_views"] == 3 and rep["n_points"] == len(v)
    report = import_capture(source, tmp_path / "gs", tmp_path / "cap", ImportConfig(subject="s", masks=False))
    cap = load_capture(tmp_path / "cap")
    back = cap.cameras("s", "default")
    assert sorted(back) == [c.name for c in cams], report
    for cam in cams:
        b = back[cam.name]
        assert (b.width, b.height) == (cam.width, cam.height) and b.dist is None
        np.testing.assert_allclose(b.K, cam.K, atol=1e-5)
        np.testing.assert_allclose(b.world_to_cam, cam.world_to_cam, atol=1e-5)
    rows = cap.manifest.set_index("camera")
    for cam, img in zip(cams, imgs):
        np.testing.assert_array_equal(cap.image(rows.loc[cam.name]), img)


def test_files_and_ply(tmp_path):
    cams = rig()
    v, f = sphere()
    export_3dgs(tmp_path / "gs", images(cams), cams, v, f)
    meta = json.loads((tmp_path / "gs" / "transforms.json").read_text())
    assert meta["ply_file_path"] == "points3d.ply" and len(meta["frames"]) == 3
    ply = read_ply(tmp_path / "gs" / "points3d.ply")
    np.testing.assert_array_equal(np.stack([ply["x"], ply["y"], ply["z"]], 1), v)
    normals = np.stack([ply["nx"], ply["ny"], ply["nz"]], 1)
    np.testing.assert_allclose((normals * v).sum(1) / np.linalg.norm(v, axis=1), 1, atol=0.05)  # sphere: n ∥ p
    pts = [ln.split() for ln in (tmp_path / "gs" / "sparse" / "0" / "points3D.txt").read_text().splitlines()
           if ln and not ln.startswith("#")]
    assert len(pts) == len(v)
    np.testing.assert_allclose(np.array([p[1:4] for p in pts], float), v, atol=1e-7)
    np.testing.assert_array_equal(np.array([p[4:7] for p in pts], int), np.stack([ply["red"], ply["green"], ply["blue"]], 1))
    export_3dgs(tmp_path / "bare", images(cams), cams)  # no mesh: no PLY, header-only points3D.txt
    assert not (tmp_path / "bare" / "points3d.ply").exists()
    assert all(ln.startswith("#") for ln in (tmp_path / "bare" / "sparse/0/points3D.txt").read_text().splitlines())


def test_colours_from_the_most_head_on_view():
    v, f = sphere(rows=16, cols=32)
    K = intrinsics(80, 80, 32, 32)
    front = Camera(K=K, world_to_cam=look_at(np.array([0, 0, 0.5]), np.zeros(3)), width=64, height=64)
    back = Camera(K=K, world_to_cam=look_at(np.array([0, 0, -0.5]), np.zeros(3)), width=64, height=64)
    red, blue = np.zeros((64, 64, 3), np.uint8), np.zeros((64, 64, 3), np.uint8)
    red[..., 0], blue[..., 2] = 200, 150
    col, unseen = vertex_colors(v, f, [red, blue], [front, back])
    # from 5 radii away each camera sees the cap up to acos(0.2) = 78.5° off its axis: the band |z| < 0.2 r is unseen
    band = np.abs(v[:, 2]) < 0.2 * 0.1
    assert (np.abs(v[:, 2]) < 0.015).sum() <= unseen <= band.sum()
    np.testing.assert_array_equal(col[v[:, 2] > 0.03], [[200, 0, 0]] * int((v[:, 2] > 0.03).sum()))
    np.testing.assert_array_equal(col[v[:, 2] < -0.03], [[0, 0, 150]] * int((v[:, 2] < -0.03).sum()))


def test_bad_input_writes_nothing(tmp_path):
    cams = rig()
    imgs = images(cams)
    imgs[1] = imgs[1][:10]
    with pytest.raises(ExportError, match="image 1"):
        export_3dgs(tmp_path / "gs", imgs, cams)
    with pytest.raises(ExportError, match="3 images for 2 cameras"):
        export_3dgs(tmp_path / "gs", images(cams), cams[:2])
    assert list(tmp_path.iterdir()) == []


def test_names_cameras_and_meshes_of_the_wrong_kind_are_refused_before_writing(tmp_path):
    """From a notebook: image names with a path separator wrote images/a/b.png, and '../x' a file outside the
    export folder; a {name: Camera} dict, a batch of vertices (F, V, 3) or 1-based (OBJ) faces failed deep inside
    (AttributeError, IndexError). Each is one ExportError now, and nothing is written."""
    out = tmp_path / "out"
    out.mkdir()
    cams, (v, f) = rig(), sphere()
    imgs = images(cams)
    for names, why in ((["a/b", "c", "d"], "path separator"), (["..", "c", "d"], "starts with '.'")):
        with pytest.raises(ExportError, match=rf"image name '{names[0]}' .*{why}"):
            export_3dgs(out / "gs", imgs, cams, names=names)
    with pytest.raises(ExportError, match=r"cameras must be a list of Camera .*got dict"):
        export_3dgs(out / "gs", imgs, {c.name: c for c in cams}, v, f)
    with pytest.raises(ExportError, match=r"vertices must be \(V, 3\) numbers, got float32 \(2, 266, 3\)"):
        export_3dgs(out / "gs", imgs, cams, np.stack([v, v]), f)
    with pytest.raises(ExportError, match="faces index vertices 1..266, but there are 266 vertices"):
        export_3dgs(out / "gs", imgs, cams, v, f + 1)
    bad = v.copy()
    bad[5] = np.nan
    with pytest.raises(ExportError, match=r"vertices contain NaN/inf \(1 of 266\)"):
        export_3dgs(out / "gs", imgs, cams, bad, f)
    assert list(tmp_path.rglob("*")) == [out]
    summary = export_3dgs(out / "gs", imgs, cams, v, f)  # the same inputs, as documented
    assert summary["n_points"] == len(v) and len(read_ply(out / "gs" / "points3d.ply")) == len(v)
