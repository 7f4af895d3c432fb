"""What a capture import is asked to do and what it reports: the typed `ImportConfig` (one field per
`captures.*` param, docs/sources.md), the `ImportReport`, and the pure helpers every reader shares:
the subject split hash rule, frame / name selection, camera names from image paths, and JSON /
matrix parsing that raises a `CaptureError` naming the file or item. No image code here
(`pipelines.views`); the import session is `pipelines.common.CaptureImport`.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from flame_fitting.core.arrays import checked_array
from flame_fitting.core.json_files import read_json
from flame_fitting.formats.capture import CaptureError
from flame_fitting.formats.capture_splits import SPLITS
from flame_fitting.core.params import ParamsError, spec


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
    color_calibration: bool = spec(True, "NeRSemble: apply the colour calibration when present (v2 color_calibration.json "
                                    "in linear RGB, v1 annotations/<seq>/color_correction/<serial>.npy in sRGB)")
    image_ext: str = spec(".png", "format of the stored images", choices=[".png", ".jpg"])
    split_fractions: list[float] = spec([0.8, 0.1, 0.1], "train/val/test fractions of subjects (hash rule)", lo=0.0, hi=1.0)
    split_seed: int = spec(0, "seed of the subject → split hash", lo=0)
    strict: bool = spec(False, "raise a CaptureError on the first bad item instead of skipping and recording it")
    follow_symlinks: bool = spec(False, "read files that symbolic links in the source point to outside it (your own "
                                 "symlink farm); off: they are skipped, so a downloaded dataset cannot copy files from "
                                 "elsewhere on the machine into the capture (links into the DVC cache of a repository "
                                 "holding the source are always read)")
    nersemble_intrinsics_size: list[int] | None = spec(None, "NeRSemble: [width, height] of the images the intrinsics in "
                                                       "camera_params.json refer to; null = its width/height keys, else "
                                                       "inferred from the principal point (docs/sources.md)", lo=1)
    nersemble_images_downsample: int = spec(1, "NeRSemble, VHAP's extracted frames: read images_<n>/ instead of images/ "
                                               "(K scaled to their size)", lo=1)
    nersemble_image_folder: str | None = spec(None, "NeRSemble v1: which images-* folder to read; null = the only one present")
    colmap_model: str = spec("sparse/0", "COLMAP: model folder (cameras.bin|txt, images.bin|txt) relative to the input root")
    colmap_images: str = spec("images", "COLMAP: image folder relative to the input root")
    colmap_rig_frames: bool = spec(True, "COLMAP >= 3.12: a multi-camera rig's frames (rigs.bin|txt, frames.bin|txt) "
                                         "become frames, its cameras one camera each; false: every image a camera of frame 0")
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
        if self.nersemble_intrinsics_size is not None and len(self.nersemble_intrinsics_size) != 2:
            raise ParamsError(f"captures.nersemble_intrinsics_size: expected [width, height], got {self.nersemble_intrinsics_size}")


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
    """Parsed JSON of a dataset's metadata file (`json_files.read_json`: CaptureError naming the file when missing, not a
    regular file, larger than MAX_JSON_BYTES or not valid JSON)."""
    return read_json(path, CaptureError)


def as_matrix(value, shape: tuple[int, ...], what: str) -> np.ndarray:
    """float64 array of `shape`; CaptureError naming `what` when the shape or values are wrong."""
    return checked_array(value, shape, what, CaptureError)
