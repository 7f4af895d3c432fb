"""CPU rasteriser: parity with the numpy reference and with pytorch3d, fill rule, near plane,
culling, UV space, overlap detection, thread-count independence, input errors."""
import numba
import numpy as np
import pytest
import torch

from flame_fitting.geometry.camera import intrinsics, look_at
from flame_fitting.geometry.raster import (RasterError, interpolate, project, rasterize, rasterize_screen, rasterize_uv,
                                  uv_overlap_fraction)
from flame_fitting.geometry.raster_ref import rasterize_ref, rasterize_screen_ref, rasterize_uv_ref


def random_screen_mesh(seed, n=2, v=60, f=80, w=48, h=40, snap=False):
    """Random triangles over (and past) a w×h image; some vertices behind the near plane, a few
    projected very far away (as vertices just past the near plane are). snap=True puts vertices
    on a half-pixel grid so many pixel centres lie exactly on edges."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(-6, max(w, h) + 6, (n, v, 2))
    xy[:, :3] = rng.uniform(-1e7, 1e7, (n, 3, 2))
    if snap:
        xy = np.round(xy * 2) / 2
    z = rng.uniform(0.2, 3.0, (n, v))
    z[rng.random((n, v)) < 0.05] = -0.5
    return xy, z, rng.integers(0, v, (f, 3)), w, h


def cameras(n, size, f=None, dist=0.6):
    eyes = [[dist * np.sin(a), 0.1 * np.cos(2 * a), dist * np.cos(a)] for a in np.linspace(-1.0, 1.0, n)]
    K = np.stack([intrinsics(f or size, f or size, size / 2, size / 2)] * n)
    return K, np.stack([look_at(e, [0, 0, 0]) for e in eyes])


def assert_same(a, b, bary_atol=1e-5):
    np.testing.assert_array_equal(a.face_id, b.face_id)
    np.testing.assert_allclose(a.bary, b.bary, atol=bary_atol)
    np.testing.assert_allclose(a.depth, b.depth, rtol=1e-6)  # inf == inf where empty


def per_face_coverage(xy, z, faces, w, h):
    """(H, W) number of faces covering each pixel: face k is rasterised alone in view k."""
    F = len(faces)
    zz = np.full((F, z.shape[-1]), -1.0)
    for k, tri in enumerate(faces):
        zz[k, tri] = z[tri]
    frags = rasterize_screen(np.broadcast_to(xy, (F,) + xy.shape), zz, faces, w, h)
    return (frags.face_id >= 0).sum(0)


# ----------------------------------------------------------------------------- reference parity
@pytest.mark.parametrize("seed,snap,cull", [(0, False, False), (1, True, False), (2, False, True), (3, True, True)])
def test_screen_parity_with_reference(seed, snap, cull):
    xy, z, faces, w, h = random_screen_mesh(seed, snap=snap)
    a = rasterize_screen(xy, z, faces, w, h, cull_backfaces=cull)
    assert 0.3 < (a.face_id >= 0).mean() < 1.0
    assert_same(a, rasterize_screen_ref(xy, z, faces, w, h, cull_backfaces=cull))


def test_world_parity_with_reference_shared_and_per_view_verts(sphere_mesh):
    rng = np.random.default_rng(4)
    verts, faces = sphere_mesh
    K, w2c = cameras(3, 40)
    assert_same(rasterize(verts, faces, K, w2c, 40, 36), rasterize_ref(verts, faces, K, w2c, 40, 36))
    per_view = verts + rng.normal(scale=0.01, size=(3,) + verts.shape).astype(np.float32)
    a = rasterize(per_view, faces, K, w2c, 40, 36)
    assert_same(a, rasterize_ref(per_view, faces, K, w2c, 40, 36))
    one = rasterize(per_view[1], faces, K[1:2], w2c[1:2], 40, 36)
    np.testing.assert_array_equal(one.face_id[0], a.face_id[1])


def test_barycentrics_are_perspective_correct(sphere_mesh):
    """The camera-space point interpolated with bary projects onto the pixel centre at the reported depth."""
    verts, faces = sphere_mesh
    K, w2c = cameras(2, 64)
    frags = rasterize(verts, faces, K, w2c, 64, 64)
    for n in range(2):
        cam = verts.astype(np.float64) @ w2c[n, :3, :3].T.astype(np.float64) + w2c[n, :3, 3]
        ii, jj = np.nonzero(frags.face_id[n] >= 0)
        p = interpolate(cam, faces, frags.face_id[n, ii, jj], frags.bary[n, ii, jj])
        np.testing.assert_allclose(p[:, 2], frags.depth[n, ii, jj], rtol=1e-5)
        pix = p @ K[n].T.astype(np.float64)
        np.testing.assert_allclose(pix[:, :2] / pix[:, 2:], np.stack([jj + 0.5, ii + 0.5], -1), atol=2e-3)


# ----------------------------------------------------------------------------- pytorch3d parity
def pytorch3d_fragments(xy, z, faces, size, cull=False):
    """pytorch3d CPU rasterisation of the same screen-space triangles (square image, +x left, +y up NDC)."""
    from pytorch3d.renderer.mesh.rasterize_meshes import rasterize_meshes
    from pytorch3d.structures import Meshes

    ndc = np.stack([1 - 2 * xy[..., 0] / size, 1 - 2 * xy[..., 1] / size, z], -1)
    mesh = Meshes(torch.tensor(ndc, dtype=torch.float32), torch.tensor(np.stack([faces] * len(xy))))
    p2f, zbuf, bary, _ = rasterize_meshes(mesh, size, 0.0, 1, bin_size=0, perspective_correct=True,
                                          cull_backfaces=cull)
    p2f = p2f[..., 0].numpy()
    offset = (np.arange(len(xy)) * len(faces))[:, None, None]  # packed face ids -> per-mesh ids
    return np.where(p2f >= 0, p2f - offset, -1), zbuf[..., 0].numpy(), bary[..., 0, :].numpy()


def check_pytorch3d(frags, p3d):
    fid, zbuf, bary = p3d
    covered = (fid >= 0) | (frags.face_id >= 0)
    same = (fid == frags.face_id) & (fid >= 0)
    assert covered.sum() > 100
    assert same.sum() >= 0.995 * covered.sum()
    np.testing.assert_allclose(frags.bary[same], bary[same], atol=1e-4)
    np.testing.assert_allclose(frags.depth[same], zbuf[same], rtol=1e-5)


@pytest.mark.parametrize("cull", [False, True])
def test_pytorch3d_parity_sphere(sphere_mesh, cull):
    verts, faces = sphere_mesh
    K, w2c = cameras(2, 64, f=120, dist=0.5)
    xy, z = project(verts, K, w2c)
    frags = rasterize_screen(xy, z, faces, 64, 64, cull_backfaces=cull)
    check_pytorch3d(frags, pytorch3d_fragments(xy, z, faces, 64, cull))


def test_pytorch3d_parity_random_triangles():
    rng = np.random.default_rng(5)
    V = 90
    cam = np.stack([rng.uniform(-0.3, 0.3, V), rng.uniform(-0.3, 0.3, V), rng.uniform(0.8, 1.6, V)], -1)
    faces = np.arange(V).reshape(-1, 3)
    K = intrinsics(80, 80, 32, 32)[None]
    xy, z = project(cam, K, np.eye(4, dtype=np.float32)[None])
    check_pytorch3d(rasterize_screen(xy, z, faces, 64, 64), pytorch3d_fragments(xy, z, faces, 64))


# ----------------------------------------------------------------------------- fill rule
def test_single_triangle_analytic_coverage():
    """Right triangle (2,2),(12,2),(2,12): centres (j+.5, i+.5) with a=j-2, b=i-2 ≥ 0, a+b ≤ 8 are inside;
    the 10 centres exactly on the hypotenuse (a right/bottom edge) are left to the neighbour."""
    xy = np.array([[[2.0, 2], [12, 2], [2, 12]]])
    for tri in ([0, 1, 2], [0, 2, 1]):  # both orientations
        fid = rasterize_screen(xy, np.ones((1, 3)), np.array([tri]), 16, 16).face_id[0]
        a, b = np.meshgrid(np.arange(16) - 2, np.arange(16) - 2)
        np.testing.assert_array_equal(fid >= 0, (a >= 0) & (b >= 0) & (a + b <= 8))
    frags = rasterize_screen(xy, np.ones((1, 3)), np.array([[0, 1, 2]]), 16, 16)
    ii, jj = np.nonzero(frags.face_id[0] >= 0)
    np.testing.assert_allclose(interpolate(xy[0], [[0, 1, 2]], frags.face_id[0, ii, jj], frags.bary[0, ii, jj]),
                               np.stack([jj + 0.5, ii + 0.5], -1), atol=1e-5)


@pytest.mark.parametrize("snap", [False, True])
def test_shared_edges_are_watertight(snap):
    """A quad split along a diagonal, and a fan of 8 triangles around a vertex: every pixel centre
    inside is covered exactly once (snap puts vertices on pixel centres / corners to force ties)."""
    rng = np.random.default_rng(6)
    quad = np.array([[3.2, 4.1], [27.7, 2.9], [29.3, 25.6], [5.1, 27.4]]) + (0 if snap else rng.normal(0, 0.3, (4, 2)))
    centre = np.array([[16.5, 15.5]]) if snap else rng.uniform(14, 18, (1, 2))
    ring = centre + 9 * np.stack([np.cos(np.arange(8) * np.pi / 4), np.sin(np.arange(8) * np.pi / 4)], -1)
    if snap:
        quad, ring = np.round(quad * 2) / 2, np.round(ring * 2) / 2
    for xy, faces in [(quad, np.array([[0, 1, 2], [0, 2, 3]])),
                      (np.concatenate([centre, ring]), np.array([[0, 1 + k, 1 + (k + 1) % 8] for k in range(8)]))]:
        count = per_face_coverage(xy, np.ones(len(xy)), faces, 32, 32)
        assert count.max() == 1
        # centres strictly inside the convex outline (farther than 1e-9 px from it) are all covered
        outline = xy[np.unique(faces[:, 1:]) if len(faces) == 8 else [0, 1, 2, 3]]
        c = (np.stack(np.meshgrid(np.arange(32), np.arange(32)), -1) + 0.5).reshape(-1, 2)
        d = np.roll(outline, -1, 0) - outline
        side = np.cross(d[None], c[:, None] - outline[None])  # (P, edges)
        inside = (side > 1e-9).all(1) | (side < -1e-9).all(1)
        outside = ((side < -1e-9).any(1) & (side > 1e-9).any(1))
        assert count.reshape(-1)[inside].min() == 1 and count.reshape(-1)[outside].max() == 0


def test_near_plane_and_degenerate_triangles():
    near = 0.1
    xy = np.array([[[2.0, 2], [14, 3], [4, 13], [30, 30], [30, 30], [20, 20], [25, 25]]])
    faces = np.array([[0, 1, 2], [3, 4, 5], [5, 6, 0], [0, 1, 2]])  # repeated index, collinear, duplicate face
    for z0, visible in [(0.5 * near, False), (near, True), (2 * near, True)]:
        z = np.array([[z0, 1.0, 1.0, 1, 1, 1, 1]])
        frags = rasterize_screen(xy, z, faces, 32, 32, near=near)
        covered = frags.face_id[0] >= 0
        assert covered.any() == visible
        assert set(np.unique(frags.face_id[0])) <= {-1, 0}  # degenerate faces never win; ties go to the lower id
    # the same with a world-space camera: the vertex in front of the camera but closer than near
    K, w2c = intrinsics(20, 20, 16, 16)[None], np.eye(4, dtype=np.float32)[None]
    verts = np.array([[-0.5, -0.5, 0.05], [0.5, -0.4, 1.0], [-0.3, 0.5, 1.0]])
    assert (rasterize(verts, [[0, 1, 2]], K, w2c, 32, 32, near=0.1).face_id < 0).all()
    assert (rasterize(verts, [[0, 1, 2]], K, w2c, 32, 32, near=0.01).face_id >= 0).any()


def test_backface_culling_keeps_faces_seen_counter_clockwise(sphere_mesh):
    verts, faces = sphere_mesh
    K, w2c = cameras(2, 48, f=90, dist=0.5)
    both = rasterize(verts, faces, K, w2c, 48, 48)
    culled = rasterize(verts, faces, K, w2c, 48, 48, cull_backfaces=True)
    np.testing.assert_array_equal(both.face_id, culled.face_id)  # closed convex mesh: only front faces are seen
    inside = rasterize(verts, faces[:, ::-1], K, w2c, 48, 48, cull_backfaces=True)  # flipped: see the far side
    ok = inside.face_id >= 0
    assert ok.mean() > 0.2 and (inside.depth[ok] > both.depth[ok]).all()


# ----------------------------------------------------------------------------- UV space
@pytest.mark.parametrize("R", [16, 37])
def test_uv_square_covers_every_texel(R):
    uv = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    fid, bary = rasterize_uv(uv, faces, R)
    assert fid.shape == (R, R) and (fid >= 0).all()
    rows, cols = np.mgrid[0:R, 0:R]
    expected = np.stack([(cols + 0.5) / R, 1 - (rows + 0.5) / R], -1)
    np.testing.assert_allclose(interpolate(uv, faces, fid, bary), expected, atol=1e-6)
    assert uv_overlap_fraction(uv, faces, R) == 0.0
    # OBJ convention: the face holding the top-left corner (u=0, v=1) is in row 0, col 0
    assert fid[0, 0] == 1 and fid[-1, -1] == 0


def test_uv_parity_and_overlap_detection():
    rng = np.random.default_rng(7)
    uv, faces = rng.uniform(0, 1, (40, 2)), rng.integers(0, 40, (30, 3))
    a, b = rasterize_uv(uv, faces, 32), rasterize_uv_ref(uv, faces, 32)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1], atol=1e-5)
    square = np.array([[0.0, 0.0], [0.5, 0.0], [0.5, 0.5], [0.0, 0.5]])
    sq_faces = np.array([[0, 1, 2], [0, 2, 3]])
    two = np.concatenate([square, square + [0.5, 0.5]])
    assert uv_overlap_fraction(two, np.concatenate([sq_faces, sq_faces + 4]), 64) == 0.0
    shifted = np.concatenate([square, square + [0.25, 0.0]])  # overlap 16 of 48 covered columns
    assert uv_overlap_fraction(shifted, np.concatenate([sq_faces, sq_faces + 4]), 64) == pytest.approx(1 / 3)


# ----------------------------------------------------------------------------- misc
def test_interpolate_zeros_where_empty():
    attr = np.arange(12, dtype=np.float32).reshape(4, 3)
    faces = np.array([[0, 1, 2], [1, 2, 3]])
    fid = np.array([[-1, 1], [0, -1]])
    bary = np.array([[[0.2, 0.3, 0.5], [0.2, 0.3, 0.5]], [[1.0, 0, 0], [0, 1.0, 0]]], np.float32)
    out = interpolate(attr, faces, fid, bary)
    assert out.shape == (2, 2, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], 0)
    np.testing.assert_allclose(out[1, 1], 0)
    np.testing.assert_allclose(out[0, 1], 0.2 * attr[1] + 0.3 * attr[2] + 0.5 * attr[3], rtol=1e-6)
    np.testing.assert_allclose(out[1, 0], attr[0])


def test_one_thread_and_all_threads_agree(sphere_mesh):
    verts, faces = sphere_mesh
    K, w2c = cameras(3, 96)
    default = numba.get_num_threads()
    try:
        results = []
        for threads in (1, numba.config.NUMBA_NUM_THREADS):
            numba.set_num_threads(threads)
            results.append((rasterize(verts, faces, K, w2c, 96, 80), rasterize(verts, faces, K[:1], w2c[:1], 96, 80),
                            uv_overlap_fraction(verts[:, :2] * 4 + 0.5, faces, 64)))
    finally:
        numba.set_num_threads(default)
    for a, b in zip(results[0][:2], results[1][:2]):
        np.testing.assert_array_equal(a.face_id, b.face_id)
        np.testing.assert_array_equal(a.bary, b.bary)
        np.testing.assert_array_equal(a.depth, b.depth)
    assert results[0][2] == results[1][2] > 0


def test_bad_input_raises():
    xy, z = np.zeros((1, 3, 2)), np.ones((1, 3))
    with pytest.raises(RasterError, match="face indices"):
        rasterize_screen(xy, z, np.array([[0, 1, 3]]), 8, 8)
    with pytest.raises(RasterError, match="faces"):
        rasterize_screen(xy, z, np.array([[0.0, 1, 2]]), 8, 8)
    with pytest.raises(RasterError, match="not finite"):
        rasterize_screen(np.full((1, 3, 2), np.nan), z, np.array([[0, 1, 2]]), 8, 8)
    with pytest.raises(RasterError, match="last row"):
        rasterize(np.zeros((3, 3)), [[0, 1, 2]], np.ones((1, 3, 3)), np.eye(4)[None], 8, 8)
    with pytest.raises(RasterError, match=r"\[0, 1\]"):
        rasterize_uv(np.array([[0.0, 0.0], [1.2, 0.0], [0.0, 1.0]]), [[0, 1, 2]], 8)
