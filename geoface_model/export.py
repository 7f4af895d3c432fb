"""Export generated views + cameras + mesh for 3D Gaussian Splatting (nerfstudio / gsplat / the original 3DGS).

`export_3dgs(out_dir, images, cameras, vertices, faces)` writes (into a temporary sibling, then renamed):

    images/<name>.png                 the views (RGB)
    transforms.json                   nerfstudio / instant-ngp: per-frame fl_x, fl_y, cx, cy, w, h and
                                      transform_matrix = OpenGL camera→world (x right, y up, z backward):
                                      c2w_gl = inverse(world_to_cam) @ diag(1, -1, -1, 1); camera_model OPENCV (no
                                      distortion); ply_file_path = points3d.ply (nerfstudio's 3DGS initialisation)
    sparse/0/cameras.txt              COLMAP: one PINHOLE camera per view (fx fy cx cy; COLMAP and geoface both put
                                      pixel centres at +0.5, so K is written as is). The original 3DGS's reader
                                      keeps only the fields of view (it assumes cx, cy at the image centre): the
                                      generated views have their principal point there (`orbit_cameras`), the
                                      reference crop of `geoface generate` keeps the photo's offset (several px in
                                      a 32-64 px view) and is misplaced by that much there; nerfstudio and gsplat
                                      read cx, cy
    sparse/0/images.txt               world→camera as unit quaternion (qw ≥ 0) + translation, OpenCV axes as COLMAP
    sparse/0/points3D.txt             the mesh vertices with their colours and empty tracks (or no points)
    points3d.ply                      binary PLY: x y z nx ny nz (float32) red green blue (uint8), 3DGS's storePly layout

Point colours (`vertex_colors`): each vertex takes the colour of the view that sees it most head-on (largest
cos between the vertex normal and the direction to the camera), among views where it passes the depth test
against the rasterised mesh (`flame_fitting.geometry.raster.rasterize`; tolerance `depth_tol` metres + `slope_px` pixels'
metric size at the vertex depth, as a pixel of a grazing surface spans that much depth); vertices no view
sees get the mean colour of the seen ones (counted in the result). World units are the cameras' (metres).
The readers `pipelines.transforms_json` and `pipelines.colmap` read both back (round-trip tested).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from flame_fitting.core.errors import GeofaceError
from flame_fitting.geometry.camera import Camera
from flame_fitting.geometry.camera import opengl_cam_to_world as opengl_c2w
from flame_fitting.core import fileio
from flame_fitting.core.fileio import output_dir, write_png
from flame_fitting.core.names import name_problem
from flame_fitting.formats.capture import read_image
from flame_fitting.formats.capture_checks import load_cameras
from flame_fitting.geometry.raster import rasterize
from flame_fitting.geometry.meshes import vertex_normals

PLY_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("nx", "<f4"), ("ny", "<f4"), ("nz", "<f4"),
                      ("red", "u1"), ("green", "u1"), ("blue", "u1")])


class ExportError(GeofaceError, ValueError):
    """Inconsistent export input (names the argument)."""


def rotmat_to_qvec(R: np.ndarray) -> np.ndarray:
    """(3,3) rotation -> unit quaternion (qw, qx, qy, qz), qw >= 0 (COLMAP's convention, eigenvector method)."""
    Rxx, Ryx, Rzx, Rxy, Ryy, Rzy, Rxz, Ryz, Rzz = np.asarray(R, np.float64).ravel()
    Km = np.array([[Rxx - Ryy - Rzz, 0, 0, 0], [Ryx + Rxy, Ryy - Rxx - Rzz, 0, 0],
                   [Rzx + Rxz, Rzy + Ryz, Rzz - Rxx - Ryy, 0], [Ryz - Rzy, Rzx - Rxz, Rxy - Ryx, Rxx + Ryy + Rzz]]) / 3.0
    vals, vecs = np.linalg.eigh(Km)
    q = vecs[[3, 0, 1, 2], np.argmax(vals)]
    return -q if q[0] < 0 else q


def vertex_colors(vertices: np.ndarray, faces: np.ndarray, images: list[np.ndarray], cameras: list[Camera],
                  depth_tol: float = 5e-3, slope_px: float = 2.0) -> tuple[np.ndarray, int]:
    """vertices (V,3), faces (F,3), images N × (H,W,3) uint8 of `cameras` -> colours (V,3) uint8, number of
    vertices no view sees (they get the mean colour of the seen ones). See the module docstring."""
    v = np.asarray(vertices, np.float32)
    normals = vertex_normals(v, np.asarray(faces))
    best = np.full(len(v), -np.inf)
    colour = np.zeros((len(v), 3), np.float64)
    for img, cam in zip(images, cameras):
        frags = rasterize(v, np.asarray(faces, np.int32), cam.K[None], cam.world_to_cam[None], cam.width, cam.height)
        uv, z = cam.project(v)
        col, row = np.floor(uv[:, 0]).astype(np.int64), np.floor(uv[:, 1]).astype(np.int64)
        inside = (z > 0) & (col >= 0) & (col < cam.width) & (row >= 0) & (row < cam.height)
        d = np.full(len(v), np.inf, np.float32)
        d[inside] = frags.depth[0, row[inside], col[inside]]
        to_cam = cam.center[None].astype(np.float64) - v
        cos = (normals * to_cam).sum(1) / np.maximum(np.linalg.norm(to_cam, axis=1), 1e-12)
        tol = depth_tol + slope_px * z / float(cam.K[0, 0])  # a pixel's metric size: grazing surfaces vary that much
        seen = inside & (z <= d + tol) & (cos > 0) & (cos > best)
        best[seen] = cos[seen]
        colour[seen] = img[row[seen], col[seen]]
    unseen = ~np.isfinite(best)
    if (~unseen).any():
        colour[unseen] = colour[~unseen].mean(0)
    return np.round(colour).clip(0, 255).astype(np.uint8), int(unseen.sum())


def write_ply(path: Path | str, points: np.ndarray, normals: np.ndarray, colors: np.ndarray) -> Path:
    """Binary little-endian PLY with 3DGS's vertex layout (`PLY_DTYPE`)."""
    data = np.empty(len(points), PLY_DTYPE)
    for k, name in enumerate("xyz"):
        data[name], data["n" + name] = points[:, k], normals[:, k]
    data["red"], data["green"], data["blue"] = colors[:, 0], colors[:, 1], colors[:, 2]
    return fileio.write_ply(path, data)


def read_ply(path: Path | str) -> np.ndarray:
    """Read a PLY written by `write_ply` -> structured array (`PLY_DTYPE`)."""
    raw = Path(path).read_bytes()
    end = raw.find(b"end_header\n")
    if not raw.startswith(b"ply\n") or end < 0:
        raise ExportError(f"{path}: not a PLY file")
    header = raw[:end].decode("ascii").splitlines()
    if "format binary_little_endian 1.0" not in header:
        raise ExportError(f"{path}: only binary little-endian PLY is read here")
    n = int(next(h for h in header if h.startswith("element vertex")).split()[-1])
    names = [h.split()[-1] for h in header if h.startswith("property")]
    if tuple(names) != PLY_DTYPE.names:
        raise ExportError(f"{path}: vertex properties {names} are not {list(PLY_DTYPE.names)}")
    return np.frombuffer(raw[end + len(b"end_header\n"):], PLY_DTYPE, count=n).copy()


def _f(x: float) -> str:
    return repr(float(x))


def _colmap_files(sparse: Path, names: list[str], cameras: list[Camera], points, colors) -> None:
    cam_lines = ["# Camera list with one line of data per camera:", "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]",
                 f"# Number of cameras: {len(cameras)}"]
    img_lines = ["# Image list with two lines of data per image:", "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
                 "#   POINTS2D[] as (X, Y, POINT3D_ID)", f"# Number of images: {len(cameras)}"]
    for i, (name, cam) in enumerate(zip(names, cameras), 1):
        K = cam.K.astype(np.float64)
        cam_lines.append(f"{i} PINHOLE {cam.width} {cam.height} {_f(K[0, 0])} {_f(K[1, 1])} {_f(K[0, 2])} {_f(K[1, 2])}")
        q, t = rotmat_to_qvec(cam.world_to_cam[:3, :3]), cam.world_to_cam[:3, 3].astype(np.float64)
        img_lines += [f"{i} {' '.join(_f(x) for x in q)} {' '.join(_f(x) for x in t)} {i} {name}.png", ""]
    pts = ["# 3D point list with one line of data per point:",
           "#   POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)",
           f"# Number of points: {0 if points is None else len(points)}"]
    if points is not None:
        pts += [f"{i} {_f(p[0])} {_f(p[1])} {_f(p[2])} {c[0]} {c[1]} {c[2]} 0" for i, (p, c) in enumerate(zip(points, colors), 1)]
    sparse.mkdir(parents=True)
    for fname, lines in (("cameras.txt", cam_lines), ("images.txt", img_lines), ("points3D.txt", pts)):
        (sparse / fname).write_text("\n".join(lines) + "\n")


def export_3dgs(out_dir: Path | str, images: list[np.ndarray], cameras: list[Camera], vertices: np.ndarray | None = None,
                faces: np.ndarray | None = None, names: list[str] | None = None, colmap_points: bool = True) -> dict:
    """Write the files of the module docstring; returns {"n_views", "n_points", "n_unseen_points", "files"}.
    images: N × (H,W,3) uint8 RGB matching `cameras`' sizes; cameras: a list of N `Camera`s (OpenCV, metres);
    vertices (V,3) float metres + faces (F,3) 0-based vertex indices in the cameras' world (None: no PLY, empty
    points3D.txt); names: image stems, each one safe file name (default the camera names, else view_XX).
    ExportError naming the argument for anything else."""
    if not isinstance(cameras, (list, tuple)) or not all(isinstance(c, Camera) for c in cameras):
        raise ExportError(f"export_3dgs: cameras must be a list of Camera (from a {{name: Camera}} dict: "
                          f"list(cameras.values())), got {type(cameras).__name__}")
    if len(images) != len(cameras) or not cameras:
        raise ExportError(f"export_3dgs: {len(images)} images for {len(cameras)} cameras")
    names = list(names) if names is not None else [c.name or f"view_{i:02d}" for i, c in enumerate(cameras)]
    if len(set(names)) != len(names) or len(names) != len(cameras):
        raise ExportError(f"export_3dgs: image names must be unique, one per camera, got {names}")
    bad = [(n, why) for n in names if (why := name_problem(n))]
    if bad:  # a name becomes images/<name>.png: 'a/b' or '../x' would write elsewhere
        raise ExportError(f"export_3dgs: image name {bad[0][0]!r} {bad[0][1]}")
    if vertices is not None:
        _check_mesh(vertices, faces)
    for i, (img, cam) in enumerate(zip(images, cameras)):
        if np.asarray(img).dtype != np.uint8 or np.asarray(img).shape != (cam.height, cam.width, 3):
            raise ExportError(f"export_3dgs: image {i} ({names[i]}) must be ({cam.height}, {cam.width}, 3) uint8, "
                              f"got {np.asarray(img).dtype} {np.asarray(img).shape}")
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    with output_dir(out, kind="3dgs export") as tmp:
        (tmp / "images").mkdir(parents=True)
        for name, img in zip(names, images):
            write_png(tmp / "images" / f"{name}.png", np.asarray(img))
        points = colors = None
        n_unseen = 0
        if vertices is not None:
            points = np.asarray(vertices, np.float32)
            colors, n_unseen = vertex_colors(points, faces, list(images), cameras)
            write_ply(tmp / "points3d.ply", points, vertex_normals(points, np.asarray(faces)), colors)
        frames = [{"file_path": f"images/{n}.png", "transform_matrix": opengl_c2w(c).tolist(),
                   "fl_x": float(c.K[0, 0]), "fl_y": float(c.K[1, 1]), "cx": float(c.K[0, 2]), "cy": float(c.K[1, 2]),
                   "w": c.width, "h": c.height} for n, c in zip(names, cameras)]
        meta = {"camera_model": "OPENCV", "frames": frames}
        if points is not None:
            meta["ply_file_path"] = "points3d.ply"
        (tmp / "transforms.json").write_text(json.dumps(meta, indent=1))
        _colmap_files(tmp / "sparse" / "0", names, cameras, points if colmap_points else None, colors)
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
    return {"n_views": len(cameras), "n_points": 0 if points is None else len(points), "n_unseen_points": n_unseen,
            "files": files}


def _check_mesh(vertices, faces) -> None:
    """ExportError for vertices that are not (V, 3) finite numbers or faces that are not (F, 3) integer indices
    into them (0-based)."""
    v = np.asarray(vertices)
    if v.ndim != 2 or v.shape[1] != 3 or not np.issubdtype(v.dtype, np.number):
        raise ExportError(f"export_3dgs: vertices must be (V, 3) numbers, got {v.dtype} {v.shape}")
    if not np.isfinite(v).all():
        raise ExportError(f"export_3dgs: vertices contain NaN/inf ({int((~np.isfinite(v)).any(1).sum())} of {len(v)})")
    if faces is None:
        raise ExportError("export_3dgs: vertices without faces (needed for visibility and normals)")
    f = np.asarray(faces)
    if f.ndim != 2 or f.shape[1] != 3 or not np.issubdtype(f.dtype, np.integer) or not len(f):
        raise ExportError(f"export_3dgs: faces must be a non-empty (F, 3) integer array, got {f.dtype} {f.shape}")
    if f.min() < 0 or f.max() >= len(v):
        raise ExportError(f"export_3dgs: faces index vertices {f.min()}..{f.max()}, but there are {len(v)} vertices "
                          f"(0-based indices: an OBJ's are 1-based)")


def _read_mesh(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(V,3) float32 vertices and (F,3) int64 0-based faces of a triangle OBJ (with or without UVs); ExportError naming
    the file (and line) when it is not readable text, a line is malformed or a face names a vertex it lacks."""
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise ExportError(f"{path}: cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise ExportError(f"{path}: not a text OBJ file (not UTF-8)") from None
    v, f = [], []
    for n, line in enumerate(text.splitlines(), 1):
        p = line.split()
        try:
            if p and p[0] == "v":
                if len(p) < 4:
                    raise ValueError(f"a vertex needs 3 coordinates, got {len(p) - 1}")
                v.append([float(x) for x in p[1:4]])
                if not np.isfinite(v[-1]).all():
                    raise ValueError("non-finite coordinate")
            elif p and p[0] == "f":
                if len(p) != 4:
                    raise ValueError("only triangles are supported")
                idx = [int(c.split("/")[0]) for c in p[1:]]
                if 0 in idx or min(idx) < -len(v):
                    raise ValueError("vertex index 0 or before the first vertex")
                f.append([i - 1 if i > 0 else len(v) + i for i in idx])  # OBJ: 1-based, negative = from the end
        except ValueError as e:
            raise ExportError(f"{path}:{n}: not a triangle OBJ line ({e}): {line!r}") from None
    if not v or not f:
        raise ExportError(f"{path}: no {'vertices' if not v else 'triangles'} (expected 'v x y z' and 'f a b c' lines)")
    faces = np.asarray(f, np.int64)
    if faces.max() >= len(v):
        raise ExportError(f"{path}: a face names vertex {faces.max() + 1}, the file has {len(v)} vertices")
    return np.asarray(v, np.float32), faces


def export_sample(sample_dir: Path | str, out_dir: Path | str, colmap_points: bool = True) -> dict:
    """3DGS starting point (`export_3dgs`) of a folder written by `geoface generate` or the evaluate stage
    (reference.png, views/<camera>.png, cameras.json, optional mesh.obj): the reference is the camera of cameras.json
    without an image under views/. Returns `export_3dgs`'s summary."""
    sample = Path(sample_dir)
    cams = load_cameras(sample / "cameras.json")
    refs = [n for n in cams if not (sample / "views" / f"{n}.png").is_file()]
    if len(refs) != 1:
        raise ExportError(f"{sample}: expected exactly one camera of cameras.json without views/<name>.png (the "
                          f"reference), found {refs}")
    names = refs + [n for n in cams if n != refs[0]]
    images = [read_image(sample / "reference.png" if n == refs[0] else sample / "views" / f"{n}.png") for n in names]
    mesh = sample / "mesh.obj"
    vertices, faces = _read_mesh(mesh) if mesh.is_file() else (None, None)
    return export_3dgs(out_dir, images, [cams[n] for n in names], vertices, faces, names=names,
                       colmap_points=colmap_points)
