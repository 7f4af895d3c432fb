"""OpenCV pinhole cameras: the one camera convention used everywhere in geoface.

`K` is 3×3 in pixels, `world_to_cam` 4×4 (x right, y down, z forward), pixel centres at
+0.5 (pixel (row i, col j) is sampled at x=j+0.5, y=i+0.5), image size (width, height),
metres. Readers of foreign formats convert to this at the reader and nowhere else.

Numpy for the `Camera` value type (I/O, geometry set-up); torch functions at the bottom for
the batched, differentiable paths (fitting, model conditioning). They use only the tensors' own methods, so this
module does not import torch: every reader of a capture imports it, and none of them needs torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from flame_fitting.core.arrays import checked_array
from flame_fitting.geometry.camera_checks import CameraError, check_intrinsics

if TYPE_CHECKING:  # annotations only (a string under `from __future__ import annotations`)
    import torch


def _as_f32(a, shape: tuple[int | None, ...], what: str) -> np.ndarray:
    with np.errstate(over="ignore"):
        out = checked_array(a, shape, what, CameraError).astype(np.float32)
    if not np.all(np.isfinite(out)):
        raise CameraError(f"{what}: values beyond float32's range")
    return out


def _pixels(v) -> int | None:
    """`v` as a whole positive number of pixels (an int or an integral float), else None."""
    ok = not isinstance(v, (bool, np.bool_)) and isinstance(v, (int, float, np.integer, np.floating)) and math.isfinite(v)
    return int(v) if ok and v == int(v) and int(v) > 0 else None


def check_rigid(m: np.ndarray, what: str = "world_to_cam", tol: float = 1e-4) -> None:
    """Raise CameraError unless `m` (4,4) is a rigid transform (rotation + translation)."""
    m = np.asarray(m, dtype=np.float64)
    R = m[:3, :3]
    if not np.allclose(m[3], [0, 0, 0, 1], atol=tol):
        raise CameraError(f"{what}: last row must be [0, 0, 0, 1], got {m[3].tolist()}")
    err = np.abs(R @ R.T - np.eye(3)).max()
    if err > tol or np.linalg.det(R) < 0:
        raise CameraError(
            f"{what}: rotation part is not a rotation (|R Rᵀ - I| = {err:.2e}, det = {np.linalg.det(R):.4f})"
        )


@dataclass(frozen=True)
class Camera:
    """An OpenCV pinhole camera with optional distortion.

    K: (3,3) float32 intrinsics in pixels; world_to_cam: (4,4) float32 rigid transform;
    width, height: image size in pixels; dist: (k,) OpenCV distortion (k1,k2,p1,p2[,k3..]) or None.
    """

    K: np.ndarray
    world_to_cam: np.ndarray
    width: int
    height: int
    dist: np.ndarray | None = None
    name: str = field(default="")

    def __post_init__(self) -> None:
        object.__setattr__(self, "K", _as_f32(self.K, (3, 3), f"camera {self.name!r} K"))
        object.__setattr__(self, "world_to_cam", _as_f32(self.world_to_cam, (4, 4), f"camera {self.name!r} world_to_cam"))
        if self.dist is not None:
            d = _as_f32(np.asarray(self.dist, dtype=object).reshape(-1), (None,), f"camera {self.name!r} dist")
            if d.size not in (4, 5, 8, 12, 14):
                raise CameraError(f"camera {self.name!r}: distortion needs 4, 5, 8, 12 or 14 coefficients, got {d.size}")
            object.__setattr__(self, "dist", None if not np.any(d) else d)
        width, height = _pixels(self.width), _pixels(self.height)
        if width is None or height is None:
            raise CameraError(f"camera {self.name!r}: image size must be positive whole numbers of pixels, got "
                              f"{self.width!r}×{self.height!r}")
        object.__setattr__(self, "width", width)
        object.__setattr__(self, "height", height)
        check_intrinsics(self.K, width, height, f"camera {self.name!r}")
        check_rigid(self.world_to_cam, f"camera {self.name!r} world_to_cam")

    # --- geometry -----------------------------------------------------------------
    @property
    def R(self) -> np.ndarray:  # (3,3) world→camera rotation
        return self.world_to_cam[:3, :3]

    @property
    def t(self) -> np.ndarray:  # (3,) world→camera translation
        return self.world_to_cam[:3, 3]

    @property
    def cam_to_world(self) -> np.ndarray:  # (4,4)
        return invert_rigid(self.world_to_cam)

    @property
    def center(self) -> np.ndarray:  # (3,) camera centre in world coordinates
        return (-self.R.T @ self.t).astype(np.float32)

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """points (N,3) world -> (uv (N,2) pixels, depth (N,) camera z). Distortion applied if set."""
        p = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        pc = p @ self.R.T.astype(np.float64) + self.t.astype(np.float64)
        z = pc[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            xn = pc[:, :2] / z[:, None]
        if self.dist is not None:
            xn = distort_normalized(xn, self.dist)
        K = self.K.astype(np.float64)
        uv = xn @ K[:2, :2].T + K[:2, 2]
        return uv.astype(np.float32), z.astype(np.float32)

    def unproject(self, uv: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """uv (N,2) pixels, depth (N,) camera z -> (N,3) world points (distortion removed if set)."""
        xn = self.normalized(uv)
        pc = np.concatenate([xn, np.ones((len(xn), 1))], 1) * np.asarray(depth, np.float64).reshape(-1, 1)
        pw = (pc - self.t.astype(np.float64)) @ self.R.astype(np.float64)
        return pw.astype(np.float32)

    def normalized(self, uv: np.ndarray) -> np.ndarray:
        """uv (N,2) pixels -> (N,2) undistorted normalised image coordinates (float64)."""
        uv = np.asarray(uv, dtype=np.float64).reshape(-1, 2)
        xn = np.linalg.solve(self.K.astype(np.float64), np.concatenate([uv, np.ones((len(uv), 1))], 1).T).T[:, :2]
        if self.dist is not None:
            xn = undistort_normalized(xn, self.dist)
        return xn

    def pixel_centers(self, stride: int = 1) -> np.ndarray:
        """(H/stride, W/stride, 2) pixel coordinates of the centres of stride×stride cells."""
        if self.width % stride or self.height % stride:
            raise CameraError(f"camera {self.name!r}: size {self.width}×{self.height} not divisible by stride {stride}")
        xs = (np.arange(self.width // stride) + 0.5) * stride
        ys = (np.arange(self.height // stride) + 0.5) * stride
        return np.stack(np.meshgrid(xs, ys, indexing="xy"), -1).astype(np.float32)

    def rays(self, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Rays through cell centres: origins (H',W',3), unit directions (H',W',3), world frame."""
        uv = self.pixel_centers(stride)
        h, w = uv.shape[:2]
        xn = self.normalized(uv.reshape(-1, 2))
        d_cam = np.concatenate([xn, np.ones((len(xn), 1))], 1)
        d = d_cam @ self.R.astype(np.float64)  # R^T d_cam, row-vector form
        d /= np.linalg.norm(d, axis=1, keepdims=True)
        o = np.broadcast_to(self.center, d.shape)
        return o.reshape(h, w, 3).astype(np.float32), d.reshape(h, w, 3).astype(np.float32)

    def plucker(self, stride: int = 1) -> np.ndarray:
        """Plücker ray embedding (H',W',6) = (d̂, o × d̂) at cell centres (SEVA convention)."""
        o, d = self.rays(stride)
        return np.concatenate([d, np.cross(o, d)], -1).astype(np.float32)

    # --- image-space edits that keep K consistent ------------------------------------
    def resized(self, width: int, height: int) -> "Camera":
        """The same camera for the image resized to (width, height); pixel centres stay consistent."""
        sx, sy = width / self.width, height / self.height
        S = np.diag([sx, sy, 1.0])
        return replace(self, K=(S @ self.K.astype(np.float64)), width=width, height=height)

    def cropped(self, x0: int, y0: int, width: int, height: int) -> "Camera":
        """The camera of the crop image[y0:y0+height, x0:x0+width]; CameraError naming the crop when the crop is too
        narrow for this focal length (under camera_checks.MIN_FIELD_OF_VIEW_DEG) or reaches far outside the image."""
        K = self.K.astype(np.float64).copy()
        K[0, 2] -= x0
        K[1, 2] -= y0
        check_intrinsics(K, width, height, f"camera {self.name!r} cropped to {width}×{height} at ({x0}, {y0})",
                         cause="the crop, not the calibration, is at fault: crop a larger part inside the image")
        return replace(self, K=K, width=width, height=height)

    def with_pose(self, world_to_cam: np.ndarray) -> "Camera":
        return replace(self, world_to_cam=world_to_cam)

    # --- serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict:
        d = {
            "K": self.K.tolist(),
            "world_to_cam": self.world_to_cam.tolist(),
            "width": self.width,
            "height": self.height,
        }
        if self.dist is not None:
            d["dist"] = self.dist.tolist()
        return d

    @classmethod
    def from_dict(cls, d: dict, name: str = "") -> "Camera":
        missing = [k for k in ("K", "world_to_cam", "width", "height") if k not in d]
        if missing:
            raise CameraError(f"camera {name!r}: missing keys {missing}")
        return cls(K=d["K"], world_to_cam=d["world_to_cam"], width=d["width"], height=d["height"], dist=d.get("dist"), name=name)


