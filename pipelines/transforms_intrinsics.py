"""Intrinsics of a NeRF / instant-ngp / nerfstudio `transforms.json` entry (used by pipelines/transforms_json.py).

Focal length per axis, as instant-ngp's loader (src/nerf_loader.cu read_focal_length) reads one object: `x_fov`
(field of view in DEGREES, instant-ngp's own key) over `fl_x` (pixels) over `camera_angle_x` (RADIANS, the NeRF
synthetic key); y likewise from `y_fov` / `fl_y` / `camera_angle_y`. An axis without a key takes the other's focal
length. A frame that gives any focal key is a camera of its own (both focal lengths from its keys alone); otherwise
the top level's. A field of view outside (0, 180) degrees / (0, π) radians is refused. cx, cy default to w/2, h/2.
`camera_model` (default OPENCV) and the distortion keys as nerfstudio writes them; nerfstudio's `distortion_params`
[k1, k2, k3, k4, p1, p2] stands for those keys of the same object; instant-ngp's non-pinhole lens keys are refused.
"""
from __future__ import annotations

import math

import numpy as np

from flame_fitting.formats.capture import CaptureError

# distortion keys (OpenCV order) each camera model has; the others must be absent or zero
MODELS = {"SIMPLE_PINHOLE": (), "PINHOLE": (), "SIMPLE_RADIAL": ("k1",), "RADIAL": ("k1", "k2"),
          "OPENCV": ("k1", "k2", "p1", "p2", "k3")}
DIST_KEYS = ("k1", "k2", "p1", "p2", "k3")
NERFSTUDIO_DIST = ("k1", "k2", "k3", "k4", "p1", "p2")  # the order of nerfstudio's `distortion_params`
# instant-ngp's lens modes other than the pinhole (nerf_loader.cu read_lens: the key's presence sets the mode)
NGP_LENSES = {"equirectangular": "an equirectangular", "latlong": "a lat-long", "orthographic": "an orthographic",
              "ftheta_p0": "an f-theta"}
# per axis, the focal keys in instant-ngp's order of precedence: degrees, pixels, radians
FOCAL_KEYS = {"x": ("x_fov", "fl_x", "camera_angle_x"), "y": ("y_fov", "fl_y", "camera_angle_y")}
FOV_LIMITS = {"x_fov": (180.0, "degrees"), "y_fov": (180.0, "degrees"),
              "camera_angle_x": (math.pi, "radians"), "camera_angle_y": (math.pi, "radians")}


def camera_model(meta: dict, frame: dict, what: str) -> str:
    """The frame's camera_model (frame key, else top level, else OPENCV), upper case; CaptureError if unsupported,
    or if instant-ngp's keys make it a non-pinhole lens (`is_fisheye` true, `equirectangular`, ...)."""
    model = frame.get("camera_model", meta.get("camera_model", "OPENCV"))
    if not isinstance(model, str) or model.upper() not in MODELS:
        raise CaptureError(f"{what}: camera_model {model} is not supported (only pinhole ones: {', '.join(MODELS)})")
    if frame.get("is_fisheye", meta.get("is_fisheye")):
        raise CaptureError(f"{what}: is_fisheye (instant-ngp's OpenCV fisheye lens, k1..k4 its angle terms) is not "
                           f"supported (only pinhole ones: {', '.join(MODELS)})")
    for key, lens in NGP_LENSES.items():
        if key in frame or key in meta:
            raise CaptureError(f"{what}: '{key}' makes it {lens} lens in instant-ngp; not supported (only pinhole ones)")
    return model.upper()


def _num(src: dict, key: str, what: str) -> float | None:
    v = src.get(key)
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
        raise CaptureError(f"{what}: {key} must be a number, got {v!r}")
    return None if v is None else float(v)


def check_angles(src: dict, what: str) -> None:
    """CaptureError for a field of view of `src` outside (0, 180) degrees (x_fov, y_fov) or (0, π) radians
    (camera_angle_x, camera_angle_y): no pinhole camera has it (degrees given as radians or the reverse, mostly)."""
    for key, (top, unit) in FOV_LIMITS.items():
        if (v := _num(src, key, what)) is not None and not 0 < v < top:
            other = "x_fov/y_fov are in degrees" if unit == "radians" else "camera_angle_x/y are in radians"
            raise CaptureError(f"{what}: {key} = {v} is not a field of view in {unit} (0 < {key} < "
                               f"{'180' if unit == 'degrees' else 'π'}; {other})")


