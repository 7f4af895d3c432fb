"""NeRSemble (v2 and v1) -> canonical capture. `captures.root` = the folder holding the participant
folders (or one participant folder).

v2:  <id:03d>/calibration/camera_params.json   {"world_2_cam": {serial: 4×4 world→camera, OpenCV},
                                                "intrinsics": 3×3 shared | {serial: 3×3}, "width"?, "height"?}
     <id:03d>/calibration/color_calibration.json  {serial: 3×3 | 3×4 colour matrix}   (optional)
     <id:03d>/sequences/<seq>/images/cam_<serial>.mp4               (decoded with cv2.VideoCapture)
     or <id:03d>/sequences/<seq>/images/cam_<serial>/<frame:05d>.png|jpg   (already extracted; preferred)
v1:  <id>/camera_params.json (same keys), <id>/color_calibration.json (optional)
     <id>/sequences/<seq>/frame_<t:05d>/images-*/cam_<serial>.png|jpg
     (the one images-* folder present, or `captures.nersemble_image_folder`)
Subject = the participant folder name, sequence = the sequence folder name, camera = the serial,
frame = the timestep (video frame index / t). The world is metric and OpenCV, so poses are used as is.
Intrinsics refer to the full resolution: `width`/`height` from camera_params.json (an int, or a
{serial: int} mapping) else `captures.nersemble_calibrated_size` (default 2200×3208). The stored
images' actual size is read from the video / first image; a scaled copy (e.g. images-2x) gets K
scaled by the size ratio, any other size (different aspect ratio) is refused for that camera.
Colour calibration (Cheung 2004, as nersemble-data's `correct_color`): sRGB -> linear, rgb' = M @ [r,g,b(,1)],
-> sRGB, rounded to uint8. Not supported: alpha maps, background images (BACKGROUND sequence), FLAME
tracking files, audio.
"""
from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np

from flame_fitting.formats.capture import CaptureError
from pipelines.common import (CaptureImport, ImportConfig, ImportReport, as_matrix, load_json, read_image_file, scale_to_image,
                              select_frames, select_names)

_X = np.arange(256) / 255.0
_SRGB_TO_LINEAR = np.where(_X <= 0.04045, _X / 12.92, ((_X + 0.055) / 1.055) ** 2.4).astype(np.float32)  # (256,)


def correct_color(rgb: np.ndarray, ccm: np.ndarray) -> np.ndarray:
    """(H,W,3) uint8 sRGB, ccm (3,3)|(3,4) applied in linear RGB -> (H,W,3) uint8 sRGB."""
    lin = _SRGB_TO_LINEAR[rgb].reshape(-1, 3)
    M = np.asarray(ccm, np.float32)
    out = lin @ M[:, :3].T + (M[:, 3] if M.shape[1] == 4 else 0.0)
    out = np.where(out <= 0.0031308, 12.92 * out, 1.055 * np.maximum(out, 0.0031308) ** (1 / 2.4) - 0.055)
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8).reshape(rgb.shape)


def find_participants(root: Path) -> list[tuple[str, Path, int]]:
    """[(subject, folder, version)] under root (or root itself when it is a participant folder)."""
    def version(d: Path) -> int | None:
        return 2 if (d / "calibration" / "camera_params.json").is_file() else 1 if (d / "camera_params.json").is_file() else None

    if version(root):
        return [(root.resolve().name, root, version(root))]
    found = [(d.name, d, version(d)) for d in sorted(root.iterdir()) if d.is_dir() and version(d)] if root.is_dir() else []
    if not found:
        raise CaptureError(f"{root}: no NeRSemble participant folders (expected <id>/calibration/camera_params.json (v2) "
                           "or <id>/camera_params.json (v1))")
    return found


