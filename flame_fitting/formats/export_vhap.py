"""Fits as VHAP's NeRF-style dataset, the layout GaussianAvatars trains on (VHAP `export_as_nerf_dataset.py`,
`flame_param` mode; read by VHAP's `NeRFDataset` and GaussianAvatars' `readDynamicNerfInfo`).

    <out>/<subject>/<sequence>/
        images/{timestep_index:05d}_{camera_index:02d}.png      the capture's images (PNG; other formats re-encoded)
        fg_masks/{timestep_index:05d}_{camera_index:02d}.png    the capture's masks (when the image has one)
        flame_param/{timestep_index:05d}.npz                    one frame's FLAME parameters (below)
        canonical_flame_param.npz                               the identity, zero pose, jaw opened 0.3 rad
        transforms.json, transforms_train.json, transforms_val.json, transforms_test.json
    <out>/export.json                                           what was written and what was left out (diverged
                                                                frames, frames with a file linked from outside the
                                                                capture: fit_export)

transforms*.json (VHAP's keys): top level `frames`, `timestep_indices`, `camera_indices` and one camera's
fl_x, fl_y, cx, cy, w, h, camera_angle_x, camera_angle_y (VHAP writes them "to be compatible with other nerf
libraries"); per frame `timestep_index` (0..T-1 over the exported frames, consecutive as VHAP's reader asserts),
`timestep_index_original` (the same), `timestep_id` (our frame number, 5 digits), `camera_index` (index in the
sorted camera names), `camera_id` (our camera name), fl_x, fl_y, cx, cy, w, h, camera_angle_x = 2 atan(w / 2 fl_x),
camera_angle_y, `transform_matrix`, `file_path`, `fg_mask_path`, `flame_param_path`.
Cameras (VHAP's `opencv->opengl` conversion): `transform_matrix` is the OpenGL camera→world (x right, y up,
z backward) = inverse(world_to_cam) @ diag(1, -1, -1, 1); cx is ours, cy = h - our cy (VHAP flips the principal
point with the y axis: its cy counts from the image's bottom edge). Metres, our world frame (VHAP's optional
recentring of the head at the origin is not applied).
flame_param npz (float32; VHAP's `write_flame_param`): translation (1, 3) = our transl, rotation (1, 3) = our
global_orient (axis-angle, about FLAME's root joint, before the translation as in FLAME / smplx), neck_pose,
jaw_pose (1, 3), eyes_pose (1, 6) = our eye_pose [left | right], expr (1, n_expr), shape (n_shape,), static_offset
(1, V, 3) zeros (GaussianAvatars reads it; it pads the teeth VHAP adds). shape / expr are zero-padded to n_shape /
n_expr (default 300 / 100, FLAME's full widths, what VHAP's and GaussianAvatars' FlameHead build): the padded
components are zero, so the vertices are ours exactly when the consumer loads the same FLAME model.
Splits (VHAP's `split_json`): the first ceil(train_ratio · T) timesteps are train + val, the others test; val is
one camera (`val_camera`; default VHAP's rule: camera index 8 when there are more than 8 — meant for NeRSemble's
frontal camera; our index is the position in the sorted camera names — else the last), train the others; test has
every camera. One camera: val is empty.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from flame_fitting.core.fileio import output_dir, write_bytes, write_json, write_npz, write_png
from flame_fitting.core.readers import read_image
from flame_fitting.formats.fit_export import ExportError, ExportSequence, load_export_input
from flame_fitting.geometry.camera import Camera, opengl_cam_to_world

N_SHAPE, N_EXPR = 300, 100   # FLAME's widths, VHAP's and GaussianAvatars' defaults
TRAIN_RATIO = 0.7            # VHAP's split_json default
CANONICAL_JAW = 0.3          # VHAP opens the canonical mouth this much (rad, about x)
VHAP_VAL_INDEX = 8           # split_json: "use camera 8 for validation (front-view of the NeRSemble dataset)"


def padded(a: np.ndarray, width: int, what: str) -> np.ndarray:
    """(n,) -> (width,) float32 with zeros appended; ExportError when the fit has more components."""
    if a.shape[-1] > width:
        raise ExportError(f"{what}: the fit has {a.shape[-1]} components, more than the {width} to export "
                          f"(raise --n-shape / --n-expr)")
    return np.concatenate([a.astype(np.float32), np.zeros(width - a.shape[-1], np.float32)])


def flame_param(params: dict[str, np.ndarray], n_vertices: int, n_shape: int = N_SHAPE, n_expr: int = N_EXPR,
                where: str = "fit") -> dict[str, np.ndarray]:
    """One frame's parameters (fit_export.PARAMS names) -> VHAP's flame_param arrays (module docstring)."""
    one = lambda k: params[k].astype(np.float32)[None]  # noqa: E731  (1, w)
    return {"translation": one("transl"), "rotation": one("global_orient"), "neck_pose": one("neck_pose"),
            "jaw_pose": one("jaw_pose"), "eyes_pose": one("eye_pose"),
            "shape": padded(params["shape"], n_shape, f"{where} shape"),
            "expr": padded(params["expr"], n_expr, f"{where} expr")[None],
            "static_offset": np.zeros((1, n_vertices, 3), np.float32)}


def camera_entry(cam: Camera) -> dict:
    """VHAP's per-frame camera keys of an OpenCV camera (module docstring: OpenGL c2w, cy from the bottom)."""
    fx, fy, cx, cy = (float(cam.K[0, 0]), float(cam.K[1, 1]), float(cam.K[0, 2]), float(cam.K[1, 2]))
    w, h = cam.width, cam.height
    return {"cx": cx, "cy": h - cy, "fl_x": fx, "fl_y": fy, "h": h, "w": w,
            "camera_angle_x": 2 * math.atan(w / (2 * fx)), "camera_angle_y": 2 * math.atan(h / (2 * fy)),
            "transform_matrix": opengl_cam_to_world(cam).tolist()}


