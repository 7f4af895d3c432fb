"""Benchmark of the face consensus (flame_fitting/landmarks/faces.py, docs/fitting.md): the figures its tolerance
and its docs quote.

On a synthetic capture (stand-in head, generator seed 0, --subjects × --frames × --cameras views at --resolution²;
default the pipeline's 6 × 3 × 16 at 512²), MediaPipe's landmarks of every detected view:
  loo_rel_median / _p99 / _max  a view's relative error (median landmark distance to the projection of the head
                                triangulated from the frame's other detected views, / its landmark box diagonal) —
                                what `REL_TOL` (0.25) must stay above for a correct detection
  ms_per_frame                  `choose_faces` per frame (every frame agrees: one triangulation each)
  changed                       views whose face or detection the consensus changed (0: the landmarks are the same)
Then the photo test of tests/flame_fitting/test_multiple_faces.py (1 subject × 2 frames × 5 cameras at 320², yaw
±40°): matplotlib's grace_hopper.jpg pasted into every view of frame 0 and the subject painted out of two views:
  photo_kept_px      median landmark distance of each two-face view's kept face from the clean detection
  photo_dropped      views dropped as inconsistent_face (the two photo-only views)

Run: `nice python benchmarks/face_consensus.py` (~2 min on 2 cores). The last line is the JSON.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _capture_args import add_capture_args, make_capture

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "tests" / "flame_fitting")]  # tests/: standin_cache


def loo_errors(cameras, views) -> list[float]:
    """Leave-one-out relative error of every detected view of one frame (single faces)."""
    from flame_fitting.landmarks.faces import _Frame

    fr = _Frame(cameras, views)
    out = []
    for v in range(len(fr.names)):
        rest = np.array([w for w in range(len(fr.names)) if w != v])
        if len(rest) >= 2:
            rel = fr.relative_errors(fr.head_from(rest, np.zeros(len(rest), int)))
            out.append(float(rel[v, 0]))
    return out


def photo_test(root: Path) -> dict:
    import cv2
    from test_multiple_faces import paste_decoy

    from flame_fitting.formats.capture import load_capture
    from flame_fitting.head.standin import build_standin
    from flame_fitting.landmarks.capture import INCONSISTENT, detect_capture
    from pipelines.synthetic import SyntheticConfig, generate

    build_standin(root / "head", seed=0, n_shape=10, n_expr=10)
    generate(root / "head", root / "cap", SyntheticConfig(subjects=1, frames=2, cameras=5, resolution=320,
                                                          yaw_range_deg=[-40, 40], seed=0, workers=1), progress=False)
    cap = load_capture(root / "cap")
    clean = detect_capture(cap, workers=1, progress=False)
    m = cap.manifest
    rows = np.flatnonzero((m.frame == 0).to_numpy())
    blank = set(rows[[0, -1]])
    for i in rows:
        path = root / "cap" / m.path.iat[i]
        rgb = cv2.imread(str(path), cv2.IMREAD_COLOR_RGB)
        if i in blank:
            rgb[:] = 128
        cv2.imwrite(str(path), cv2.cvtColor(paste_decoy(rgb), cv2.COLOR_RGB2BGR))
    ls = detect_capture(cap, workers=1, progress=False)
    kept = [float(np.median(np.linalg.norm(ls.points[i] - clean.points[i], axis=1)))
            for i in rows if i not in blank and ls.table.detected.iat[i]]
    return {"photo_kept_px": [round(k, 2) for k in kept],
            "photo_dropped": int((ls.table.reason.iloc[rows] == INCONSISTENT).sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_capture_args(ap, 6)
    a = ap.parse_args()
    from flame_fitting.formats.capture import load_capture
    from flame_fitting.landmarks.detector import detect_files
    from flame_fitting.landmarks.faces import choose_faces

    with tempfile.TemporaryDirectory(prefix="geoface-faces-") as tmp:
        root = Path(tmp)
        _, capdir = make_capture(root, a)
        cap = load_capture(capdir)
        m = cap.manifest.reset_index(drop=True)
        results = detect_files([cap.root / p for p in m.path], sizes=list(zip(m.width, m.height)), workers=2,
                               progress=False)
        rel, seconds, changed, frames = [], 0.0, 0, 0
        for (subject, sequence, _), sel in m.groupby(["subject", "sequence", "frame"]).indices.items():
            cams = cap.cameras(subject, sequence)
            views = {m.camera.iat[i]: results[i] for i in sel}
            rel += loo_errors(cams, {c: r for c, r in views.items() if r.detected})
            t0 = time.perf_counter()
            changed += len(choose_faces(cams, views))
            seconds += time.perf_counter() - t0
            frames += 1
        shutil.rmtree(capdir)
        photo = photo_test(root / "photo")
    rel = np.asarray(rel)
    print(json.dumps({"views": int(len(rel)), "loo_rel_median": round(float(np.median(rel)), 4),
                      "loo_rel_p99": round(float(np.percentile(rel, 99)), 4), "loo_rel_max": round(float(rel.max()), 4),
                      "ms_per_frame": round(1000 * seconds / frames, 2), "changed": changed, **photo}))


if __name__ == "__main__":
    main()
