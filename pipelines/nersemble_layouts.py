"""Where NeRSemble's files are, in every layout users have (paths relative to `captures.root`):

v2 / benchmark   <id:03d>/calibration/camera_params.json  (+ color_calibration.json, v2 only)
                 <id:03d>/sequences/<seq>/images/cam_<serial>.mp4
                 <id:03d>/sequences/<seq>/alpha_maps/cam_<serial>.mp4             (benchmark: masks)
  extracted      <id:03d>/sequences/<seq>/images/cam_<serial>/<t:05d>.png|jpg
  VHAP frames    <id:03d>/sequences/<seq>/images/cam_<serial>_<t:06d>.jpg       (vhap/preprocess_video.py,
                 next to the videos; images_2/, images_4/ hold W//n × H//n copies; alpha_maps/cam_<serial>_<t>.jpg|png
                 are the full-resolution masks)
v1               <id>/camera_params.json, <id>/annotations/<seq>/color_correction/<serial>.npy
                 <id>/sequences/<seq>/frame_<t:05d>/images-2x-73fps/cam_<serial>.png  (+ alpha_map-73fps/ masks)
VHAP's v1 copy   camera_params/<id>/camera_params.json, color_correction/<id>/<serial>.npy, <id>/<seq>/images/... (VHAP frames)

A sequence is read in one layout: VHAP frames when the images folder has any, else the per-camera
folders / videos. `View`s say which files hold a camera's images and masks; decoding is here too.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from flame_fitting.core.readers import check_pixel_count, cv2_path
from flame_fitting.core.readers import read_mask as read_mask_file
from flame_fitting.formats.capture import CaptureError
from pipelines.common import CaptureImport
from pipelines.import_config import ImportConfig
from pipelines.views import image_file_size

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
VHAP_NAME = re.compile(r"cam_(.+)_(\d+)")


@dataclass
class Participant:
    subject: str
    params: Path                 # camera_params.json
    sequences: Path              # the folder holding the sequence folders
    version: int                 # 2 (calibration/ folder) or 1
    color_json: Path | None      # v2 color_calibration.json
    color_npy: Path | None       # v1: folder of <serial>.npy ("{seq}" in the path is the sequence)

    def color_npy_dir(self, seq: str) -> Path | None:
        return None if self.color_npy is None else Path(str(self.color_npy).replace("{seq}", seq))


@dataclass
class View:
    """One camera's images in one sequence: a video or {frame: file}; masks likewise (or none)."""

    video: Path | None = None
    frames: dict[int, Path] = field(default_factory=dict)
    alpha_video: Path | None = None
    alpha_frames: dict[int, Path] = field(default_factory=dict)
    downsample: int = 1               # VHAP images_<n>: the images are 1/n of the size K may refer to
    full_image: Path | None = None    # VHAP: a full-resolution (images/) frame of this camera, for the base size


def find_participants(root: Path) -> list[Participant]:
    """The participants under root (or root itself when it is a participant folder)."""
    def at(d: Path) -> Participant | None:
        if (d / "calibration" / "camera_params.json").is_file():
            return Participant(d.resolve().name, d / "calibration" / "camera_params.json", d / "sequences", 2,
                               d / "calibration" / "color_calibration.json", None)
        if (d / "camera_params.json").is_file():
            return Participant(d.resolve().name, d / "camera_params.json", d / "sequences", 1, None,
                               d / "annotations" / "{seq}" / "color_correction")
        return None

    if (p := at(root)) is not None:
        return [p]
    found = [p for d in sorted(root.iterdir()) if d.is_dir() and (p := at(d)) is not None] if root.is_dir() else []
    vhap = root / "camera_params"
    for d in sorted(vhap.iterdir()) if vhap.is_dir() and not found else []:
        if (d / "camera_params.json").is_file() and (root / d.name).is_dir():
            found.append(Participant(d.name, d / "camera_params.json", root / d.name, 1, None, root / "color_correction" / d.name))
    if not found:
        raise CaptureError(f"{root}: no NeRSemble participant folders (expected <id>/calibration/camera_params.json (v2), "
                           "<id>/camera_params.json (v1) or camera_params/<id>/camera_params.json (VHAP))")
    return found


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []


