"""The `head_model` stage's work (also `geoface head-model build`): the head model every later stage uses, in
FLAME's folder layout. It spans rooms (stand-in or copied FLAME from flame_fitting.head, landmark calibration
rendered by pipelines.synthetic.calibration), so it lives on top.

With `path: null` it builds geoface's stand-in head model (NOT FLAME: a seeded, FLAME-compatible head built from
MediaPipe's face mesh on a public-domain photo; docs/head_model.md). With a path it validates a real FLAME folder
(smplx layout) and copies it. Either way the result is loaded through the same `HeadModel` code before the step
succeeds. With `calibrate_landmarks: true` it then calibrates the MediaPipe landmark embedding against the
detector on renders of calibration subjects (`flame_fitting.landmarks.calibration`, settings in `calibration`,
~30 s) and writes `mediapipe_landmark_embedding_calibrated.npz` + `.json` beside the original, which the fit uses
(`fit.calibrated_embedding`); false leaves the folder as built or copied.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from flame_fitting.core.fileio import replace_dir, temp_path, write_json
from flame_fitting.core.params import ParamsError, build_config, spec
from flame_fitting.head.flame_io import validate_flame_folder
from flame_fitting.head.head_model import HeadModel
from flame_fitting.head.preview import head_model_preview
from flame_fitting.head.standin import build_standin
from flame_fitting.landmarks.calibration import CalibrationConfig
from pipelines.synthetic.calibration import calibrate_head_model


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
    replace_dir(tmp, dst, kind="head model")


def build_head_model(out: Path | str, preview: Path | str | None, cfg: HeadModelParams,
                     metrics_path: Path | str | None = None) -> dict:
    """Build or copy the head model into `out` (module docstring), write its preview PNG (`preview` None: none);
    returns (and writes) the metrics."""
    out, t0 = Path(out), time.perf_counter()
    if cfg.path is None:
        summary = build_standin(out, seed=cfg.seed, n_shape=cfg.n_shape, n_expr=cfg.n_expr)
    else:
        copy_real_flame(Path(cfg.path).expanduser(), out)
        summary = {}
    calib = calibrate_head_model(out, cfg.calibration_config()) if cfg.calibrate_landmarks else None
    model = HeadModel.from_folder(out, n_shape=cfg.n_shape, n_expr=cfg.n_expr)
    if preview is not None:
        Path(preview).parent.mkdir(parents=True, exist_ok=True)
        head_model_preview(model, preview)
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
    if metrics_path is not None:
        write_json(metrics_path, metrics)
    return metrics
