"""In-the-wild generation (`geoface generate PHOTO --views N --out DIR`): one photo -> N views on an orbit around
the head, the head mesh, cameras and a contact sheet.

Steps (`generate_from_photo`): read the photo as a viewer shows it (`read_photo`: PIL; JPEG, PNG, WebP, TIFF, BMP,
GIF; EXIF orientation applied, first frame of a multi-frame file, an embedded ICC profile converted to sRGB,
transparency composited over white; refused in one line: missing, a folder, empty, not an image, truncated or
damaged, a header declaring more than `PHOTO_MAX_PIXELS` (a JPEG; decoded at reduced scale above
fileio.MAX_IMAGE_PIXELS) or fileio.MAX_IMAGE_PIXELS (other formats); longest side above `max_side` px is downscaled,
noted) -> MediaPipe face detection (full-range model); no face is an error, several faces are noted and the largest
is used -> MediaPipe FaceMesh (478 landmarks) on a square around that face; a face under `MIN_FACE_PX` px tall is
refused -> camera of the photo in the head's canonical frame (`orbit.estimate_photo_camera`: assumed 50
mm-equivalent focal length, PnP + single-view head fit) -> square crop around the head at the model resolution
(`orbit.head_crop`) -> N target cameras on an orbit (`orbit.orbit_cameras`) -> `GeoFacePipeline` -> files.

Outputs in out_dir (written to a temporary sibling folder and renamed at the end, so a failure leaves nothing):
    reference.png          the crop the model saw (S×S)
    views/view_XX.png      generated views (S×S)
    mesh.obj               the mesh from the generated UV position map (canonical head frame, metres, with UVs)
    posmap.npy             (R, R, 3) float32 generated UV position map, normalised box coordinates
    cameras.json           canonical cameras.json {"convention": "opencv", "units": "m", "cameras": {reference,
                           view_XX}} (S×S; world = canonical head frame)
    contact_sheet.png      reference + views, upscaled, with the mesh overlaid (shaded, outlined)
    report.json            photo, sizes, notes (downscaling, faces found), camera estimate, settings, timings
    gs/                    optional (export_gs=True): `export.export_3dgs` of reference + views + mesh

`model_dir` is a `GeoFacePipeline.save_pretrained` folder, or a bare transformer folder (the train stage's
models/geoface) with the `GeoFaceConfig` it was trained with (`cfg`, or geoface_config.json beside it).
"""
from __future__ import annotations

import io
import json
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import ExifTags, Image, ImageCms, ImageOps, UnidentifiedImageError
from tqdm.auto import tqdm

from flame_fitting.core.errors import GeofaceError
from flame_fitting.geometry.camera import Camera
from flame_fitting.formats.capture import save_cameras
from flame_fitting.core.fileio import (MAX_IMAGE_PIXELS, check_output_dir, check_pixel_count, output_dir,
                                      read_json_object, write_obj, write_png)
from flame_fitting.head.head_model import load_head_model
from flame_fitting.geometry.render import Lighting, render_mesh
from flame_fitting.uv import UVLayout

from .config import GeoFaceConfig
from .device import resolve_device
from .orbit import (DEFAULT_FILL, DEFAULT_FOCAL_MM, CameraEstimateError, crop_view, estimate_photo_camera, head_crop,
                    orbit_cameras)
from .pipeline import GeoFacePipeline, head_info_of

MIN_FACE_PX = 64
MAX_SIDE = 4096
# A JPEG photo may declare up to 4× fileio.MAX_IMAGE_PIXELS (537 MP: Samsung's 200 MP mode is 16320×12240, a
# medium-format pixel-shift shot ~400 MP): above MAX_IMAGE_PIXELS it is decoded at 1/2, 1/4 or 1/8 scale by the JPEG
# decoder itself (DCT scaling, PIL's `draft`), so no more than MAX_IMAGE_PIXELS are ever decoded; the limit on the
# declared size bounds the decoding time (the whole file is still entropy-decoded). Other formats have no reduced
# decode: MAX_IMAGE_PIXELS.
PHOTO_MAX_PIXELS = 4 * MAX_IMAGE_PIXELS
_JPEG = ("JPEG", "MPO")
_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
_PIL_LIMIT = threading.Lock()
_DETECTOR: dict = {}


