"""COLMAP sparse model -> canonical capture (one subject: one frame, or a multi-camera rig's frames).

Input (`captures.root` = the COLMAP project folder):
    <root>/<colmap_model>/cameras.bin|cameras.txt     (default colmap_model: sparse/0; .bin preferred)
    <root>/<colmap_model>/images.bin|images.txt       (points3D is not read)
    <root>/<colmap_images>/<image name>               (default colmap_images: images)
The model folder may also be <root> itself. COLMAP images store world→camera as a unit quaternion
(qw, qx, qy, qz) and translation t in OpenCV's camera frame (x right, y down, z forward), so the pose
needs no axis change; COLMAP's pixel centres are at +0.5 like geoface's, so K is used as is.
Camera models: SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV, FULL_OPENCV (their
distortion is OpenCV's; images are undistorted onto the same K). The images of a camera with another model (fisheye,
FOV, thin-prism, COLMAP 4's division, EUCM and equirectangular models) are skipped with the reason; the import is
refused, naming the models, only when no image has a supported camera. A parameter count that is not the model's
is a malformed file (refused). Camera name = the image file stem (the path with '/' -> '_' when stems repeat);
subject = `captures.subject` or the root folder's name, sequence = `captures.sequence`, frame 0 (images whose pose
repeats another's, a camera filmed over time, are named in one warning: colmap_rigs.repeated_poses).
COLMAP >= 3.12's rigs.bin|txt + frames.bin|txt: when one rig has several cameras, its frames are the frames and its
cameras the cameras (pipelines/colmap_rigs.py; `captures.colmap_rig_frames`).
Binary layout as COLMAP's read_write_model.py (little-endian).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from flame_fitting.core.readers import check_pixel_count
from flame_fitting.formats.capture import CaptureError
from pipelines.colmap_rigs import BinReader, moving_camera, read_rigs_frames, repeated_poses, rig_views, text_lines
from pipelines.common import CaptureImport, inside
from pipelines.import_config import camera_names, ImportConfig, ImportReport, select_frames, select_names

# model id -> (name, number of params), as COLMAP's src/colmap/sensor/models.h (CameraModelId); every model, so a
# cameras.bin holding an unsupported one is still parsed (its params must be skipped to reach the next camera)
MODELS = {0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4), 3: ("RADIAL", 5), 4: ("OPENCV", 8),
          5: ("OPENCV_FISHEYE", 8), 6: ("FULL_OPENCV", 12), 7: ("FOV", 5), 8: ("SIMPLE_RADIAL_FISHEYE", 4),
          9: ("RADIAL_FISHEYE", 5), 10: ("THIN_PRISM_FISHEYE", 12), 11: ("RAD_TAN_THIN_PRISM_FISHEYE", 16),
          12: ("SIMPLE_DIVISION", 4), 13: ("DIVISION", 5), 14: ("SIMPLE_FISHEYE", 3), 15: ("FISHEYE", 4),
          16: ("EUCM", 6), 17: ("EQUIRECTANGULAR", 2)}  # 12-17: COLMAP 4.0
N_PARAMS = {name: n for name, n in MODELS.values()}
SUPPORTED = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV", "FULL_OPENCV")


class UnsupportedModel(CaptureError):
    """A well-formed camera whose model geoface does not read: its images are skipped, not the import."""


def intrinsics_from_params(model: str, params, what: str) -> tuple[np.ndarray, np.ndarray | None]:
    """COLMAP camera model + params -> K (3,3) float64, OpenCV distortion (k,) or None. A parameter count that is
    not the model's (any model COLMAP defines) is a malformed file: CaptureError; a model outside SUPPORTED (fisheye,
    FOV, thin-prism, COLMAP 4's 12-17, a name COLMAP does not define): UnsupportedModel."""
    p = [float(v) for v in params]
    if model in N_PARAMS and len(p) != N_PARAMS[model]:
        raise CaptureError(f"{what}: {model} needs {N_PARAMS[model]} params, got {len(p)}")
    if model not in SUPPORTED:
        raise UnsupportedModel(f"{what}: camera model {model} is not supported (supported: {', '.join(SUPPORTED)})")
    if model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"):
        fx = fy = p[0]
        cx, cy = p[1], p[2]
    else:
        fx, fy, cx, cy = p[:4]
    first = {"SIMPLE_PINHOLE": 3, "PINHOLE": 4, "SIMPLE_RADIAL": 3, "RADIAL": 3, "OPENCV": 4, "FULL_OPENCV": 4}[model]
    dist = p[first:]  # k1[, k2[, p1, p2[, k3, k4, k5, k6]]] in OpenCV's order
    dist = (dist + [0.0] * 4)[: max(4, len(dist))] if dist else None
    K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], np.float64)
    return K, None if dist is None else np.asarray(dist, np.float64)


