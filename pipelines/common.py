"""Shared machinery of the capture readers in `pipelines/` (NeRSemble, RenderMe-360, COLMAP,
transforms.json, folder): the typed `ImportConfig`, the `ImportReport`, and `CaptureImport`, a
context manager around `flame_fitting.capture.CaptureWriter` that every reader feeds with source
cameras and raw images. It applies, identically for every source:

* undistortion (when a camera has non-zero distortion): `cv2.remap` onto the *same* K
  (no `getOptimalNewCameraMatrix`), so intrinsics stay as calibrated and the stored camera has
  `dist=None`; pixels whose source lies outside the raw image become black;
* an optional crop (`crop_box`, `crop_aspect` or `crop_head`) and resize (`resize` or `downscale`),
  with the camera updated through `Camera.cropped` / `Camera.resized`;
* frame / camera / subject / sequence selection;
* the subject split: sha256("<split_seed>:<subject>") → u ∈ [0, 1) → train/val/test by the
  cumulative `split_fractions` (stable, order-independent, needs no list of all subjects);
* skip-and-record: a bad item (missing camera, wrong size, unreadable frame, non-rigid matrix,
  short video) is recorded in `capture.json["skipped"]` with the file that caused it, or raised as a
  `CaptureError` with `strict: true`. Importing nothing at all is always an error.

Manifest extras written for every image: `source_path` (raw file relative to the input root),
`source_key` (frame of a video / dataset inside an HDF5 file, else null) and `source_sha256`
(sha256 of the raw file when that file is exactly this one image, else null).
"""
from __future__ import annotations

import functools
import hashlib
import json
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from flame_fitting.camera import Camera, CameraError
from flame_fitting.capture import SPLITS, CaptureError, CaptureWriter, sha256_file
from flame_fitting.params import ParamsError, spec


@dataclass
class ImportConfig:
    """How to import a capture source (one field per `captures.*` param; see docs/sources.md)."""

    subjects: list[str] | None = spec(None, "subject ids to import (participant / actor ids, folder names); null = all")
    sequences: list[str] | None = spec(None, "sequence names to import; null = all")
    cameras: list[str] | None = spec(None, "camera names to import (serials, '00'..'59', image stems); null = all")
    frames: list[int] | None = spec(None, "explicit source frame indices; null = frame_start/frame_stride/max_frames", lo=0)
    frame_start: int = spec(0, "first source frame index taken", lo=0)
    frame_stride: int = spec(1, "take every n-th source frame", lo=1)
    max_frames: int | None = spec(None, "at most this many frames per sequence; null = all", lo=1)
    subject: str | None = spec(None, "subject id of single-subject sources (colmap, transforms_json, flat folder); null = folder name")
    sequence: str = spec("default", "sequence name for single-sequence sources (colmap, transforms_json, flat folder)")
    undistort: bool = spec(True, "undistort images with non-zero distortion onto the same K (stored dist = None)")
    crop_box: list[int] | None = spec(None, "[x0, y0, width, height] crop of every image, in (undistorted) source pixels", lo=0)
    crop_aspect: float | None = spec(None, "centre crop to this width/height ratio", lo=1e-3)
    crop_head: list[float] | None = spec(None, "[x, y, z, radius] world sphere in metres: square crop around its projection, per camera")
    resize: list[int] | None = spec(None, "[width, height] of the stored images, after the crop", lo=1)
    downscale: int = spec(1, "divide the (cropped) image size by this integer factor", lo=1)
    pixel_center_offset: float = spec(0.0, "added to cx, cy of every source K (0.5 for a source calibrated with pixel centres at integers)")
    masks: bool = spec(True, "import foreground masks (RenderMe-360 masks, PNG alpha, masks/ folders) when present")
    color_calibration: bool = spec(True, "NeRSemble: apply color_calibration.json (in linear RGB) when present")
    image_ext: str = spec(".png", "format of the stored images", choices=[".png", ".jpg"])
    split_fractions: list[float] = spec([0.8, 0.1, 0.1], "train/val/test fractions of subjects (hash rule)", lo=0.0, hi=1.0)
    split_seed: int = spec(0, "seed of the subject → split hash", lo=0)
    strict: bool = spec(False, "raise a CaptureError on the first bad item instead of skipping and recording it")
    nersemble_calibrated_size: list[int] = spec([2200, 3208], "NeRSemble: [width, height] the intrinsics are for, when "
                                                "camera_params.json does not say", lo=1)
    nersemble_image_folder: str | None = spec(None, "NeRSemble v1: which images-* folder to read; null = the only one present")
    colmap_model: str = spec("sparse/0", "COLMAP: model folder (cameras.bin|txt, images.bin|txt) relative to the input root")
    colmap_images: str = spec("images", "COLMAP: image folder relative to the input root")
    transforms_file: str = spec("transforms.json", "transforms_json: file name relative to the input root")

    def validate(self) -> None:
        crops = [n for n in ("crop_box", "crop_aspect", "crop_head") if getattr(self, n) is not None]
        if len(crops) > 1:
            raise ParamsError(f"captures: set at most one of crop_box, crop_aspect, crop_head (got {crops})")
        if self.crop_box is not None and (len(self.crop_box) != 4 or min(self.crop_box[2:]) <= 0):
            raise ParamsError(f"captures.crop_box: expected [x0, y0, width>0, height>0], got {self.crop_box}")
        if self.crop_head is not None and (len(self.crop_head) != 4 or self.crop_head[3] <= 0):
            raise ParamsError(f"captures.crop_head: expected [x, y, z, radius>0], got {self.crop_head}")
        if self.resize is not None and (len(self.resize) != 2 or self.downscale != 1):
            raise ParamsError(f"captures.resize: expected [width, height] and downscale 1, got {self.resize}, {self.downscale}")
        if len(self.split_fractions) != 3 or abs(sum(self.split_fractions) - 1) > 1e-6:
            raise ParamsError(f"captures.split_fractions: three fractions summing to 1, got {self.split_fractions}")
        if len(self.nersemble_calibrated_size) != 2:
            raise ParamsError(f"captures.nersemble_calibrated_size: expected [width, height], got {self.nersemble_calibrated_size}")


