"""NeRSemble (nersemble-data v2, the benchmark release, v1, VHAP's extracted frames) -> canonical capture.
`captures.root` = the folder holding the participant folders (or one participant folder). The layouts are
listed in `pipelines.nersemble_layouts`; the intrinsics-size rule and the colour corrections in
`pipelines.nersemble_cameras`; docs/sources.md has the user's view.

Subject = the participant folder name, sequence = the sequence folder name, camera = the serial,
frame = the timestep (video frame index / t / VHAP's frame number). The world is metric and OpenCV,
so poses are used as is. Per camera the size K refers to is decided from the data (or
`nersemble_intrinsics_size`), K is scaled to the stored images, and the decision is printed and recorded
in capture.json["intrinsics"]. Masks: the benchmark's alpha_maps/*.mp4, v1's alpha_map-*/ and VHAP's
alpha_maps/ frames (resized to the image when they are a scaled copy). Colour: v2 color_calibration.json
(linear light, Cheung 2004 polynomial terms), v1 annotations/<seq>/color_correction/<serial>.npy (sRGB
affine). A calibrated camera without images in a sequence is a warning (capture.json["missing_cameras"]), an
error with `strict`.
Not supported: background images (the BACKGROUND sequence is left out, with a warning), FLAME tracking files,
point clouds, audio.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import cv2
import numpy as np

from flame_fitting.core.names import terminal_safe
from flame_fitting.formats.capture import CaptureError
from pipelines.common import CaptureImport
from pipelines.import_config import ImportConfig, ImportReport, load_json, select_frames, select_names
from pipelines.views import read_image_file
from pipelines.nersemble_cameras import (OPTION, correct_color, correct_color_affine, intrinsics_size, load_color_calibration,
                                         load_color_correction, same_aspect)
from pipelines.nersemble_layouts import (Participant, View, base_size, declared_video_size, find_participants, list_views,
                                         read_mask, stored_size, video_frames, video_length)

__all__ = ["correct_color", "correct_color_affine", "find_participants", "import_capture"]


def size_keys(params: dict, serial: str, path: str) -> tuple[int, int] | None:
    """(width, height) from camera_params.json (an int or {serial: int} each), or None when both are absent."""
    wh = [params.get(k).get(serial) if isinstance(params.get(k), dict) else params.get(k) for k in ("width", "height")]
    if wh == [None, None]:
        return None
    for key, v in zip(("width", "height"), wh):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf:
            raise CaptureError(f"{path}: {key} of camera {serial} must be a positive finite number, got {v!r}")
    return int(wh[0]), int(wh[1])


class Calibration:
    """camera_params.json (+ v2 color_calibration.json) of one participant."""

    def __init__(self, imp: CaptureImport, part: Participant):
        self.path, self.params = part.params, load_json(part.params)
        if not isinstance(self.params, dict) or not isinstance(self.params.get("world_2_cam"), dict) or "intrinsics" not in self.params:
            raise CaptureError(f"{self.path}: expected keys 'world_2_cam' {{serial: 4×4}} and 'intrinsics'")
        self.w2c, self.intr = self.params["world_2_cam"], self.params["intrinsics"]
        self.ccm_path = part.color_json
        use = imp.cfg.color_calibration and self.ccm_path is not None and self.ccm_path.is_file()
        self.ccms, self.bad_ccms = load_color_calibration(self.ccm_path) if use else ({}, {})

    def camera(self, imp: CaptureImport, serial: str, view: View, where: str, key: str):
        """The camera of `serial` at its stored image size, or None after recording why not."""
        if serial not in self.w2c:
            imp.skip(where, f"camera {serial} is not in {imp.rel(self.path)}")
            return None
        K = self.intr.get(serial) if isinstance(self.intr, dict) else self.intr
        if K is None:
            imp.skip(where, f"no intrinsics for camera {serial} in {imp.rel(self.path)}")
            return None
        try:
            K = np.asarray(K, np.float64)
            if K.shape != (3, 3):
                raise CaptureError(f"{imp.rel(self.path)}: intrinsics of camera {serial} must be 3×3, got shape {K.shape}")
            stored = stored_size(view)  # headers only: the first image is decoded once, when it is imported
            size = base_size(view, stored)
            if view.alpha_video is not None:  # its masks are decoded with the images: refuse a huge one up front
                declared_video_size(view.alpha_video)
            what = f"{imp.rel(self.path)} [camera {serial}] intrinsics"
            keys = size_keys(self.params, serial, imp.rel(self.path))
            ref, rule = intrinsics_size(K, size, imp.cfg.nersemble_intrinsics_size, keys, what)
            if ref != stored and not same_aspect(ref, stored):
                raise CaptureError(f"image is {stored[0]}×{stored[1]}, the intrinsics are for {ref[0]}×{ref[1]} ({rule}): "
                                   f"not the same aspect ratio, so not a scaled copy; set {OPTION}")
        except (CaptureError, ValueError, TypeError) as e:
            imp.skip(where, str(e))
            return None
        cam = imp.camera(serial, K, self.w2c[serial], *ref, None, imp.rel(self.path))
        if cam is None:
            return None
        scale = (stored[0] / ref[0], stored[1] / ref[1])
        imp.info.setdefault("intrinsics", {})[key] = {"size": list(ref), "image_size": list(stored), "scale": list(scale), "rule": rule}
        if ref != stored:
            imp.info.setdefault("intrinsics_scaled", {})[key] = scale[0]
        return cam.resized(*stored) if ref != stored else cam


def report_intrinsics(imp: CaptureImport, subject: str, seq: str, serials) -> None:
    """Print one line per distinct intrinsics decision of a sequence (also recorded in capture.json)."""
    groups: dict[tuple, list[str]] = {}
    for s in serials:
        d = imp.info["intrinsics"][f"{subject}/{seq}/{s}"]
        groups.setdefault((tuple(d["size"]), tuple(d["image_size"]), d["rule"].split(" (")[0]), []).append(s)
    for (ref, img, rule), ss in groups.items():
        what = "used as is" if ref == img else f"scaled by {img[0] / ref[0]:.4g} × {img[1] / ref[1]:.4g}"
        print(terminal_safe(f"nersemble {subject}/{seq}: {len(ss)} camera(s): intrinsics are for {ref[0]}×{ref[1]} "
                            f"({rule}); images are {img[0]}×{img[1]}: K {what}"), file=sys.stderr)


def v1_colour(imp: CaptureImport, part: Participant, seq: str, serials) -> dict[str, np.ndarray]:
    """{serial: affine (3|4,4)} from v1's color_correction/<serial>.npy; unreadable files skip their camera (None)."""
    folder = part.color_npy_dir(seq)
    if not imp.cfg.color_calibration or folder is None or not folder.is_dir():
        return {}
    imp.info.setdefault("color_correction", []).append(imp.rel(folder))
    out = {}
    for s in serials:
        p = folder / f"{s}.npy"
        if not p.is_file():
            imp.warn(f"{imp.rel(folder)}: no colour correction {s}.npy for camera {s}; its images are not colour corrected")
            continue
        try:
            out[s] = load_color_correction(p)
        except CaptureError as e:
            imp.skip(imp.rel(p), str(e).removeprefix(f"{p}: "))
            out[s] = None
    return out