def val_index(names: list[str], val_camera: str | None) -> int:
    """The index (in the sorted camera `names`) of the val split's camera: `val_camera`'s, else VHAP's rule."""
    if val_camera in names:
        return names.index(val_camera)
    return VHAP_VAL_INDEX if len(names) > VHAP_VAL_INDEX else len(names) - 1


def splits(db: dict, train_ratio: float, val_camera: int | None) -> dict[str, dict]:
    """transforms_{train,val,test} of the full `db` (module docstring)."""
    shared = {k: v for k, v in db.items() if k not in ("frames", "timestep_indices", "camera_indices")}
    ts, cams = db["timestep_indices"], db["camera_indices"]
    nt = math.ceil(len(ts) * train_ratio)
    val = [val_camera] if len(cams) > 1 else []
    out = {"train": {**shared, "timestep_indices": ts[:nt], "camera_indices": [c for c in cams if c not in val]},
           "val": {**shared, "timestep_indices": ts[:nt], "camera_indices": val},
           "test": {**shared, "timestep_indices": ts[nt:], "camera_indices": list(cams)}}
    for name, d in out.items():
        first = name != "test"
        d["frames"] = [f for f in db["frames"] if (f["timestep_index"] < nt) == first
                       and f["camera_index"] in d["camera_indices"]]
    return out


def copy_png(src: Path, dst: Path) -> None:
    """The capture's image at `dst` as PNG: the same bytes when it is one, else decoded and re-encoded."""
    if src.suffix.lower() == ".png":
        write_bytes(dst, src.read_bytes())
    else:
        write_png(dst, read_image(src, error=ExportError))