@dataclass
class ImportReport:
    """What an import wrote and what it skipped (also stored in capture.json)."""

    source: str
    root_in: str
    out: str
    n_images: int
    sequences: list[str]          # "subject/sequence"
    splits: dict[str, str]        # subject -> train|val|test
    skipped: list[dict]           # {"item": file [key], "reason": ...}
    warnings: list[str]
    side_files: list[str]         # extra files inside the capture, relative to its root

    def to_dict(self) -> dict:
        return asdict(self)


# --- pure helpers ----------------------------------------------------------------------
def subject_split(subject: str, fractions=(0.8, 0.1, 0.1), seed: int = 0) -> str:
    """train|val|test of a subject: u = sha256("<seed>:<subject>")[:8] / 2**64, cut at the cumulative fractions."""
    u = int.from_bytes(hashlib.sha256(f"{seed}:{subject}".encode()).digest()[:8], "big") / 2**64
    acc = 0.0
    for name, frac in zip(SPLITS, fractions):
        acc += frac
        if u < acc:
            return name
    return [n for n, f in zip(SPLITS, fractions) if f > 0][-1]


def select_frames(available, cfg: ImportConfig) -> list[int]:
    """Source frame indices to import: `cfg.frames` as given (missing ones are the reader's to report),
    else the available frames ≥ frame_start, every frame_stride-th, at most max_frames."""
    if cfg.frames is not None:
        return sorted(set(int(f) for f in cfg.frames))
    frames = [f for f in sorted(set(int(f) for f in available)) if f >= cfg.frame_start][:: cfg.frame_stride]
    return frames[: cfg.max_frames] if cfg.max_frames is not None else frames


def select_names(available, wanted: list[str] | None) -> list[str]:
    """Sorted names of `available` that are in `wanted` (all when wanted is None)."""
    return sorted(n for n in set(available) if wanted is None or n in wanted)


def camera_names(paths: list[str]) -> list[str]:
    """Camera names for image paths (relative, '/'-separated): the file stems when they are unique,
    else the paths without extension with '/' -> '_'. Extensions: .png .jpg .jpeg (any case)."""
    def strip(p: str) -> str:
        p = p.replace("\\", "/")
        while p.startswith("./"):
            p = p[2:]
        q = Path(p)
        return str(q.with_suffix("")) if q.suffix.lower() in (".png", ".jpg", ".jpeg") else p

    bare = [strip(p) for p in paths]
    stems = [b.rsplit("/", 1)[-1] for b in bare]
    return stems if len(set(stems)) == len(stems) else [b.replace("/", "_") for b in bare]


