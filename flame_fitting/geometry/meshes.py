"""Triangle-mesh helpers: face and vertex normals, and small analytic meshes built in code (tests,
benchmarks, examples)."""
from __future__ import annotations

import numpy as np


def face_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unnormalised (area-weighted, right-hand rule) normals (F, 3) float64 of verts (V, 3) / faces (F, 3);
    outward for counter-clockwise faces."""
    v = np.asarray(verts, np.float64)
    return np.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]])


def vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unit vertex normals (V, 3) float64: the area-weighted mean of the incident face normals."""
    fn = face_normals(verts, faces)
    n = np.zeros((len(verts), 3))
    for k in range(3):
        np.add.at(n, faces[:, k], fn)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-30)


def icosphere(subdiv: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit icosphere: verts (V,3) float64, faces (20·4^subdiv, 3) int64, counter-clockwise seen from outside."""
    t = (1 + 5 ** 0.5) / 2
    v = [[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t], [0, -1, -t], [0, 1, -t],
         [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]]
    f = [[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4], [11, 10, 2], [10, 7, 6],
         [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9], [4, 9, 5], [2, 4, 11], [6, 2, 10],
         [8, 6, 7], [9, 8, 1]]
    verts, faces = [np.array(p, float) / np.linalg.norm(p) for p in v], np.array(f)
    for _ in range(subdiv):
        mid: dict[tuple[int, int], int] = {}

        def m(a: int, b: int) -> int:
            key = (min(a, b), max(a, b))
            if key not in mid:
                p = verts[a] + verts[b]
                verts.append(p / np.linalg.norm(p))
                mid[key] = len(verts) - 1
            return mid[key]

        new = []
        for a, b, c in faces:
            ab, bc, ca = m(a, b), m(b, c), m(c, a)
            new += [[a, ab, ca], [b, bc, ab], [c, ca, bc], [ab, bc, ca]]
        faces = np.array(new)
    return np.array(verts), faces
