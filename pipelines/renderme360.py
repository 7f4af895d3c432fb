"""RenderMe-360 (`.smc` HDF5 files, read with h5py) -> canonical capture.

Assumed layout (from the public release and its SMCReader; checked defensively, every missing piece
is reported with the file and the HDF5 path):
    <root>/**/<actor>_<part>_raw.smc     Camera/<cam>/color/<frame>   uint8 array = encoded JPEG/PNG (BGR)
    <root>/**/<actor>_<part>_anno.smc    Calibration/<cam>/{K (3,3), D (5,), RT (4,4) camera→world}
                                         Camera/<cam>/mask/<frame>    encoded mask (max over channels)
                                         Keypoints2d/<cam>/<frame>    (106,2[+]) pixels     (optional)
                                         FLAME/<frame>/{global_pose, neck_pose, jaw_pose, left_eye_pose,
                                                        right_eye_pose, trans, shape (100), exp (50), verts (5023,3)}
e.g. raw/0026/0026_e0_raw.smc + anno/0026_e0_anno.smc (anno/<actor>/ also found). Camera ids '00'..'59',
frame keys '0', '1', ... Calibration is read from the anno file (else from the raw file); masks, FLAME and
Keypoints2d from the anno file (else the raw file: a release with one .smc per part). Subject = <actor>, sequence = <part> (e.g. e0, s1_all, h1_2b),
camera = the camera id, frame = the frame key. World→camera = inverse(RT); D (k1,k2,p1,p2,k3) ->
undistorted images. Image size = the decoded image's (2448×2048 in the release).
Side files (when present, for the selected frames), inside the capture:
    <subject>/<part>/renderme360_flame/<frame:05d>.npz       the FLAME/<frame> datasets (albedos left out);
                                                             verts are in RenderMe-360's world = ours
    <subject>/<part>/renderme360_keypoints2d/<frame:05d>.npz cameras (C,), uv (C,106,2) in the stored
                                                             images' pixels (undistorted/cropped/resized),
                                                             uv_source (C,106,k) as in the file; uv moves
                                                             with `pixel_center_offset` as K does
Not supported: audio, UV textures, scans, Keypoints3d, the actor info attributes.
"""
from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np

try:  # an optional extra: pip install 'geoface[renderme360]'
    import h5py
except ImportError:  # pragma: no cover - the dev environment has it
    h5py = None

from flame_fitting.core.arrays import MAX_INFLATION
from flame_fitting.core.readers import check_declared_size
from flame_fitting.core.jpeg_end import jpeg_cut_short
from flame_fitting.geometry.camera import CameraError, check_rigid
from flame_fitting.formats.capture import CaptureError
from pipelines.common import CaptureImport
from pipelines.import_config import as_matrix, ImportConfig, ImportReport, select_frames, select_names

FLAME_SKIP = ("albedos",)


MAX_DATASET_BYTES = 1 << 30  # one dataset of a RenderMe-360 file: an encoded image, a frame's FLAME or keypoints


def open_smc(path: Path) -> "h5py.File":
    """The .smc file, opened after `check_self_contained`; CaptureError naming the file otherwise."""
    if h5py is None:
        raise CaptureError(f"{path}: reading RenderMe-360 .smc files needs h5py, which is not installed: "
                           "pip install 'geoface[renderme360]' (or pip install h5py)")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise CaptureError(f"{path}: not a readable HDF5 (.smc) file ({e})") from None
    try:
        check_self_contained(f, path)
    except BaseException:
        f.close()
        raise
    return f


