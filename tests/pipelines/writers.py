"""Test-side writers for the capture readers: a small synthetic multi-view scene with known cameras
(smooth coloured blobs + white dots drawn where known 3D points project), written in each source's
exact on-disk layout *with its own conventions* (camera→world for RenderMe-360, OpenGL camera→world
for transforms.json, quaternions for COLMAP, ...), and the dot check that proves an imported camera
projects the 3D points onto the dots of its imported image.

Everything here is written independently of `pipelines/` (own quaternion, sRGB and pose maths).
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import h5py
import numpy as np

from flame_fitting.geometry.camera import Camera, intrinsics, look_at
from flame_fitting.formats.capture import save_cameras

W, H = 200, 160
DOT_RADIUS = 2.5
GL_FLIP = np.diag([1.0, -1.0, -1.0, 1.0])


def make_cameras(n: int = 4, width: int = W, height: int = H, f: float = 230.0, square: bool = False,
                 dist=None, prefix: str = "cam") -> dict[str, Camera]:
    """n cameras on a ring ~1 m around the origin, looking at it (world y up)."""
    cams = {}
    for i, yaw in enumerate(np.linspace(-0.8, 0.8, n)):
        r = 1.0 + 0.05 * i
        eye = [r * np.sin(yaw), 0.15 + 0.05 * i, r * np.cos(yaw)]
        K = intrinsics(f, f if square else f * 1.03, width / 2 + 3.25, height / 2 - 2.5)
        name = f"{prefix}{i}" if prefix else f"{i:02d}"
        cams[name] = Camera(K=K, world_to_cam=look_at(eye, [0, 0, 0]), width=width, height=height,
                            dist=None if dist is None else dist(i), name=name)
    return cams


POINTS = np.array([[0.0, 0.0, 0.0], [0.08, 0.05, 0.02], [-0.08, 0.06, -0.03], [0.06, -0.07, 0.05],
                   [-0.07, -0.06, 0.04], [0.0, 0.1, -0.05], [0.11, -0.01, -0.06], [-0.11, 0.0, 0.07]])
# spread towards the image borders, where lens distortion moves points by pixels
WIDE_POINTS = np.array([[0.0, 0.0, 0.0], [0.26, 0.18, 0.0], [-0.26, 0.18, 0.0], [0.26, -0.2, 0.0], [-0.26, -0.2, 0.0],
                        [0.0, 0.2, 0.0], [0.0, -0.22, 0.0], [0.14, 0.05, 0.05], [-0.14, -0.05, -0.05]])


def _blobs(height: int, width: int, seed: int) -> np.ndarray:
    """(H,W,3) float smooth background in [20, 120]."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] + 0.5
    img = np.zeros((height, width, 3))
    for _ in range(6):
        cx, cy, s = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.15, 0.4) * width
        img += rng.uniform(0, 1, 3) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))[..., None]
    return 20 + 100 * img / max(img.max(), 1e-9)


def draw_dots(bg: np.ndarray, uv: np.ndarray, radius: float = DOT_RADIUS) -> np.ndarray:
    """White anti-aliased discs at uv (N,2) (pixel centres at +0.5) over bg (H,W,3) float -> uint8."""
    h, w = bg.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    cover = np.zeros((h, w))
    for u, v in uv:
        cover = np.maximum(cover, np.clip(radius + 0.5 - np.hypot(xx - u, yy - v), 0, 1))
    return np.clip(np.rint(bg * (1 - cover[..., None]) + 255 * cover[..., None]), 0, 255).astype(np.uint8)


