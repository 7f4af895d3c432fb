"""`SyntheticConfig`: every knob of the synthetic capture generator (params.yaml `captures.synthetic`).

Built with `flame_fitting.core.params.build_config`, which checks types and per-field ranges;
`validate()` adds the cross-field checks (ordered ranges, fractions summing to 1), so bad
values fail before anything is rendered. Defaults: 6 subjects × 3 frames × 16 cameras at 512²
(see docs/synthetic.md for the time budget and how to scale up).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from flame_fitting.core.params import ParamsError, spec

BACKGROUNDS = ("gradient", "noise", "solid")


@dataclass
class SyntheticConfig:
    """Synthetic multi-view captures rendered from the head model (one field per `captures.synthetic` key)."""

    seed: int = spec(0, "seed of everything random (identities, expressions, cameras, lights, backgrounds, split)",
                     lo=0)
    subjects: int = spec(6, "number of synthetic identities", lo=1, hi=10000)
    frames: int = spec(3, "frames per subject (frame 0 near-neutral, the others expressions / head turns)", lo=1,
                       hi=1000)
    cameras: int = spec(16, "calibrated cameras per subject", lo=1, hi=256)
    resolution: int = spec(512, "image width = height in pixels", lo=32, hi=4096)
    sequence: str = spec("synthetic", "sequence name of every subject")
    n_shape: int | None = spec(None, "identity coefficients drawn; null = all the head model provides", lo=0, hi=300)
    n_expr: int | None = spec(None, "expression coefficients used; null = all the head model provides", lo=0, hi=100)
    shape_std: float = spec(0.8, "std of the identity coefficients (N(0, std²))", lo=0.0, hi=3.0)
    expr_std: float = spec(0.15, "std of the background expression noise added to every frame", lo=0.0, hi=2.0)
    expr_amplitude: list[float] = spec([0.8, 1.8], "coefficient range of a frame's named expression (smile, ...)",
                                       lo=0.0, hi=5.0)
    jaw_open_rad: list[float] = spec([0.10, 0.35], "jaw opening range of 'jaw_open' frames (rad)", lo=0.0, hi=0.6)
    head_yaw_deg: float = spec(20.0, "max |yaw| of the head in 'head_turn' frames (neck + global pose)", lo=0.0,
                               hi=60.0)
    head_pitch_deg: float = spec(10.0, "max |pitch| of the head in 'head_turn' frames", lo=0.0, hi=40.0)
    head_jitter_deg: float = spec(3.0, "max |yaw|, |pitch| of the head in other frames", lo=0.0, hi=20.0)
    eye_pose_std: float = spec(0.03, "std of the eye rotations (rad), 0 in frame 0", lo=0.0, hi=0.3)
    transl_std_m: float = spec(0.01, "std of the head translation per frame (m), 0 in frame 0", lo=0.0, hi=0.1)
    yaw_range_deg: list[float] = spec([-90.0, 90.0], "camera yaw range around the neutral head (deg, + = its left)",
                                      lo=-180.0, hi=180.0)
    pitch_range_deg: list[float] = spec([-25.0, 25.0], "camera pitch range (deg, + = above)", lo=-80.0, hi=80.0)
    camera_rows: int = spec(2, "pitch rows of the camera grid (cameras alternate between rows, sorted by yaw)", lo=1,
                            hi=8)
    distance_m: list[float] = spec([0.9, 1.2], "camera distance range to the head centre (m)", lo=0.2, hi=10.0)
    head_fill: list[float] = spec([0.5, 0.6], "fraction of the image height the head (crown to chin) fills", lo=0.05,
                                  hi=1.0)
    roll_deg: float = spec(3.0, "max |roll| of a camera (deg)", lo=0.0, hi=45.0)
    principal_jitter: float = spec(0.02, "max principal point offset from the image centre (fraction of the size)",
                                   lo=0.0, hi=0.2)
    ambient: list[float] = spec([0.35, 0.6], "ambient light range", lo=0.0, hi=2.0)
    diffuse: list[float] = spec([0.45, 0.75], "directional (Lambert) light range", lo=0.0, hi=2.0)
    light_elevation_deg: list[float] = spec([-10.0, 55.0], "light elevation range above the head's horizon (deg)",
                                            lo=-90.0, hi=90.0)
    light_azimuth_deg: float = spec(70.0, "max |azimuth| of the light from the face direction (deg)", lo=0.0, hi=180.0)
    color_temperature_k: list[float] = spec([3500.0, 7500.0], "light colour temperature range (K)", lo=1500.0,
                                            hi=15000.0)
    backgrounds: list[str] = spec(list(BACKGROUNDS), "background kinds drawn per camera", choices=None)
    texture_resolution: int = spec(1024, "UV texture size (texels per side)", lo=64, hi=4096)
    visibility_tol_m: float = spec(0.004, "depth tolerance of the landmark self-occlusion test (m)", lo=0.0, hi=0.1)
    split_fractions: list[float] = spec([0.6, 0.2, 0.2], "train/val/test fractions of the subjects", lo=0.0, hi=1.0)
    workers: int = spec(2, "threads for PNG / npz encoding (rendering uses numba's threads)", lo=1, hi=64)

    def validate(self) -> None:
        """Cross-field checks; raises ParamsError naming the field."""
        where = "captures.synthetic"
        for name in ("expr_amplitude", "jaw_open_rad", "yaw_range_deg", "pitch_range_deg", "distance_m", "head_fill",
                     "ambient", "diffuse", "light_elevation_deg", "color_temperature_k"):
            v = getattr(self, name)
            if not isinstance(v, (list, tuple)) or len(v) != 2 or not v[0] <= v[1]:
                raise ParamsError(f"{where}.{name}: expected [low, high] with low <= high, got {v!r}")
        if len(self.split_fractions) != 3 or abs(sum(self.split_fractions) - 1.0) > 1e-6:
            raise ParamsError(f"{where}.split_fractions: expected three fractions (train, val, test) summing to 1, "
                              f"got {self.split_fractions}")
        if self.split_fractions[0] <= 0:
            raise ParamsError(f"{where}.split_fractions: the train fraction must be > 0, got {self.split_fractions}")
        bad = [b for b in self.backgrounds if b not in BACKGROUNDS]
        if bad or not self.backgrounds:
            raise ParamsError(f"{where}.backgrounds: expected a non-empty list of {BACKGROUNDS}, "
                              f"got {self.backgrounds}")
        if not self.sequence or "/" in self.sequence or self.sequence.startswith("."):
            raise ParamsError(f"{where}.sequence: must be a plain folder name, got {self.sequence!r}")
        for f in fields(self):  # types and ranges also when built directly (build_config checks params.yaml)
            md, v = f.metadata, getattr(self, f.name)
            if isinstance(f.default, int) and not isinstance(f.default, bool) and (
                    isinstance(v, bool) or not isinstance(v, int)):
                raise ParamsError(f"{where}.{f.name}: expected an integer, got {v!r}")
            for item in (v if isinstance(v, list) else [v]):
                if isinstance(item, bool) or not isinstance(item, (int, float)):
                    continue
                if (md.get("lo") is not None and item < md["lo"]) or (md.get("hi") is not None and item > md["hi"]):
                    raise ParamsError(f"{where}.{f.name}: {item} is outside [{md.get('lo')}, {md.get('hi')}]")