def calibrated_sizes(params: dict, serials, cfg: ImportConfig, path: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for s in serials:
        wh = []
        for key, default in (("width", cfg.nersemble_calibrated_size[0]), ("height", cfg.nersemble_calibrated_size[1])):
            v = params.get(key, default)
            v = v.get(s, default) if isinstance(v, dict) else v
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
                raise CaptureError(f"{path}: {key} must be a positive number, got {v!r}")
            wh.append(int(v))
        out[s] = tuple(wh)
    return out


def list_views(seq_dir: Path, version: int, cfg: ImportConfig) -> dict[str, dict]:
    """{serial: {"video": path} | {"frames": {t: path}}} of one sequence."""
    views: dict[str, dict] = {}
    if version == 2:
        img_dir = seq_dir / "images"
        for p in sorted(img_dir.glob("cam_*")) if img_dir.is_dir() else []:
            serial = p.stem[4:] if p.is_file() else p.name[4:]
            if p.is_dir():
                fr = {int(q.stem): q for q in sorted(p.iterdir()) if q.suffix.lower() in (".png", ".jpg", ".jpeg") and q.stem.isdigit()}
                if fr:
                    views[serial] = {"frames": fr}
            elif p.suffix.lower() == ".mp4" and serial not in views:
                views[serial] = {"video": p}
        return views
    frame_dirs = {int(m.group(1)): d for d in seq_dir.iterdir() if d.is_dir() and (m := re.fullmatch(r"frame_(\d+)", d.name))}
    names = sorted({p.name for d in frame_dirs.values() for p in d.glob("images-*") if p.is_dir()})
    if cfg.nersemble_image_folder is not None:
        folder = cfg.nersemble_image_folder
    elif len(names) == 1:
        folder = names[0]
    elif not names:
        return views
    else:
        raise CaptureError(f"{seq_dir}: several image folders {names}; set captures.nersemble_image_folder")
    for t, d in sorted(frame_dirs.items()):
        for p in sorted((d / folder).glob("cam_*")):
            if p.suffix.lower() in (".png", ".jpg", ".jpeg"):
                views.setdefault(p.stem[4:], {"frames": {}})["frames"][t] = p
    return views


def video_frames(imp: CaptureImport, path: Path, frames: list[int]):
    """Yield (t, rgb) of the selected frames, decoding sequentially; missing ones are recorded."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        imp.skip(imp.rel(path), "not a readable video")
        return
    wanted, t = set(frames), 0
    try:
        while wanted and t <= max(wanted):
            if not cap.grab():
                break
            if t in wanted:
                ok, bgr = cap.retrieve()
                if not ok:
                    break
                wanted.discard(t)
                yield t, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            t += 1
    finally:
        cap.release()
    if wanted:
        imp.skip(imp.rel(path), f"video has only {t} frames; selected frames {sorted(wanted)} are missing")


def video_length(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
    cap.release()
    return n


def first_size(view: dict) -> tuple[int, int]:
    """(width, height) of a camera's stored images: the video's frame size or the first image's."""
    if "video" in view:
        cap = cv2.VideoCapture(str(view["video"]))
        size = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        cap.release()
        if min(size) <= 0:
            raise CaptureError(f"{view['video']}: not a readable video")
        return size
    rgb, _ = read_image_file(next(iter(view["frames"].values())))
    return rgb.shape[1], rgb.shape[0]


def load_color_calibration(path: Path) -> dict[str, np.ndarray]:
    """{serial: (3,3)|(3,4) float64} from color_calibration.json."""
    raw = load_json(path)
    if not isinstance(raw, dict):
        raise CaptureError(f"{path}: expected {{serial: 3×3 or 3×4 matrix}}")
    out = {}
    for s, m in raw.items():
        cols = len(m[0]) if isinstance(m, list) and m and isinstance(m[0], list) else 3
        out[s] = as_matrix(m, (3, 4) if cols == 4 else (3, 3), f"{path} [camera {s}]")
    return out


def image_items(imp: CaptureImport, files: dict[int, Path], frames: list[int], where: str):
    """Yield (t, rgb, source file, key=None) of the selected frames of one camera's image folder."""
    for t in frames:
        if t not in files:
            imp.skip(f"{where} [frame {t}]", "selected frame has no image for this camera")
            continue
        try:
            rgb, _ = read_image_file(files[t])
        except CaptureError as e:
            imp.skip(imp.rel(files[t]), str(e))
            continue
        yield t, rgb, files[t], None


class Calibration:
    """camera_params.json (+ color_calibration.json) of one participant."""

    def __init__(self, imp: CaptureImport, cal_dir: Path):
        self.path = cal_dir / "camera_params.json"
        params = load_json(self.path)
        if not isinstance(params, dict) or not isinstance(params.get("world_2_cam"), dict) or "intrinsics" not in params:
            raise CaptureError(f"{self.path}: expected keys 'world_2_cam' {{serial: 4×4}} and 'intrinsics'")
        self.w2c, self.intr = params["world_2_cam"], params["intrinsics"]
        self.sizes = calibrated_sizes(params, self.w2c, imp.cfg, self.path)
        self.ccm_path = cal_dir / "color_calibration.json"
        self.ccms = load_color_calibration(self.ccm_path) if imp.cfg.color_calibration and self.ccm_path.is_file() else {}

    def camera(self, imp: CaptureImport, serial: str, view: dict, where: str):
        """The camera of `serial` at its stored image size, or None after recording why not."""
        if serial not in self.w2c:
            imp.skip(where, f"camera {serial} is not in {imp.rel(self.path)}")
            return None
        K = self.intr.get(serial) if isinstance(self.intr, dict) else self.intr
        if K is None:
            imp.skip(where, f"no intrinsics for camera {serial} in {imp.rel(self.path)}")
            return None
        cam = imp.camera(serial, K, self.w2c[serial], *self.sizes[serial], None, imp.rel(self.path))
        if cam is None:
            return None
        try:
            return scale_to_image(cam, *first_size(view), where)
        except CaptureError as e:
            imp.skip(where, str(e))
            return None


def import_participant(imp: CaptureImport, subject: str, pdir: Path, version: int) -> None:
    cfg = imp.cfg
    cal = Calibration(imp, pdir / "calibration" if version == 2 else pdir)
    if cal.ccms:
        imp.info.setdefault("color_calibration", []).append(imp.rel(cal.ccm_path))
    seq_root = pdir / "sequences"
    seqs = select_names([d.name for d in seq_root.iterdir() if d.is_dir()] if seq_root.is_dir() else [], cfg.sequences)
    for seq in seqs:
        views = list_views(seq_root / seq, version, cfg)
        if not views:
            imp.skip(imp.rel(seq_root / seq), "no camera images or videos in this sequence")
            continue
        cams, wheres = {}, {}
        for serial in select_names(views, cfg.cameras):
            wheres[serial] = f"{imp.rel(views[serial].get('video') or seq_root / seq)} [camera {serial}]"
            cam = cal.camera(imp, serial, views[serial], wheres[serial])
            if cam is None:
                continue
            cams[serial] = cam
            if (cam.width, cam.height) != cal.sizes[serial]:
                imp.info.setdefault("intrinsics_scaled", {})[f"{subject}/{seq}/{serial}"] = cam.width / cal.sizes[serial][0]
            if cal.ccms and serial not in cal.ccms:
                imp.warn(f"{imp.rel(cal.ccm_path)}: no colour matrix for camera {serial}; its images are not colour corrected")
        imp.set_cameras(subject, seq, cams, imp.rel(cal.path))
        available = {t for v in views.values() for t in v.get("frames", {})}
        for v in views.values():
            if "video" in v:
                available |= set(range(video_length(v["video"])))
        frames = select_frames(available, cfg)
        for serial in cams:
            view, ccm = views[serial], cal.ccms.get(serial)
            if "video" in view:
                items = ((t, rgb, view["video"], f"frame {t}") for t, rgb in video_frames(imp, view["video"], frames))
            else:
                items = image_items(imp, view["frames"], frames, wheres[serial])
            for t, rgb, src, key in items:
                rgb = correct_color(rgb, ccm) if ccm is not None else rgb
                imp.add(subject, seq, t, serial, rgb, src, key=key, whole_file=key is None)


def wanted_subject(subject: str, wanted: list[str] | None) -> bool:
    """Participant ids match with or without zero padding ('017' == '17')."""
    return wanted is None or subject.lstrip("0") in {str(w).lstrip("0") for w in wanted}


def import_capture(root_in: Path | str, out: Path | str, cfg: ImportConfig) -> ImportReport:
    root_in = Path(root_in)
    participants = find_participants(root_in)
    with CaptureImport("nersemble", root_in, out, cfg) as imp:
        for subject, pdir, version in participants:
            if not wanted_subject(subject, cfg.subjects):
                continue
            imp.info.setdefault("versions", {})[subject] = version
            try:
                import_participant(imp, subject, pdir, version)
            except CaptureError as e:
                imp.skip(imp.rel(pdir), f"participant {subject} not (fully) imported: {e}")
    return imp.report