@dataclass
class Scene:
    """Cameras (full resolution), 3D points, and deterministic images per (camera, frame)."""

    cameras: dict[str, Camera]
    points: np.ndarray = field(default_factory=lambda: POINTS.copy())
    images: dict[str, np.ndarray] | None = None  # given (H,W,3) uint8 RGB per camera (e.g. a rendered capture's)

    def image(self, name: str, frame: int = 0, cam: Camera | None = None) -> np.ndarray:
        """(H,W,3) uint8 RGB of camera `name` at `frame` (background brightness +8 per frame), drawn
        with `cam` (default: the scene camera; pass a resized camera for a downscaled copy).
        With given `images`, that image for every frame (it cannot be drawn at another size)."""
        cam = cam or self.cameras[name]
        if self.images is not None:
            img = self.images[name]
            assert img.shape == (cam.height, cam.width, 3) and img.dtype == np.uint8, "given image does not fit its camera"
            return img
        uv, z = cam.project(self.points)
        assert np.all(z > 0) and np.all((uv > 6) & (uv < [cam.width - 6, cam.height - 6])), "dots must be inside"
        seed = sum(map(ord, name))
        return draw_dots(_blobs(cam.height, cam.width, seed) + 8 * frame, uv)


# --- the projection check ------------------------------------------------------------------
def dot_centroids(rgb: np.ndarray, thresh: float = 185.0) -> np.ndarray:
    """(M,2) weighted centroids (pixel centres at +0.5) of the bright dots of an image."""
    g = rgb.astype(np.float64).mean(2)
    n, labels = cv2.connectedComponents((g > thresh).astype(np.uint8), connectivity=8)
    yy, xx = np.mgrid[0:g.shape[0], 0:g.shape[1]] + 0.5
    wgt = np.clip(g - thresh, 0, None)
    out = []
    for k in range(1, n):
        m = labels == k
        out.append([(wgt[m] * xx[m]).sum() / wgt[m].sum(), (wgt[m] * yy[m]).sum() / wgt[m].sum()])
    return np.array(out).reshape(-1, 2)


def projection_error(cam: Camera, rgb: np.ndarray, points: np.ndarray) -> float:
    """Largest distance (px) from a projected 3D point to the nearest dot of `rgb`; inf if a point is
    behind the camera or there are no dots."""
    uv, z = cam.project(points)
    dots = dot_centroids(rgb)
    if np.any(z <= 0) or len(dots) == 0:
        return float("inf")
    d = np.linalg.norm(uv[:, None, :].astype(np.float64) - dots[None], axis=2).min(1)
    return float(d.max())


# --- conventions, written independently of the readers --------------------------------------
def rotmat_to_qvec(R: np.ndarray) -> np.ndarray:
    """(3,3) rotation -> unit quaternion (qw, qx, qy, qz), qw ≥ 0 (Shepperd)."""
    R = np.asarray(R, np.float64)
    t = np.trace(R)
    if t > 0:
        s = 2 * np.sqrt(1 + t)
        q = [0.25 * s, (R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s]
    else:
        i = int(np.argmax(np.diag(R)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2 * np.sqrt(1 + R[i, i] - R[j, j] - R[k, k])
        q = np.zeros(4)
        q[0] = (R[k, j] - R[j, k]) / s
        q[1 + i], q[1 + j], q[1 + k] = 0.25 * s, (R[j, i] + R[i, j]) / s, (R[k, i] + R[i, k]) / s
    q = np.asarray(q) / np.linalg.norm(q)
    return q if q[0] >= 0 else -q


def cam_to_world64(cam: Camera) -> np.ndarray:
    m = cam.world_to_cam.astype(np.float64)
    out = np.eye(4)
    out[:3, :3], out[:3, 3] = m[:3, :3].T, -m[:3, :3].T @ m[:3, 3]
    return out


def srgb_to_linear(x):
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x):
    x = np.clip(x, 0, 1)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055)


def uncorrect_color(rgb: np.ndarray, ccm: np.ndarray) -> np.ndarray:
    """What a camera recorded if `ccm` (3,4) (applied in linear RGB) corrects it to `rgb`."""
    lin = srgb_to_linear(rgb / 255.0)
    raw = (lin - ccm[:, 3]) @ np.linalg.inv(ccm[:, :3]).T
    return np.clip(np.rint(linear_to_srgb(raw) * 255), 0, 255).astype(np.uint8)


def write_png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def write_video(path: Path, frames: list[np.ndarray], fps: int = 25) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    assert vw.isOpened()
    for f in frames:
        vw.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    vw.release()


# --- NeRSemble ----------------------------------------------------------------------------
def silhouette(cam: Camera, points: np.ndarray = POINTS, radius: float = 0.12) -> np.ndarray:
    """(H,W) uint8 test mask of a camera: 255 inside the projected disc of a world sphere around the first point."""
    uv, z = cam.project(points[:1])
    r = radius * 0.5 * float(cam.K[0, 0] + cam.K[1, 1]) / float(z[0])
    yy, xx = np.mgrid[0:cam.height, 0:cam.width] + 0.5
    return ((np.hypot(xx - uv[0, 0], yy - uv[0, 1]) < r) * 255).astype(np.uint8)


def write_jpg(path: Path, img: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 100])