def load_json(path: Path):
    """Parsed JSON; CaptureError naming the file when missing or not valid JSON (e.g. truncated)."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CaptureError(f"{path}: file is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CaptureError(f"{path}: not valid JSON ({e})") from None


def as_matrix(value, shape: tuple[int, ...], what: str) -> np.ndarray:
    """float64 array of `shape`; CaptureError naming `what` when the shape or values are wrong."""
    try:
        m = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise CaptureError(f"{what}: not a numeric array") from None
    if m.shape != shape:
        raise CaptureError(f"{what}: expected shape {shape}, got {m.shape}")
    if not np.all(np.isfinite(m)):
        raise CaptureError(f"{what}: contains NaN or inf")
    return m


def read_image_file(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(H,W,3) uint8 RGB and (H,W) uint8 alpha or None, from any 8/16-bit grey/RGB/RGBA file cv2 reads."""
    if not Path(path).is_file():
        raise CaptureError(f"{path}: image file is missing")
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise CaptureError(f"{path}: not a readable image")
    if img.dtype == np.uint16:
        img = (img.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    if img.dtype != np.uint8:
        raise CaptureError(f"{path}: unsupported pixel type {img.dtype}")
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB), None
    if img.shape[2] == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB), np.ascontiguousarray(img[..., 3])
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB), None


def scale_to_image(cam: Camera, width: int, height: int, what: str) -> Camera:
    """The camera for its image stored at (width, height): K scaled when the aspect ratio matches
    (e.g. a 2x downscaled folder), CaptureError when it does not."""
    if (width, height) == (cam.width, cam.height):
        return cam
    if abs(height - cam.height * width / cam.width) > 1.0:
        raise CaptureError(f"{what}: image is {width}×{height}, calibration is for {cam.width}×{cam.height} "
                           "(not the same aspect ratio, so it is not a scaled copy)")
    return cam.resized(width, height)


# --- per-view image processing ---------------------------------------------------------
def undistort_maps(cam: Camera) -> tuple[np.ndarray, np.ndarray]:
    """cv2.remap maps (H,W) float32 that undistort `cam`'s image onto the same K (a few are cached:
    full-resolution maps are large, and cameras sharing intrinsics share them)."""
    return _undistort_maps(cam.K.tobytes(), cam.dist.tobytes(), cam.width, cam.height)