def qvec_to_rotmat(q) -> np.ndarray:
    """Unit quaternion (qw, qx, qy, qz) -> (3,3) rotation (float64)."""
    w, x, y, z = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


# --- parsers: cameras {id: (model, width, height, params)}, images [(id, qvec, tvec, camera_id, name)] ---
def read_cameras_text(path: Path) -> dict[int, tuple]:
    cams = {}
    for i, line, e in text_lines(path):
        try:
            cams[int(e[0])] = (e[1], int(e[2]), int(e[3]), [float(v) for v in e[4:]])
        except (IndexError, ValueError):
            raise CaptureError(f"{path}:{i}: not a camera line 'CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]': {line!r}") from None
    return cams


def read_images_text(path: Path) -> list[tuple]:
    images = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        e = line.split()
        try:
            images.append((int(e[0]), [float(v) for v in e[1:5]], [float(v) for v in e[5:8]], int(e[8]), " ".join(e[9:])))
        except (IndexError, ValueError):
            raise CaptureError(f"{path}:{i}: not an image line 'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME': {line!r}") from None
        if not images[-1][4]:
            raise CaptureError(f"{path}:{i}: image line has no NAME")
        if i < len(lines) and not _points2d_line(lines[i].split()):  # an image line without its POINTS2D line
            raise CaptureError(f"{path}:{i + 1}: not a POINTS2D line 'X Y POINT3D_ID ...' after image {images[-1][0]} "
                               f"(COLMAP's images.txt has two lines per image, the second empty when it has no "
                               f"points): {lines[i].strip()[:120]!r}")
        i += 1  # the POINTS2D line that follows every image line (possibly empty)
    return images


def _points2d_line(e: list[str]) -> bool:
    """Whether the tokens `e` can be a POINTS2D line: (X, Y, POINT3D_ID) triplets, the last an integer (-1 = none).
    An image line read in its place (a hand-written images.txt without them) has a NAME there: every other image
    was taken for points and silently dropped."""
    if not e:
        return True
    if len(e) % 3:
        return False
    try:
        int(e[-1]), float(e[-2]), float(e[-3])
    except ValueError:
        return False
    return True


def read_cameras_binary(path: Path) -> dict[int, tuple]:
    b, cams = BinReader(path), {}
    (n,) = b.read("Q")
    for _ in range(n):
        cam_id, model_id, w, h = b.read("IiQQ")  # camera_t is uint32 (src/colmap/util/types.h), the model id an int
        if model_id not in MODELS:
            raise CaptureError(f"{path}: camera {cam_id} has unknown model id {model_id}")
        name, n_params = MODELS[model_id]
        cams[cam_id] = (name, w, h, list(b.read("d" * n_params)))
    return cams


def read_images_binary(path: Path) -> list[tuple]:
    b, images = BinReader(path), []
    (n,) = b.read("Q")
    for _ in range(n):
        img_id, *rest = b.read("IdddddddI")  # image_t, camera_t: uint32 (ids ≥ 2**31 are not negative)
        qvec, tvec, cam_id = rest[0:4], rest[4:7], rest[7]
        name = b.cstring()
        (n_pts,) = b.read("Q")
        b.skip(24 * n_pts, f"image {img_id}'s {n_pts} points2D (x, y: double, point3D_id: uint64)")
        images.append((img_id, list(qvec), list(tvec), cam_id, name))
    return images