def check_self_contained(f: "h5py.File", path: Path) -> None:
    """CaptureError unless every object of the HDF5 file is stored in it: an external link, a dataset with external
    storage or a virtual dataset would make reading it read other files of this machine (a hostile .smc could copy
    a private key into the capture); a dataset declaring more than MAX_DATASET_BYTES (a few bytes of compressed
    nothing can declare terabytes) is refused before it is read, and so is a file whose datasets declare together more
    than MAX_DATASET_BYTES and MAX_INFLATION times the file (datasets never written read as their fill value: a 143 KB
    anno file of three such FLAME arrays took 3.9 GB to import and wrote a 3.1 GB capture)."""
    problems: list[str] = []  # collected, not raised inside h5py's callbacks (its locks turn that into SystemError)
    total = [0]  # bytes all datasets declare

    def link(name, lk):
        if isinstance(lk, h5py.ExternalLink):
            problems.append(f"{path} [{name}]: an external link to {lk.filename!r}; a RenderMe-360 file holds its "
                            "data itself")

    def item(name, obj):
        if not isinstance(obj, h5py.Dataset):
            return
        total[0] += obj.size * obj.dtype.itemsize
        if obj.external or obj.is_virtual:
            problems.append(f"{path} [{name}]: stored outside the file (external or virtual dataset); a RenderMe-360 "
                            "file holds its data itself")
        elif obj.size * obj.dtype.itemsize > MAX_DATASET_BYTES:
            problems.append(f"{path} [{name}]: declares {obj.shape} of {obj.dtype} "
                            f"({obj.size * obj.dtype.itemsize / 2**30:.1f} GiB), more than one dataset of a "
                            f"RenderMe-360 file holds ({MAX_DATASET_BYTES / 2**30:.0f} GiB)")

    try:
        f.visititems_links(link)
        if not problems:  # visititems would follow the external links
            f.visititems(item)
    except (OSError, KeyError, ValueError, RuntimeError) as e:
        raise CaptureError(f"{path}: not a readable HDF5 (.smc) file ({e})") from None
    size = path.stat().st_size
    if not problems and total[0] > max(MAX_DATASET_BYTES, MAX_INFLATION * size):
        problems.append(f"{path}: its datasets declare {total[0] / 2**30:.1f} GiB, {total[0] / max(size, 1):.0f} times "
                        f"the file's {size} bytes (at most {MAX_DATASET_BYTES / 2**30:.0f} GiB, or {MAX_INFLATION} "
                        "times the file: datasets never written or of compressed zeros); a damaged or hostile file")
    if problems:
        raise CaptureError(problems[0])


def find_pairs(root: Path) -> list[tuple[str, str, Path, Path | None]]:
    """[(actor, part, raw file, anno file or None)] under root."""
    raws = sorted(root.rglob("*_raw.smc")) if root.is_dir() else ([root] if root.name.endswith("_raw.smc") else [])
    annos = {p.name[: -len("_anno.smc")]: p for p in (root.rglob("*_anno.smc") if root.is_dir() else [])}
    if not raws:
        raise CaptureError(f"{root}: no RenderMe-360 raw files (<actor>_<part>_raw.smc)")
    out = []
    for raw in raws:
        stem = raw.name[: -len("_raw.smc")]
        actor, _, part = stem.partition("_")
        if not part:
            raise CaptureError(f"{raw}: name is not <actor>_<part>_raw.smc")
        out.append((actor, part, raw, annos.get(stem)))
    return out


def decode(data, path: Path, key: str, flags: int) -> np.ndarray:
    """Encoded image bytes stored as a uint8 dataset -> decoded array; CaptureError naming file + key."""
    try:
        buf = np.asarray(data[()], dtype=np.uint8).reshape(-1)
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise CaptureError(f"{path} [{key}]: unreadable dataset ({e})") from None
    data = buf.tobytes()
    check_declared_size(io.BytesIO(data), f"{path} [{key}]", CaptureError)
    if jpeg_cut_short(data):
        raise CaptureError(f"{path} [{key}]: truncated JPEG (its data end before the end-of-image marker)")
    img = cv2.imdecode(buf, flags)
    if img is None:
        raise CaptureError(f"{path} [{key}]: not an encoded image")
    return img


