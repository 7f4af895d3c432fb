"""Test-side writer of a COLMAP ≥ 3.12 rig model: cameras, images, rigs and frames in COLMAP's binary or text
layout, byte for byte as src/colmap/scene/reconstruction_io_binary.cc / _text.cc write them, for a rig of the
scene's cameras filmed over several timesteps (frame ids as given). Written independently of `pipelines/`."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from writers import Scene, colmap_params, rotmat_to_qvec, write_png

TYPES = {"CAMERA": 0, "IMU": 1}


def qt(m: np.ndarray) -> list[float]:
    """4×4 rigid -> [qw, qx, qy, qz, tx, ty, tz]."""
    return [*rotmat_to_qvec(m[:3, :3]), *m[:3, 3]]


def g(v) -> str:
    return "%.17g" % v if isinstance(v, float) else str(v)


def write_colmap_rig(root: Path, scene: Scene, frame_ids=(1, 2, 3, 5), *, binary: bool, name="rig1/{cam}/{f:04d}.png",
                     moves: dict | None = None, imu: bool = False, drop: tuple = (), strays: tuple = (),
                     unframed: tuple = (), id_base: int = 0) -> Path:
    """<root>/sparse/0/{cameras,images,rigs,frames}(.bin|.txt) + images/<name>: rig 1 holds the scene's cameras
    (camera_id = id_base + position + 1, the first the reference sensor; `imu`: plus IMU sensor 1 and one IMU
    measurement per frame), one COLMAP frame per frame id, image of camera c in frame f = scene.image(c, f) (image ids
    from id_base + 1). `moves` {frame id: 4×4} moves the rig by that world motion in that frame; `drop` (frame id,
    camera) pairs are not taken; `strays` frame ids get one more image of a single-camera rig 2 (camera_id 99,
    COLMAP's trivial rig); `unframed` (frame id, camera) images are in images but in no frame."""
    mdir = root / "sparse" / "0"
    mdir.mkdir(parents=True, exist_ok=True)
    names = list(scene.cameras)
    w2c = {n: scene.cameras[n].world_to_cam.astype(np.float64) for n in names}
    ref = w2c[names[0]]
    cams = [(id_base + i + 1, "PINHOLE", scene.cameras[n].width, scene.cameras[n].height, colmap_params("PINHOLE", scene.cameras[n]))
            for i, n in enumerate(names)]
    sensors = [("CAMERA", id_base + i + 1, w2c[n] @ np.linalg.inv(ref)) for i, n in enumerate(names)] + [("IMU", 1, np.eye(4))] * imu
    rigs = [(1, sensors)]
    if strays:
        cams.append((99, "PINHOLE", cams[0][2], cams[0][3], cams[0][4]))
        rigs.append((2, [("CAMERA", 99, None)]))
    images, frames = [], []  # (image_id, 4×4, camera_id, name), (frame_id, rig_id, rig_from_world, data ids)
    for f_idx, fid in enumerate(frame_ids):
        motion = (moves or {}).get(fid, np.eye(4))
        data = []
        for i, n in enumerate(names):
            if (fid, n) in drop:
                continue
            img_id = id_base + len(images) + 1
            images.append((img_id, w2c[n] @ motion, id_base + i + 1, name.format(cam=n, f=fid)))
            write_png(root / "images" / images[-1][3], scene.image(n, f_idx))
            if (fid, n) not in unframed:
                data.append(("CAMERA", id_base + i + 1, img_id))
        data += [("IMU", 1, 1000 + fid)] * imu
        frames.append((fid, 1, ref @ motion, sorted(data, key=lambda d: (TYPES[d[0]], d[1], d[2]))))
        if fid in strays:
            img_id = len(images) + 1
            images.append((img_id, w2c[names[0]], 99, f"extra/{fid:04d}.png"))
            write_png(root / "images" / images[-1][3], scene.image(names[0], f_idx))
            frames.append((10000 + fid, 2, w2c[names[0]], [("CAMERA", 99, img_id)]))
    frames.sort(key=lambda fr: fr[0])
    (_write_binary if binary else _write_text)(mdir, cams, images, rigs, frames)
    return root


def _write_binary(mdir: Path, cams, images, rigs, frames) -> None:
    with open(mdir / "cameras.bin", "wb") as f:
        f.write(struct.pack("<Q", len(cams)))
        for cid, mdl, w, h, p in cams:
            f.write(struct.pack("<IiQQ", cid, 1, w, h) + struct.pack(f"<{len(p)}d", *p))  # camera_t: uint32
    with open(mdir / "images.bin", "wb") as f:
        f.write(struct.pack("<Q", len(images)))
        for iid, m, cid, name in images:
            f.write(struct.pack("<I7dI", iid, *qt(m), cid) + name.encode() + b"\x00" + struct.pack("<Q", 0))  # image_t
    with open(mdir / "rigs.bin", "wb") as f:
        f.write(struct.pack("<Q", len(rigs)))
        for rid, sensors in rigs:
            f.write(struct.pack("<II", rid, len(sensors)) + struct.pack("<iI", TYPES[sensors[0][0]], sensors[0][1]))
            for t, sid, m in sensors[1:]:
                f.write(struct.pack("<iIB", TYPES[t], sid, m is not None) + (b"" if m is None else struct.pack("<7d", *qt(m))))
    with open(mdir / "frames.bin", "wb") as f:
        f.write(struct.pack("<Q", len(frames)))
        for fid, rid, m, data in frames:
            f.write(struct.pack("<II7dI", fid, rid, *qt(m), len(data)))
            f.write(b"".join(struct.pack("<iIQ", TYPES[t], sid, did) for t, sid, did in data))


def _write_text(mdir: Path, cams, images, rigs, frames) -> None:
    lines = ["# Camera list with one line of data per camera:", "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]",
             f"# Number of cameras: {len(cams)}"]
    lines += [" ".join(map(g, [cid, mdl, w, h, *map(float, p)])) for cid, mdl, w, h, p in cams]
    (mdir / "cameras.txt").write_text("\n".join(lines) + "\n")
    lines = ["# Image list with two lines of data per image:", "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
             "#   POINTS2D[] as (X, Y, POINT3D_ID)", f"# Number of images: {len(images)}, mean observations per image: 0"]
    for iid, m, cid, name in images:
        lines += [" ".join(map(g, [iid, *map(float, qt(m)), cid, name])), ""]
    (mdir / "images.txt").write_text("\n".join(lines) + "\n")
    lines = ["# Rig calib list with one line of data per calib:",
             "#   RIG_ID, NUM_SENSORS, REF_SENSOR_TYPE, REF_SENSOR_ID, SENSORS[] as (SENSOR_TYPE, SENSOR_ID, HAS_POSE, "
             "[QW, QX, QY, QZ, TX, TY, TZ])", f"# Number of rigs: {len(rigs)}"]
    for rid, sensors in rigs:
        e = [rid, len(sensors), *sensors[0][:2]]
        for t, sid, m in sensors[1:]:
            e += [t, sid, 0] if m is None else [t, sid, 1, *map(float, qt(m))]
        lines.append(" ".join(map(g, e)))
    (mdir / "rigs.txt").write_text("\n".join(lines) + "\n")
    lines = ["# Frame list with one line of data per frame:",
             "#   FRAME_ID, RIG_ID, RIG_FROM_WORLD[QW, QX, QY, QZ, TX, TY, TZ], NUM_DATA_IDS, DATA_IDS[] as (SENSOR_TYPE, "
             "SENSOR_ID, DATA_ID)", f"# Number of frames: {len(frames)}"]
    lines += [" ".join(map(g, [fid, rid, *map(float, qt(m)), len(data), *[x for d in data for x in d]]))
              for fid, rid, m, data in frames]
    (mdir / "frames.txt").write_text("\n".join(lines) + "\n")
