"""COLMAP ≥ 3.12 rigs and frames -> geoface frames and cameras (used by pipelines/colmap.py).

COLMAP 3.12 added two files beside cameras/images (src/colmap/scene/reconstruction_io_binary.cc, _text.cc):
    rigs.bin|txt    per rig: RIG_ID, NUM_SENSORS, the reference sensor (TYPE, ID), then per other sensor
                    (TYPE, ID, HAS_POSE[, sensor_from_rig QW QX QY QZ TX TY TZ])
    frames.bin|txt  per registered frame: FRAME_ID, RIG_ID, rig_from_world (QW QX QY QZ TX TY TZ), NUM_DATA_IDS,
                    then (SENSOR_TYPE, SENSOR_ID, DATA_ID) per measurement
A sensor is (type, id): type CAMERA (0) with id = camera_id, or IMU (1); a CAMERA measurement's DATA_ID is an
image_id. images.bin|txt still hold each image's composed world→camera pose, so the poses come from there.
COLMAP writes these files for every model: without a rig configuration each camera is a rig of its own and each
image a frame of its own (src/colmap/scene/reconstruction_io_utils.cc CreateOneRigPerCamera /
CreateFrameForImage, src/colmap/scene/rig.cc), which says nothing about time. Only a rig with several cameras
makes its frames timesteps: `rig_views` then gives each image its geoface frame (= the COLMAP frame_id) and
camera (one name per rig camera, the same in every frame). Without rig frames every image is a camera of frame 0;
`repeated_poses` finds the images among them that only repeat another's pose (one camera filmed over time).
"""
from __future__ import annotations

import posixpath
import re
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from flame_fitting.core.names import name_key, name_problem
from flame_fitting.formats.capture import CaptureError
from pipelines.import_config import camera_names

SENSOR_TYPES = {-1: "INVALID", 0: "CAMERA", 1: "IMU"}  # src/colmap/util/types.h SensorType
MAX_ROTATION_DEG = 0.1       # a rig camera whose pose differs more between frames: the rig moved
MAX_CENTRE_SHIFT = 1e-3      # ... or whose centre moved more than this fraction of the rig's size


class BinReader:
    """Little-endian reads from a whole file, each past-the-end read a CaptureError naming the file and byte."""

    def __init__(self, path: Path):
        self.path, self.data, self.pos = path, path.read_bytes(), 0

    def read(self, fmt: str):
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.data):
            raise CaptureError(f"{self.path}: truncated at byte {self.pos} (file has {len(self.data)} bytes)")
        out = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += size
        return out

    def skip(self, n_bytes: int, what: str) -> None:
        if self.pos + n_bytes > len(self.data):
            raise CaptureError(f"{self.path}: truncated at byte {self.pos} (file has {len(self.data)} bytes; {what} "
                               f"need {n_bytes})")
        self.pos += n_bytes

    def cstring(self) -> str:
        end = self.data.find(b"\x00", self.pos)
        if end < 0:
            raise CaptureError(f"{self.path}: truncated inside an image name at byte {self.pos}")
        s = self.data[self.pos:end].decode("utf-8", errors="replace")
        self.pos = end + 1
        return s


def _sensor_type(path: Path, value, where: str) -> str:
    name = SENSOR_TYPES.get(value) if isinstance(value, int) else (value if value in SENSOR_TYPES.values() else None)
    if name is None or name == "INVALID":
        raise CaptureError(f"{path}: {where} has sensor type {value!r} (expected CAMERA or IMU)")
    return name


# rigs {rig_id: [(type, sensor id), ...] reference sensor first}; frames {frame_id: (rig_id, [(type, sensor id, data id)])}
def read_rigs_binary(path: Path) -> dict[int, list[tuple[str, int]]]:
    b, rigs = BinReader(path), {}
    (n,) = b.read("Q")
    for _ in range(n):
        rig_id, n_sensors = b.read("II")
        sensors = []
        for k in range(n_sensors):
            t, sid = b.read("iI")
            sensors.append((_sensor_type(path, t, f"rig {rig_id}"), sid))
            if k > 0 and b.read("B")[0]:
                b.skip(56, f"rig {rig_id}'s sensor_from_rig (7 doubles)")
        rigs[rig_id] = sensors
    return rigs