@functools.lru_cache(maxsize=4)
def _undistort_maps(K_bytes: bytes, dist_bytes: bytes, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    # OpenCV puts pixel centres at integers, geoface at +0.5: K is shifted by -0.5 for OpenCV
    K = np.frombuffer(K_bytes, np.float32).reshape(3, 3).astype(np.float64)
    K[:2, 2] -= 0.5
    dist = np.frombuffer(dist_bytes, np.float32).astype(np.float64)
    return cv2.initUndistortRectifyMap(K, dist, None, K, (width, height), cv2.CV_32FC1)


def crop_for(cam: Camera, cfg: ImportConfig) -> tuple[int, int, int, int] | None:
    """(x0, y0, width, height) crop of `cam`'s (undistorted) image, or None."""
    W, H = cam.width, cam.height
    if cfg.crop_box is not None:
        x0, y0, w, h = (int(v) for v in cfg.crop_box)
        if x0 + w > W or y0 + h > H:
            raise CaptureError(f"crop_box {cfg.crop_box} does not fit the {W}×{H} image")
        return x0, y0, w, h
    if cfg.crop_aspect is not None:
        a = cfg.crop_aspect
        w, h = (min(W, round(H * a)), H) if W / H > a else (W, min(H, round(W / a)))
        return (W - w) // 2, (H - h) // 2, w, h
    if cfg.crop_head is not None:
        c, r = np.asarray(cfg.crop_head[:3], np.float64), float(cfg.crop_head[3])
        uv, z = cam.project(c[None])
        if not z[0] > r:
            raise CaptureError(f"crop_head sphere {cfg.crop_head} is not in front of the camera (depth {z[0]:.3f} m)")
        f = 0.5 * float(cam.K[0, 0] + cam.K[1, 1])
        side = min(W, H, max(1, int(round(2 * f * r / np.sqrt(z[0] ** 2 - r ** 2)))))
        x0 = int(np.clip(round(uv[0, 0] - side / 2), 0, W - side))
        y0 = int(np.clip(round(uv[0, 1] - side / 2), 0, H - side))
        return x0, y0, side, side
    return None


class ViewProcessor:
    """Raw image of one camera -> stored image: undistort, crop, resize; `camera` is the stored camera."""

    def __init__(self, src: Camera, cfg: ImportConfig):
        self.src = src
        cam = src
        self.undistort = src.dist is not None and cfg.undistort
        if self.undistort:
            cam = replace(src, dist=None)
        self.crop = crop_for(cam, cfg)
        if self.crop is not None:
            cam = cam.cropped(*self.crop)
        w, h = (cfg.resize if cfg.resize is not None else (cam.width // cfg.downscale, cam.height // cfg.downscale))
        if w < 1 or h < 1:
            raise CaptureError(f"downscale {cfg.downscale} leaves no pixels of the {cam.width}×{cam.height} image")
        self.pre_size = (cam.width, cam.height)
        self.camera = cam.resized(int(w), int(h)) if (w, h) != self.pre_size else cam

    def _apply(self, img: np.ndarray, interp: int) -> np.ndarray:
        if self.undistort:
            mx, my = undistort_maps(self.src)
            img = cv2.remap(img, mx, my, interp, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        if self.crop is not None:
            x0, y0, w, h = self.crop
            img = img[y0:y0 + h, x0:x0 + w]
        size = (self.camera.width, self.camera.height)
        if size != self.pre_size:
            if interp != cv2.INTER_NEAREST:
                interp = cv2.INTER_AREA if size[0] < self.pre_size[0] else cv2.INTER_LINEAR
            img = cv2.resize(img, size, interpolation=interp)
        return np.ascontiguousarray(img)

    def image(self, rgb: np.ndarray) -> np.ndarray:  # (H,W,3) uint8 raw -> (h,w,3) uint8 stored
        return self._apply(rgb, cv2.INTER_LINEAR)

    def mask(self, mask: np.ndarray) -> np.ndarray:  # (H,W) uint8 raw -> (h,w) uint8 stored (nearest)
        return self._apply(mask, cv2.INTER_NEAREST)

    def points(self, uv: np.ndarray) -> np.ndarray:
        """(N,2) pixel coordinates in the raw image -> (N,2) float32 in the stored image."""
        uv = np.asarray(uv, np.float64).reshape(-1, 2)
        if self.undistort:
            K = self.src.K.astype(np.float64)
            uv = self.src.normalized(uv) @ K[:2, :2].T + K[:2, 2]
        if self.crop is not None:
            uv = uv - np.asarray(self.crop[:2], np.float64)
        scale = np.array([self.camera.width / self.pre_size[0], self.camera.height / self.pre_size[1]])
        return (uv * scale).astype(np.float32)


# --- the import session ------------------------------------------------------------------
class CaptureImport:
    """`with CaptureImport(source, root_in, out, cfg) as imp:` set cameras, add images, skip bad items.
    On success the capture is renamed into place and `imp.report` is filled."""

    def __init__(self, source: str, root_in: Path | str, out: Path | str, cfg: ImportConfig):
        cfg.validate()
        self.source, self.root_in, self.out, self.cfg = source, Path(root_in), Path(out), cfg
        self.writer = CaptureWriter(self.out, source=source, image_ext=cfg.image_ext)
        self.views: dict[tuple[str, str], dict[str, ViewProcessor]] = {}
        self.skipped: list[dict] = []
        self.warnings: list[str] = []
        self.side_files: list[str] = []
        self.info: dict = {}
        self.report: ImportReport | None = None

    def __enter__(self) -> "CaptureImport":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            shutil.rmtree(self.writer.tmp, ignore_errors=True)
            return
        self.close()

    def rel(self, path: Path | str) -> str:
        p = Path(path)
        try:
            return p.resolve().relative_to(self.root_in.resolve()).as_posix()
        except ValueError:
            return p.as_posix()

    def skip(self, item: str, reason: str) -> None:
        """Record a skipped item (or raise CaptureError when cfg.strict)."""
        if self.cfg.strict:
            raise CaptureError(f"{item}: {reason}")
        self.skipped.append({"item": item, "reason": reason})

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def split_of(self, subject: str) -> str:
        return subject_split(subject, self.cfg.split_fractions, self.cfg.split_seed)

    def camera(self, name: str, K, world_to_cam, width: int, height: int, dist, where: str) -> Camera | None:
        """A source camera (K offset by cfg.pixel_center_offset), or None after recording why it is unusable."""
        try:
            K = as_matrix(K, (3, 3), f"camera {name!r} K").copy()
            K[:2, 2] += self.cfg.pixel_center_offset
            w2c = as_matrix(world_to_cam, (4, 4), f"camera {name!r} world_to_cam")
            return Camera(K=K, world_to_cam=w2c, width=width, height=height, dist=dist, name=name)
        except (CaptureError, CameraError) as e:
            self.skip(f"{where} [camera {name}]", str(e))
            return None

    def set_cameras(self, subject: str, sequence: str, cameras: dict[str, Camera], where: str) -> dict[str, ViewProcessor]:
        """Register the source cameras of a sequence; returns the usable ones' processors."""
        views = {}
        for name, cam in sorted(cameras.items()):
            try:
                views[name] = ViewProcessor(cam, self.cfg)
            except CaptureError as e:
                self.skip(f"{where} [camera {name}]", str(e))
        if views:
            self.writer.set_cameras(subject, sequence, {n: v.camera for n, v in views.items()})
        self.views[(subject, sequence)] = views
        return views

    def add(self, subject: str, sequence: str, frame: int, camera: str, rgb: np.ndarray, source: Path,
            key: str | None = None, mask: np.ndarray | None = None, whole_file: bool = True) -> bool:
        """Process and store one raw image (H,W,3) uint8 RGB; False (and a recorded skip) when unusable.
        `whole_file`: the source file is exactly this image, so its sha256 is recorded."""
        item = self.rel(source) + (f" [{key}]" if key is not None else "")
        view = self.views.get((subject, sequence), {}).get(camera)
        if view is None:
            self.skip(item, f"no usable calibration for camera {camera!r} of {subject}/{sequence}")
            return False
        src = view.src
        if rgb.ndim != 3 or rgb.shape[:2] != (src.height, src.width):
            self.skip(item, f"image is {rgb.shape[1]}×{rgb.shape[0]}, camera {camera!r} is calibrated for {src.width}×{src.height}")
            return False
        if mask is not None and mask.shape[:2] != rgb.shape[:2]:
            self.skip(item + " (mask)", f"mask is {mask.shape[1]}×{mask.shape[0]}, image is {rgb.shape[1]}×{rgb.shape[0]}")
            mask = None
        self.writer.add_image(subject, sequence, int(frame), camera, view.image(rgb), split=self.split_of(subject),
                              mask=None if mask is None else view.mask(mask), source_path=self.rel(source),
                              source_key=key, source_sha256=sha256_file(source) if whole_file else None)
        return True

    def add_file(self, subject: str, sequence: str, frame: int, camera: str, path: Path) -> bool:
        """Read one image file (its alpha channel becomes the mask when `cfg.masks`) and `add` it; an unreadable
        file is recorded as skipped."""
        try:
            rgb, alpha = read_image_file(path)
        except CaptureError as e:
            self.skip(self.rel(path), str(e))
            return False
        return self.add(subject, sequence, frame, camera, rgb, path, mask=alpha if self.cfg.masks else None)

    def side_file(self, subject: str, sequence: str, kind: str, frame: int, arrays: dict[str, np.ndarray]) -> str:
        """Store `arrays` as <subject>/<sequence>/<kind>/<frame:05d>.npz inside the capture; returns its path."""
        rel = f"{subject}/{sequence}/{kind}/{int(frame):05d}.npz"
        path = self.writer.work_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **arrays)
        self.side_files.append(rel)
        return rel

    def close(self) -> None:
        rows = self.writer.rows
        if not rows:
            shutil.rmtree(self.writer.tmp, ignore_errors=True)
            first = "; ".join(f"{s['item']}: {s['reason']}" for s in self.skipped[:5])
            raise CaptureError(f"{self.root_in}: nothing imported from this {self.source} source "
                               f"({len(self.skipped)} items skipped{': ' + first if first else ''})")
        seqs = sorted({f"{r['subject']}/{r['sequence']}" for r in rows})
        splits = {s: self.split_of(s) for s in sorted({r["subject"] for r in rows})}
        self.writer.info.update(root_in=str(self.root_in), config=asdict(self.cfg), splits=splits,
                                skipped=self.skipped, warnings=self.warnings, side_files=self.side_files, **self.info)
        self.writer.close()
        self.report = ImportReport(self.source, str(self.root_in), str(self.out), len(rows), seqs, splits,
                                   self.skipped, self.warnings, self.side_files)
