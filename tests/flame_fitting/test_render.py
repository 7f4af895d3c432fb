"""Shading kernel parity with its numpy reference; textures land where the UVs say."""
import numpy as np

from flame_fitting.geometry.camera import intrinsics, look_at
from flame_fitting.geometry.raster import rasterize
from flame_fitting.geometry.meshes import vertex_normals
from flame_fitting.geometry.render import Lighting, _shade_reference, front_facing, render_mesh


def uv_sphere(n_lat=16, n_lon=24, r=0.1):
    th, ph = np.meshgrid(np.linspace(0.05, np.pi - 0.05, n_lat), np.linspace(-np.pi, np.pi, n_lon), indexing="ij")
    v = np.stack([r * np.sin(th) * np.sin(ph), r * np.cos(th), r * np.sin(th) * np.cos(ph)], -1).reshape(-1, 3)
    uv = np.stack([(ph + np.pi) / (2 * np.pi), 1 - th / np.pi], -1).reshape(-1, 2)
    idx = np.arange(n_lat * n_lon).reshape(n_lat, n_lon)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    faces = np.concatenate([np.stack([a, c, b], -1).reshape(-1, 3), np.stack([b, c, d], -1).reshape(-1, 3)])
    return v.astype(np.float32), faces.astype(np.int32), uv.astype(np.float32)


def cams(n=3, size=64):
    w2c = np.stack([look_at([0.5 * np.sin(a), 0.1, 0.5 * np.cos(a)], [0, 0, 0]) for a in np.linspace(-1, 1, n)])
    K = np.stack([intrinsics(120, 120, size / 2, size / 2)] * n)
    return K, w2c


def test_normals_point_outwards():
    v, f, _ = uv_sphere()
    n = vertex_normals(v, f)
    assert (np.einsum("vk,vk->v", n, v / np.linalg.norm(v, axis=1, keepdims=True)) > 0.95).mean() > 0.95


def test_shade_kernel_matches_reference():
    v, f, uv = uv_sphere()
    K, w2c = cams()
    rng = np.random.default_rng(0)
    tex = rng.random((32, 48, 3)).astype(np.float32)
    lights = [Lighting(direction=np.array([0.2, 0.5, 1.0]))] * 3
    rgb, frags = render_mesh(v, f, K, w2c, 64, 64, lights, texture=tex, uv=uv, uv_faces=f, antialias=False)
    centers = np.stack([-w[:3, :3].T @ w[:3, 3] for w in w2c])
    normals = np.broadcast_to(vertex_normals(v, f), (3, *v.shape))
    ref = _shade_reference(frags, f, f, uv, tex, normals, front_facing(v, f, centers),
                           np.stack([lt.direction / np.linalg.norm(lt.direction) for lt in lights]),
                           np.full(3, 0.45), np.full(3, 0.65), np.array(lights[0].interior))
    np.testing.assert_allclose(rgb, np.clip(ref, 0, 1), atol=1e-5)
    assert (frags.face_id >= 0).mean() > 0.1


def test_texture_lands_at_its_uv():
    # a texture that is red on the u<0.5 half and green on u>0.5: the sphere's x<0 side (phi<0) is red
    v, f, uv = uv_sphere(32, 48)
    tex = np.zeros((8, 8, 3), np.float32)
    tex[:, :4, 0] = 1
    tex[:, 4:, 1] = 1
    K = np.stack([intrinsics(120, 120, 32, 32)])
    w2c = np.stack([look_at([0, 0, 0.5], [0, 0, 0])])  # frontal
    light = [Lighting(direction=np.array([0.0, 0.0, 1.0]), ambient=1.0, diffuse=0.0)]
    rgb, frags = render_mesh(v, f, K, w2c, 64, 64, light, texture=tex, uv=uv, uv_faces=f, antialias=False)
    row = rgb[0, 32]
    covered = frags.face_id[0, 32] >= 0
    xs = np.nonzero(covered)[0]
    left, right = row[xs[2]], row[xs[-3]]  # image left = world -x for a camera in front (+z)
    assert left[0] > 0.9 and left[1] < 0.1 and right[1] > 0.9 and right[0] < 0.1


def test_back_faces_are_interior_coloured():
    v, f, uv = uv_sphere()
    K, w2c = cams(1)
    inside = np.stack([look_at([0, 0, 0.02], [0, 0, 0.5])])  # camera inside the sphere
    rgb, frags = render_mesh(v, f, K, inside, 64, 64, [Lighting(direction=np.ones(3))], vertex_colors=np.ones_like(v),
                             antialias=False)
    cov = frags.face_id[0] >= 0
    np.testing.assert_allclose(rgb[0][cov].mean(0), Lighting(direction=np.ones(3)).interior, atol=1e-5)
