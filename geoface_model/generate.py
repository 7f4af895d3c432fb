"""In-the-wild generation (`geoface generate PHOTO --views N --out DIR`): one photo -> N views on an orbit around
the head, the head mesh, cameras and a contact sheet.

Steps (`generate_from_photo`): read the photo as a viewer shows it (`photo.read_photo`: PIL; JPEG, PNG, WebP, TIFF, BMP,
GIF; EXIF orientation applied, first frame of a multi-frame file, an embedded ICC profile converted to sRGB,
transparency composited over white; refused in one line: missing, a folder, empty, not an image, truncated or
damaged, a header declaring more than `PHOTO_MAX_PIXELS` (a JPEG; decoded at reduced scale above
readers.MAX_IMAGE_PIXELS) or readers.MAX_IMAGE_PIXELS (other formats); longest side above `max_side` px is downscaled,
noted) -> MediaPipe face detection (full-range model; a photo where it finds none is searched again on
`DETECT_TILE` px tiles: it misses faces under ~5 % of the photo's side; photo_face.py); no face is an error (one
found only with the photo turned 90° or 180° says how to turn it), several faces are noted (their sizes, where the
one used is) and the largest is used -> MediaPipe FaceMesh (478 landmarks) on a square around that face, the
candidate whose landmarks cover its detection box (`photo_face.detect_face`); none (a profile) or a face under `MIN_FACE_PX` px
is refused -> camera of the photo in the head's canonical frame (`orbit.estimate_photo_camera`: assumed 50
mm-equivalent focal length, PnP + single-view head fit) -> square crop around the head at the model resolution
(`orbit.head_crop`; the part outside the photo, edge-replicated, and an upsampling are noted, `crop_notes`) -> N
target cameras on an orbit (`orbit.orbit_cameras`) -> `GeoFacePipeline` -> files.

Outputs in out_dir (written to a temporary sibling folder and renamed at the end, so a failure leaves nothing):
    reference.png          the crop the model saw (S×S)
    views/view_XX.png      generated views (S×S)
    mesh.obj               the mesh from the generated UV position map (canonical head frame, metres, with UVs)
    posmap.npy             (R, R, 3) float32 generated UV position map, normalised box coordinates
    cameras.json           canonical cameras.json {"convention": "opencv", "units": "m", "cameras": {reference,
                           view_XX}} (S×S; world = canonical head frame)
    contact_sheet.png      reference + views, upscaled, with the mesh overlaid (shaded, outlined)
    report.json            photo, sizes, face_box (its landmarks), crop_box (x0, y0, side in the photo), notes
                           (downscaling, faces found, tiles, crop outside the photo / upsampled), camera estimate,
                           settings, timings
    gs/                    optional (export_gs=True): `export.export_3dgs` of reference + views + mesh

`model_dir` is a `GeoFacePipeline.save_pretrained` folder, or a bare transformer folder (the train stage's
models/geoface) with the `GeoFaceConfig` it was trained with (`cfg`, or geoface_config.json beside it).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

from flame_fitting.core.errors import GeofaceError
from flame_fitting.geometry.camera import Camera
from flame_fitting.formats.capture import save_cameras
from flame_fitting.core.fileio import check_output_dir, output_dir, write_obj, write_png
from flame_fitting.core.json_files import read_json_object
from flame_fitting.head.head_model import load_head_model
from flame_fitting.geometry.render import Lighting, render_mesh
from flame_fitting.uv import UVLayout

from .config import GeoFaceConfig
from .device import resolve_device
from .orbit import (DEFAULT_FILL, DEFAULT_FOCAL_MM, CameraEstimateError, crop_view, estimate_photo_camera, head_crop,
                    orbit_cameras)
from .photo import MAX_SIDE, PHOTO_MAX_PIXELS, GenerateError, read_photo  # noqa: F401  (public here)
from .photo_face import crop_notes, detect_face
from .pipeline import GeoFacePipeline, head_info_of
from .weights import MAX_CONFIG_BYTES

def read_model_config(path: Path | str, error: type[Exception] = GenerateError) -> GeoFaceConfig:
    """The training config saved beside a model (geoface_config.json: its tokens, model, loss, train sections, as
    training writes them); a missing file, unreadable JSON, another JSON type, a missing or non-object section or an
    invalid config raises one `error` naming the file."""
    data = read_json_object(path, error, MAX_CONFIG_BYTES, "training config")
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
    """A pipeline folder, or a bare transformer folder (the train stage's models/geoface) + its training config
    (module docstring), on `device` (`device.resolve_device`: auto = a CUDA GPU when there is one). head_model: the
    `HeadModel` (geoface.load_head_model) the model was trained with, whose UV layout turns the generated position
    map into a mesh; gutter: the uv stage's bake gutter. GenerateError / PipelineError / DeviceError naming the
    folder or device otherwise."""
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
                        pitch_deg: float | None = None, focal_mm: float = DEFAULT_FOCAL_MM, fill: float = DEFAULT_FILL,
                        max_side: int = MAX_SIDE,
                        export_gs: bool = False, overwrite: bool = False, progress: bool = True,
                        device: str | torch.device = "auto") -> dict:
    """Generate n_views views + mesh from one photo into out_dir (see the module docstring) with the model on
    `device` (auto: a CUDA GPU when there is one); returns the report. model_dir: as `load_pipeline`;
    head_model_dir: the head model folder it was trained with; out_dir: a new folder (an existing one is replaced
    only when geoface wrote it and `overwrite`); yaw_range_deg / pitch_deg: the orbit of the target views around
    the head in degrees (pitch None: the photo's). GenerateError naming the photo / folder for bad input."""
    from .export import export_3dgs

    t0 = time.perf_counter()
    out = Path(out_dir)
    if isinstance(n_views, bool) or not isinstance(n_views, (int, np.integer)) or n_views < 1 \
            or int(num_inference_steps) < 1 or guidance_scale < 0:  # before any work
        raise GenerateError(f"n_views (an integer) and num_inference_steps must be >= 1 and guidance_scale >= 0, got "
                            f"{n_views!r}, {num_inference_steps}, {guidance_scale}")
    yaws = list(yaw_range_deg) if isinstance(yaw_range_deg, (list, tuple, np.ndarray)) else []
    if len(yaws) != 2 or not all(isinstance(y, (int, float, np.number)) and np.isfinite(y) for y in yaws):
        raise GenerateError(f"yaw_range_deg must be (first, last) degrees, got {yaw_range_deg!r}")
    if pitch_deg is not None and not -90 < pitch_deg < 90:  # straight above or below the head: no image up
        raise GenerateError(f"pitch_deg {pitch_deg:g}: the views' elevation must be between -90 and 90 degrees")
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
        box = head_crop(est.camera, est.centre, est.head_height, fill)
        notes += crop_notes(box, W, H, S)
        ref_img, ref_cam = crop_view(rgb, est.camera, box, S)
        ref_cam = Camera(K=ref_cam.K, world_to_cam=ref_cam.world_to_cam, width=S, height=S, name="reference")
        targets = orbit_cameras(ref_cam, est.centre, n_views, yaw_range_deg, pitch_deg)
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
                "face_box": [round(float(v), 1) for v in face.box], "crop_box": list(box), "notes": notes,
                "camera": {"method": est.method, "landmark_rms_px": round(est.rms_px, 3),
                           "focal_mm_equivalent": focal_mm,
                           "head_height_m": round(est.head_height, 4), "head_centre": [float(x) for x in est.centre],
                           "distance_m": round(float(np.linalg.norm(ref_cam.center - est.centre)), 4)},
                "n_views": n_views, "yaw_range_deg": list(yaw_range_deg), "pitch_deg": pitch_deg,
                "resolution": S,
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