def read_frames_binary(path: Path) -> dict[int, tuple[int, list[tuple[str, int, int]]]]:
    b, frames = BinReader(path), {}
    (n,) = b.read("Q")
    for _ in range(n):
        frame_id, rig_id = b.read("II")
        b.skip(56, f"frame {frame_id}'s rig_from_world (7 doubles)")
        (n_data,) = b.read("I")
        data = []
        for _ in range(n_data):
            t, sid, did = b.read("iIQ")
            data.append((_sensor_type(path, t, f"frame {frame_id}"), sid, did))
        frames[frame_id] = (rig_id, data)
    return frames


def text_lines(path: Path):
    """(line number, stripped line, its fields) of every line of a COLMAP text file that is not empty or a comment."""
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if (line := line.strip()) and not line.startswith("#"):
            yield i, line, line.split()


def read_rigs_text(path: Path) -> dict[int, list[tuple[str, int]]]:
    rigs = {}
    for i, line, e in text_lines(path):
        try:
            rig_id, n_sensors, sensors, k = int(e[0]), int(e[1]), [], 2
            for j in range(n_sensors):
                sensors.append((_sensor_type(path, e[k], f"line {i}"), int(e[k + 1])))
                k += 2 if j == 0 else (3 + 7 * (e[k + 2] == "1"))
            if k != len(e):
                raise ValueError
        except (IndexError, ValueError):
            raise CaptureError(f"{path}:{i}: not a rig line 'RIG_ID NUM_SENSORS REF_SENSOR_TYPE REF_SENSOR_ID "
                               f"SENSORS[] as (TYPE ID HAS_POSE [QW QX QY QZ TX TY TZ])': {line!r}") from None
        rigs[rig_id] = sensors
    return rigs


def read_frames_text(path: Path) -> dict[int, tuple[int, list[tuple[str, int, int]]]]:
    frames = {}
    for i, line, e in text_lines(path):
        try:
            n_data, _ = int(e[9]), [float(v) for v in e[2:9]]
            if len(e) != 10 + 3 * n_data:
                raise ValueError
            data = [(_sensor_type(path, e[k], f"line {i}"), int(e[k + 1]), int(e[k + 2])) for k in range(10, len(e), 3)]
            frames[int(e[0])] = (int(e[1]), data)
        except (IndexError, ValueError):
            raise CaptureError(f"{path}:{i}: not a frame line 'FRAME_ID RIG_ID QW QX QY QZ TX TY TZ NUM_DATA_IDS "
                               f"DATA_IDS[] as (SENSOR_TYPE SENSOR_ID DATA_ID)': {line!r}") from None
    return frames


def read_rigs_frames(model_dir: Path, ext: str) -> tuple[dict, dict, Path, Path] | None:
    """rigs, frames and the two files (same format as cameras: ext '.bin' or '.txt'); None when there are none."""
    rp, fp = model_dir / f"rigs{ext}", model_dir / f"frames{ext}"
    if not fp.is_file():
        return None
    if not rp.is_file():
        raise CaptureError(f"{fp}: frames without {rp.name} (COLMAP writes both; the frames' rigs are unknown)")
    binary = ext == ".bin"
    return (read_rigs_binary if binary else read_rigs_text)(rp), (read_frames_binary if binary else read_frames_text)(fp), rp, fp


@dataclass
class RigViews:
    """The images of one multi-camera rig as geoface views."""

    rig_id: int
    names: dict[int, str]                                              # camera_id -> geoface camera name
    views: dict[int, tuple[int, str]] = field(default_factory=dict)   # image_id -> (frame = COLMAP frame_id, camera)
    skipped: list[tuple[int, str]] = field(default_factory=list)      # (image_id, reason)
    notes: list[str] = field(default_factory=list)                    # warnings


