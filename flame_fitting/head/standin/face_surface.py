"""The stand-in head's face: a metric, frontal, mirror-symmetric MediaPipe face mesh.

MediaPipe's canonical face mesh is not shipped with the pip package, so the face shape is
measured: MediaPipe FaceMesh (refined, 478 landmarks) runs on the public-domain photo
`grace_hopper.jpg` that ships with matplotlib; its landmarks (normalised x, y and relative
depth z, all in image-width units for x and z) become pixels (x*W, y*H, z*W), are turned into
the head frame (y up, face along +z, subject's left at +x), made frontal (left-right axis from
the best mirror plane, pitch so nasion 168 and chin 199 are at equal depth), mirror-symmetrised
(each landmark averaged with the mirror image of its partner; partners by optimal assignment of
reflected points) and scaled so the outer eye corners (33, 263) are `EYE_CORNER_DIST` apart.
The face triangles are recovered from `FACEMESH_TESSELATION` (an edge set) as 3-cliques.

Origin of the returned points: midpoint of the outer eye corners (the head builder re-centres).
"""
from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

from flame_fitting.core.errors import GeofaceError

PHOTO_NAME = "grace_hopper.jpg"
EYE_CORNER_DIST = 0.090  # m, landmarks 33 - 263
N_LANDMARKS = 478


class FaceSurfaceError(GeofaceError, RuntimeError):
    """MediaPipe did not give a usable face on the source photo."""


@dataclass(frozen=True)
class MetricFace:
    points: np.ndarray  # (478, 3) float64, metres, head frame, symmetric, origin between eye corners
    triangles: np.ndarray  # (T, 3) int64, MediaPipe face triangles, outward (counter-clockwise from +z)
    mirror: np.ndarray  # (478,) int64, index of each landmark's mirror partner (involution)
    photo_px: np.ndarray  # (478, 2) float64, landmark pixel positions in the photo (+0.5 convention)
    photo_path: Path  # the photo the landmarks come from


def photo_path() -> Path:
    """Path of matplotlib's sample photo `grace_hopper.jpg`."""
    import matplotlib.cbook as cbook

    path = Path(cbook.get_sample_data(PHOTO_NAME, asfileobj=False))
    if not path.is_file():
        raise FaceSurfaceError(f"{path}: matplotlib sample photo is missing")
    return path


def detect_landmarks(path: Path) -> tuple[np.ndarray, tuple[int, int]]:
    """Run MediaPipe FaceMesh (refined) on `path` -> (478, 3) normalised landmarks, (W, H)."""
    import mediapipe as mp
    from PIL import Image

    img = np.asarray(Image.open(path).convert("RGB"))
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True, max_num_faces=1) as fm:
        res = fm.process(img)
    if not res.multi_face_landmarks:
        raise FaceSurfaceError(f"{path}: MediaPipe FaceMesh found no face")
    lm = np.array([[p.x, p.y, p.z] for p in res.multi_face_landmarks[0].landmark], dtype=np.float64)
    if lm.shape != (N_LANDMARKS, 3):
        raise FaceSurfaceError(f"{path}: expected {N_LANDMARKS} refined landmarks, got {lm.shape[0]}")
    return lm, (img.shape[1], img.shape[0])


def tessellation_triangles() -> np.ndarray:
    """Triangles (T, 3) of MediaPipe's face mesh from its edge set (unoriented, sorted rows).

    Triangles are 3-cliques of the edge graph; a clique whose three edges are all shared by three
    or more cliques is a separating triangle, not a face, and is dropped. The result must be
    manifold (every edge in at most two triangles), otherwise FaceSurfaceError.
    """
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_TESSELATION

    edges = {tuple(sorted(e)) for e in FACEMESH_TESSELATION}
    adj = defaultdict(set)
    for a, b in edges:
        adj[a].add(b)
        adj[b].add(a)
    cliques = sorted({tuple(sorted((a, b, x))) for a, b in edges for x in adj[a] & adj[b]})
    count = Counter(e for t in cliques for e in itertools.combinations(t, 2))
    kept = [t for t in cliques if not all(count[e] > 2 for e in itertools.combinations(t, 2))]
    count = Counter(e for t in kept for e in itertools.combinations(t, 2))
    if max(count.values()) > 2:
        raise FaceSurfaceError("MediaPipe tessellation: could not make the face mesh manifold")
    return np.array(kept, dtype=np.int64)


