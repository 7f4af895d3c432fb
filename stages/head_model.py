"""DVC stage `head_model`: the head model every later stage uses, in FLAME's folder layout.

With `head_model.path: null` it builds geoface's stand-in head model (NOT FLAME: a seeded,
FLAME-compatible head built from MediaPipe's face mesh on a public-domain photo; see
docs/head_model.md). With a path it validates a real FLAME folder (smplx layout) and copies it.
Either way the result is loaded through the same `HeadModel` code before the stage succeeds.
With `head_model.calibrate_landmarks: true` it then calibrates the MediaPipe landmark embedding against
the detector on renders of calibration subjects (`flame_fitting.landmarks.calibration`, settings in
`head_model.calibration`, ~30 s) and writes `mediapipe_landmark_embedding_calibrated.npz` + `.json`
beside the original, which the fit uses (`fit.calibrated_embedding`); false leaves the folder as built
or copied.

Writes data/head_model/ (the folder), plots/head_model/preview.png, metrics/head_model.json.
Run: `dvc repro head_model` (or `python stages/head_model.py` from the repository root).
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import common  # noqa: F401  (puts this checkout first on sys.path)
from common import run, write_json

from flame_fitting.core.fileio import replace_dir, temp_path
from flame_fitting.head.flame_io import validate_flame_folder
from flame_fitting.head.head_model import HeadModel
from flame_fitting.landmarks.calibration import CalibrationConfig
from pipelines.synthetic.calibration import calibrate_head_model
from flame_fitting.core.params import ParamsError, build_config, read_params, spec
from flame_fitting.head.preview import head_model_preview
from flame_fitting.head.standin import build_standin

OUT = Path("data/head_model")
PREVIEW = Path("plots/head_model/preview.png")
METRICS = Path("metrics/head_model.json")


@dataclass
class HeadModelParams:
    path: str | None = spec(None, "real FLAME folder (smplx layout); null builds the stand-in")
    seed: int = spec(0, "stand-in: seed of the bases", lo=0)
    n_shape: int = spec(50, "identity components (stand-in: built; FLAME: used, ≤ 300)", lo=1, hi=300)
    n_expr: int = spec(30, "expression components (stand-in: built; FLAME: used, ≤ 100)", lo=1, hi=100)
    calibrate_landmarks: bool = spec(True, "calibrate the MediaPipe landmark embedding against the detector on "
                                           "renders of calibration subjects (flame_fitting.landmarks.calibration)")
    calibration: dict | None = spec(None, "landmark calibration settings: the fields of "
                                          "flame_fitting.landmarks.calibration.CalibrationConfig (null = defaults)")

    def validate(self) -> None:
        if self.path is not None and not Path(self.path).expanduser().is_dir():
            raise ParamsError(f"head_model.path: {self.path} is not a directory")
        self.calibration_config()  # refuses unknown keys, wrong types, out-of-range values now

    def calibration_config(self) -> CalibrationConfig:
        return build_config(CalibrationConfig, self.calibration or {}, "params.yaml:head_model.calibration")


def copy_real_flame(src: Path, dst: Path) -> None:
    validate_flame_folder(src)  # refuses with a message naming the file and key
    tmp = temp_path(dst)
    shutil.copytree(src, tmp)
    replace_dir(tmp, dst)


def load_params(params: dict) -> HeadModelParams:
    return build_config(HeadModelParams, params.get("head_model"), "params.yaml:head_model")


def main() -> None:
    cfg = load_params(read_params())
    t0 = time.perf_counter()
    if cfg.path is None:
        summary = build_standin(OUT, seed=cfg.seed, n_shape=cfg.n_shape, n_expr=cfg.n_expr)
    else:
        copy_real_flame(Path(cfg.path).expanduser(), OUT)
        summary = {}
    calib = calibrate_head_model(OUT, cfg.calibration_config()) if cfg.calibrate_landmarks else None
    model = HeadModel.from_folder(OUT, n_shape=cfg.n_shape, n_expr=cfg.n_expr)
    PREVIEW.parent.mkdir(parents=True, exist_ok=True)
    head_model_preview(model, PREVIEW)
    metrics = {
        "kind": model.kind,
        "n_vertices": int(model.n_vertices),
        "n_faces": int(model.faces.shape[0]),
        "n_uv": int(model.uv_coords.shape[0]),
        "n_shape": int(model.n_shape),
        "n_expr": int(model.n_expr),
        "n_mediapipe_landmarks": int(model.mp_face_idx.shape[0]),
        "build_s": round(time.perf_counter() - t0, 3),
        **{k: v for k, v in summary.items() if isinstance(v, (int, float)) and k not in ("n_shape", "n_expr")},
        "landmark_calibration": calib is not None,
    }
    if calib is not None:
        metrics.update({f"calibration_{k}": calib[k] for k in ("n_calibrated", "n_views_used", "mean_shift_mm",
                                                                "max_shift_mm", "total_s")})
    write_json(METRICS, metrics)
    note = f"; MediaPipe embedding calibrated ({calib['n_calibrated']} points, mean shift {calib['mean_shift_mm']} mm)"
    print(f"head_model: {metrics['kind']} with {metrics['n_vertices']} vertices, preview at {PREVIEW}"
          + (note if calib else ""))


if __name__ == "__main__":
    run(main)
