"""What each synthetic frame shows: identities, expressions, head poses, lights and the subject split.

Every subject draws from its own seed (`SeedSequence([seed, index])`), so subject i is the same
whatever the number of subjects. Frame 0 is near-neutral (small expression noise, no pose); every
later frame has a primary kind from FRAME_KINDS (cycled in a per-subject shuffled order) and, with
probability 0.4, a second expression kind; every frame gets a small background expression noise,
a small head jitter and gaze, a light (direction, ambient / diffuse strength, colour temperature).
Named expressions use the head model's `expr_names` (head_model.json); a model without names
(real FLAME) gets random N(0, 1) combinations of its leading expression components instead.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation

from pipelines.synthetic.appearance import Appearance, sample_appearance
from pipelines.synthetic.config import SyntheticConfig

FRAME_KINDS = ("jaw_open", "smile", "brows_up", "brows_down", "eye_close", "lip_funnel", "head_turn")
EXPRESSION_NAMES = {"smile": ("smile",), "brows_up": ("brow_raise",), "brows_down": ("brow_lower",),
                    "eye_close": ("eye_close_left", "eye_close_right"), "lip_funnel": ("lip_funnel",)}
PARAM_NAMES = ("shape", "expr", "jaw_pose", "neck_pose", "eye_pose", "global_orient", "transl")


@dataclass
class Light:
    """One frame's light (the same for every view: it belongs to the scene)."""

    direction: np.ndarray  # (3,) unit, world, towards the light
    ambient: float
    diffuse: float
    kelvin: float
    tint: np.ndarray  # (3,) float32 linear-RGB gains of the light colour (≈ 1 at 6500 K)


@dataclass
class FrameSpec:
    subject: str
    frame: int
    kind: str  # "neutral", "smile", "jaw_open+eye_close", ...
    params: dict  # PARAM_NAMES -> float32 arrays: shape (S,) expr (E,) jaw_pose (3,) neck_pose (3,) eye_pose (6,) ...
    light: Light


@dataclass
class SubjectSpec:
    name: str
    index: int
    split: str
    shape: np.ndarray  # (S,) float32
    appearance: Appearance
    rig_seed: int
    background_seed: int
    frames: list[FrameSpec] = field(default_factory=list)


def kelvin_to_rgb(kelvin: float) -> np.ndarray:
    """Linear-RGB colour (3,) of a black body at `kelvin`, normalised to the 6500 K colour (Helland's fit)."""
    def srgb(t: float) -> np.ndarray:
        t = t / 100.0
        r = 255.0 if t <= 66 else 329.698727446 * (t - 60) ** -0.1332047592
        g = 99.4708025861 * np.log(t) - 161.1195681661 if t <= 66 else 288.1221695283 * (t - 60) ** -0.0755148492
        b = 255.0 if t >= 66 else (0.0 if t <= 19 else 138.5177312231 * np.log(t - 10) - 305.0447927307)
        c = np.clip(np.array([r, g, b]) / 255.0, 0.0, 1.0)
        return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)

    rgb = srgb(kelvin) / srgb(6500.0)
    return (rgb / (rgb @ np.array([0.2126, 0.7152, 0.0722]))).astype(np.float32)


def split_subjects(names: list[str], fractions, seed: int) -> dict[str, str]:
    """Seeded split: the sorted names shuffled by `seed`, then the first n_val are val, the next n_test
    test, the rest train. n_val = round(f_val n), n_test = round(f_test n), each at least 1 when there are
    ≥ 3 subjects (≥ 2 for test); train keeps at least one subject."""
    n = len(names)
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, round(fractions[1] * n)) if n >= 3 and fractions[1] > 0 else 0
    n_test = max(1, round(fractions[2] * n)) if n >= 2 and fractions[2] > 0 else 0
    while n_val + n_test > n - 1:
        if n_val >= n_test and n_val > 0:
            n_val -= 1
        else:
            n_test -= 1
    sorted_names = sorted(names)
    out = {}
    for rank, i in enumerate(order):
        out[sorted_names[i]] = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"
    return out


def rotvec(yaw_deg: float, pitch_deg: float, roll_deg: float = 0.0) -> np.ndarray:
    """Axis-angle (3,) of R_y(yaw) R_x(pitch) R_z(roll)."""
    return Rotation.from_euler("YXZ", [yaw_deg, pitch_deg, roll_deg], degrees=True).as_rotvec().astype(np.float32)


def sample_light(rng: np.random.Generator, cfg: SyntheticConfig) -> Light:
    az = np.radians(rng.uniform(-cfg.light_azimuth_deg, cfg.light_azimuth_deg))
    el = np.radians(rng.uniform(*cfg.light_elevation_deg))
    d = np.array([np.sin(az) * np.cos(el), np.sin(el), np.cos(az) * np.cos(el)], np.float32)
    kelvin = float(rng.uniform(*cfg.color_temperature_k))
    return Light(direction=d, ambient=float(rng.uniform(*cfg.ambient)), diffuse=float(rng.uniform(*cfg.diffuse)),
                 kelvin=kelvin, tint=kelvin_to_rgb(kelvin))