def _orient(tris: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Orient triangles consistently (propagated across shared edges), normals towards +z."""
    tris = tris.copy()
    edge_tris = defaultdict(list)
    for k, t in enumerate(tris):
        for e in itertools.combinations(sorted(t), 2):
            edge_tris[e].append(k)
    done = np.zeros(len(tris), dtype=bool)
    for seed in range(len(tris)):
        if done[seed]:
            continue
        done[seed] = True
        stack = [seed]
        while stack:
            k = stack.pop()
            t = tris[k]
            for a, b in ((t[0], t[1]), (t[1], t[2]), (t[2], t[0])):
                for m in edge_tris[tuple(sorted((a, b)))]:
                    if done[m]:
                        continue
                    u = tris[m]
                    same = any((u[i], u[(i + 1) % 3]) == (a, b) for i in range(3))
                    if same:  # a neighbour must traverse the shared edge the other way
                        tris[m] = u[[0, 2, 1]]
                    done[m] = True
                    stack.append(m)
    a, b, c = pts[tris[:, 0]], pts[tris[:, 1]], pts[tris[:, 2]]
    if np.cross(b - a, c - a)[:, 2].sum() < 0:
        tris = tris[:, [0, 2, 1]]
    return tris


def _mirror_pairs(p: np.ndarray, n: np.ndarray, d: float) -> np.ndarray:
    """Partner of every point under reflection in the plane n·x = d (optimal assignment)."""
    refl = p - 2.0 * (p @ n - d)[:, None] * n[None]
    cost = np.linalg.norm(p[:, None] - refl[None], axis=-1)
    rows, cols = linear_sum_assignment(cost)
    pair = np.empty(len(p), dtype=np.int64)
    pair[rows] = cols
    return pair


def _fit_mirror_plane(p: np.ndarray, pair: np.ndarray) -> tuple[np.ndarray, float]:
    diff = p - p[pair]
    w, v = np.linalg.eigh(diff.T @ diff)
    n = v[:, -1]
    if n[0] < 0:
        n = -n
    return n, float(((p + p[pair]) / 2 @ n).mean())


def metric_face_from_landmarks(lm: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Normalised MediaPipe landmarks (478, 3) + image (W, H) -> (symmetric metric points, mirror)."""
    w, h = size
    p = np.stack([lm[:, 0] * w, -lm[:, 1] * h, -lm[:, 2] * w], axis=1)  # y up, face along +z
    n = (p[263] - p[33]) + (p[291] - p[61]) + (p[454] - p[234])
    n /= np.linalg.norm(n)
    d = float(p[[10, 168, 4, 0, 152]].mean(0) @ n)
    for _ in range(4):
        pair = _mirror_pairs(p, n, d)
        n, d = _fit_mirror_plane(p, pair)
    if not np.array_equal(pair[pair], np.arange(len(p))):
        raise FaceSurfaceError("MediaPipe landmarks: mirror pairing is not an involution")
    x = n
    y = p[168] - p[199]
    y -= (y @ x) * x
    y /= np.linalg.norm(y)
    z = np.cross(x, y)
    rot = np.stack([x, y, z])  # rows: new axes
    q = (p - p[[33, 263]].mean(0)) @ rot.T
    q = 0.5 * (q + q[pair] * np.array([-1.0, 1.0, 1.0]))
    q *= EYE_CORNER_DIST / np.linalg.norm(q[263] - q[33])
    if q[263, 0] <= 0 or q[4, 2] <= q[33, 2]:
        raise FaceSurfaceError("MediaPipe landmarks: unexpected orientation (left eye not at +x or nose not forward)")
    return q, pair


def build_metric_face() -> MetricFace:
    """Measure the face on the sample photo (deterministic; takes well under a second)."""
    path = photo_path()
    lm, size = detect_landmarks(path)
    pts, pair = metric_face_from_landmarks(lm, size)
    tris = _orient(tessellation_triangles(), pts)
    photo_px = lm[:, :2] * np.array(size, dtype=np.float64) + 0.5  # MediaPipe counts pixel centres from 0 (detector.py)
    return MetricFace(points=pts, triangles=tris, mirror=pair, photo_px=photo_px, photo_path=path)


def boundary_loops(tris: np.ndarray) -> list[np.ndarray]:
    """Closed boundary loops (each an (L,) index array, in traversal order) of a triangle mesh."""
    directed = Counter()
    for t in tris:
        for a, b in ((t[0], t[1]), (t[1], t[2]), (t[2], t[0])):
            directed[(a, b)] += 1
    nxt = {a: b for (a, b) in directed if (b, a) not in directed}
    loops, seen = [], set()
    for start in sorted(nxt):
        if start in seen:
            continue
        loop, v = [], start
        while v not in seen:
            seen.add(v)
            loop.append(v)
            v = nxt[v]
        loops.append(np.array(loop, dtype=np.int64))
    return loops