def read_model(model_dir: Path) -> tuple[dict, list, Path, Path]:
    """cameras, images, and the two files read (.bin preferred over .txt, as COLMAP does)."""
    for ext, rc, ri in ((".bin", read_cameras_binary, read_images_binary), (".txt", read_cameras_text, read_images_text)):
        cp, ip = model_dir / f"cameras{ext}", model_dir / f"images{ext}"
        if cp.is_file() and ip.is_file():
            return rc(cp), ri(ip), cp, ip
    raise CaptureError(f"{model_dir}: no COLMAP model (cameras.bin + images.bin or cameras.txt + images.txt)")


def _views(root_in: Path, model_dir: Path, cam_file: Path, images: list, img_file: Path, cfg: ImportConfig):
    """({index in images: (frame, camera name)}, rig views or None): a multi-camera rig's frames and cameras when
    rigs/frames say so (pipelines/colmap_rigs.py), else every image a camera of frame 0."""
    rf = read_rigs_frames(model_dir, cam_file.suffix) if cfg.colmap_rig_frames else None
    rig = rig_views(*rf[:2], images, *(str(p.relative_to(root_in)) for p in rf[2:])) if rf else None
    if rig is not None:
        keep, wanted = set(select_frames({f for f, _ in rig.views.values()}, cfg)), select_names(rig.names.values(), cfg.cameras)
        return {k: rig.views[im[0]] for k, im in enumerate(images)
                if im[0] in rig.views and rig.views[im[0]][0] in keep and rig.views[im[0]][1] in wanted}, rig
    names = camera_names([im[4] for im in images])
    if len(set(names)) != len(names):
        raise CaptureError(f"{img_file}: several images have the same name")
    wanted = set(select_names(names, cfg.cameras))
    return {k: (0, n) for k, n in enumerate(names) if n in wanted}, None


def import_capture(root_in: Path | str, out: Path | str, cfg: ImportConfig) -> ImportReport:
    root_in = Path(root_in)
    model_dir = root_in / cfg.colmap_model
    if not (model_dir / "cameras.bin").is_file() and not (model_dir / "cameras.txt").is_file():
        if (root_in / "cameras.bin").is_file() or (root_in / "cameras.txt").is_file():
            model_dir = root_in
    cams_raw, images, cam_file, img_file = read_model(model_dir)
    views, rig = _views(root_in, model_dir, cam_file, images, img_file, cfg)
    intrinsics, unsupported = _intrinsics(cams_raw, {images[k][3] for k in views}, cam_file)
    image_dir = root_in / cfg.colmap_images
    subject, sequence = cfg.subject or root_in.resolve().name, cfg.sequence
    with CaptureImport("colmap", root_in, out, cfg) as imp:
        imp.info["colmap_model"] = [imp.rel(cam_file), imp.rel(img_file)]
        by_id = {im[0]: im for im in images}  # rig mode refuses repeated image ids (colmap_rigs.rig_views)
        if rig is not None:
            imp.info["colmap_rig"] = {"rig_id": rig.rig_id, "cameras": {n: c for c, n in sorted(rig.names.items())}}
            for img_id, reason in rig.skipped:
                imp.skip(f"{imp.rel(img_file)} [image {img_id} {by_id[img_id][4]}]", reason)
            for note in rig.notes:
                imp.warn(note)
        poses, files, cameras = {}, [], {}  # camera -> [(frame, world_to_cam)], [(frame, camera, path)], camera -> Camera
        for k, (frame, cname) in sorted(views.items(), key=lambda kv: kv[1]):
            img_id, qvec, tvec, cam_id, name = images[k]
            where = f"{imp.rel(img_file)} [image {img_id} {name}]"
            if cam_id not in cams_raw:
                imp.skip(where, f"camera_id {cam_id} is not in {imp.rel(cam_file)}")
                continue
            model, w, h, _ = cams_raw[cam_id]
            if cam_id in unsupported:
                imp.skip(where, f"camera {cam_id} in {imp.rel(cam_file)} has camera model {model}, which geoface does "
                                f"not read (supported: {', '.join(SUPPORTED)})")
                continue
            try:  # a damaged cameras.bin's size (up to 2**64): named where it is, not as a camera seeing 90° off axis
                check_pixel_count((w, h), f"{imp.rel(cam_file)} [camera {cam_id}]", CaptureError)
            except CaptureError as e:
                imp.skip(where, str(e))
                continue
            K, dist = intrinsics[cam_id]
            q = np.asarray(qvec, np.float64)
            if abs(np.linalg.norm(q) - 1.0) > 1e-4:
                imp.skip(where, f"quaternion {q.tolist()} is not a unit quaternion (|q| = {np.linalg.norm(q):.6f}), not a rotation")
                continue
            try:
                path = inside(image_dir, name, "image NAME")
            except CaptureError as e:
                imp.skip(where, str(e))
                continue
            w2c = np.eye(4)
            w2c[:3, :3] = qvec_to_rotmat(q / np.linalg.norm(q))
            w2c[:3, 3] = tvec
            if cname not in cameras:
                cameras[cname] = imp.camera(cname, K, w2c, w, h, dist, where)
            if cameras[cname] is None:  # recorded by imp.camera
                continue
            poses.setdefault(cname, []).append((frame, w2c))
            files.append((frame, cname, path))
        if rig is not None and (why := moving_camera(poses)):
            raise CaptureError(f"{img_file}: the rig moves between frames ({why}); a sequence's cameras.json holds one pose "
                               f"per camera. For a static head filmed by a moving rig set captures.colmap_rig_frames: "
                               f"false (every image a view of frame 0)")
        if rig is not None:
            _warn_missing(imp, files, rig.names.values(), model_dir / f"frames{cam_file.suffix}")
        elif same := repeated_poses({n: p[0][1] for n, p in poses.items()}):
            imp.warn(f"{imp.rel(img_file)}: {len(same)} images have the pose of another image (camera {same[0][0]!r} "
                     f"= {same[0][1]!r}), all imported as cameras of frame 0: a camera filmed over time? Its timesteps "
                     f"become frames only through COLMAP >= 3.12 rig frames (colmap rig_configurator, rigs + frames files)")
        imp.set_cameras(subject, sequence, {n: c for n, c in cameras.items() if c is not None}, imp.rel(cam_file))
        for frame, cname, path in files:
            imp.add_file(subject, sequence, frame, cname, path)
    return imp.report


