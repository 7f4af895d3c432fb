"""UV position maps (flame_fitting/uv/__init__.py): bake kernel vs reference, texel table, exactness on a plane,
gutter dilation at seams, bake → inverse round trip on the stand-in head, box/clipping, files, overlap."""
import numpy as np
import pytest
import torch

from flame_fitting.head.flame_assets import read_obj
from flame_fitting.head.head_model import HeadModel
from flame_fitting.geometry.raster import rasterize_uv
from standin_cache import standin_copy
from flame_fitting.uv import (BOX_CENTER, BOX_HALF, UVError, UVLayout, bake_posmap, denormalize_points, get_bake_table,
                              load_posmap, normalize_points, posmap_to_points, posmap_to_vertices, sample_bilinear,
                              save_posmap)
from flame_fitting.core.fileio import OutputError, write_obj
from flame_fitting.uv.bake import _bake_reference
from flame_fitting.uv.checks import layout_report


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    path = tmp_path_factory.mktemp("standin") / "head_model"
    standin_copy(path, seed=0)
    model = HeadModel.from_folder(path, n_shape=50, n_expr=30)
    return model, UVLayout.from_head_model(model)


def random_canonical(model, seed: int, sd: float = 1.0, jaw: float = 0.2) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        return model.canonical(shape=sd * torch.randn(1, 50, generator=g), expr=sd * torch.randn(1, 30, generator=g),
                               jaw_pose=torch.tensor([[jaw, 0.0, 0.0]]), neck_pose=0.1 * torch.randn(1, 3, generator=g),
                               eye_pose=0.1 * torch.randn(1, 6, generator=g))[0].numpy()


def folded_quads():
    """Two unit squares meeting at a right angle along the y axis (x=0 edge): A in the z=0 plane, B in the x=0
    plane. UV charts: A at u in [0.1, 0.45], B at u in [0.55, 0.9], v in [0.2, 0.8], each an exact affine image
    of its square, so positions are affine per chart. Returns verts (6,3), faces (4,3), uv (8,2), uv_faces (4,3)."""
    verts = np.array([[0, 0, 0], [0, 1, 0], [-1, 0, 0], [-1, 1, 0], [0, 0, -1], [0, 1, -1]], np.float32) * 0.2
    faces = np.array([[0, 2, 1], [1, 2, 3], [0, 1, 4], [1, 5, 4]])
    uv = np.array([[0.45, 0.2], [0.45, 0.8], [0.1, 0.2], [0.1, 0.8], [0.55, 0.2], [0.55, 0.8], [0.9, 0.2], [0.9, 0.8]],
                  np.float32)
    uv_faces = np.array([[0, 2, 1], [1, 2, 3], [4, 5, 6], [5, 7, 6]])
    return verts, faces, uv, uv_faces


def analytic_folded(uvq: np.ndarray) -> np.ndarray:
    """Position (N,3) metres on `folded_quads` at uv (N,2) inside either chart (extended affinely)."""
    u, v = uvq[:, 0].astype(np.float64), uvq[:, 1].astype(np.float64)
    y = (v - 0.2) / 0.6 * 0.2
    a = u < 0.5
    s = np.where(a, (0.45 - u) / 0.35, (u - 0.55) / 0.35) * 0.2
    return np.stack([np.where(a, -s, 0.0), y, np.where(a, 0.0, -s)], 1)


def test_bake_kernel_matches_reference(head):
    model, layout = head
    rng = np.random.default_rng(0)
    verts = random_canonical(model, 1) * rng.uniform(0.5, 2.5)  # some texels leave the box
    for R, gutter in ((64, 4), (97, 0), (128, 2)):
        baked = bake_posmap(verts, layout, R, gutter)
        ref, n_clipped = _bake_reference(get_bake_table(layout, R, gutter), verts)
        np.testing.assert_allclose(baked.posmap, ref, atol=2e-6)
        assert baked.n_clipped == n_clipped
    assert bake_posmap(verts * 2.0, layout, 64).n_clipped > 0