def items_of(imp: CaptureImport, view: View, frames: list[int], where: str):
    """Yield (t, rgb, source file, key, mask or None) of the selected frames of one camera."""
    if view.video is not None:
        items = ((t, rgb, view.video, f"frame {t}") for t, rgb in video_frames(imp, view.video, frames))
    else:
        items = image_items(imp, view.frames, frames, where)
    masks = iter(())
    if view.alpha_video is not None:
        masks = ((t, rgb[..., 0].copy()) for t, rgb in video_frames(imp, view.alpha_video, frames))
    cur = None if view.alpha_video is None else next(masks, None)
    for t, rgb, src, key in items:
        mask = None
        if view.alpha_video is not None:
            while cur is not None and cur[0] < t:
                cur = next(masks, None)
            mask = cur[1] if cur is not None and cur[0] == t else None
        elif t in view.alpha_frames:
            try:
                mask = read_mask(view.alpha_frames[t])
            except CaptureError as e:
                imp.skip(imp.rel(view.alpha_frames[t]), str(e).split(": ", 1)[-1])
        elif view.alpha_frames:
            imp.skip(f"{where} [frame {t}] (mask)", "no alpha map for this frame; imported without a mask")
        if mask is not None and mask.shape != rgb.shape[:2] and same_aspect(mask.shape[::-1], rgb.shape[1::-1]):
            mask = cv2.resize(mask, rgb.shape[1::-1], interpolation=cv2.INTER_LINEAR)
        yield t, rgb, src, key, mask


def image_items(imp: CaptureImport, files: dict[int, Path], frames: list[int], where: str):
    """Yield (t, rgb, source file, key=None) of the selected frames of one camera's image files."""
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


def skip_unread(imp: CaptureImport, view: View, frames: list[int], why: str) -> None:
    """Record the files of a refused camera's selected frames (its video, or each frame's image) as skipped for `why`,
    without opening them: neither they nor its masks are decoded."""
    if view.video is not None:
        imp.skip(imp.rel(view.video), why)
    for t in frames:
        if t in view.frames:
            imp.skip(imp.rel(view.frames[t]), why)