def focal_length(src: dict, axis: str, size: int, what: str) -> float | None:
    """The focal length (pixels) of one axis ('x': size = w, 'y': size = h) that the object `src` gives, in
    instant-ngp's order <axis>_fov (degrees) > fl_<axis> > camera_angle_<axis> (radians); None when it gives none."""
    fov, fl, angle = FOCAL_KEYS[axis]
    if (deg := _num(src, fov, what)) is not None:
        return 0.5 * size / math.tan(math.radians(0.5 * deg))
    if (f := _num(src, fl, what)) is not None:
        return f
    a = _num(src, angle, what)
    return None if a is None else 0.5 * size / math.tan(0.5 * a)


def with_distortion_params(src: dict, what: str) -> dict:
    """`src` with nerfstudio's `distortion_params` [k1, k2, k3, k4, p1, p2] spelt out as those keys (the list wins
    over the single keys of the same object, as in nerfstudio's dataparser)."""
    if "distortion_params" not in src:
        return src
    d = src["distortion_params"]
    if not isinstance(d, list) or len(d) != len(NERFSTUDIO_DIST):
        raise CaptureError(f"{what}: distortion_params must be a list [k1, k2, k3, k4, p1, p2], got {d!r}")
    return {**src, **dict(zip(NERFSTUDIO_DIST, d))}


def intrinsics_of(meta: dict, frame: dict, width: int, height: int, what: str) -> tuple[np.ndarray, np.ndarray | None]:
    """K (3,3) float64 and OpenCV distortion (k1, k2, p1, p2[, k3]) or None, from frame keys falling back to
    top-level keys. Focal lengths: from the frame's focal keys when it has any (a camera of its own), else from the
    top level's (FOCAL_KEYS, focal_length); an axis without one takes the other's. A distortion key the camera model
    does not have must be absent or zero, and the SIMPLE_ models have one focal length (fl_y absent or equal to
    fl_x). nerfstudio's k4 (its r⁸ radial term) has no OpenCV counterpart: a non-zero one is refused."""
    def get(k):
        v = _num(frame, k, what)
        return _num(meta, k, what) if v is None else v

    model = camera_model(meta, frame, what)
    meta, frame = with_distortion_params(meta, what), with_distortion_params(frame, what)
    check_angles(meta, what)
    check_angles(frame, what)
    own = any(k in frame for keys in FOCAL_KEYS.values() for k in keys)
    src = frame if own else meta
    fx, fy = focal_length(src, "x", width, what), focal_length(src, "y", height, what)
    if fx is None and fy is None:
        raise CaptureError(f"{what}: no focal length (none of {', '.join(FOCAL_KEYS['x'] + FOCAL_KEYS['y'])})")
    fx, fy = (fy if fx is None else fx), (fx if fy is None else fy)
    if model.startswith("SIMPLE_") and abs(fy - fx) > 1e-9 * abs(fx):
        raise CaptureError(f"{what}: camera_model {model} has one focal length, but fl_x = {fx} and fl_y = {fy}")
    cx, cy = get("cx"), get("cy")
    K = np.array([[fx, 0, width / 2 if cx is None else cx], [0, fy, height / 2 if cy is None else cy], [0, 0, 1]])
    if get("k4"):
        raise CaptureError(f"{what}: k4 = {get('k4')} (nerfstudio's r⁸ radial term) has no OpenCV counterpart; "
                           "undistort the images and drop it, or give an OPENCV model with k1, k2, p1, p2, k3")
    d = [get(k) or 0.0 for k in DIST_KEYS]
    extra = [f"{k} = {v}" for k, v in zip(DIST_KEYS, d) if v and k not in MODELS[model]]
    if extra:
        raise CaptureError(f"{what}: camera_model {model} has no {', '.join(e.split(' ')[0] for e in extra)} "
                           f"distortion, but the file gives {', '.join(extra)}")
    return K, (np.asarray(d) if any(d) else None)