def rig_views(rigs: dict, frames: dict, images: list[tuple], rig_file: str, frame_file: str) -> RigViews | None:
    """Frame and camera of every image (images as read_model's [(id, qvec, tvec, camera_id, name)]); None when no
    rig with a registered frame has several cameras (COLMAP's one rig per camera: frames are not timesteps)."""
    cams = {r: [sid for t, sid in s if t == "CAMERA"] for r, s in rigs.items()}
    framed = {rig for rig, _ in frames.values()}  # rigs.bin lists every configured rig, frames.bin registered frames
    multi = sorted(r for r, c in cams.items() if len(c) > 1 and r in framed)
    if not multi:
        return None
    if len(multi) > 1:
        raise CaptureError(f"{rig_file}: rigs {', '.join(map(str, multi))} each have several cameras; geoface imports one "
                           f"multi-camera rig (one camera set per sequence; configure one rig holding every camera, or "
                           f"set captures.colmap_rig_frames: false)")
    rig_id, sensors = multi[0], cams[multi[0]]
    of_image, n_other = {}, 0
    for fid in sorted(frames):
        for t, sid, did in frames[fid][1]:
            if t != "CAMERA":
                n_other += 1
            elif did in of_image:
                raise CaptureError(f"{frame_file}: image {did} is in frame {of_image[did][0]} and frame {fid}")
            else:
                of_image[did] = (fid, sid)
    by_name = {im[0]: im[4] for im in images}
    if len(by_name) != len(images):
        raise CaptureError(f"{frame_file}: an image id repeats in the images file, so the frames' image ids are ambiguous")
    paths = {s: [by_name[i].replace("\\", "/") for i, (f, c) in of_image.items() if c == s and i in by_name
                 and frames[f][0] == rig_id] for s in sensors}  # every registered image: names do not follow selection
    folders = {s: sorted({p.rpartition("/")[0] for p in paths[s]}) for s in sensors}
    used = [s for s in sensors if folders[s]]  # a rig camera none of whose images is registered needs no folder name
    dirs = [folders[s][0] if len(folders[s]) == 1 else "" for s in used]
    names = dict(zip(used, camera_names(dirs))) if all(dirs) and len(set(dirs)) == len(dirs) else {}
    if not names:  # no folder per camera: a file-name prefix per camera (rig/cam01_000123.png), where it has one
        names = prefix_names(sensors, paths)
    names = {s: names.get(s, f"camera{s}") for s in sensors}
    if len(set(names.values())) != len(sensors):  # 'a/b_c' and 'a_b/c'
        names = {s: f"camera{s}" for s in sensors}
    out, taken = RigViews(rig_id, names), set()
    for img_id, _, _, cam_id, _ in images:
        fid, sid = of_image.get(img_id, (None, None))
        if fid is None:
            out.skipped.append((img_id, f"not in any frame of {frame_file}"))
        elif frames[fid][0] != rig_id:
            out.skipped.append((img_id, f"its frame {fid} is of rig {frames[fid][0]}, not of the multi-camera rig {rig_id}"))
        elif sid != cam_id:
            out.skipped.append((img_id, f"{frame_file} frame {fid} lists it as camera {sid}, images lists camera {cam_id}"))
        elif sid not in out.names:
            out.skipped.append((img_id, f"camera {sid} is not a sensor of rig {rig_id} ({rig_file})"))
        elif (fid, out.names[sid]) in taken:
            out.skipped.append((img_id, f"frame {fid} has another image of camera {out.names[sid]!r}"))
        else:
            out.views[img_id] = (fid, out.names[sid])
            taken.add((fid, out.names[sid]))
    n_imu = sum(t != "CAMERA" for t, _ in rigs[rig_id])
    if n_imu or n_other:
        out.notes.append(f"{rig_file}, {frame_file}: {n_imu} non-camera sensors of rig {rig_id} and {n_other} non-camera "
                         f"measurements in frames are not read (geoface imports images)")
    return out


FRAME_SUFFIX = re.compile(r"(.*[^_.\-])[_.\-]+\d+")  # a file stem: the prefix, separators, a trailing frame number