# --- pure helpers --------------------------------------------------------------------
def invert_rigid(m: np.ndarray) -> np.ndarray:
    """(4,4) rigid transform -> its inverse (float32)."""
    m = np.asarray(m, dtype=np.float64)
    out = np.eye(4)
    out[:3, :3] = m[:3, :3].T
    out[:3, 3] = -m[:3, :3].T @ m[:3, 3]
    return out.astype(np.float32)


GL_FROM_CV = np.diag([1.0, -1.0, -1.0, 1.0])  # its own inverse: flips the camera's y and z axes (OpenCV <-> OpenGL)


def opengl_cam_to_world(cam: Camera) -> np.ndarray:
    """(4, 4) float64 OpenGL / Blender / NeRF camera→world of an OpenCV camera."""
    return invert_rigid(cam.world_to_cam.astype(np.float64)).astype(np.float64) @ GL_FROM_CV


def world_to_cam_from_opengl(c2w_gl: np.ndarray) -> np.ndarray:
    """(4, 4) float64 OpenCV world→camera of an OpenGL camera→world (the inverse of `opengl_cam_to_world`)."""
    c2w = np.asarray(c2w_gl, np.float64) @ GL_FROM_CV
    R, t = c2w[:3, :3], c2w[:3, 3]
    out = np.eye(4)
    out[:3, :3] = R.T
    out[:3, 3] = -R.T @ t
    return out


