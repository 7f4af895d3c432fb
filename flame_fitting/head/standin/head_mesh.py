"""The stand-in head mesh: a radial grid surface around the head centre c.

Along every grid ray the radius is the MediaPipe face surface where the ray hits it (eye and
mouth openings filled smoothly), elsewhere the generic head solid (`head_shape`) plus the face's
offset extended smoothly (biharmonic with decay, so there is no crease at the face border), plus
ear bumps. Grid rows are bent so one row follows the inner-lip line between the mouth corners;
that row is cut (vertices duplicated: upper-lip copies keep the grid id, lower-lip copies are
appended), so a jaw rotation opens the mouth. Output in the head frame (origin c, metres).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib.path import Path as MplPath

from .face_surface import MetricFace, boundary_loops
from .geometry import grid_fill, phong_far_hits, signed_volume
from .grid import angles, density_warp, direction, grid_faces, grid_uv, smooth_window
from .head_shape import HeadShape, ear_offset, ray_exit

UPPER_INNER_LIP = [78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308]
LOWER_INNER_LIP = [78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308]
FACE_BOOST = 4.5  # vertex density on the face relative to the rest of the head (rows and columns)
MOUTH_BOOST = 1.6  # extra density over the lips (dense MediaPipe landmarks there)
EAR_BOOST = 3.5  # column density over the ears
UV_BOOST = 1.4  # extra UV size of face cells (texture detail), on top of their vertex density


@dataclass(frozen=True)
class HeadMesh:
    verts: np.ndarray  # (V,3) float64, head frame (origin = head centre c)
    faces: np.ndarray  # (F,3) int64, outward (counter-clockwise from outside)
    uv: np.ndarray  # (T,2) float64 in [0,1], v up
    uv_faces: np.ndarray  # (F,3) int64 into uv
    uv_to_vertex: np.ndarray  # (T,) int64, the vertex of every uv vertex
    face_region: np.ndarray  # (V,) bool, inside the MediaPipe face outline (incl. eye/mouth openings)
    eye_region: np.ndarray  # (V,) int8, 1 = inside the left (+x) eye opening, 2 = right, 0 = neither
    lip_side: np.ndarray  # (V,) int8, +1 upper-lip copy of a cut vertex, -1 lower-lip copy, 0 other
    grid_ij: np.ndarray  # (V,2) int64, (row, col) of each vertex; the pole is (-1, 0)
    rows: int
    cols: int
    mp_points: np.ndarray  # (478,3) symmetric metric MediaPipe face in the head frame
    mp_triangles: np.ndarray  # (T,3) int64
    centre_eye_frame: np.ndarray  # (3,) c in the eye frame of MetricFace


def _row_angles(face, shape, rows):
    """Polar angles (rows,) of the grid rows (arc-length spacing, boosted over the face band)."""
    th_lm, _ = angles(face.points - np.array(shape.centre))
    top, chin = th_lm[10], th_lm[152]
    th = np.linspace(1e-3, np.pi - 0.25, 700)
    dsdth = np.zeros_like(th)
    for phi, wgt in ((0.0, 0.4), (np.pi / 2, 0.3), (np.pi, 0.3)):
        d = direction(th, np.full_like(th, phi))
        p = d * ray_exit(shape, d)[:, None]
        dsdth += wgt * np.linalg.norm(np.gradient(p, th, axis=0), axis=1)
    mouth = th_lm[[0, 17]]  # upper and lower lip (outer midline points)
    boost = 1.0 + (FACE_BOOST - 1.0) * smooth_window(th, top - 0.05, chin + 0.05, 0.25) \
        + (MOUTH_BOOST - 1.0) * FACE_BOOST * smooth_window(th, mouth[0], mouth[1], 0.05)
    return density_warp(th, dsdth, boost, rows)[1:]


def _col_angles(face, shape, cols):
    """Azimuths (cols,) from -pi (the seam) over 0 (front), mirror-symmetric, face-boosted."""
    c = np.array(shape.centre)
    _, ph_lm = angles(face.points - c)
    side = np.abs(ph_lm[[234, 454]]).mean()
    ph = np.linspace(0.0, np.pi, 500)
    dsdph = np.zeros_like(ph)
    for th in (np.pi / 2, np.pi / 2 + 0.35):
        d = direction(np.full_like(ph, th), ph)
        p = d * ray_exit(shape, d)[:, None]
        dsdph += np.linalg.norm(np.gradient(p, ph, axis=0), axis=1)
    ear = np.arctan2(shape.ear_c[0] - shape.centre[0], shape.ear_c[2] - shape.centre[2])
    boost = 1.0 + (FACE_BOOST - 1.0) * smooth_window(ph, -1.0, side, 0.25) \
        + (EAR_BOOST - 1.0) * smooth_window(ph, ear - 0.25, ear + 0.25, 0.15) \
        + (MOUTH_BOOST - 1.0) * FACE_BOOST * smooth_window(ph, -1.0, np.abs(ph_lm[61]), 0.1)
    half = density_warp(ph, dsdph, boost, cols // 2)  # 0 .. pi, cols/2 + 1 samples
    return np.concatenate([-half[::-1], half[1:-1]])  # -pi .. (pi - step), 0 at index cols/2


def _uv_spacing(face, shape, theta, phi):
    """UV coordinates of the grid columns (cols+1,) and rows (rows,): face cells get UV_BOOST x."""
    th_lm, ph_lm = angles(face.points - np.array(shape.centre))
    side = np.abs(ph_lm[[234, 454]]).mean()
    mid = np.concatenate([phi, [np.pi]])
    wu = 1.0 + (UV_BOOST - 1.0) * smooth_window(0.5 * (mid[:-1] + mid[1:]), -side, side, 0.1)
    u = np.concatenate([[0.0], np.cumsum(wu)]) / wu.sum()
    th = np.concatenate([[0.0], theta])
    wv = 1.0 + (UV_BOOST - 1.0) * smooth_window(0.5 * (th[:-1] + th[1:]), th_lm[10], th_lm[152], 0.1)
    v = 1.0 - np.cumsum(wv) / wv.sum()
    return u, v


def _lip_bend(face, shape, theta, phi):
    """Bend the rows so one row (returned index) follows the inner-lip line between the corners.

    theta (rows,), phi (cols,) -> (theta_grid (rows, cols), cut_row, cut_cols (K,) interior columns).
    """
    c = np.array(shape.centre)
    th_u, ph_u = angles(face.points[UPPER_INNER_LIP] - c)
    th_l, ph_l = angles(face.points[LOWER_INNER_LIP] - c)
    corner = 0.5 * (abs(ph_u[0]) + abs(ph_u[-1]))
    inside = np.abs(phi) < corner
    line = 0.5 * (np.interp(phi, ph_u, th_u) + np.interp(phi, ph_l, th_l))  # (cols,)
    cut_row = int(np.argmin(np.abs(theta - line[len(phi) // 2])))
    # bend: exact on the lip line inside the mouth, held then tapered to 0 outside the corners
    target = np.where(inside, line, np.interp(np.clip(phi, -corner, corner), phi[inside], line[inside]))
    taper = smooth_window(phi, -corner, corner, 0.12)
    delta = (target - theta[cut_row]) * taper  # (cols,)
    i = np.arange(len(theta))[:, None]
    fall = np.exp(-(((i - cut_row) / 3.0) ** 2))
    theta_grid = theta[:, None] + fall * delta[None]
    if (np.diff(theta_grid, axis=0) <= 0).any():
        raise ValueError("head_mesh: lip-line bending made the grid rows cross; use more rows")
    return theta_grid, cut_row, np.flatnonzero(inside)


def _lip_line_radius(face, shape, phi):
    """Distance from c of the inner-lip midline (mean of upper/lower inner-lip points) at azimuths phi."""
    mid = 0.5 * (face.points[UPPER_INNER_LIP] + face.points[LOWER_INNER_LIP]) - np.array(shape.centre)
    _, ph = angles(mid)
    return np.interp(phi, ph, np.linalg.norm(mid, axis=1))


def _region_masks(face, shape, theta_grid, phi):
    """(face, left eye, right eye) boolean (rows, cols) masks from the face-mesh boundary loops."""
    c = np.array(shape.centre)
    th_lm, ph_lm = angles(face.points - c)
    pts = np.stack([np.broadcast_to(phi, theta_grid.shape).ravel(), theta_grid.ravel()], 1)
    masks = {}
    for loop in boundary_loops(face.triangles):
        inside = MplPath(np.stack([ph_lm[loop], th_lm[loop]], 1)).contains_points(pts).reshape(theta_grid.shape)
        key = "outer" if 10 in loop else "left" if 263 in loop else "right" if 33 in loop else "mouth"
        masks[key] = inside
    if set(masks) != {"outer", "left", "right", "mouth"}:
        raise ValueError(f"head_mesh: unexpected MediaPipe boundary loops {sorted(masks)}")
    return masks["outer"], masks["left"], masks["right"]


def build_head_mesh(face: MetricFace, rows: int, cols: int, shape: HeadShape = HeadShape()) -> HeadMesh:
    """Build the stand-in head surface on a (rows, cols) grid (cols even) from the metric face."""
    if cols % 2 or rows < 24 or cols < 24:
        raise ValueError(f"head_mesh: grid must have >= 24 rows and an even number >= 24 of columns, got {(rows, cols)}")
    c = np.array(shape.centre)
    theta = _row_angles(face, shape, rows)
    phi = _col_angles(face, shape, cols)
    theta_grid, cut_row, cut_cols = _lip_bend(face, shape, theta, phi)
    theta_grid = _flat_neck_end(shape, theta_grid, phi)
    theta_grid, phi_grid, snapped = _snap_to_landmarks(face, shape, theta_grid, phi)
    dirs = direction(theta_grid, phi_grid)  # (rows, cols, 3)
    outer, left, right = _region_masks(face, shape, theta_grid, phi_grid)
    outer, left, right = outer | snapped, left & ~snapped, right & ~snapped  # landmark nodes lie on the loops
    flat = dirs.reshape(-1, 3)
    r_face = phong_far_hits(c, flat, face.points, face.triangles).reshape(rows, cols)
    r_base = ray_exit(shape, flat).reshape(rows, cols)
    # the inner-lip line is recessed behind the lips: rays through it also hit the lower lip,
    # so the cut row (and its corner nodes) takes the lip line's own radius
    lip_cols = np.arange(cut_cols[0] - 1, cut_cols[-1] + 2)
    r_face[cut_row, lip_cols] = _lip_line_radius(face, shape, phi_grid[cut_row, lip_cols])
    hit = outer & ~np.isnan(r_face)
    r_face = grid_fill(np.where(hit, r_face, r_base), known=~outer | hit)  # eye / mouth openings
    neck_end = np.zeros_like(outer)
    neck_end[-2:] = True  # the open neck boundary stays on its plane
    offset = grid_fill(np.where(outer, r_face - r_base, 0.0), known=outer | neck_end, decay=1.0 / 6.0**4)
    radius = np.where(outer, r_face, r_base + offset)
    p = c + dirs * radius[..., None]
    radius = radius + np.where(outer, 0.0, ear_offset(shape, p.reshape(-1, 3)).reshape(rows, cols))
    grid_pts = dirs * radius[..., None]  # head frame: origin at c
    top = np.array([0.0, ray_exit(shape, np.array([[0.0, 1.0, 0.0]]))[0], 0.0])
    verts = np.concatenate([top[None], grid_pts.reshape(-1, 3)])
    faces = grid_faces(rows, cols, verts)
    if signed_volume(verts, faces, ref=np.zeros(3)) < 0:
        faces = faces[:, [0, 2, 1]]
    uv, uv_faces, uv_to_vertex = grid_uv(*_uv_spacing(face, shape, theta, phi), faces)
    region = np.concatenate([[False], outer.ravel()])
    eye = np.concatenate([[0], np.where(left, 1, np.where(right, 2, 0)).ravel()]).astype(np.int8)
    gij = np.concatenate([[[-1, 0]], np.stack(np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij"), -1)
                          .reshape(-1, 2)]).astype(np.int64)
    verts, faces, uv, uv_faces, uv_to_vertex, lip = _cut_mouth(verts, faces, uv, uv_faces, uv_to_vertex,
                                                               cols, cut_row, cut_cols)
    src = np.concatenate([np.arange(len(region)), 1 + cut_row * cols + cut_cols])
    return HeadMesh(verts=verts, faces=faces, uv=uv, uv_faces=uv_faces, uv_to_vertex=uv_to_vertex,
                    face_region=region[src], eye_region=eye[src], lip_side=lip, grid_ij=gij[src],
                    rows=rows, cols=cols, mp_points=face.points - c, mp_triangles=face.triangles,
                    centre_eye_frame=c)


def _quads_convex(phi_grid, theta_grid, i, j) -> bool:
    """Are the (up to 4) grid quads around node (i, j) strictly convex in (phi, theta)?"""
    rows, cols = theta_grid.shape
    for qi in (i - 1, i):
        for qj in (j - 1, j):
            if not (0 <= qi < rows - 1 and 0 <= qj < cols - 1):
                continue
            corners = [(qi, qj), (qi, qj + 1), (qi + 1, qj + 1), (qi + 1, qj)]
            p = np.array([[phi_grid[r, c], theta_grid[r, c]] for r, c in corners])
            e = np.roll(p, -1, axis=0) - p
            if (e[:, 0] * np.roll(e, -1, axis=0)[:, 1] - e[:, 1] * np.roll(e, -1, axis=0)[:, 0] <= 0).any():
                return False
    return True


def _snap_to_landmarks(face, shape, theta_grid, phi):
    """Point a grid node near each MediaPipe face landmark (0..467) exactly at it.

    So landmarks are mesh vertices (exact embedding). Greedy, closest pairs first (grid-index
    units): a landmark takes the nearest free node within 1 cell whose quads stay convex.
    Returns (theta_grid, phi_grid), both (rows, cols).
    """
    th_lm, ph_lm = angles(face.points[:468] - np.array(shape.centre))
    rows, cols = theta_grid.shape
    jf = np.interp(ph_lm, phi, np.arange(cols))
    i_f = np.array([np.interp(t, theta_grid[:, int(round(j))], np.arange(rows)) for t, j in zip(th_lm, jf)])
    cand = []  # (distance, landmark, i, j)
    for k in range(len(th_lm)):
        for i in (int(np.floor(i_f[k])), int(np.floor(i_f[k])) + 1):
            for j in (int(np.floor(jf[k])), int(np.floor(jf[k])) + 1):
                d = float(np.hypot(i_f[k] - i, jf[k] - j))
                if d < 1.0 and 0 <= i < rows:
                    cand.append((round(d, 9), k, i, j))
    theta_grid, phi_grid = theta_grid.copy(), np.broadcast_to(phi, theta_grid.shape).copy()
    taken, done = set(), set()
    for d, k, i, j in sorted(cand):
        if k in done or (i, j) in taken:
            continue
        old = theta_grid[i, j], phi_grid[i, j]
        theta_grid[i, j], phi_grid[i, j] = th_lm[k], ph_lm[k]
        if _quads_convex(phi_grid, theta_grid, i, j):
            taken.add((i, j))
            done.add(k)
        else:
            theta_grid[i, j], phi_grid[i, j] = old
    snapped = np.zeros(theta_grid.shape, dtype=bool)
    snapped[tuple(np.array(sorted(taken)).T)] = True
    return theta_grid, phi_grid, snapped


def _flat_neck_end(shape, theta_grid, phi):
    """Move the lower rows so the last row lies in the plane y = neck_bottom (open neck boundary)."""
    c = np.array(shape.centre)
    th = np.linspace(np.pi / 2 + 0.6, np.pi - 0.02, 90)
    d = direction(th[:, None], phi[None])  # (90, cols, 3)
    y = c[1] + ray_exit(shape, d.reshape(-1, 3)).reshape(d.shape[:2]) * d[..., 1]  # decreasing in theta
    end = np.array([np.interp(-shape.neck_bottom, -y[:, j], th) for j in range(len(phi))])
    rows = theta_grid.shape[0]
    s = np.clip((np.arange(rows) - 0.75 * rows) / (0.25 * rows - 1), 0, 1)[:, None]
    return theta_grid + (end - theta_grid[-1])[None] * (s * s * (3 - 2 * s))


def _cut_mouth(verts, faces, uv, uv_faces, uv_to_vertex, cols, cut_row, cut_cols):
    """Duplicate the cut-row vertices between the mouth corners; triangles below use the copies."""
    ids = 1 + cut_row * cols + cut_cols  # (K,) upper-lip (original) ids
    new_ids = len(verts) + np.arange(len(ids))
    remap = np.arange(len(verts))
    remap[ids] = new_ids
    row_of = np.where(faces == 0, -1, (faces - 1) // cols)
    below = (row_of.max(1) > cut_row)  # triangles spanning rows cut_row .. cut_row+1
    on_cut = np.isin(faces, ids) & below[:, None]
    faces = np.where(on_cut, remap[faces], faces)
    verts = np.concatenate([verts, verts[ids]])
    # uv: lower copies get their own uv vertices (same coordinates)
    uv_ids = np.unique(uv_faces[on_cut])
    uv_remap = np.arange(len(uv))
    uv_remap[uv_ids] = len(uv) + np.arange(len(uv_ids))
    uv_faces = np.where(on_cut, uv_remap[uv_faces], uv_faces)
    uv = np.concatenate([uv, uv[uv_ids]])
    uv_to_vertex = np.concatenate([uv_to_vertex, remap[uv_to_vertex[uv_ids]]])
    lip = np.zeros(len(verts), np.int8)
    lip[ids], lip[new_ids] = 1, -1
    return verts, faces.astype(np.int64), uv, uv_faces.astype(np.int64), uv_to_vertex, lip