def vhap_frames(folder: Path) -> dict[str, dict[int, Path]]:
    """{serial: {t: file}} of VHAP's cam_<serial>_<t>.jpg|png files in folder."""
    out: dict[str, dict[int, Path]] = {}
    for p in _images(folder):
        if m := VHAP_NAME.fullmatch(p.stem):
            out.setdefault(m.group(1), {})[int(m.group(2))] = p
    return out


def list_views(seq_dir: Path, cfg: ImportConfig) -> tuple[dict[str, View], str]:
    """({serial: View}, layout name) of one sequence."""
    img_dir, n = seq_dir / "images", cfg.nersemble_images_downsample
    if img_dir.is_dir() or n != 1:
        full = vhap_frames(img_dir)
        frames = full if n == 1 else vhap_frames(seq_dir / f"images_{n}")
        if n != 1 and not frames:
            raise CaptureError(f"{seq_dir / f'images_{n}'}: no VHAP frames cam_<serial>_<t>.jpg "
                               f"(captures.nersemble_images_downsample is {n})")
        if frames:
            masks = vhap_frames(seq_dir / "alpha_maps") if cfg.masks else {}
            return {s: View(frames=fr, alpha_frames=masks.get(s, {}), downsample=n,
                            full_image=next(iter(full.get(s, {}).values()), None)) for s, fr in frames.items()}, \
                f"VHAP frames ({'images' if n == 1 else f'images_{n}'}/)"
        views: dict[str, View] = {}
        for p in sorted(img_dir.glob("cam_*")):
            serial = p.name[4:] if p.is_dir() else p.stem[4:]
            if p.is_dir() and (fr := {int(q.stem): q for q in _images(p) if q.stem.isdigit()}):
                views[serial] = View(frames=fr)
            elif p.suffix.lower() == ".mp4" and serial not in views:
                alpha = seq_dir / "alpha_maps" / f"cam_{serial}.mp4"
                views[serial] = View(video=p, alpha_video=alpha if cfg.masks and alpha.is_file() else None)
        return views, "videos / frame folders (images/)"
    frame_dirs = {int(m.group(1)): d for d in seq_dir.iterdir() if d.is_dir() and (m := re.fullmatch(r"frame_(\d+)", d.name))}
    folder = pick_folder(seq_dir, frame_dirs.values(), "images-*", cfg.nersemble_image_folder, "captures.nersemble_image_folder")
    if folder is None:
        return {}, "v1 frame folders"
    alphas = sorted({p.name for d in frame_dirs.values() for p in d.glob("alpha_map*") if p.is_dir()})
    same_rate = [a for a in alphas if a.rsplit("-", 1)[-1] == folder.rsplit("-", 1)[-1]]
    alpha = alphas[0] if len(alphas) == 1 else same_rate[0] if len(same_rate) == 1 else None
    views = {}
    for t, d in sorted(frame_dirs.items()):
        for p in _images(d / folder):
            if p.stem.startswith("cam_"):
                v = views.setdefault(p.stem[4:], View())
                v.frames[t] = p
                if cfg.masks and alpha is not None:
                    m = [q for q in (d / alpha / f"{p.stem}{e}" for e in (".png", ".jpg")) if q.is_file()]
                    if m:
                        v.alpha_frames[t] = m[0]
    return views, f"v1 frame folders ({folder}/" + (f", masks {alpha}/)" if alpha and cfg.masks else ")")