class GenerateError(GeofaceError, ValueError):
    """A photo or model that cannot be used (names the file and the problem)."""


@dataclass
class PhotoFace:
    image: np.ndarray        # (H, W, 3) uint8 RGB (after any downscaling)
    landmarks: np.ndarray    # (478, 2) float32 pixels of `image`
    box: np.ndarray          # (4,) x0, y0, x1, y1 of the landmarks
    n_faces: int
    notes: list[str] = field(default_factory=list)


def _open_photo(p: Path) -> Image.Image:
    """Image.open (the header only, no pixel decoded) without PIL's own decompression-bomb check, which refuses
    above 2 × 89 MP (a 200 MP phone photo): `read_photo` checks the declared size itself before decoding. PIL has no
    per-call limit, so its global is lifted for the call, under a lock, and restored."""
    with _PIL_LIMIT:
        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            return Image.open(p)
        finally:
            Image.MAX_IMAGE_PIXELS = limit


def _decode_size(im: Image.Image, path, max_side: int, notes: list[str]) -> None:
    """Refuse a photo declaring more than it may (`PHOTO_MAX_PIXELS` for a JPEG, fileio.MAX_IMAGE_PIXELS for other
    formats); a JPEG above MAX_IMAGE_PIXELS is set to decode at the smallest DCT scale (1/2, 1/4, 1/8) that still
    holds `max_side` px on its longest side (a JPEG below it decodes in full, as before: DCT scaling differs from
    full decoding + area downscaling by ~0.5 level on average)."""
    w, h = im.size
    check_pixel_count((w, h), path, GenerateError, kind="photo", limit=PHOTO_MAX_PIXELS, holder="a photo")
    if w * h <= MAX_IMAGE_PIXELS:
        return
    if im.format not in _JPEG:
        raise GenerateError(f"{path}: the photo declares {w}×{h} pixels; a {im.format} photo is read up to "
                            f"{MAX_IMAGE_PIXELS} pixels (a JPEG up to {PHOTO_MAX_PIXELS}: it is decoded at reduced "
                            "scale); save it as JPEG, or smaller")
    s = min(1.0, max_side / max(w, h))
    im.draft(im.mode, (max(1, int(np.ceil(w * s))), max(1, int(np.ceil(h * s)))))
    if im.size[0] * im.size[1] > MAX_IMAGE_PIXELS:  # max_side too large for 1/8 scale, or draft not possible
        raise GenerateError(f"{path}: the photo has {w}×{h} pixels; at most {MAX_IMAGE_PIXELS} are decoded, "
                            f"{im.size[0]}×{im.size[1]} at the scale max_side={max_side} needs; "
                            "use a smaller max_side")
    notes.append(f"decoded at 1/{round(w / im.size[0])} scale (JPEG DCT scaling; {w}x{h} is more than "
                 f"{MAX_IMAGE_PIXELS} pixels)")


