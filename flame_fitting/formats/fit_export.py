"""What the exports of fits share (`export_vhap`, `export_nerfstudio`): the fitted frames of a capture matched
to their images, masks and cameras, and our OpenCV cameras in OpenGL's camera→world form.

`load_export_input(capture, fits, cameras)` reads a canonical capture (formats.capture) and the fit stage's
folder (formats.fits: `<fits>/<subject>/<sequence>/fit.npz` + `cameras.json`) and returns one
`ExportSequence` per fitted sequence: its cameras (the fit's refined ones, or the capture's with
`cameras="capture"`), and per exported frame the FLAME parameters in our names (shape (S,), expr (E,),
global_orient / transl / neck_pose / jaw_pose (3,), eye_pose (6,) = [left | right]; FLAME frame, world
coordinates, metres), the fitted vertices (V, 3) and the views (camera, image file, mask file or None).
Frames whose fit is not `ok` (diverged) are left out and listed in `skipped`; so is a frame whose image or mask file
resolves (through a symbolic link) outside the capture folder, with a warning on stderr naming the file, unless
`follow_symlinks` (a hand-made capture could otherwise copy /etc/passwd or a private image into the export; links
into the DVC cache of a repository holding the capture are followed, as the importers do: core.names.outside_target).

Fits that do not match the capture (a sequence, frame or camera the capture does not have, a camera of another
size, a missing or malformed array) raise ExportError naming the file and what is wrong: the export would
otherwise pair parameters with the wrong images.

Camera conventions: ours is OpenCV (x right, y down, z forward; world_to_cam; pixel centres at +0.5). OpenGL /
Blender / NeRF camera→world: c2w_gl = inverse(world_to_cam) @ diag(1, -1, -1, 1) (geometry.camera
`opengl_cam_to_world`; the inverse is `world_to_cam_from_opengl`). Both exports need pinhole cameras without
distortion (capture images are undistorted at import), else ExportError. Neither format has skew: `Camera` refuses a
skew beyond 1e-6 of fx (geometry/camera_checks.py), and what it lets through (rounding of a zero) is not written.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flame_fitting.core.errors import GeofaceError
from flame_fitting.core.names import outside_target, terminal_safe
from flame_fitting.formats.capture import CaptureError, load_capture
from flame_fitting.formats.capture_checks import load_cameras
from flame_fitting.formats.fits import fit_folders
from flame_fitting.geometry.camera import Camera

PARAMS = {"shape": None, "expr": None, "global_orient": 3, "transl": 3, "neck_pose": 3, "jaw_pose": 3, "eye_pose": 6}
CAMERA_SOURCES = ("fit", "capture")


class ExportError(GeofaceError, ValueError):
    """Export input the exporter refuses (fits that do not match the capture, an unsupported camera)."""


@dataclass
class View:
    camera: str
    image: Path              # the capture's image file
    mask: Path | None        # the capture's mask file (uint8, 255 = foreground), None when the image has none


@dataclass
class ExportFrame:
    frame: int                        # the capture's frame number
    params: dict[str, np.ndarray]     # PARAMS names -> float32 arrays (shapes in the module docstring)
    vertices: np.ndarray              # (V, 3) float32 world, metres (the fit's)
    views: list[View]                 # sorted by camera name


@dataclass
class ExportSequence:
    subject: str
    sequence: str
    cameras: dict[str, Camera]        # every camera of the sequence, by name
    frames: list[ExportFrame]
    skipped: list[dict] = field(default_factory=list)  # {"frame", "reason"} of fitted frames left out

    @property
    def camera_names(self) -> list[str]:
        return sorted(self.cameras)


def check_pinhole(cam: Camera, where: str) -> None:
    """ExportError unless `cam` is a pinhole camera without distortion (what both formats can say; skew: docstring)."""
    if cam.dist is not None:
        raise ExportError(f"{where}: camera {cam.name!r} has lens distortion {cam.dist.tolist()}; the export formats "
                          f"describe undistorted pinhole cameras (import the capture with undistort: true)")


def _sequence_fit(path: Path) -> dict[str, np.ndarray]:
    """The arrays of one fit.npz, checked: frame (T,), ok (T,), PARAMS (T, w), vertices (T, V, 3)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 - zip / format errors come in several types
        raise ExportError(f"{path}: unreadable fit file ({type(e).__name__}: {e})") from None
    missing = [k for k in ("frame", "ok", "vertices", *PARAMS) if k not in arrays]
    if missing:
        raise ExportError(f"{path}: missing arrays {missing} (is it the fit stage's fit.npz?)")
    T = arrays["frame"].shape[0] if arrays["frame"].ndim == 1 else -1
    for k, width in (("ok", None), *PARAMS.items(), ("vertices", None)):
        a = arrays[k]
        shape_ok = (a.ndim == 1 if k == "ok" else a.ndim == 3 and a.shape[2] == 3 if k == "vertices"
                    else a.ndim == 2 and (width is None or a.shape[1] == width))
        if T < 0 or not shape_ok or a.shape[0] != T:
            tail = "" if k == "ok" else ", V, 3" if k == "vertices" else f", {width or 'n'}"
            raise ExportError(f"{path}: array {k!r} has shape {a.shape}, expected (T{tail}) with T frames "
                              f"as 'frame' {arrays['frame'].shape}")
        if k != "ok" and not np.isfinite(a).all():
            raise ExportError(f"{path}: array {k!r} has non-finite values")
    return arrays