def import_sequence(imp: CaptureImport, part: Participant, cal: Calibration, subject: str, seq: str) -> None:
    cfg, seq_dir = imp.cfg, part.sequences / seq
    views, layout = list_views(seq_dir, cfg)
    if not views:
        imp.skip(imp.rel(seq_dir), "no camera images or videos in this sequence")
        return
    imp.info.setdefault("layouts", {})[f"{subject}/{seq}"] = layout
    missing = [s for s in select_names(cal.w2c, cfg.cameras) if s not in views]
    if missing:
        msg = (f"{imp.rel(seq_dir)}: calibrated camera(s) {', '.join(missing)} of {imp.rel(cal.path)} have no images in this "
               f"sequence ({layout}); set captures.cameras to the others to import without them")
        if cfg.strict:
            raise CaptureError(msg)
        imp.warn(msg)
        imp.info.setdefault("missing_cameras", {})[f"{subject}/{seq}"] = missing
    cams, wheres = {}, {}
    for serial in select_names(views, cfg.cameras):
        v = views[serial]
        wheres[serial] = f"{imp.rel(v.video or seq_dir)} [camera {serial}]"
        cam = cal.camera(imp, serial, v, wheres[serial], f"{subject}/{seq}/{serial}")
        if cam is not None:
            cams[serial] = cam
    if cams:
        report_intrinsics(imp, subject, seq, cams)
    ok = imp.check_cameras(subject, seq, cams, imp.rel(cal.path))  # refusals (crop, names) recorded here
    affine = v1_colour(imp, part, seq, ok) if part.version == 1 else {}  # a refused camera's .npy is not read
    for s in [s for s, m in affine.items() if m is None]:
        del cams[s]
    for s in [s for s in ok if s in cams and s in cal.bad_ccms]:
        imp.skip(f"{imp.rel(cal.ccm_path)} [camera {s}]", cal.bad_ccms[s])
        del cams[s]
    for serial in [s for s in ok if s in cams]:
        if cal.ccms and serial not in cal.ccms:
            imp.warn(f"{imp.rel(cal.ccm_path)}: no colour matrix for camera {serial}; its images are not colour corrected")
    usable = imp.set_cameras(subject, seq, cams, imp.rel(cal.path), views=ok)
    available = {t for v in views.values() for t in v.frames}
    for v in views.values():
        if v.video is not None:
            available |= set(range(video_length(v.video)))
    frames = select_frames(available, cfg)
    for serial in cams:
        if serial not in usable:  # refused by the crop / resize settings (or its sequence's name): nothing decoded
            skip_unread(imp, views[serial], frames, imp.unusable(subject, seq, serial))
            continue
        ccm, aff = cal.ccms.get(serial), affine.get(serial)
        for t, rgb, src, key, mask in items_of(imp, views[serial], frames, wheres[serial]):
            rgb = correct_color(rgb, ccm) if ccm is not None else correct_color_affine(rgb, aff) if aff is not None else rgb
            imp.add(subject, seq, t, serial, rgb, src, key=key, mask=mask, whole_file=key is None)


# nersemble-data's sequence of background images (the studio without the participant, every camera)
BACKGROUND = "BACKGROUND"


def import_participant(imp: CaptureImport, part: Participant) -> None:
    cal = Calibration(imp, part)
    if cal.ccms or cal.bad_ccms:
        imp.info.setdefault("color_calibration", []).append(imp.rel(cal.ccm_path))
    seq_root = part.sequences
    names = [d.name for d in seq_root.iterdir() if d.is_dir() and d.name not in ("calibration", "annotations")] \
        if seq_root.is_dir() else []
    if BACKGROUND in names:  # the empty studio, shot by every camera: no head to detect or fit
        names.remove(BACKGROUND)
        imp.warn(f"{imp.rel(seq_root / BACKGROUND)}: not imported (the empty studio's background images, no head)")
    for seq in select_names(names, imp.cfg.sequences):
        try:
            import_sequence(imp, part, cal, part.subject, seq)
        except CaptureError as e:
            if imp.cfg.strict:
                raise
            imp.skip(imp.rel(seq_root / seq), str(e))


def wanted_subject(subject: str, wanted: list[str] | None) -> bool:
    """Participant ids match with or without zero padding ('017' == '17')."""
    return wanted is None or subject.lstrip("0") in {str(w).lstrip("0") for w in wanted}


def import_capture(root_in: Path | str, out: Path | str, cfg: ImportConfig) -> ImportReport:
    root_in = Path(root_in)
    participants = find_participants(root_in)
    with CaptureImport("nersemble", root_in, out, cfg) as imp:
        for part in participants:
            if not wanted_subject(part.subject, cfg.subjects):
                continue
            imp.info.setdefault("versions", {})[part.subject] = part.version
            try:
                import_participant(imp, part)
            except CaptureError as e:
                imp.skip(imp.rel(part.params), f"participant {part.subject} not (fully) imported: {e}")
    return imp.report
