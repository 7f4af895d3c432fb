"""NeRSemble benchmark-release intrinsics: a capture (per-camera K for its own videos, no size keys,
alpha-map videos) written at 1100×1604, 1604×1100 and 550×802 is imported; prints one JSON line with, per size,
the largest |K - K written| (px), the largest reprojection error of known 3D points onto their drawn dots (px),
and the number of masks (the last line). Run from the repository root: `python benchmarks/nersemble_intrinsics.py`.
"""
import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests" / "pipelines")]  # this checkout; the test writers of real layouts
from writers import Scene, make_cameras, projection_error, write_nersemble  # noqa: E402

from flame_fitting.formats.capture import CaptureError, load_capture  # noqa: E402
from pipelines.import_config import ImportConfig  # noqa: E402
from pipelines.nersemble import import_capture  # noqa: E402

out = {}
for w, h in [(1100, 1604), (1604, 1100), (550, 802)]:
    cams = {f"2222000{i}": c for i, c in enumerate(make_cameras(3, width=w, height=h, f=1.2 * max(w, h)).values())}
    scene = Scene(cams)
    with tempfile.TemporaryDirectory() as d:
        write_nersemble(Path(d) / "nvs", scene, pid="388", seq="GLASSES", frames=[0], per_serial_intrinsics=True, size_keys=False, alpha=True)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                import_capture(Path(d) / "nvs", Path(d) / "cap", ImportConfig())
            cap = load_capture(Path(d) / "cap")
            got = cap.cameras("388", "GLASSES")
            kerr = max(float(np.abs(got[s].K.astype(float) - cams[s].K.astype(float)).max()) for s in got)
            perr = max(projection_error(got[r["camera"]], cap.image(r), scene.points) for r in cap.manifest.to_dict("records"))
            masks = int(cap.manifest.get("mask_path", []).notna().sum()) if "mask_path" in cap.manifest else 0
            out[f"{w}x{h}"] = {"images": len(cap.manifest), "K_max_abs_err_px": round(kerr, 6), "reproj_max_px": round(perr, 3), "masks": masks}
        except CaptureError as e:
            out[f"{w}x{h}"] = {"refused": str(e)[-120:]}
print(json.dumps(out))