def uncorrect_affine(rgb: np.ndarray, M: np.ndarray) -> np.ndarray:
    """What a camera recorded if the v1 affine M (4,4) (rgb/255 @ M[:3,:3] + M[:3,3], sRGB) corrects it to `rgb`."""
    raw = (rgb / 255.0 - M[:3, 3]) @ np.linalg.inv(M[:3, :3])
    return np.clip(np.rint(raw * 255), 0, 255).astype(np.uint8)


def write_nersemble(root: Path, scene: Scene, pid: str = "017", seq: str = "EMO-1", frames=range(3), *, version: int = 2,
                    media: str = "video", scale: float = 1.0, per_serial_intrinsics: bool = False, size_keys: bool = True,
                    ccm: dict[str, np.ndarray] | None = None, image_folder: str = "images-2x-73fps",
                    k_for_stored: bool = False, alpha: bool = False, affine: dict[str, np.ndarray] | None = None,
                    vhap_downsample=(), extra_serials=()) -> Path:
    """v2: <pid>/calibration/camera_params.json + sequences/<seq>/images/cam_<serial>.mp4 (media='video'),
    images/cam_<serial>/<t:05d>.png (media='images') or VHAP's images/cam_<serial>_<t:06d>.jpg (media='vhap',
    + images_<n>/ for n in vhap_downsample, drawn at W//n × H//n); v1: <pid>/camera_params.json +
    sequences/<seq>/frame_<t:05d>/<image_folder>/cam_<serial>.png. Images are stored at `scale` × the
    calibrated size; `k_for_stored` writes K for the stored size (the benchmark release); with `ccm` they
    are stored *uncorrected* and color_calibration.json is written; with `affine` ({serial: 4×4}, v1) too,
    and annotations/<seq>/color_correction/<serial>.npy is written. `alpha`: masks (`silhouette`) as the
    layout has them (alpha_maps/cam_<serial>.mp4, frame_<t>/alpha_map-73fps/cam_<serial>.png, VHAP
    alpha_maps/cam_<serial>_<t:06d>.jpg). `extra_serials`: calibrated cameras without any images."""
    pdir = root / pid
    cal_dir = pdir / "calibration" if version == 2 else pdir
    cal_dir.mkdir(parents=True, exist_ok=True)
    any_cam = next(iter(scene.cameras.values()))
    stored = {s: c.resized(round(c.width * scale), round(c.height * scale)) if scale != 1 else c for s, c in scene.cameras.items()}
    kcams = stored if k_for_stored else scene.cameras
    w2c = {s: c.world_to_cam.astype(np.float64).tolist() for s, c in scene.cameras.items()}
    intr = {s: c.K.astype(np.float64).tolist() for s, c in kcams.items()}
    for s in extra_serials:
        w2c[s] = w2c[next(iter(w2c))]
        intr[s] = intr[next(iter(intr))]
    params = {"world_2_cam": w2c, "intrinsics": intr if per_serial_intrinsics else next(iter(kcams.values())).K.astype(np.float64).tolist()}
    if size_keys:
        params.update(width=any_cam.width, height=any_cam.height)
    (cal_dir / "camera_params.json").write_text(json.dumps(params))
    if ccm is not None:
        (cal_dir / "color_calibration.json").write_text(json.dumps({s: m.tolist() for s, m in ccm.items()}))
    seq_dir = pdir / "sequences" / seq
    for serial, cam in scene.cameras.items():
        small = stored[serial]
        imgs = [scene.image(serial, t, small) for t in frames]
        if ccm is not None and serial in ccm:
            imgs = [uncorrect_color(im, ccm[serial]) for im in imgs]
        if affine is not None and serial in affine:
            imgs = [uncorrect_affine(im, affine[serial]) for im in imgs]
            npy = pdir / "annotations" / seq / "color_correction" / f"{serial}.npy"
            npy.parent.mkdir(parents=True, exist_ok=True)
            np.save(npy, affine[serial])
        mask = silhouette(small, scene.points)
        if version == 2 and media == "video":
            write_video(seq_dir / "images" / f"cam_{serial}.mp4", imgs)
            if alpha:
                write_video(seq_dir / "alpha_maps" / f"cam_{serial}.mp4", [np.repeat(mask[..., None], 3, 2)] * len(imgs))
        for t, im in zip(frames, imgs):
            if version == 2 and media == "images":
                write_png(seq_dir / "images" / f"cam_{serial}" / f"{t:05d}.png", im)
            elif version == 2 and media == "vhap":
                write_jpg(seq_dir / "images" / f"cam_{serial}_{t:06d}.jpg", im)
                for n in vhap_downsample:
                    write_jpg(seq_dir / f"images_{n}" / f"cam_{serial}_{t:06d}.jpg",
                              scene.image(serial, t, small.resized(small.width // n, small.height // n)))
                if alpha:
                    write_jpg(seq_dir / "alpha_maps" / f"cam_{serial}_{t:06d}.jpg", mask)
            elif version == 1:
                write_png(seq_dir / f"frame_{t:05d}" / image_folder / f"cam_{serial}.png", im)
                if alpha:
                    write_png(seq_dir / f"frame_{t:05d}" / "alpha_map-73fps" / f"cam_{serial}.png", np.repeat(mask[..., None], 3, 2))
    return pdir


# --- RenderMe-360 -------------------------------------------------------------------------------
FLAME_KEYS = {"global_pose": (3,), "neck_pose": (3,), "jaw_pose": (3,), "left_eye_pose": (3,), "right_eye_pose": (3,),
              "trans": (3,), "shape": (100,), "exp": (50,), "verts": (5023, 3)}


def encoded(img: np.ndarray) -> np.ndarray:
    ok, buf = cv2.imencode(".png", img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    assert ok
    return np.frombuffer(buf.tobytes(), np.uint8)


def write_renderme360(root: Path, scene: Scene, actor: str = "0026", part: str = "e0", frames=range(2), *,
                      flame: bool = True, keypoints: np.ndarray | None = None, masks: bool = True,
                      rt_world_to_cam: bool = False) -> tuple[Path, Path]:
    """raw/<actor>/<actor>_<part>_raw.smc (Camera/<cam>/color/<t> PNG bytes, BGR) and
    anno/<actor>/<actor>_<part>_anno.smc (Calibration/<cam>/{K, D, RT = camera→world}, Camera/<cam>/mask/<t>,
    Keypoints2d/<cam>/<t> = distorted projections of `keypoints` (106,3), FLAME/<t>/...).
    `rt_world_to_cam` writes RT in the wrong convention (world→camera), for negative tests."""
    raw_path = root / "raw" / actor / f"{actor}_{part}_raw.smc"
    anno_path = root / "anno" / actor / f"{actor}_{part}_anno.smc"
    raw_path.parent.mkdir(parents=True, exist_ok=True)
    anno_path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    with h5py.File(raw_path, "w") as raw, h5py.File(anno_path, "w") as anno:
        raw.attrs["actor_id"], raw.attrs["performance_part"] = actor, part
        raw.create_group("Camera").attrs["num_frame"] = len(frames)
        for cam_id, cam in scene.cameras.items():
            g = anno.create_group(f"Calibration/{cam_id}")
            g["K"] = cam.K.astype(np.float64)
            g["RT"] = cam.world_to_cam.astype(np.float64) if rt_world_to_cam else cam_to_world64(cam)
            g["D"] = np.zeros(5) if cam.dist is None else np.pad(cam.dist.astype(np.float64), (0, 5 - len(cam.dist)))
            for t in frames:
                img = scene.image(cam_id, t)
                raw[f"Camera/{cam_id}/color/{t}"] = encoded(img)
                if masks:
                    anno[f"Camera/{cam_id}/mask/{t}"] = encoded(((img.mean(2) > 60) * 255).astype(np.uint8))
                if keypoints is not None:
                    anno[f"Keypoints2d/{cam_id}/{t}"] = cam.project(keypoints)[0].astype(np.float64)
        if flame:
            for t in frames:
                for k, shape in FLAME_KEYS.items():
                    anno[f"FLAME/{t}/{k}"] = rng.normal(size=shape)
                anno[f"FLAME/{t}/albedos"] = rng.normal(size=(3, 4, 4))
    return raw_path, anno_path


# --- COLMAP -----------------------------------------------------------------------------------
COLMAP_IDS = {"SIMPLE_PINHOLE": 0, "PINHOLE": 1, "SIMPLE_RADIAL": 2, "OPENCV": 4}


def colmap_params(model: str, cam: Camera) -> list[float]:
    K = cam.K.astype(np.float64)
    d = np.zeros(4) if cam.dist is None else cam.dist.astype(np.float64)
    return {"SIMPLE_PINHOLE": [K[0, 0], K[0, 2], K[1, 2]], "PINHOLE": [K[0, 0], K[1, 1], K[0, 2], K[1, 2]],
            "SIMPLE_RADIAL": [K[0, 0], K[0, 2], K[1, 2], d[0]],
            "OPENCV": [K[0, 0], K[1, 1], K[0, 2], K[1, 2], *d[:4]]}[model]


def write_colmap(root: Path, scene: Scene, *, binary: bool, model: str = "PINHOLE", images: dict | None = None,
                 camera_ids: dict[str, int] | None = None) -> Path:
    """<root>/sparse/0/cameras+images(.bin|.txt) and <root>/images/<name>.png, one COLMAP camera per view."""
    mdir = root / "sparse" / "0"
    mdir.mkdir(parents=True, exist_ok=True)
    names = list(scene.cameras)
    cam_ids = camera_ids or {n: i + 1 for i, n in enumerate(names)}
    cams = [(i + 1, model, scene.cameras[n].width, scene.cameras[n].height, colmap_params(model, scene.cameras[n]))
            for i, n in enumerate(names)]
    imgs = []
    for i, n in enumerate(names):
        m = scene.cameras[n].world_to_cam.astype(np.float64)
        imgs.append((i + 1, rotmat_to_qvec(m[:3, :3]), m[:3, 3], cam_ids[n], f"{n}.png", [(10.5, 20.25, 7), (3.0, 4.0, -1)]))
        write_png(root / "images" / f"{n}.png", (images or {}).get(n, scene.image(n)))
    if binary:
        with open(mdir / "cameras.bin", "wb") as f:
            f.write(struct.pack("<Q", len(cams)))
            for cid, mdl, w, h, p in cams:
                f.write(struct.pack("<IiQQ", cid, COLMAP_IDS[mdl], w, h) + struct.pack(f"<{len(p)}d", *p))
        with open(mdir / "images.bin", "wb") as f:
            f.write(struct.pack("<Q", len(imgs)))
            for iid, q, t, cid, name, pts in imgs:
                f.write(struct.pack("<I4d3dI", iid, *q, *t, cid) + name.encode() + b"\x00")  # image_t, camera_t: uint32
                f.write(struct.pack("<Q", len(pts)) + b"".join(struct.pack("<ddq", *p) for p in pts))
    else:
        lines = ["# Camera list with one line of data per camera:", "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]"]
        lines += [" ".join([str(cid), mdl, str(w), str(h)] + [repr(float(v)) for v in p]) for cid, mdl, w, h, p in cams]
        (mdir / "cameras.txt").write_text("\n".join(lines) + "\n")
        lines = ["# Image list with two lines of data per image:", "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
                 "#   POINTS2D[] as (X, Y, POINT3D_ID)"]
        for k, (iid, q, t, cid, name, pts) in enumerate(imgs):
            lines.append(" ".join([str(iid)] + [repr(float(v)) for v in (*q, *t)] + [str(cid), name]))
            lines.append("" if k % 2 else " ".join(f"{x} {y} {p}" for x, y, p in pts))  # empty POINTS2D lines too
        (mdir / "images.txt").write_text("\n".join(lines) + "\n")
    return root


# --- transforms.json ----------------------------------------------------------------------------
def write_transforms(root: Path, scene: Scene, *, per_frame: bool = False, angle_x: bool = False, with_ext: bool = True,
                     size_keys: bool = True, matrices: dict | None = None, images: dict | None = None,
                     model: str | None = None, masks: dict | None = None) -> Path:
    """NeRF/instant-ngp/nerfstudio transforms.json (OpenGL camera→world) + images/<name>.png. `model`: the
    camera_model key, with only its distortion keys (SIMPLE_RADIAL: k1, RADIAL: k1, k2, OPENCV: k1, k2, p1, p2);
    `masks` {name: (H,W) uint8}: masks/<name>.png and the frame's mask_path."""
    root.mkdir(parents=True, exist_ok=True)
    cam0 = next(iter(scene.cameras.values()))
    keys = {"SIMPLE_PINHOLE": (), "PINHOLE": (), "SIMPLE_RADIAL": ("k1",), "RADIAL": ("k1", "k2")}.get(model, ("k1", "k2", "p1", "p2"))

    def intr(cam: Camera) -> dict:
        K = cam.K.astype(np.float64)
        d = {"camera_angle_x": 2 * np.arctan(0.5 * cam.width / K[0, 0])} if angle_x else {"fl_x": K[0, 0], "fl_y": K[1, 1]}
        d.update(cx=K[0, 2], cy=K[1, 2])
        if size_keys:
            d.update(w=cam.width, h=cam.height)
        if cam.dist is not None:
            d.update({k: v for k, v in zip(("k1", "k2", "p1", "p2"), cam.dist[:4].astype(np.float64).tolist()) if k in keys})
        return d

    meta = {} if per_frame else intr(cam0)
    if model is not None:
        meta["camera_model"] = model
    meta["frames"] = []
    for n, cam in scene.cameras.items():
        c2w_gl = cam_to_world64(cam) @ GL_FLIP
        fr = {"file_path": f"./images/{n}" + (".png" if with_ext else ""),
              "transform_matrix": (matrices or {}).get(n, c2w_gl).tolist()}
        if per_frame:
            fr.update(intr(cam))
        if masks is not None and n in masks:
            fr["mask_path"] = f"masks/{n}.png"
            (root / "masks").mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(root / "masks" / f"{n}.png"), masks[n])
        meta["frames"].append(fr)
        write_png(root / "images" / f"{n}.png", (images or {}).get(n, scene.image(n)))
    (root / "transforms.json").write_text(json.dumps(meta, indent=1))
    return root


# --- folder ------------------------------------------------------------------------------------------
def write_folder(root: Path, scene: Scene, *, nested: bool = True, subject: str = "s1", sequence: str = "seq",
                 frames=(0,), cameras_json: dict | None = None) -> Path:
    """nested: <root>/<subject>/<sequence>/{cameras.json, <frame:05d>/<camera>.png}; flat: <root>/{cameras.json, <camera>.png}."""
    seq = root / subject / sequence if nested else root
    seq.mkdir(parents=True, exist_ok=True)
    save_cameras(seq / "cameras.json", cameras_json or scene.cameras)
    for t in frames:
        for n in scene.cameras:
            write_png((seq / f"{t:05d}" if nested else seq) / f"{n}.png", scene.image(n, t))
    return root


def flipped(cam: Camera, world_to_cam: np.ndarray) -> Camera:
    """The same camera with a (deliberately wrong) pose."""
    return replace(cam, world_to_cam=world_to_cam)