def pick_folder(seq_dir: Path, frame_dirs, pattern: str, chosen: str | None, option: str) -> str | None:
    names = sorted({p.name for d in frame_dirs for p in d.glob(pattern) if p.is_dir()})
    if chosen is not None or len(names) <= 1:
        return chosen if chosen is not None else (names[0] if names else None)
    raise CaptureError(f"{seq_dir}: several image folders {names}; set {option}")


# --- decoding ---------------------------------------------------------------------------------
def declared_video_size(path: Path, cap=None) -> tuple[int, int]:
    """(width, height) a video declares for its frames (FFmpeg reads it from the stream's headers: nothing is
    decoded), (0, 0) when it is not a readable video; CaptureError naming the file when that is more pixels than
    MAX_IMAGE_PIXELS (a 1.4 MB MJPEG AVI can declare 15000×12000 frames: 2.6 GB to decode one, 180 MP stored).
    Call it before decoding frames of an untrusted video; `cap`: an open cv2.VideoCapture of it (else opened here)."""
    own = cap is None
    cap = cv2.VideoCapture(cv2_path(path, CaptureError)) if own else cap
    size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))) if cap.isOpened() else (0, 0)
    if own:
        cap.release()
    check_pixel_count(size, path, CaptureError, kind="video")
    return size


def video_frames(imp: CaptureImport, path: Path, frames: list[int]):
    """Yield (t, rgb (H,W,3) uint8) of the selected frames, decoding sequentially; missing ones are recorded, and so
    is a video declaring more than MAX_IMAGE_PIXELS per frame, before any frame is decoded (a later frame whose own
    header says more is decoded by FFmpeg within its own 268 MP limit; OpenCV 4.11 returns it at the declared size)."""
    try:
        cap = cv2.VideoCapture(cv2_path(path, CaptureError))
    except CaptureError as e:  # a file name OpenCV cannot take
        imp.skip(imp.rel(path), str(e))
        return
    if not cap.isOpened():
        imp.skip(imp.rel(path), "not a readable video")
        return
    wanted, t = set(frames), 0
    try:
        try:
            declared_video_size(path, cap)
        except CaptureError as e:
            imp.skip(imp.rel(path), str(e).removeprefix(f"{path}: "))
            return
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


MAX_VIDEO_FRAMES = 1_000_000  # a NeRSemble take is minutes at 73 fps (~10^4 frames); a container can claim 2^31


def video_length(path: Path) -> int:
    """The frame count a video's container declares; CaptureError when it is beyond any real take (a few bytes of
    AVI header can declare 2^31 frames: the reader would build the list of them)."""
    cap = cv2.VideoCapture(cv2_path(path, CaptureError))
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
    cap.release()
    if n > MAX_VIDEO_FRAMES:
        raise CaptureError(f"{path}: the video declares {n} frames, more than a capture holds ({MAX_VIDEO_FRAMES}); "
                           "a damaged or hostile file")
    return n


def stored_size(view: View) -> tuple[int, int]:
    """(width, height) of a camera's stored images: the video's declared frame size or the first image's header
    (nothing decoded; CaptureError beyond MAX_IMAGE_PIXELS)."""
    if view.video is not None:
        size = declared_video_size(view.video)
        if min(size) <= 0:
            raise CaptureError(f"{view.video}: not a readable video")
        return size
    return image_file_size(next(iter(view.frames.values())))


def base_size(view: View, stored: tuple[int, int]) -> tuple[int, int]:
    """The size the view's images have at scale 1: the `stored` size (`stored_size`), or VHAP's full-resolution
    frame size (its header)."""
    if view.downsample == 1:
        return stored
    if view.full_image is not None:
        return image_file_size(view.full_image)
    return stored[0] * view.downsample, stored[1] * view.downsample


def read_mask(path: Path) -> np.ndarray:
    """(H,W) uint8 mask from an alpha-map image file (its first channel)."""
    m = read_mask_file(path, cv2.IMREAD_GRAYSCALE, error=CaptureError)
    if m is None:
        raise CaptureError(f"{path}: not a readable alpha map")
    return m
