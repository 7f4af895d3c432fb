"""NeRF / instant-ngp / nerfstudio `transforms.json` -> canonical capture (one frame of one subject), and VHAP's
dynamic export (the layout GaussianAvatars trains on) -> one sequence with its frames.

Input (`captures.root` = the folder holding the file, or the file itself):
    {"x_fov"?, "y_fov"?, "fl_x"?, "fl_y"?, "camera_angle_x"?, "camera_angle_y"?, "cx"?, "cy"?, "w"?, "h"?, "k1"?,
     "k2"?, "k3"?, "p1"?, "p2"?, "camera_model"?, "frames": [{"file_path": "images/0001[.png]",
     "transform_matrix": 4×4 (or 3×4), "mask_path"?: "masks/0001.png", <same keys>?}, ...]}
Per-frame keys override the top-level ones. `transform_matrix` is camera→world in OpenGL's camera
frame (x right, y up, z backward); converted here: c2w_cv = c2w_gl @ diag(1, -1, -1, 1), world_to_cam =
inverse(c2w_cv). Intrinsics (pipelines/transforms_intrinsics.py): per axis x_fov (degrees) over fl_x over
camera_angle_x (radians), as instant-ngp; an axis without a key takes the other's focal length; cx, cy default to
w/2, h/2 (pixel centres at +0.5, as instant-ngp/nerfstudio). w, h come from the file or, when absent (NeRF
synthetic), from the image. camera_model (default OPENCV): SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL (k1), RADIAL
(k1, k2), OPENCV (k1, k2, p1, p2[, k3]); the distortion -> undistorted images, as for every source; a
contradictory entry is refused for that frame. `file_path` is relative to the json's folder, with or without
extension (.png, .jpg, .jpeg tried); the mask is nerfstudio's per-frame `mask_path` (relative to the json's folder,
first channel, 0 = background), else an RGBA image's alpha. Not supported: fisheye / equirectangular
`camera_model`, instant-ngp's lens keys, per-frame time (dynamic scenes), depth maps.
Ignored: instant-ngp's `scale`/`offset`/`aabb_scale` (they only matter inside instant-ngp; the world stays the
file's world, whose unit is whatever the producer used — usually not metres).

VHAP's `export_as_nerf_dataset.py` (and geoface's `export fits --format vhap`) is recognised by a `timestep_index`
in its frames: the entries are the views of many timesteps. Frame = `timestep_id` when it is a number, else
`timestep_index`; camera = `camera_id`, else `camera_index`; the mask is `fg_mask_path`. VHAP counts cy from the
image's bottom edge (its opencv->opengl conversion flips the principal point with the y axis): cy = h - cy here.
A camera must be the same in every timestep (an entry that differs is recorded and skipped); the frame options
(`frames`, `frame_start`, `frame_stride`, `max_frames`) select timesteps. The FLAME parameters
(`flame_param_path`) are not imported: `geoface fit` fits its own. Read as a static scene, such a file made every
(timestep, camera) a camera of one frame, with cy mirrored.
"""
from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from flame_fitting.geometry.camera import CameraError, check_rigid
from flame_fitting.geometry.camera import world_to_cam_from_opengl as world_to_cam_from_gl
from flame_fitting.core.readers import read_mask as read_mask_file
from flame_fitting.formats.capture import CaptureError
from pipelines.common import CaptureImport, inside
from pipelines.import_config import (as_matrix, camera_names, ImportConfig, ImportReport, load_json, select_frames,
                                     select_names)
from pipelines.transforms_intrinsics import camera_model, check_angles, intrinsics_of
from pipelines.views import read_image_file

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG")


def find_image(base: Path, file_path: str) -> Path:
    """The image of a frame's `file_path` (with or without its extension), which must name a file inside `base`
    (the folder of transforms.json): an absolute path or one whose `..` leave it is refused (CaptureError), so a
    downloaded transforms.json cannot pull files from elsewhere on the machine into the capture."""
    p = inside(base, file_path, "file_path")
    if p.suffix in IMAGE_EXTS and p.is_file():
        return p
    for ext in IMAGE_EXTS[:3]:
        if (q := p.with_name(p.name + ext)).is_file():
            return q
    return p