def _to_srgb(im: Image.Image, icc: bytes | None, notes: list[str]) -> Image.Image:
    """`im` (RGB[A], L[A], CMYK, P) converted from its embedded ICC profile `icc` to sRGB (mode RGB, or RGBA with
    the alpha kept), as a colour-managed viewer shows it: an iPhone's Display P3 photo read as sRGB is duller and
    shifted; the model was trained on sRGB. Perceptual intent, what the ICC recommends for photographs and browsers
    use (Firefox's default; Chrome's skcms reads a LUT profile's A2B0, the perceptual table); for a matrix/TRC profile
    (Display P3, Adobe RGB: nearly every camera and phone) it equals relative colorimetric, out-of-gamut colours
    clipped. No profile: unchanged; a profile that cannot be read or does not fit the pixels: unchanged, noted."""
    if not icc:
        return im
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        name = ImageCms.getProfileDescription(src).strip() or "unnamed"
        space = src.profile.xcolor_space.strip()
    except (OSError, ImageCms.PyCMSError, ValueError, TypeError) as e:  # lcms: "cannot open profile from string"
        notes.append(f"its ICC profile is unreadable ({e}): colours read as sRGB")
        return im
    if im.mode == "P":
        im = im.convert("RGBA" if im.has_transparency_data else "RGB")
    base, alpha = (im.convert(im.mode[:-1]), im.getchannel("A")) if im.mode in ("RGBA", "LA") else (im, None)
    if {"RGB": "RGB", "L": "GRAY", "CMYK": "CMYK"}.get(base.mode) != space:
        notes.append(f"its ICC profile ({name}) is for {space} pixels, not {base.mode}: colours read as sRGB")
        return im
    try:
        rgb = ImageCms.profileToProfile(base, src, _SRGB, renderingIntent=ImageCms.Intent.PERCEPTUAL,
                                        outputMode="RGB")
    except ImageCms.PyCMSError as e:
        notes.append(f"its ICC profile ({name}) cannot be applied ({e}): colours read as sRGB")
        return im
    if alpha is not None:
        rgb.putalpha(alpha)
    notes.append(f"colours converted from its ICC profile ({name}) to sRGB")
    return rgb


def _upright_rgb(im: Image.Image, path, notes: list[str]) -> np.ndarray:
    """A loaded PIL image -> (H, W, 3|4) uint8 RGB[A] turned upright by its EXIF orientation (4 channels when it
    carries transparency), colours converted to sRGB from its ICC profile; notes what it turned and converted."""
    icc = im.info.get("icc_profile")
    try:
        turn = im.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # noqa: BLE001 - PIL raises many types on a damaged EXIF block; the pixels are still good
        turn = None
        notes.append("its EXIF block is unreadable: no orientation applied")
    if turn in range(2, 9):
        im = ImageOps.exif_transpose(im)
        notes.append(f"turned upright by its EXIF orientation ({turn})")
    if im.mode.startswith("I;16"):  # 16-bit grey (PNG, TIFF): PIL's own conversion would clip at 255
        im = Image.fromarray((np.asarray(im, np.float32) / 257.0 + 0.5).astype(np.uint8))
    if im.mode not in ("I", "F"):
        im = _to_srgb(im, icc, notes)
    try:
        if im.mode in ("I", "F"):
            raise ValueError("32-bit pixels")
        mode = "RGBA" if im.has_transparency_data else "RGB"
        return np.asarray(im if im.mode == mode else im.convert(mode))  # no copy of a 200 MB decoded image
    except ValueError as e:
        raise GenerateError(f"{path}: unsupported pixel format {im.mode} ({e}); save the photo as an 8- or 16-bit "
                            "JPEG or PNG") from None