def test_table_rows_match_raster_and_nearest_texel():
    verts, faces, uv, uv_faces = folded_quads()
    layout = UVLayout.from_arrays(uv, uv_faces, faces)
    R, gutter = 32, 3
    t = get_bake_table(layout, R, gutter)
    assert get_bake_table(layout, R, gutter) is t  # cached
    face_id, bary = rasterize_uv(uv, uv_faces, R)
    np.testing.assert_array_equal(t.mask, face_id >= 0)
    valid = np.flatnonzero(face_id.ravel() >= 0)
    np.testing.assert_array_equal(t.texels[:t.n_valid], valid)
    np.testing.assert_array_equal(t.vids[:t.n_valid], faces[face_id.ravel()[valid]])
    np.testing.assert_allclose(t.weights[:t.n_valid], bary.reshape(-1, 3)[valid])
    # gutter rows: every texel within `gutter` of a chart, its face is that of a nearest covered texel,
    # and the (extrapolated) weights reproduce the texel centre's uv
    rr, cc = np.divmod(np.arange(R * R), R)
    vr, vc = rr[valid], cc[valid]
    d2 = (rr[:, None] - vr[None]) ** 2 + (cc[:, None] - vc[None]) ** 2
    dist = np.sqrt(d2.min(1))
    expect = np.flatnonzero((dist > 0) & (dist <= gutter))
    g_tex = t.texels[t.n_valid:]
    np.testing.assert_array_equal(np.sort(g_tex), expect)
    for row in range(t.n_valid, len(t.texels)):
        tex, f = t.texels[row], t.row_faces[row]
        nearest = valid[d2[tex] == d2[tex].min()]
        assert f in face_id.ravel()[nearest]
        centre = np.array([(tex % R + 0.5) / R, 1 - (tex // R + 0.5) / R])
        np.testing.assert_allclose(t.weights[row] @ uv[uv_faces[f]], centre, atol=1e-5)
    assert (t.chart[t.dilated] >= 0).all() and set(np.unique(t.chart[t.mask])) == {0, 1}


def test_plane_posmap_exact_at_texel_centres():
    verts, faces, uv, uv_faces = folded_quads()
    layout = UVLayout.from_arrays(uv, uv_faces, faces)
    R = 64
    baked = bake_posmap(verts, layout, R, gutter=4)
    r, c = np.nonzero(baked.mask)
    centres = np.stack([(c + 0.5) / R, 1 - (r + 0.5) / R], 1)
    np.testing.assert_allclose(denormalize_points(baked.posmap[r, c]), analytic_folded(centres), atol=2e-7)


def test_gutter_makes_bilinear_lookups_exact_near_seams():
    verts, faces, uv, uv_faces = folded_quads()
    layout = UVLayout.from_arrays(uv, uv_faces, faces)
    R = 64
    rng = np.random.default_rng(1)
    # points inside the charts within one texel of a chart border (where bilinear taps leave the chart)
    inner = rng.uniform(0, 1.0 / R, 400)
    u = np.concatenate([0.1 + inner[:100], 0.45 - inner[100:200], 0.55 + inner[200:300], 0.9 - inner[300:]])
    q = np.stack([u, rng.uniform(0.2 + 1.0 / R, 0.8 - 1.0 / R, 400)], 1)
    exact = analytic_folded(q)
    dilated = denormalize_points(sample_bilinear(bake_posmap(verts, layout, R, gutter=2).posmap, q))
    np.testing.assert_allclose(dilated, exact, atol=1e-6)
    plain = denormalize_points(sample_bilinear(bake_posmap(verts, layout, R, gutter=0).posmap, q))
    assert np.abs(plain - exact).max() > 0.01  # without the gutter the taps outside the charts read zeros


def test_bake_inverse_round_trip_standin(head, tmp_path):
    model, layout = head
    canonical = random_canonical(model, 2, jaw=0.25)
    baked = bake_posmap(canonical, layout, 256)
    assert baked.n_clipped == 0 and baked.mask.mean() > 0.9
    err = np.linalg.norm(posmap_to_vertices(baked.posmap, layout) - canonical, axis=1)
    assert err.mean() < 0.3e-3 and np.median(err) < 0.2e-3 and np.percentile(err, 99) < 3e-3, \
        (err.mean(), np.median(err), err.max())
    # the stand-in's mouth cut gives upper and lower lips the same UVs: the seam-aware inverse keeps them apart
    assert layout_report(layout)["n_shared_uv_points"] > 0 and err.max() < 5e-3
    for dtype, tol in ((np.float32, 0.0), (np.float16, 2.5e-4)):
        path = save_posmap(tmp_path / f"pm_{np.dtype(dtype).name}.npz", baked, dtype, frame_id="s/q/00001")
        back = load_posmap(path)
        assert back.layout_key == layout.key and np.array_equal(back.mask, baked.mask)
        assert np.abs(denormalize_points(back.posmap) - denormalize_points(baked.posmap)).max() <= tol + 1e-7
    assert not list(tmp_path.glob(".*tmp*"))
    points = posmap_to_points(baked.posmap, baked.mask)
    assert len(points) == baked.mask.sum()
    lo, hi = canonical.min(0) - 1e-3, canonical.max(0) + 1e-3
    assert ((points >= lo) & (points <= hi)).all()


def test_box_contains_plausible_heads_and_counts_clipping(head):
    model, layout = head
    for seed in range(4):
        canonical = random_canonical(model, 10 + seed, sd=3.0, jaw=0.5)
        assert (np.abs(normalize_points(canonical)) < 1).all()
        assert bake_posmap(canonical, layout, 128).n_clipped == 0
    big = (canonical - BOX_CENTER) * 2.0 + BOX_CENTER
    baked = bake_posmap(big, layout, 128)
    table = get_bake_table(layout, 128)
    rows = slice(0, table.n_valid)
    unclipped = normalize_points(np.einsum("mk,mkc->mc", table.weights[rows], big[table.vids[rows]]))
    expected = int((np.abs(unclipped) > 1).any(1).sum())
    assert expected > 0 and abs(baked.n_clipped - expected) <= 2 and np.abs(baked.posmap).max() <= 1.0
    np.testing.assert_allclose(denormalize_points(normalize_points(canonical)), canonical, atol=1e-7)
    assert BOX_HALF == 0.25


def test_nan_and_wrong_shapes_refused(head):
    model, layout = head
    canonical = random_canonical(model, 3)
    canonical[7] = np.nan
    with pytest.raises(UVError, match="frame subj/seq/00042.*NaN"):
        bake_posmap(canonical, layout, 64, frame_id="subj/seq/00042")
    with pytest.raises(UVError, match="frame x"):
        bake_posmap(canonical[:10], layout, 64, frame_id="x")
    with pytest.raises(UVError, match="channels last"):
        posmap_to_vertices(np.zeros((3, 64, 64), np.float32), layout)


def test_an_image_of_a_posmap_or_a_folder_instead_of_a_model_is_refused(head):
    """An 8-bit image of a position map (a preview PNG read back) was read as box coordinates: vertices tens of
    metres out, no error. A folder given for the head model failed with AttributeError. Both are UVErrors now;
    the float maps (float16 as stored, float32) still give the same vertices."""
    model, layout = head
    baked = bake_posmap(random_canonical(model, 4), layout, 64)
    as_png = np.round((baked.posmap + 1) * 127.5).astype(np.uint8)
    with pytest.raises(UVError, match="posmap must be floating point, normalised box coordinates in .* got uint8"):
        posmap_to_vertices(as_png, layout)
    with pytest.raises(UVError, match="posmap_to_points: posmap must be floating point"):
        posmap_to_points(as_png.astype(np.uint16), baked.mask)
    v32 = posmap_to_vertices(baked.posmap, layout)
    v16 = posmap_to_vertices(baked.posmap.astype(np.float16), layout)
    assert np.abs(v16 - v32).max() < 2.5e-4
    with pytest.raises(UVError, match=r"expected a HeadModel \(geoface.load_head_model\(folder\)\), got str"):
        UVLayout.from_head_model(str(model.folder))


def test_write_obj_round_trip(tmp_path):
    verts, faces, uv, uv_faces = folded_quads()
    path = write_obj(tmp_path / "sub" / "mesh.obj", verts, faces, uv, uv_faces)
    mesh = read_obj(path)
    np.testing.assert_allclose(mesh.verts, verts, atol=1e-7)
    np.testing.assert_allclose(mesh.uv, uv, atol=1e-7)
    np.testing.assert_array_equal(mesh.faces, faces)
    np.testing.assert_array_equal(mesh.uv_faces, uv_faces)
    assert [p.name for p in path.parent.iterdir()] == ["mesh.obj"]
    with pytest.raises(OutputError, match="faces"):
        write_obj(tmp_path / "bad.obj", verts, faces + 10)


def test_overlapping_charts_detected():
    verts, faces, uv, uv_faces = folded_quads()
    assert get_bake_table(UVLayout.from_arrays(uv, uv_faces, faces), 64).overlap_fraction == 0.0
    uv2 = uv.copy()
    uv2[4:] -= [0.3, 0.0]  # chart B slides over chart A
    layout = UVLayout.from_arrays(uv2, uv_faces, faces)
    report = layout_report(layout, 64)
    assert report["uv_overlap_fraction"] > 0.1 and report["n_charts"] == 2