def look_at(eye: np.ndarray, target: np.ndarray, up=(0.0, 1.0, 0.0)) -> np.ndarray:
    """world_to_cam (4,4) of an OpenCV camera at `eye` looking at `target`, with world `up` up in the image."""
    eye, target, up = (np.asarray(v, np.float64) for v in (eye, target, up))
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, up)  # image x = right
    if np.linalg.norm(x) < 1e-9:
        raise CameraError("look_at: viewing direction is parallel to up")
    x /= np.linalg.norm(x)
    y = np.cross(z, x)  # image y = down
    R = np.stack([x, y, z])
    m = np.eye(4)
    m[:3, :3] = R
    m[:3, 3] = -R @ eye
    return m.astype(np.float32)


def intrinsics(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], np.float32)


def distort_normalized(xn: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Apply OpenCV radial/tangential distortion to normalised coords (N,2) (k1,k2,p1,p2[,k3,k4,k5,k6])."""
    d = np.zeros(8)
    d[: min(8, len(dist))] = np.asarray(dist, np.float64)[:8]
    k1, k2, p1, p2, k3, k4, k5, k6 = d
    x, y = xn[:, 0], xn[:, 1]
    r2 = x * x + y * y
    radial = (1 + k1 * r2 + k2 * r2**2 + k3 * r2**3) / (1 + k4 * r2 + k5 * r2**2 + k6 * r2**3)
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return np.stack([xd, yd], 1)


def undistort_normalized(xd: np.ndarray, dist: np.ndarray, iters: int = 20) -> np.ndarray:
    """Invert `distort_normalized` by fixed-point iteration (as OpenCV's undistortPoints)."""
    x = xd.copy()
    for _ in range(iters):
        err = distort_normalized(x, dist) - xd
        x = x - err
    return x


# --- torch (batched, differentiable) ----------------------------------------------
def project_points(points: torch.Tensor, K: torch.Tensor, world_to_cam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """points (B,N,3), K (B,3,3), world_to_cam (B,4,4) -> uv (B,N,2) pixels, depth (B,N). No distortion."""
    pc = points @ world_to_cam[:, :3, :3].transpose(1, 2) + world_to_cam[:, None, :3, 3]
    z = pc[..., 2]
    xn = pc[..., :2] / z[..., None]
    uv = xn @ K[:, :2, :2].transpose(1, 2) + K[:, None, :2, 2]
    return uv, z


def stack_cameras(cams: list[Camera]) -> tuple[np.ndarray, np.ndarray]:
    """list of N cameras -> K (N,3,3), world_to_cam (N,4,4) float32."""
    return np.stack([c.K for c in cams]), np.stack([c.world_to_cam for c in cams])