def read_photo(path: Path | str, max_side: int = MAX_SIDE) -> tuple[np.ndarray, list[str], tuple[int, int]]:
    """-> RGB uint8 (longest side <= max_side), notes, (width, height) as shown. Read with PIL, as a photo viewer
    shows it: turned upright by its EXIF orientation (phones store portraits sideways with Orientation 6 or 8), the
    first frame of a multi-frame file (GIF, TIFF, WebP animation; noted), 16-bit scaled to 8, grey / palette / CMYK
    converted to RGB, an embedded ICC profile (an iPhone's Display P3, a CMYK or grey profile) converted to sRGB
    (`_to_srgb`; noted; an unreadable profile is noted and the pixels read as sRGB). A photo with transparency (a
    portrait cut out of its background; RGBA, LA, a palette with a transparent entry) is composited over white, as
    single-image-to-3D tools do: the colour of a transparent pixel is whatever the cutting tool left there (often
    black). A JPEG of more than fileio.MAX_IMAGE_PIXELS (a 200 MP phone photo) is decoded at 1/2-1/8 scale
    (`_decode_size`; noted). A missing path, a folder, a header declaring more than `PHOTO_MAX_PIXELS` (a JPEG) or
    fileio.MAX_IMAGE_PIXELS (other formats), a file PIL cannot identify, or a truncated or damaged file raises one
    GenerateError naming the file."""
    p = Path(path)
    if not p.exists():
        raise GenerateError(f"{path}: image file is missing")
    if not p.is_file():
        raise GenerateError(f"{path}: is {'a folder' if p.is_dir() else 'not a regular file'}, not an image file")
    if p.stat().st_size == 0:
        raise GenerateError(f"{path}: the file is empty (0 bytes)")
    notes = []
    try:
        with _open_photo(p) as im:
            declared = im.size
            _decode_size(im, path, max_side, notes)  # before any pixel is decoded
            decoded = im.size
            if getattr(im, "n_frames", 1) > 1 and im.format != "MPO":  # MPO: a phone JPEG + its extra pictures
                notes.append(f"{im.n_frames} frames ({im.format}); using the first")
            im.load()
            rgba = _upright_rgb(im, path, notes)
    except UnidentifiedImageError:
        raise GenerateError(f"{path}: not a readable image (JPEG, PNG, WebP, TIFF, BMP or GIF; an iPhone HEIC photo: "
                            "export it as JPEG)") from None
    except (OSError, SyntaxError, EOFError, struct.error) as e:  # PIL's errors on damaged pixel data
        raise GenerateError(f"{path}: truncated or damaged image ({e})") from None
    img, alpha = rgba[..., :3], (rgba[..., 3] if rgba.shape[2] == 4 else None)
    w, h = declared if rgba.shape[1::-1] == decoded else declared[::-1]  # as shown: EXIF may have turned it
    if alpha is not None and (alpha < 255).any():
        a = alpha[..., None].astype(np.float32) / 255.0
        img = (img * a + 255.0 * (1.0 - a) + 0.5).astype(np.uint8)
        notes.append(f"composited over white: {float((alpha < 255).mean()):.0%} of the photo is (partly) transparent")
    img = np.ascontiguousarray(img)
    if max(h, w) > max_side:
        s = max_side / max(h, w)
        img = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    if img.shape[1::-1] != (w, h):
        notes.append(f"downscaled from {w}x{h} to {img.shape[1]}x{img.shape[0]} (longest side > {max_side} px)")
    return img, notes, (w, h)


def _face_boxes(rgb: np.ndarray) -> list[np.ndarray]:
    """MediaPipe full-range face detection -> boxes (x0, y0, x1, y1) in pixels, largest first."""
    if "det" not in _DETECTOR:
        import mediapipe as mp
        _DETECTOR["det"] = mp.solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=0.5)
    H, W = rgb.shape[:2]
    boxes = []
    for d in _DETECTOR["det"].process(rgb).detections or []:
        b = d.location_data.relative_bounding_box
        boxes.append(np.array([b.xmin * W, b.ymin * H, (b.xmin + b.width) * W, (b.ymin + b.height) * H]))
    return sorted(boxes, key=lambda b: -(b[2] - b[0]) * (b[3] - b[1]))


