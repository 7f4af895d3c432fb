"""Shared machinery of the capture readers in `pipelines/` (NeRSemble, RenderMe-360, COLMAP,
transforms.json, folder): the typed `ImportConfig`, the `ImportReport`, and `CaptureImport`, a
context manager around `flame_fitting.formats.capture.CaptureWriter` that every reader feeds with source
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

This module is the import session `CaptureImport`; its neighbours are `pipelines.import_config` (config,
report, selection / split rules, JSON / matrix parsing) and `pipelines.views` (image files, undistort /
crop / resize per camera).
"""
from __future__ import annotations

import posixpath
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

from flame_fitting.geometry.camera import Camera, CameraError
from flame_fitting.formats.capture import CaptureError, CaptureWriter
from flame_fitting.core.fileio import sha256_file
from flame_fitting.core.names import name_key, name_problem, outside_target, relpath_problem, terminal_safe
from pipelines.import_config import ImportConfig, ImportReport, as_matrix, subject_split
from pipelines.views import ViewProcessor, read_image_file


# --- the import session ------------------------------------------------------------------
def inside(base: Path, name: str, where: str) -> Path:
    """`base / name` for a file name read from a source's own files (transforms.json's file_path, COLMAP's image
    NAME): CaptureError unless it is a relative path that stays inside `base` by its text, so a downloaded dataset
    cannot pull files from elsewhere on the machine into the capture. A backslash is a separator (a file written on
    Windows; instant-ngp's loader reads them so), in the check and in the path returned."""
    if relpath_problem(posixpath.normpath(name.replace("\\", "/"))):  # './a' and 'a/../b' are inside
        raise CaptureError(f"{where} {name!r} is outside {base}; refused")
    return base / name.replace("\\", "/")