def import_capture(root_in: Path | str, out: Path | str, cfg: ImportConfig) -> ImportReport:
    root_in = Path(root_in)
    path = root_in if root_in.is_file() else root_in / cfg.transforms_file
    base = path.parent
    meta = load_json(path)
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list) or not meta["frames"]:
        raise CaptureError(f"{path}: no 'frames' list")
    camera_model(meta, {}, str(path))
    check_angles(meta, str(path))
    subject = cfg.subject or (root_in if root_in.is_dir() else base).resolve().name
    sequence = cfg.sequence
    with CaptureImport("transforms_json", base, out, cfg) as imp:
        imp.info["transforms_file"] = path.name
        frames = []
        for i, fr in enumerate(meta["frames"]):
            if isinstance(fr, dict) and isinstance(fr.get("file_path"), str):
                frames.append((i, fr))
            else:
                imp.skip(f"{path.name} [frames[{i}]]", "frame has no 'file_path' string")
        vhap = any("timestep_index" in fr for _, fr in frames)
        shots = vhap_shots(imp, path, frames) if vhap else static_shots(path, frames)
        imp.info["transforms_layout"] = "vhap" if vhap else "static"
        wanted = set(select_frames({f for f, _, _, _ in shots}, cfg))
        shots = [s for s in shots if s[0] in wanted]
        first = {}
        for shot in shots:
            first.setdefault(shot[1], shot)
        cameras, defined = {}, {}
        for name in select_names(first, cfg.cameras):
            _, _, i, fr = first[name]
            where = f"{path.name} [frames[{i}] {fr['file_path']}]"
            try:
                defined[name] = camera_of(meta, fr, base, where, cy_from_bottom=vhap)
            except (CaptureError, CameraError, TypeError, ValueError) as e:
                imp.skip(where, reason(e, where))
                continue
            K, w2c, w, h, dist = defined[name]
            cam = imp.camera(name, K, w2c, w, h, dist, where)
            if cam is not None:
                cameras[name] = cam
        imp.set_cameras(subject, sequence, cameras, path.name)
        for frame, name, i, fr in shots:
            if name not in cameras:
                continue
            where = f"{path.name} [frames[{i}] {fr['file_path']}]"
            try:
                img_path = find_image(base, fr["file_path"])
                if (frame, name) != first[name][:2] and not same_camera(camera_of(meta, fr, base, where, vhap),
                                                                        defined[name]):
                    raise CaptureError(f"{where}: camera {name!r} differs from its frames[{first[name][2]}] (a camera "
                                       "that moves between timesteps is not supported)")
            except (CaptureError, CameraError, TypeError, ValueError) as e:
                imp.skip(where, reason(e, where))
                continue
            add_frame(imp, subject, sequence, frame, name, img_path, fr.get("mask_path", fr.get("fg_mask_path")),
                      base, where)
    return imp.report


def static_shots(path: Path, frames: list[tuple[int, dict]]) -> list[tuple[int, str, int, dict]]:
    """(frame 0, camera named after its file, index, entry) per entry of a static scene's transforms.json."""
    names = camera_names([fr["file_path"] for _, fr in frames])
    if len(set(names)) != len(names):
        raise CaptureError(f"{path}: several frames have the same file_path")
    return [(0, n, i, fr) for n, (i, fr) in zip(names, frames)]


def vhap_shots(imp: CaptureImport, path: Path, frames: list[tuple[int, dict]]) -> list[tuple[int, str, int, dict]]:
    """(frame, camera, index, entry) per entry of VHAP's dynamic export (`timestep_index` per frame): the frame is
    `timestep_id` when it is a number (VHAP writes the original frame id there), else `timestep_index`; the camera
    is `camera_id` (else `camera_index`, two digits). An entry without them, or a repeated (frame, camera), is
    recorded and skipped."""
    out, seen = [], set()
    for i, fr in frames:
        where = f"{path.name} [frames[{i}] {fr['file_path']}]"
        tid, tix, cid, cix = (fr.get(k) for k in ("timestep_id", "timestep_index", "camera_id", "camera_index"))
        frame = int(tid) if isinstance(tid, str) and tid.isascii() and tid.isdigit() else tix
        camera = str(cid) if isinstance(cid, (str, int)) and not isinstance(cid, bool) and str(cid) else (
            f"{cix:02d}" if isinstance(cix, int) and not isinstance(cix, bool) and cix >= 0 else None)
        if not isinstance(frame, int) or isinstance(frame, bool) or frame < 0 or camera is None:
            imp.skip(where, "a VHAP frame needs timestep_index (or a numeric timestep_id) >= 0 and camera_id or "
                            "camera_index")
        elif (frame, camera) in seen:
            imp.skip(where, f"timestep {frame}, camera {camera!r} is listed twice")
        else:
            seen.add((frame, camera))
            out.append((frame, camera, i, fr))
    return out