def detect_face(rgb: np.ndarray, where: str = "photo") -> PhotoFace:
    """Largest face's 478 landmarks (FaceMesh on a square 2.5× the detection box around it)."""
    from flame_fitting.landmarks.detector import detect_rgb

    boxes = _face_boxes(rgb)
    if not boxes:
        raise GenerateError(f"{where}: no face found (MediaPipe face detection)")
    notes = []
    if len(boxes) > 1:
        notes.append(f"{len(boxes)} faces found; using the largest")
    b = boxes[0]
    if max(b[2] - b[0], b[3] - b[1]) < MIN_FACE_PX:
        raise GenerateError(f"{where}: the face is only {max(b[2] - b[0], b[3] - b[1]):.0f} px across "
                            f"(need >= {MIN_FACE_PX} px); use a larger or closer photo")
    H, W = rgb.shape[:2]
    cx, cy, side = 0.5 * (b[0] + b[2]), 0.5 * (b[1] + b[3]), 2.5 * max(b[2] - b[0], b[3] - b[1])
    x0, y0 = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
    x1, y1 = int(min(W, cx + side / 2)), int(min(H, cy + side / 2))
    res = detect_rgb(np.ascontiguousarray(rgb[y0:y1, x0:x1]))
    if not res.detected:
        raise GenerateError(f"{where}: a face was detected but MediaPipe FaceMesh found no landmarks on it")
    pts = res.points + np.array([x0, y0], np.float32)
    box = np.array([pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()], np.float32)
    if box[3] - box[1] < MIN_FACE_PX:
        raise GenerateError(f"{where}: the face is only {box[3] - box[1]:.0f} px tall (need >= {MIN_FACE_PX} px)")
    return PhotoFace(rgb, pts, box, len(boxes), notes)


def read_model_config(path: Path | str, error: type[Exception] = GenerateError) -> GeoFaceConfig:
    """The training config saved beside a model (geoface_config.json: its tokens, model, loss, train sections, as
    training writes them); a missing file, unreadable JSON, another JSON type, a missing or non-object section or an
    invalid config raises one `error` naming the file."""
    data = read_json_object(path, error)
    sections = ("tokens", "model", "loss", "train")
    bad = [k for k in sections if not isinstance(data.get(k), dict)]
    if bad:
        raise error(f"{path}: sections {bad} are missing or not JSON objects (training writes {list(sections)})")
    try:
        return GeoFaceConfig.from_sections(**{k: data[k] for k in sections}, where=str(path))
    except GeofaceError as e:  # a key's error names the file already; a check across sections does not
        raise error(str(e) if str(e).startswith(str(path)) else f"{path}: {e}") from None


def load_pipeline(model_dir: Path | str, head_model, cfg: GeoFaceConfig | None = None, scheduler: str = "ddim",
                  gutter: int = 4, device: str | torch.device = "auto") -> GeoFacePipeline:
    """A pipeline folder, or a bare transformer folder + its training config (module docstring), on `device`
    (`device.resolve_device`: auto = a CUDA GPU when there is one)."""
    dev = resolve_device(device)  # a GPU that is not there: one line before anything is read
    return _load_pipeline(model_dir, head_model, cfg, scheduler, gutter).to(dev)


def _load_pipeline(model_dir, head_model, cfg, scheduler, gutter) -> GeoFacePipeline:
    p = Path(model_dir)
    layout = UVLayout.from_head_model(head_model)
    if (p / "model_index.json").is_file():
        pipe = GeoFacePipeline.from_pretrained(p)
        if pipe.uv_layout is None:
            pipe.set_head(layout, head_info_of(head_model, gutter))
        elif pipe.uv_layout.key != layout.key:
            raise GenerateError(f"{p}: the pipeline's UV layout ({pipe.uv_layout.key}) differs from the head model's "
                                f"at {head_model.folder} ({layout.key}); use the head model the model was trained with")
        pipe.use_scheduler(scheduler)
        return pipe
    if (p / "config.json").is_file():
        if cfg is None:
            found = [q for q in (p / "geoface_config.json", p.parent / "geoface_config.json") if q.is_file()]
            if not found:
                raise GenerateError(f"{p}: a bare transformer folder needs its training config (pass cfg, or save a "
                                    f"pipeline with GeoFacePipeline.save_pretrained)")
            cfg = read_model_config(found[0])
        return GeoFacePipeline.from_training(p, cfg, layout=layout, head_info=head_info_of(head_model, gutter),
                                             scheduler=scheduler)
    raise GenerateError(f"{p}: neither a GeoFace pipeline folder (model_index.json) nor a transformer folder (config.json)")