def file_prefix(path: str) -> str | None:
    """The camera prefix of an image file name: its stem before separators (_ . -) and a trailing frame number
    ('rig/cam01_000123.png' -> 'cam01', 'C3-0007.jpg' -> 'C3'); None without such a tail ('0001_cam0.png')."""
    m = FRAME_SUFFIX.fullmatch(posixpath.splitext(posixpath.basename(path))[0])
    return m.group(1) if m else None


def prefix_names(sensors: list[int], paths: dict[int, list[str]]) -> dict[int, str]:
    """{camera_id: name} of the rig cameras every registered image of which (`paths`: camera_id -> image names) has
    one file prefix (`file_prefix`), a valid camera name (core.names) that no other camera's prefix or `camera<id>`
    matches, even by case; the others are left out (they keep camera<id>). From the whole model, not the selected
    frames or cameras, so a re-import with another selection names the cameras the same."""
    found = {s: {file_prefix(p) for p in paths.get(s, [])} for s in sensors}
    pre = {s: next(iter(f)) for s, f in found.items() if len(f) == 1 and None not in f and not name_problem(next(iter(f)))}
    count = Counter(name_key(p) for p in pre.values())
    return {s: p for s, p in pre.items() if count[name_key(p)] == 1
            and not any(name_key(p) == name_key(f"camera{t}") for t in sensors if t != s)}


def moving_camera(poses: dict[str, list[tuple[int, np.ndarray]]]) -> str | None:
    """Why one pose per camera cannot describe these views, or None. poses: camera -> [(frame, world_to_cam (4,4))],
    first entry the pose kept. A camera whose rotation differs by > MAX_ROTATION_DEG, or whose centre moves by more
    than MAX_CENTRE_SHIFT × the largest distance between two kept camera centres, means the rig moved."""
    if not poses:
        return None
    centre = {c: -p[0][1][:3, :3].T @ p[0][1][:3, 3] for c, p in poses.items()}
    pts = np.array(list(centre.values()))
    size = max(float(np.linalg.norm(pts[:, None] - pts[None], axis=2).max()), 1e-12)
    for cam, entries in sorted(poses.items()):
        f0, m0 = entries[0]
        for f, m in entries[1:]:
            cos = (np.trace(m0[:3, :3].T @ m[:3, :3]) - 1) / 2
            deg = float(np.degrees(np.arccos(np.clip(cos, -1, 1))))
            shift = float(np.linalg.norm(-m[:3, :3].T @ m[:3, 3] - centre[cam]))
            if deg > MAX_ROTATION_DEG or shift > MAX_CENTRE_SHIFT * size:
                return (f"camera {cam!r} in frame {f} is {deg:.3g}° and {shift / size:.3g} rig sizes from its pose in frame "
                        f"{f0}")
    return None


def repeated_poses(poses: dict[str, np.ndarray]) -> list[tuple[str, str]]:
    """(camera, an earlier camera with its pose) for each camera whose pose repeats another's within MAX_ROTATION_DEG
    and MAX_CENTRE_SHIFT × the diagonal of the box around all camera centres. poses: camera -> world_to_cam (4,4),
    in import order. Among the views of one frame such a camera adds no viewpoint: it is one camera at several
    timesteps (a rig filmed over time without COLMAP rig frames)."""
    names = list(poses)
    if len(names) < 2:
        return []
    R = np.stack([poses[n][:3, :3] for n in names])
    centres = -np.einsum("nji,nj->ni", R, np.stack([poses[n][:3, 3] for n in names]))
    size = float(np.linalg.norm(centres.max(0) - centres.min(0)))
    out, seen = [], set()
    for i, j in sorted(cKDTree(centres).query_pairs(MAX_CENTRE_SHIFT * size)):
        cos = (np.trace(R[i].T @ R[j]) - 1) / 2
        if j not in seen and np.degrees(np.arccos(np.clip(cos, -1, 1))) <= MAX_ROTATION_DEG:
            seen.add(j)
            out.append((names[j], names[i]))
    return out