def write_sequence(seq: ExportSequence, folder: Path, n_shape: int, n_expr: int, train_ratio: float,
                   val_camera: str | None) -> dict:
    """One sequence's VHAP folder; returns its summary."""
    names = seq.camera_names
    if val_camera is not None and val_camera not in names and len(names) > 1:
        raise ExportError(f"--val-camera {val_camera!r} is not a camera of {seq.subject}/{seq.sequence} "
                          f"({', '.join(names)})")
    shapes = np.stack([f.params["shape"] for f in seq.frames])
    if np.abs(shapes - shapes[0]).max() > 1e-6:
        raise ExportError(f"{seq.subject}/{seq.sequence}: the fit's shape differs between frames; VHAP's layout has "
                          f"one identity per sequence")
    for d in ("images", "fg_masks", "flame_param"):
        (folder / d).mkdir(parents=True, exist_ok=True)
    frames, n_masks = [], 0
    for ti, fr in enumerate(seq.frames):
        where = f"{seq.subject}/{seq.sequence} frame {fr.frame}"
        param_path = f"flame_param/{ti:05d}.npz"
        write_npz(folder / param_path, **flame_param(fr.params, len(fr.vertices), n_shape, n_expr, where))
        for v in fr.views:
            ci = names.index(v.camera)
            entry = {"timestep_index": ti, "timestep_index_original": ti, "timestep_id": f"{fr.frame:05d}",
                     "camera_index": ci, "camera_id": v.camera, **camera_entry(seq.cameras[v.camera]),
                     "file_path": f"images/{ti:05d}_{ci:02d}.png", "flame_param_path": param_path}
            copy_png(v.image, folder / entry["file_path"])
            if v.mask is not None:
                entry["fg_mask_path"] = f"fg_masks/{ti:05d}_{ci:02d}.png"
                copy_png(v.mask, folder / entry["fg_mask_path"])
                n_masks += 1
            frames.append(entry)
    last = {k: frames[-1][k] for k in ("cx", "cy", "fl_x", "fl_y", "h", "w", "camera_angle_x", "camera_angle_y")}
    db = {"frames": frames, **last, "timestep_indices": list(range(len(seq.frames))),
          "camera_indices": sorted({f["camera_index"] for f in frames})}
    write_json(folder / "transforms.json", db, indent=1)
    val = val_index(names, val_camera)
    for name, d in splits(db, train_ratio, val).items():
        write_json(folder / f"transforms_{name}.json", d, indent=1)
    p0 = seq.frames[0].params
    canon = {**{k: np.zeros((1, 3), np.float32) for k in ("translation", "rotation", "neck_pose")},
             "jaw_pose": np.array([[CANONICAL_JAW, 0, 0]], np.float32), "eyes_pose": np.zeros((1, 6), np.float32),
             "shape": padded(p0["shape"], n_shape, "shape"), "expr": np.zeros((1, n_expr), np.float32),
             "static_offset": np.zeros((1, len(seq.frames[0].vertices), 3), np.float32)}
    write_npz(folder / "canonical_flame_param.npz", **canon)
    return {"subject": seq.subject, "sequence": seq.sequence, "folder": f"{seq.subject}/{seq.sequence}",
            "timesteps": len(seq.frames), "cameras": names, "images": len(frames), "masks": n_masks,
            "frames": [f.frame for f in seq.frames], "skipped": seq.skipped}


def export_vhap(capture: Path | str, fits: Path | str, out: Path | str, cameras: str = "fit", n_shape: int = N_SHAPE,
                n_expr: int = N_EXPR, train_ratio: float = TRAIN_RATIO, val_camera: str | None = None,
                overwrite: bool = False, follow_symlinks: bool = False) -> dict:
    """Write the VHAP layout of every fitted sequence under `out` (module docstring); returns the summary that
    `<out>/export.json` holds. `out` is replaced only when geoface wrote it and `overwrite` (fileio.output_dir).
    A frame whose image or mask is a symbolic link leaving the capture is skipped unless `follow_symlinks`
    (fit_export.load_export_input)."""
    if not 0 < train_ratio <= 1:
        raise ExportError(f"--train-ratio must be in (0, 1], got {train_ratio}")
    for name, v in (("--n-shape", n_shape), ("--n-expr", n_expr)):
        if v < 0:
            raise ExportError(f"{name} must be >= 0, got {v}")
    seqs = load_export_input(capture, fits, cameras, follow_symlinks)
    with output_dir(out, [capture, fits], overwrite, kind="vhap export") as tmp:
        done = []
        for seq in seqs:
            if not seq.frames:
                done.append({"subject": seq.subject, "sequence": seq.sequence, "timesteps": 0, "skipped": seq.skipped})
                continue
            done.append(write_sequence(seq, tmp / seq.subject / seq.sequence, n_shape, n_expr, train_ratio,
                                       val_camera))
        summary = {"format": "vhap", "capture": str(capture), "fits": str(fits), "out": str(out), "cameras": cameras,
                   "follow_symlinks": follow_symlinks, "n_shape": n_shape, "n_expr": n_expr, "train_ratio": train_ratio, "sequences": done,
                   "timesteps": sum(d["timesteps"] for d in done), "images": sum(d.get("images", 0) for d in done)}
        write_json(tmp / "export.json", summary)
    return summary