def reason(e: Exception, where: str) -> str:
    """The skip reason of an error about the entry at `where` (the skip's item): its message without a leading
    `where: `, which the intrinsics' errors carry, so the location is said once."""
    text = str(e)
    return text[len(where) + 2:] if text.startswith(f"{where}: ") else text


def camera_of(meta: dict, fr: dict, base: Path, where: str, cy_from_bottom: bool):
    """(K, world_to_cam, w, h, dist) of one entry; `cy_from_bottom`: VHAP's export counts cy from the image's
    bottom edge (its opencv->opengl conversion flips the principal point with the y axis), converted here."""
    m = fr.get("transform_matrix")
    c2w = as_matrix(m, (3, 4) if isinstance(m, list) and len(m) == 3 else (4, 4), "transform_matrix")
    if c2w.shape == (3, 4):
        c2w = np.vstack([c2w, [0, 0, 0, 1]])
    check_rigid(c2w, "transform_matrix (camera→world)")
    w, h = fr.get("w", meta.get("w")), fr.get("h", meta.get("h"))
    if w is None or h is None:  # NeRF synthetic: the size is the image's
        h, w = read_image_file(find_image(base, fr["file_path"]))[0].shape[:2]
    for key, v in (("w", w), ("h", h)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < math.inf or v != int(v):
            raise CaptureError(f"{key} must be a positive whole number of pixels, got {v!r}")
    K, dist = intrinsics_of(meta, fr, int(w), int(h), where)
    if cy_from_bottom and ("cy" in fr or "cy" in meta):
        K[1, 2] = int(h) - K[1, 2]
    return K, world_to_cam_from_gl(c2w), int(w), int(h), dist


def same_camera(a, b) -> bool:
    (Ka, Ta, wa, ha, da), (Kb, Tb, wb, hb, db) = a, b
    same_dist = (da is None and db is None) or (da is not None and db is not None and np.allclose(da, db, atol=1e-9))
    return (wa, ha) == (wb, hb) and np.allclose(Ka, Kb, rtol=1e-6, atol=1e-6) and np.allclose(Ta, Tb, atol=1e-6) \
        and same_dist


def add_frame(imp: CaptureImport, subject: str, sequence: str, frame: int, name: str, img_path: Path, mask_path,
              base: Path, where: str) -> None:
    """Store one frame's image with its mask: the file at `mask_path` (nerfstudio, relative to the json's folder;
    its first channel), else the image's alpha channel. An unusable mask is recorded and the image kept."""
    if why := imp.unusable(subject, sequence, name):  # refused camera: its image is not decoded
        imp.skip(imp.rel(img_path), why)
        return
    try:
        rgb, mask = read_image_file(img_path)
    except CaptureError as e:
        imp.skip(imp.rel(img_path), str(e))
        return
    if imp.cfg.masks and mask_path is not None:
        try:
            if not isinstance(mask_path, str):
                raise CaptureError(f"{where}: mask_path must be a string, got {mask_path!r}")
            mpath = inside(base, mask_path, "mask_path")
            if why := imp.outside(mpath):
                raise CaptureError(f"{mpath}: {why}")
            mask = read_mask(mpath)
        except CaptureError as e:
            imp.skip(f"{where} mask_path", str(e))
            mask = None
    imp.add(subject, sequence, frame, name, rgb, img_path, mask=mask if imp.cfg.masks else None)


def read_mask(path: Path) -> np.ndarray:
    """(H,W) uint8 mask from an image file: grey, or the first channel (alpha when it has one)."""
    if not path.is_file():
        raise CaptureError(f"{path}: mask file is missing")
    m = read_mask_file(path, cv2.IMREAD_UNCHANGED, error=CaptureError)
    if m is None or m.dtype not in (np.uint8, np.uint16):
        raise CaptureError(f"{path}: not a readable mask image")
    m = (m.astype(np.float32) / 257.0 + 0.5).astype(np.uint8) if m.dtype == np.uint16 else m
    return m if m.ndim == 2 else m[..., 3] if m.shape[2] == 4 else m[..., 0]