def mesh_overlay(images: list[np.ndarray], cameras: list[Camera], vertices: np.ndarray, faces: np.ndarray,
                 alpha: float = 0.45) -> list[np.ndarray]:
    """Images (H,W,3) uint8 of `cameras` with the mesh rendered grey (one render call, a head-light per view)
    blended in at `alpha` and its silhouette outlined; unchanged when the vertices are not finite."""
    v = np.asarray(vertices, np.float32)
    if not np.isfinite(v).all():
        return [im.copy() for im in images]
    lights = [Lighting(direction=c.center.astype(np.float64) - v.mean(0)) for c in cameras]
    H, W = images[0].shape[:2]
    rgb, frags = render_mesh(v, faces, np.stack([c.K for c in cameras]), np.stack([c.world_to_cam for c in cameras]),
                             W, H, lights)
    out = []
    for k, image in enumerate(images):
        mask = frags.face_id[k] >= 0
        im = image.astype(np.float32)
        im[mask] = (1 - alpha) * im[mask] + alpha * 255 * rgb[k][mask]
        im = im.round().clip(0, 255).astype(np.uint8)
        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        out.append(cv2.drawContours(im, contours, -1, (90, 170, 255), 1, cv2.LINE_AA))
    return out


def contact_sheet(images: list[np.ndarray], cameras: list[Camera], labels: list[str], vertices: np.ndarray | None,
                  faces: np.ndarray | None, tile: int = 256, cols: int = 4) -> np.ndarray:
    """Tiles (upscaled to `tile`) with the mesh overlaid (`mesh_overlay`) and a label -> one RGB uint8 image."""
    tiles = [cv2.resize(img, (tile, tile), interpolation=cv2.INTER_CUBIC) for img in images]
    if vertices is not None:
        tiles = mesh_overlay(tiles, [c.resized(tile, tile) for c in cameras], vertices, faces)
    for t, label in zip(tiles, labels):
        cv2.putText(t, label, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    cols = min(cols, len(tiles))
    rows = -(-len(tiles) // cols)
    sheet = np.zeros((rows * tile, cols * tile, 3), np.uint8)
    for k, t in enumerate(tiles):
        r, c = divmod(k, cols)
        sheet[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] = t
    return sheet


def generate_from_photo(photo: Path | str, model_dir: Path | str, n_views: int, out_dir: Path | str, *,
                        head_model_dir: Path | str = "data/head_model", cfg: GeoFaceConfig | None = None,
                        num_inference_steps: int = 25, scheduler: str = "ddim", guidance_scale: float = 1.0,
                        seed: int = 0, yaw_range_deg: tuple[float, float] = (-60.0, 60.0),
                        focal_mm: float = DEFAULT_FOCAL_MM, fill: float = DEFAULT_FILL, max_side: int = MAX_SIDE,
                        export_gs: bool = False, overwrite: bool = False, progress: bool = True,
                        device: str | torch.device = "auto") -> dict:
    """Generate n_views views + mesh from one photo into out_dir (see the module docstring) with the model on
    `device` (auto: a CUDA GPU when there is one); returns the report."""
    from .export import export_3dgs

    t0 = time.perf_counter()
    out = Path(out_dir)
    if n_views < 1 or int(num_inference_steps) < 1 or guidance_scale < 0:  # before any work
        raise GenerateError(f"n_views and num_inference_steps must be >= 1 and guidance_scale >= 0, got {n_views}, "
                            f"{num_inference_steps}, {guidance_scale}")
    device = resolve_device(device)  # a GPU that is not there: one line before any work
    inputs = [photo, model_dir, head_model_dir]
    check_output_dir(out, inputs, overwrite, kind="generated views")  # before any work: never replaces data geoface did not write
    bar = tqdm(total=5, desc="generate", disable=not progress)
    try:
        rgb, notes, orig = read_photo(photo, max_side)
        face = detect_face(rgb, str(photo))
        notes += face.notes
        bar.update(1)
        head = load_head_model(head_model_dir)
        pipe = load_pipeline(model_dir, head, cfg, scheduler, device=device)
        pipe.set_progress_bar_config(disable=not progress, leave=False)
        bar.update(1)
        H, W = rgb.shape[:2]
        try:
            est = estimate_photo_camera(head, face.landmarks, W, H, focal_mm)
        except CameraEstimateError as e:
            raise GenerateError(f"{photo}: cannot estimate the camera ({e})") from None
        if est.note:
            notes.append(est.note)
        S = pipe.config.resolution
        ref_img, ref_cam = crop_view(rgb, est.camera, head_crop(est.camera, est.centre, est.head_height, fill), S)
        ref_cam = Camera(K=ref_cam.K, world_to_cam=ref_cam.world_to_cam, width=S, height=S, name="reference")
        targets = orbit_cameras(ref_cam, est.centre, n_views, yaw_range_deg)
        bar.update(1)
        t_gen = time.perf_counter()
        res = pipe(ref_img, ref_cam, targets, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                   seed=seed)
        t_gen = time.perf_counter() - t_gen
        bar.update(1)

        names = [c.name for c in res.cameras]
        with output_dir(out, inputs, overwrite, kind="generated views") as tmp:
            write_png(tmp / "reference.png", res.reference[0])
            for name, img in zip(names, res.images):
                write_png(tmp / "views" / f"{name}.png", img)
            if res.vertices is not None:
                write_obj(tmp / "mesh.obj", res.vertices, res.faces, pipe.uv_layout.uv, pipe.uv_layout.uv_faces)
            if res.posmap is not None:
                np.save(tmp / "posmap.npy", res.posmap.astype(np.float32))
            save_cameras(tmp / "cameras.json", {"reference": res.reference_cameras[0], **dict(zip(names, res.cameras))})
            sheet = contact_sheet([res.reference[0], *res.images], [res.reference_cameras[0], *res.cameras],
                                  ["reference", *names], res.vertices, res.faces)
            write_png(tmp / "contact_sheet.png", sheet)
            if export_gs:
                export_3dgs(tmp / "gs", [res.reference[0], *res.images], [res.reference_cameras[0], *res.cameras],
                            res.vertices, res.faces, names=["reference", *names])
            report = {
                "photo": str(photo), "photo_size": list(orig), "used_size": [W, H], "faces_found": face.n_faces,
                "face_box": [round(float(v), 1) for v in face.box], "notes": notes,
                "camera": {"method": est.method, "landmark_rms_px": round(est.rms_px, 3),
                           "focal_mm_equivalent": focal_mm,
                           "head_height_m": round(est.head_height, 4), "head_centre": [float(x) for x in est.centre],
                           "distance_m": round(float(np.linalg.norm(ref_cam.center - est.centre)), 4)},
                "n_views": n_views, "yaw_range_deg": list(yaw_range_deg), "resolution": S,
                "uv_resolution": pipe.config.uv_resolution, "scheduler": type(pipe.scheduler).__name__,
                "num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale, "seed": seed,
                "device": str(pipe.device),
                "model_dir": str(model_dir), "head_model": pipe.head_info,
                "seconds": {"generate": round(t_gen, 3), "total": round(time.perf_counter() - t0, 3)},
                "files": sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file()) + ["report.json"],
            }
            (tmp / "report.json").write_text(json.dumps(report, indent=1))
        bar.update(1)
    finally:  # an error's line is not glued to an open bar
        bar.close()
    return report
