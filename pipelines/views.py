"""Raw source image -> stored image, per camera: reading image files (`read_image_file`), matching a
calibration to a scaled image (`scale_to_image`), and `ViewProcessor`, which applies undistortion
(`cv2.remap` onto the same K, cached maps), the configured crop and the resize, and maps raw pixel
coordinates to stored ones. Cameras follow docs/conventions.md (pixel centres at +0.5); the stored
camera comes from `Camera.cropped` / `Camera.resized`. Used by `pipelines.common.CaptureImport`.
"""
from __future__ import annotations

import functools
from dataclasses import replace

import cv2
import numpy as np

from flame_fitting.core.readers import decoded_size, read_image
from flame_fitting.geometry.camera import Camera, CameraError
from flame_fitting.formats.capture import CaptureError
from pipelines.import_config import ImportConfig


# (H,W,3) uint8 RGB and (H,W) uint8 alpha or None, from any 8/16-bit grey/RGB/RGBA file; CaptureError naming it
read_image_file = functools.partial(read_image, with_alpha=True, error=CaptureError)


# (width, height) read_image_file decodes, from the header alone; CaptureError naming the file (readers.decoded_size)
image_file_size = functools.partial(decoded_size, error=CaptureError)


def scale_to_image(cam: Camera, width: int, height: int, what: str) -> Camera:
    """The camera for its image stored at (width, height): K scaled when the aspect ratio matches
    (e.g. a 2x downscaled folder), CaptureError when it does not."""
    if (width, height) == (cam.width, cam.height):
        return cam
    if abs(height - cam.height * width / cam.width) > 1.0:
        raise CaptureError(f"{what}: image is {width}×{height}, calibration is for {cam.width}×{cam.height} "
                           "(not the same aspect ratio, so it is not a scaled copy)")
    return cam.resized(width, height)


# --- per-view image processing ---------------------------------------------------------
def undistort_maps(cam: Camera) -> tuple[np.ndarray, np.ndarray]:
    """cv2.remap maps (H,W) float32 that undistort `cam`'s image onto the same K (a few are cached:
    full-resolution maps are large, and cameras sharing intrinsics share them)."""
    return _undistort_maps(cam.K.tobytes(), cam.dist.tobytes(), cam.width, cam.height)


@functools.lru_cache(maxsize=4)
def _undistort_maps(K_bytes: bytes, dist_bytes: bytes, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    # OpenCV puts pixel centres at integers, geoface at +0.5: K is shifted by -0.5 for OpenCV
    K = np.frombuffer(K_bytes, np.float32).reshape(3, 3).astype(np.float64)
    K[:2, 2] -= 0.5
    dist = np.frombuffer(dist_bytes, np.float32).astype(np.float64)
    return cv2.initUndistortRectifyMap(K, dist, None, K, (width, height), cv2.CV_32FC1)


def crop_for(cam: Camera, cfg: ImportConfig) -> tuple[int, int, int, int] | None:
    """(x0, y0, width, height) crop of `cam`'s (undistorted) image, or None."""
    W, H = cam.width, cam.height
    if cfg.crop_box is not None:
        x0, y0, w, h = (int(v) for v in cfg.crop_box)
        if x0 + w > W or y0 + h > H:
            raise CaptureError(f"crop_box {cfg.crop_box} does not fit the {W}×{H} image")
        return x0, y0, w, h
    if cfg.crop_aspect is not None:
        a = cfg.crop_aspect
        w, h = (min(W, round(H * a)), H) if W / H > a else (W, min(H, round(W / a)))
        return (W - w) // 2, (H - h) // 2, w, h
    if cfg.crop_head is not None:
        c, r = np.asarray(cfg.crop_head[:3], np.float64), float(cfg.crop_head[3])
        uv, z = cam.project(c[None])
        if not z[0] > r:
            raise CaptureError(f"crop_head sphere {cfg.crop_head} is not in front of the camera (depth {z[0]:.3f} m)")
        f = 0.5 * float(cam.K[0, 0] + cam.K[1, 1])
        side = min(W, H, max(1, int(round(2 * f * r / np.sqrt(z[0] ** 2 - r ** 2)))))
        x0 = int(np.clip(round(uv[0, 0] - side / 2), 0, W - side))
        y0 = int(np.clip(round(uv[0, 1] - side / 2), 0, H - side))
        return x0, y0, side, side
    return None


class ViewProcessor:
    """Raw image of one camera -> stored image: undistort, crop, resize; `camera` is the stored camera."""

    def __init__(self, src: Camera, cfg: ImportConfig):
        self.src = src
        cam = src
        self.undistort = src.dist is not None and cfg.undistort
        if self.undistort:
            cam = replace(src, dist=None)
        self.crop = crop_for(cam, cfg)
        if self.crop is not None:
            try:
                cam = cam.cropped(*self.crop)
            except CameraError as e:  # the setting, not the calibration: named first, so a refusal of all says so
                setting = next(f"{n} {getattr(cfg, n)}" for n in ("crop_box", "crop_aspect", "crop_head")
                               if getattr(cfg, n) is not None)
                raise CaptureError(f"{setting}: {e}") from None
        w, h = (cfg.resize if cfg.resize is not None else (cam.width // cfg.downscale, cam.height // cfg.downscale))
        if w < 1 or h < 1:
            raise CaptureError(f"downscale {cfg.downscale} leaves no pixels of the {cam.width}×{cam.height} image")
        self.pre_size = (cam.width, cam.height)
        self.camera = cam.resized(int(w), int(h)) if (w, h) != self.pre_size else cam

    def _apply(self, img: np.ndarray, interp: int) -> np.ndarray:
        if self.undistort:
            mx, my = undistort_maps(self.src)
            img = cv2.remap(img, mx, my, interp, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        if self.crop is not None:
            x0, y0, w, h = self.crop
            img = img[y0:y0 + h, x0:x0 + w]
        size = (self.camera.width, self.camera.height)
        if size != self.pre_size:
            if interp != cv2.INTER_NEAREST:
                interp = cv2.INTER_AREA if size[0] < self.pre_size[0] else cv2.INTER_LINEAR
            img = cv2.resize(img, size, interpolation=interp)
        return np.ascontiguousarray(img)

    def image(self, rgb: np.ndarray) -> np.ndarray:  # (H,W,3) uint8 raw -> (h,w,3) uint8 stored
        return self._apply(rgb, cv2.INTER_LINEAR)

    def mask(self, mask: np.ndarray) -> np.ndarray:  # (H,W) uint8 raw -> (h,w) uint8 stored (nearest)
        return self._apply(mask, cv2.INTER_NEAREST)

    def points(self, uv: np.ndarray) -> np.ndarray:
        """(N,2) pixel coordinates in the raw image -> (N,2) float32 in the stored image."""
        uv = np.asarray(uv, np.float64).reshape(-1, 2)
        if self.undistort:
            K = self.src.K.astype(np.float64)
            uv = self.src.normalized(uv) @ K[:2, :2].T + K[:2, 2]
        if self.crop is not None:
            uv = uv - np.asarray(self.crop[:2], np.float64)
        scale = np.array([self.camera.width / self.pre_size[0], self.camera.height / self.pre_size[1]])
        return (uv * scale).astype(np.float32)