def read_color(raw: h5py.File, path: Path, cam: str, t: int) -> np.ndarray:
    """(H,W,3) uint8 RGB of Camera/<cam>/color/<t>."""
    key = f"Camera/{cam}/color/{t}"
    return cv2.cvtColor(decode(raw[key], path, key, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def read_calibration(imp: CaptureImport, files: list[tuple[Path, h5py.File]], width_height: dict) -> dict:
    """{cam: Camera (source)} from the first file that has Calibration; bad cameras are recorded."""
    for path, f in files:
        if "Calibration" in f:
            break
    else:
        raise CaptureError(f"{files[0][0]}: no Calibration group (looked in {[str(p) for p, _ in files]})")
    cams = {}
    for cam_id, (w, h) in width_height.items():
        where = f"{imp.rel(path)} [Calibration/{cam_id}]"
        g = f["Calibration"].get(cam_id)
        if g is None:
            imp.skip(where, f"camera {cam_id} has images but no calibration")
            continue
        try:
            K = as_matrix(g["K"][()], (3, 3), "K")
            D = as_matrix(g["D"][()], (5,), "D") if "D" in g else None
            RT = as_matrix(g["RT"][()], (4, 4), "RT (camera→world)")
            check_rigid(RT, "RT (camera→world)")
        except (CaptureError, CameraError, KeyError, OSError) as e:
            imp.skip(where, str(e))
            continue
        w2c = np.eye(4)
        w2c[:3, :3], w2c[:3, 3] = RT[:3, :3].T, -RT[:3, :3].T @ RT[:3, 3]
        cam = imp.camera(cam_id, K, w2c, w, h, D, where)
        if cam is not None:
            cams[cam_id] = cam
    return cams


def import_part(imp: CaptureImport, actor: str, part: str, raw_path: Path, anno_path: Path | None) -> None:
    cfg = imp.cfg
    raw = open_smc(raw_path)
    anno = open_smc(anno_path) if anno_path is not None else None
    try:
        files = [(anno_path, anno), (raw_path, raw)] if anno is not None else [(raw_path, raw)]
        if "Camera" not in raw:
            raise CaptureError(f"{raw_path}: no Camera group")
        cam_ids = select_names([c for c in raw["Camera"] if "color" in raw["Camera"][c]], cfg.cameras)
        available = {int(k) for c in cam_ids for k in raw["Camera"][c]["color"] if k.isdigit()}
        frames = select_frames(available, cfg)
        first, bad = {}, set()  # cam -> (frame, rgb) of its first readable selected frame, to learn the image size
        for c in cam_ids:
            group = raw["Camera"][c]["color"]
            for t in frames:
                if str(t) in group:
                    try:
                        first[c] = (t, read_color(raw, raw_path, c, t))
                    except CaptureError as e:
                        imp.skip(f"{imp.rel(raw_path)} [Camera/{c}/color/{t}]", str(e))
                        bad.add((c, t))
                        continue
                    break
        for c in cam_ids:
            if c not in first:
                imp.skip(f"{imp.rel(raw_path)} [Camera/{c}/color]", f"none of the selected frames {frames[:8]} is readable")
        cams = read_calibration(imp, files, {c: (rgb.shape[1], rgb.shape[0]) for c, (_, rgb) in first.items()})
        views = imp.set_cameras(actor, part, cams, imp.rel(files[0][0]))
        mask_file = next(((p, f) for p, f in files if "Camera" in f and any("mask" in f["Camera"][c] for c in f["Camera"])), None)
        for c in views:
            group = raw["Camera"][c]["color"]
            for t in frames:
                key = f"Camera/{c}/color/{t}"
                if (c, t) in bad:
                    continue
                if str(t) not in group:
                    imp.skip(f"{imp.rel(raw_path)} [{key}]", "selected frame is missing for this camera")
                    continue
                try:
                    rgb = first[c][1] if first[c][0] == t else read_color(raw, raw_path, c, t)
                except CaptureError as e:
                    imp.skip(f"{imp.rel(raw_path)} [{key}]", str(e))
                    continue
                mask = None
                if cfg.masks and mask_file is not None and str(t) in mask_file[1]["Camera"].get(c, {}).get("mask", {}):
                    mkey = f"Camera/{c}/mask/{t}"
                    try:
                        mask = decode(mask_file[1][mkey], mask_file[0], mkey, cv2.IMREAD_COLOR).max(axis=2)
                    except CaptureError as e:
                        imp.skip(f"{imp.rel(mask_file[0])} [{mkey}]", str(e))
                imp.add(actor, part, t, c, rgb, raw_path, key=key, mask=mask, whole_file=False)
        # the annotations' file when there is one, else the raw file (a release with one .smc per part)
        side = next(((p, f) for p, f in files if "FLAME" in f or "Keypoints2d" in f), None)
        if side is not None:
            side_files(imp, actor, part, side[0], side[1], views, frames)
    finally:
        raw.close()
        if anno is not None:
            anno.close()


def side_files(imp: CaptureImport, actor: str, part: str, path: Path, anno: h5py.File, views: dict, frames: list[int]) -> None:
    """FLAME parameters and 2D keypoints of the selected frames, as npz files inside the capture."""
    for t in frames:
        key = str(t)
        try:
            if "FLAME" in anno and key in anno["FLAME"]:
                g = anno["FLAME"][key]
                arrays = {k: np.asarray(g[k][()]) for k in g if k not in FLAME_SKIP and isinstance(g[k], h5py.Dataset)}
                imp.side_file(actor, part, "renderme360_flame", t, arrays)
            if "Keypoints2d" in anno:
                kp = anno["Keypoints2d"]
                names = [c for c in views if c in kp and key in kp[c] and np.asarray(kp[c][key]).size]
                if names:
                    src = np.stack([np.asarray(kp[c][key][()], np.float64) for c in names])
                    off = imp.cfg.pixel_center_offset  # the source's pixel convention, as for its K (common.py)
                    uv = np.stack([views[c].points(src[i, :, :2] + off) for i, c in enumerate(names)])
                    imp.side_file(actor, part, "renderme360_keypoints2d", t,
                                  {"cameras": np.array(names), "uv": uv, "uv_source": src.astype(np.float32)})
        except (OSError, KeyError, ValueError) as e:
            imp.skip(f"{imp.rel(path)} [FLAME or Keypoints2d, frame {t}]", f"unreadable ({e})")


def import_capture(root_in: Path | str, out: Path | str, cfg: ImportConfig) -> ImportReport:
    root_in = Path(root_in)
    pairs = [p for p in find_pairs(root_in) if (cfg.subjects is None or p[0] in cfg.subjects)
             and (cfg.sequences is None or p[1] in cfg.sequences)]
    with CaptureImport("renderme360", root_in, out, cfg) as imp:
        for actor, part, raw, anno in pairs:
            if anno is None:
                imp.warn(f"{imp.rel(raw)}: no {actor}_{part}_anno.smc found; calibration and masks are looked for in the raw file")
            if why := next((w for f in (raw, anno) if f is not None and (w := imp.outside(f))), None):
                imp.skip(imp.rel(raw), f"part {actor}_{part} not imported: {why}")  # not even opened
                continue
            try:
                import_part(imp, actor, part, raw, anno)
            except CaptureError as e:
                imp.skip(imp.rel(raw), f"part {actor}_{part} not (fully) imported: {e}")
            except (OSError, RuntimeError, KeyError, ValueError) as e:  # h5py on damaged files
                files = raw.name + (f" / {anno.name}" if anno else "")
                imp.skip(imp.rel(raw), f"part {actor}_{part} not (fully) imported: damaged HDF5 content in {files} ({e})")
    return imp.report