def _intrinsics(cams_raw: dict, used: set[int], cam_file: Path) -> tuple[dict, dict]:
    """({camera_id: (K, dist)}, {camera_id: model}) of the cameras the selected images use: the supported ones, and
    the ones whose model geoface does not read (their images are skipped). A malformed camera is a CaptureError, and
    so is a model where no used camera is supported (nothing could be imported)."""
    intrinsics, unsupported = {}, {}
    for cam_id in sorted(used & cams_raw.keys()):
        model, _, _, params = cams_raw[cam_id]
        try:
            intrinsics[cam_id] = intrinsics_from_params(model, params, f"{cam_file} [camera {cam_id}]")
        except UnsupportedModel:
            unsupported[cam_id] = model
    if unsupported and not intrinsics:
        by_model: dict[str, list[str]] = {}
        for cam_id, model in unsupported.items():
            by_model.setdefault(model, []).append(str(cam_id))
        found = "; ".join(f"{m} (camera {', '.join(ids)})" for m, ids in sorted(by_model.items()))
        raise CaptureError(f"{cam_file}: no image uses a supported camera model (found {found}; supported: "
                           f"{', '.join(SUPPORTED)})")
    return intrinsics, unsupported


def _warn_missing(imp: CaptureImport, files: list, names, frame_file: str) -> None:
    """One warning for the imported frames that lack some of the rig's cameras."""
    have: dict[int, set] = {}
    for frame, cname, _ in files:
        have.setdefault(frame, set()).add(cname)
    want = set(select_names(names, imp.cfg.cameras))
    short = {f: sorted(want - c) for f, c in sorted(have.items()) if want - c}
    if short:
        f0 = next(iter(short))
        imp.warn(f"{imp.rel(frame_file)}: {len(short)} of {len(have)} frames lack cameras of the rig (frame {f0}: "
                 f"{', '.join(short[f0])})")