def _expression(kind: str, expr_names: list[str], n_expr: int, rng, cfg: SyntheticConfig) -> np.ndarray:
    e = np.zeros(n_expr, np.float32)
    lo, hi = cfg.expr_amplitude
    names = EXPRESSION_NAMES[kind]
    idx = [expr_names.index(nm) for nm in names if nm in expr_names[:n_expr]]
    if not idx:  # no named component: a random combination of the leading components
        k = min(n_expr, 10)
        if k:
            e[:k] = rng.normal(0.0, 1.0, k) * rng.uniform(lo, hi) / np.sqrt(k)
        return e
    if kind == "eye_close":
        amount = rng.uniform(0.6, 1.0)
        wink = rng.random() < 0.3
        for j, i in enumerate(idx):
            e[i] = amount if not wink or j == 0 else 0.0
    else:
        for i in idx:
            e[i] = rng.uniform(lo, hi)
    return e


def sample_frame(subject: str, frame: int, shape: np.ndarray, kind: str, expr_names: list[str], n_expr: int,
                 rng: np.random.Generator, cfg: SyntheticConfig) -> FrameSpec:
    """Parameters of one frame of `kind` ("neutral" or '+'-joined FRAME_KINDS)."""
    kinds = kind.split("+")
    expr = np.zeros(n_expr, np.float32)
    n_named = len([nm for nm in expr_names[:n_expr] if not nm.startswith("random")]) or min(n_expr, 10)
    noise_std = cfg.expr_std * (0.5 if kind == "neutral" else 1.0)
    expr[:n_named] = rng.normal(0.0, noise_std, n_named)
    jaw = np.zeros(3, np.float32)
    yaw = pitch = 0.0
    if kind != "neutral":
        j = cfg.head_jitter_deg
        yaw, pitch = rng.uniform(-j, j), rng.uniform(-j, j)
    for k in kinds:
        if k == "jaw_open":
            jaw[0] = rng.uniform(*cfg.jaw_open_rad)
        elif k == "head_turn":
            yaw = rng.uniform(0.4, 1.0) * cfg.head_yaw_deg * rng.choice([-1.0, 1.0])
            pitch = rng.uniform(-cfg.head_pitch_deg, cfg.head_pitch_deg)
        elif k in EXPRESSION_NAMES:
            expr += _expression(k, expr_names, n_expr, rng, cfg)
    s = rng.uniform(0.3, 0.7) if kind != "neutral" else 0.0  # share of the head rotation done by the neck
    roll = rng.uniform(-2.0, 2.0) if kind != "neutral" else 0.0
    gaze = np.zeros(6, np.float32)  # both eyes turn together, about x and y
    if kind != "neutral":
        gaze[[0, 1]] = gaze[[3, 4]] = rng.normal(0.0, cfg.eye_pose_std, 2)
    params = {
        "shape": shape.astype(np.float32), "expr": expr, "jaw_pose": jaw,
        "neck_pose": rotvec(s * yaw, s * pitch, s * roll),
        "eye_pose": gaze,
        "global_orient": rotvec((1 - s) * yaw, (1 - s) * pitch, (1 - s) * roll),
        "transl": (np.zeros(3) if kind == "neutral" else rng.normal(0.0, cfg.transl_std_m, 3)).astype(np.float32),
    }
    return FrameSpec(subject=subject, frame=frame, kind=kind, params=params, light=sample_light(rng, cfg))


def subject_name(i: int) -> str:
    return f"synth{i:03d}"


def sample_subjects(cfg: SyntheticConfig, n_shape: int, n_expr: int, expr_names: list[str]) -> list[SubjectSpec]:
    """All subjects with their frames (deterministic in cfg.seed)."""
    names = [subject_name(i) for i in range(cfg.subjects)]
    split = split_subjects(names, cfg.split_fractions, cfg.seed)
    out = []
    for i, name in enumerate(names):
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, i]))
        shape = rng.normal(0.0, cfg.shape_std, n_shape).astype(np.float32)
        spec = SubjectSpec(name=name, index=i, split=split[name], shape=shape, appearance=sample_appearance(rng),
                           rig_seed=int(rng.integers(2**31)), background_seed=int(rng.integers(2**31)))
        order = list(rng.permutation(len(FRAME_KINDS)))
        for f in range(cfg.frames):
            if f == 0:
                kind = "neutral"
            else:
                kind = FRAME_KINDS[order[(f - 1) % len(order)]]
                if rng.random() < 0.4:
                    extra = [k for k in EXPRESSION_NAMES if k != kind]
                    kind += "+" + extra[rng.integers(len(extra))]
            spec.frames.append(sample_frame(name, f, shape, kind, expr_names, n_expr, rng, cfg))
        out.append(spec)
    return out
