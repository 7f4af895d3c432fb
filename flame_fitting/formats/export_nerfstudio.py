"""Fits as nerfstudio datasets: one static scene (`transforms.json`) per fitted frame, with masks and the fitted
head as the initial point cloud (read by nerfstudio's `nerfstudio-data` parser, splatfacto, gsplat's examples).

    <out>/<subject>/<sequence>/<frame:05d>/
        transforms.json            camera_model OPENCV, frames [{file_path, transform_matrix, fl_x, fl_y, cx, cy, w, h,
                                   mask_path}], ply_file_path
        images/<camera><ext>       the capture's image files, byte for byte
        masks/<camera>.png         the capture's masks (uint8, 255 = foreground; nerfstudio ignores pixels at 0)
        points3d.ply               the fitted vertices (binary PLY: x y z float32, red green blue uint8 grey)
    <out>/export.json              what was written and what was left out (diverged frames, frames with a file
                                   linked from outside the capture: fit_export)

Cameras: `transform_matrix` is the OpenGL camera→world (x right, y up, z backward) = inverse(world_to_cam) @
diag(1, -1, -1, 1); fl_x, fl_y, cx, cy are our K as is (nerfstudio, like geoface, puts pixel centres at +0.5 and
counts cy from the top); no distortion keys (capture images are undistorted). Metres, our world frame (nerfstudio
re-centres and re-scales poses itself unless told not to: `--auto-scale-poses False --center-method none
--orientation-method none` keeps them).
nerfstudio needs a mask for every image or for none: a frame in which some view has no mask is written without
masks (recorded in export.json).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from flame_fitting.core.fileio import output_dir, write_bytes, write_json, write_ply
from flame_fitting.formats.fit_export import ExportFrame, ExportSequence, load_export_input
from flame_fitting.geometry.camera import Camera, opengl_cam_to_world

PLY_GREY = 128
PLY_DTYPE = np.dtype([("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])


def camera_frame(cam: Camera) -> dict:
    """nerfstudio's per-frame camera keys of an OpenCV camera (module docstring)."""
    return {"transform_matrix": opengl_cam_to_world(cam).tolist(), "fl_x": float(cam.K[0, 0]),
            "fl_y": float(cam.K[1, 1]), "cx": float(cam.K[0, 2]), "cy": float(cam.K[1, 2]), "w": cam.width,
            "h": cam.height}


def grey_points(points: np.ndarray) -> np.ndarray:
    """points (N, 3) as PLY vertices (`PLY_DTYPE`) with grey colours."""
    data = np.zeros(len(points), PLY_DTYPE)
    for i, k in enumerate("xyz"):
        data[k] = points[:, i]
    data["red"] = data["green"] = data["blue"] = PLY_GREY
    return data


def write_frame(seq: ExportSequence, fr: ExportFrame, folder: Path) -> dict:
    """One frame's nerfstudio folder; returns its summary."""
    with_masks = all(v.mask is not None for v in fr.views)
    frames = []
    for v in fr.views:
        entry = {"file_path": f"images/{v.camera}{v.image.suffix}", **camera_frame(seq.cameras[v.camera])}
        write_bytes(folder / entry["file_path"], v.image.read_bytes())
        if with_masks:
            entry["mask_path"] = f"masks/{v.camera}.png"
            write_bytes(folder / entry["mask_path"], v.mask.read_bytes())
        frames.append(entry)
    write_ply(folder / "points3d.ply", grey_points(fr.vertices))
    write_json(folder / "transforms.json", {"camera_model": "OPENCV", "frames": frames,
                                            "ply_file_path": "points3d.ply"}, indent=1)
    out = {"frame": fr.frame, "folder": f"{seq.subject}/{seq.sequence}/{fr.frame:05d}", "images": len(frames),
           "masks": len(frames) if with_masks else 0}
    if not with_masks and any(v.mask is not None for v in fr.views):
        out["masks_left_out"] = ("some views have no mask (" + ", ".join(v.camera for v in fr.views if v.mask is None)
                                 + "); nerfstudio needs one for every image or none")
    return out


def export_nerfstudio(capture: Path | str, fits: Path | str, out: Path | str, cameras: str = "fit",
                      overwrite: bool = False, follow_symlinks: bool = False) -> dict:
    """Write one nerfstudio scene per fitted frame under `out` (module docstring); returns the summary that
    `<out>/export.json` holds. `out` is replaced only when geoface wrote it and `overwrite` (fileio.output_dir).
    A frame whose image or mask is a symbolic link leaving the capture is skipped unless `follow_symlinks`
    (fit_export.load_export_input)."""
    seqs = load_export_input(capture, fits, cameras, follow_symlinks)
    with output_dir(out, [capture, fits], overwrite, kind="nerfstudio export") as tmp:
        done = []
        for seq in seqs:
            scenes = [write_frame(seq, fr, tmp / seq.subject / seq.sequence / f"{fr.frame:05d}") for fr in seq.frames]
            done.append({"subject": seq.subject, "sequence": seq.sequence, "scenes": scenes, "skipped": seq.skipped})
        summary = {"format": "nerfstudio", "capture": str(capture), "fits": str(fits), "out": str(out),
                   "cameras": cameras, "follow_symlinks": follow_symlinks, "sequences": done,
                   "scenes": sum(len(d["scenes"]) for d in done),
                   "images": sum(s["images"] for d in done for s in d["scenes"]),
                   "masks": sum(s["masks"] for d in done for s in d["scenes"])}
        write_json(tmp / "export.json", summary)
    return summary