def _fit_cameras(folder: Path, capture_cams: dict[str, Camera], used: set[str]) -> dict[str, Camera]:
    """The fit's cameras.json, which must name the capture's cameras with the same image sizes."""
    path = folder / "cameras.json"
    try:
        cams = load_cameras(path)
    except CaptureError as e:
        raise ExportError(str(e)) from None
    absent = sorted(used - set(cams))
    if absent:
        raise ExportError(f"{path}: no camera {absent[0]!r} that the capture's images use (the fits are of another "
                          f"capture?)")
    for name in sorted(used):
        a, b = cams[name], capture_cams[name]
        if (a.width, a.height) != (b.width, b.height):
            raise ExportError(f"{path}: camera {name!r} is {a.width}×{a.height}, the capture's is "
                              f"{b.width}×{b.height} (the fits are of another capture?)")
    return cams


def linked_from_outside(views: list[View], root: Path) -> str | None:
    """Why a frame with these views may not be exported (None when it may): one of its files is a symbolic link that
    resolves outside the capture folder `root`."""
    for f in (f for v in views for f in (v.image, v.mask) if f is not None):
        if (real := outside_target(f, root)) is not None:
            return (f"{f}: a symbolic link to {real}, outside the capture {root}; frame skipped (--follow-symlinks "
                    f"when the links are your own)")
    return None


def load_export_input(capture_root: Path | str, fits_root: Path | str, cameras: str = "fit",
                      follow_symlinks: bool = False) -> list[ExportSequence]:
    """The fitted sequences of the capture at `capture_root` with the fits at `fits_root` (module docstring).
    `cameras`: "fit" (the fit's refined cameras.json, consistent with the parameters) or "capture".
    `follow_symlinks`: export files that symbolic links resolve to outside the capture (else their frame is skipped)."""
    if cameras not in CAMERA_SOURCES:
        raise ExportError(f"cameras must be one of {CAMERA_SOURCES}, got {cameras!r}")
    fits_root = Path(fits_root)
    try:
        cap = load_capture(capture_root)
    except CaptureError as e:
        raise ExportError(str(e)) from None
    folders = fit_folders(fits_root)
    if not folders:
        hint = f"; did you mean {fits_root / 'fits'}?" if fit_folders(fits_root / "fits") else ""
        raise ExportError(f"{fits_root}: no <subject>/<sequence>/fit.npz (is it the fit stage's output folder?){hint}")
    known = set(cap.sequences())
    m = cap.manifest
    out = []
    for folder in folders:
        subject, sequence = folder.parent.name, folder.name
        npz = folder / "fit.npz"
        if (subject, sequence) not in known:
            raise ExportError(f"{npz}: sequence {subject}/{sequence} is not in the capture {cap.root} (the fits are of "
                              f"another capture?)")
        arrays = _sequence_fit(npz)
        rows = m[(m.subject == subject) & (m.sequence == sequence)]
        cap_cams = cap.cameras(subject, sequence)
        cams = _fit_cameras(folder, cap_cams, set(rows.camera)) if cameras == "fit" else cap_cams
        for name in sorted(set(rows.camera)):
            check_pinhole(cams[name], str(folder / "cameras.json") if cameras == "fit" else
                          str(cap.root / subject / sequence / "cameras.json"))
        by_frame = {int(f): g.sort_values("camera") for f, g in rows.groupby("frame")}
        seq = ExportSequence(subject, sequence, {n: cams[n] for n in sorted(set(rows.camera))}, [])
        n_vertices = arrays["vertices"].shape[1]
        for i, frame in enumerate(arrays["frame"].tolist()):
            if frame not in by_frame:
                raise ExportError(f"{npz}: frame {frame} is not in the capture's {subject}/{sequence} (frames "
                                  f"{sorted(by_frame)[:5]}...; the fits are of another capture?)")
            if not bool(arrays["ok"][i]):
                seq.skipped.append({"frame": int(frame), "reason": "fit not ok (diverged; see status.json)"})
                continue
            params = {k: arrays[k][i].astype(np.float32) for k in PARAMS}
            views = [View(r.camera, cap.root / r.path,
                          cap.root / r.mask_path if isinstance(getattr(r, "mask_path", None), str) else None)
                     for r in by_frame[frame].itertuples()]
            if not follow_symlinks and (why := linked_from_outside(views, cap.root)):
                print(f"warning: {terminal_safe(why)}", file=sys.stderr)
                seq.skipped.append({"frame": int(frame), "reason": why})
                continue
            seq.frames.append(ExportFrame(int(frame), params, arrays["vertices"][i].astype(np.float32), views))
        if n_vertices == 0 and seq.frames:
            raise ExportError(f"{npz}: array 'vertices' has no vertices")
        out.append(seq)
    return out