class CaptureImport:
    """`with CaptureImport(source, root_in, out, cfg) as imp:` set cameras, add images, skip bad items.
    On success the capture is renamed into place and `imp.report` is filled."""

    def __init__(self, source: str, root_in: Path | str, out: Path | str, cfg: ImportConfig):
        cfg.validate()
        self.source, self.root_in, self.out, self.cfg = source, Path(root_in), Path(out), cfg
        self.writer = CaptureWriter(self.out, source=source, image_ext=cfg.image_ext, inputs=(self.root_in,))
        self.views: dict[tuple[str, str], dict[str, ViewProcessor]] = {}
        self.skipped: list[dict] = []
        self.warnings: list[str] = []
        self.side_files: list[str] = []
        self.refused: dict[tuple[str, str], str] = {}  # (subject, sequence) -> why none of it is imported
        self.view_refused: list[str] = []  # "item: why" of each camera the crop / resize settings refused
        self.folded: dict[tuple, str] = {}  # name_key of each subject / sequence -> the name imported as it
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

    def outside(self, path: Path | str) -> str | None:
        """Why `path` may not be read into the capture (None when it may): it resolves (through symbolic links)
        outside the source folder, and `follow_symlinks` is off. Links into the DVC cache (`.dvc/cache`, DVC's symlink
        checkouts) of a repository holding the source are allowed (core.names.outside_target)."""
        if self.cfg.follow_symlinks or (real := outside_target(path, self.root_in)) is None:
            return None
        return (f"a symbolic link to {real}, outside the source folder {self.root_in}; refused (set "
                "captures.follow_symlinks: true when the links are your own)")

    def skip(self, item: str, reason: str) -> None:
        """Record a skipped item (or raise CaptureError when cfg.strict)."""
        if self.cfg.strict:
            raise CaptureError(f"{item}: {reason}")
        self.skipped.append({"item": item, "reason": reason})

    def warn(self, message: str) -> None:
        """Record a warning (capture.json["warnings"]) and print it to stderr (its names escaped: terminal_safe)."""
        self.warnings.append(message)
        print(f"warning: {terminal_safe(message)}", file=sys.stderr)

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

    def check_cameras(self, subject: str, sequence: str, cameras: dict[str, Camera], where: str) -> dict[str, ViewProcessor]:
        """The processors of the source cameras of a sequence that can be imported; nothing is registered. A subject or
        sequence whose name cannot be a folder name refuses that sequence, a camera's that camera (not the import); so
        does a name that differs from another only by case or Unicode normalisation (one file on macOS and Windows),
        and a crop / resize setting the camera cannot take. Each refusal is recorded. A reader with more files per
        camera (NeRSemble v1's colour .npy) asks this first and reads only the usable cameras' files, then registers
        them with `set_cameras(..., views=)`: a refused camera's files are never read."""
        views, keys = {}, {}
        if why := self._sequence_problem(subject, sequence):
            self.refused[(subject, sequence)] = why
            self.skip(f"{where} [{subject}/{sequence}]", why)
            return views
        for name, cam in sorted(cameras.items()):
            if why := name_problem(name):  # one frame's or file's bad name skips that camera, not the import
                self.skip(f"{where} [camera {name!r}]", f"camera name {why}")
                continue
            if (other := keys.setdefault(name_key(name), name)) != name:
                self.skip(f"{where} [camera {name!r}]", f"camera name differs from camera {other!r} only by case or "
                          "Unicode normalisation (one file on macOS and Windows)")
                continue
            try:  # a crop / resize setting this camera cannot take: this camera skipped (all of them: close says so)
                views[name] = ViewProcessor(cam, self.cfg)
            except (CaptureError, CameraError) as e:
                self.view_refused.append(f"{where} [camera {name}]: {e}")
                self.skip(f"{where} [camera {name}]", str(e))
        return views

    def set_cameras(self, subject: str, sequence: str, cameras: dict[str, Camera], where: str,
                    views: dict[str, ViewProcessor] | None = None) -> dict[str, ViewProcessor]:
        """Register the source cameras of a sequence; returns the usable ones' processors (`check_cameras`, which
        records each refusal; `views`: its answer, asked before, of which the cameras still in `cameras` are kept)."""
        views = self.check_cameras(subject, sequence, cameras, where) if views is None else views
        views = {n: v for n, v in views.items() if n in cameras}
        if views:
            self.writer.set_cameras(subject, sequence, {n: v.camera for n, v in views.items()})
        self.views[(subject, sequence)] = views
        return views

    def _sequence_problem(self, subject: str, sequence: str) -> str | None:
        """Why the sequence cannot be imported under these names (None when it can): core/names.py `name_problem`, or
        a subject (sequence of the subject) that differs from one imported before only by case or normalisation."""
        for what, value in (("subject", subject), ("sequence", sequence)):
            if why := name_problem(value):
                return f"{what} name {value!r} {why}"
        for what, key, value in (("subject", (name_key(subject),), subject),
                                 ("sequence", (subject, name_key(sequence)), sequence)):
            if (other := self.folded.setdefault(key, value)) != value:
                return (f"{what} name {value!r} differs from {other!r} only by case or Unicode normalisation (one "
                        "folder on macOS and Windows)")
        return None

    def unusable(self, subject: str, sequence: str, camera: str) -> str | None:
        """Why no image of `camera` can be stored (None when it can): its sequence, or its calibration (camera checks,
        crop / resize settings), was refused. Asked before an image is decoded, so a refused camera's files are never
        read."""
        if self.views.get((subject, sequence), {}).get(camera) is not None:
            return None
        return self.refused.get((subject, sequence)) or f"no usable calibration for camera {camera!r} of {subject}/{sequence}"

    def add(self, subject: str, sequence: str, frame: int, camera: str, rgb: np.ndarray, source: Path,
            key: str | None = None, mask: np.ndarray | None = None, whole_file: bool = True) -> bool:
        """Process and store one raw image (H,W,3) uint8 RGB; False (and a recorded skip) when unusable.
        `whole_file`: the source file is exactly this image, so its sha256 is recorded."""
        item = self.rel(source) + (f" [{key}]" if key is not None else "")
        if why := self.outside(source):
            self.skip(item, why)
            return False
        if why := self.unusable(subject, sequence, camera):
            self.skip(item, why)
            return False
        view = self.views[(subject, sequence)][camera]
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
        if why := self.outside(path):
            self.skip(self.rel(path), why)
            return False
        if why := self.unusable(subject, sequence, camera):  # a refused camera's images are not decoded
            self.skip(self.rel(path), why)
            return False
        try:
            rgb, alpha = read_image_file(path)
        except CaptureError as e:
            self.skip(self.rel(path), str(e))
            return False
        return self.add(subject, sequence, frame, camera, rgb, path, mask=alpha if self.cfg.masks else None)

    def side_file(self, subject: str, sequence: str, kind: str, frame: int, arrays: dict[str, np.ndarray]) -> str:
        """Store `arrays` as <subject>/<sequence>/<kind>/<frame:05d>.npz inside the capture; returns its path."""
        if why := self.refused.get((subject, sequence)):
            raise CaptureError(f"{subject!r}/{sequence!r}: {why}")
        for what, value in (("subject", subject), ("sequence", sequence), ("kind", kind)):
            if why := name_problem(value):  # names come from the source's file names: '..' would leave the capture
                raise CaptureError(f"{subject}/{sequence}: {what} {value!r} {why}")
        rel = f"{subject}/{sequence}/{kind}/{int(frame):05d}.npz"
        path = self.writer.work_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **arrays)
        self.side_files.append(rel)
        return rel

    def close(self) -> None:
        rows = self.writer.rows
        # asked-for subjects that nothing was imported of (ids compare with or without zero padding, as NeRSemble's)
        got = {str(r["subject"]).lstrip("0") for r in rows}
        absent = [w for w in (self.cfg.subjects or []) if str(w).lstrip("0") not in got]
        if not rows:
            shutil.rmtree(self.writer.tmp, ignore_errors=True)
            if self.view_refused and not any(self.views.values()):  # the settings, not the cameras: one line saying so
                raise CaptureError(f"{self.root_in}: nothing imported: the crop / resize settings refuse every calibrated "
                                   f"camera ({len(self.view_refused)} cameras; the first: {self.view_refused[0]})")
            first = "; ".join(f"{s['item']}: {s['reason']}" for s in self.skipped[:5])
            asked = f"; subjects asked for: {', '.join(map(str, absent))}" if absent else ""
            raise CaptureError(f"{self.root_in}: nothing imported from this {self.source} source "
                               f"({len(self.skipped)} items skipped{': ' + first if first else ''}{asked})")
        if absent:
            self.warn(f"subjects {', '.join(map(str, absent))} (the `subjects` setting) were not imported: not in "
                      f"{self.root_in}, or every item of theirs was skipped")
        seqs = sorted({f"{r['subject']}/{r['sequence']}" for r in rows})
        splits = {s: self.split_of(s) for s in sorted({r["subject"] for r in rows})}
        self.writer.info.update(root_in=str(self.root_in), config=asdict(self.cfg), splits=splits,
                                skipped=self.skipped, warnings=self.warnings, side_files=self.side_files, **self.info)
        self.writer.close()
        self.report = ImportReport(self.source, str(self.root_in), str(self.out), len(rows), seqs, splits,
                                   self.skipped, self.warnings, self.side_files)
