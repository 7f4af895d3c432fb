"""Reading the user's photo for `geoface generate` (`read_photo`): as a photo viewer shows it, or one GenerateError
line naming the file (module `generate`, step 1). PIL decodes it: EXIF orientation, the first frame of a multi-frame
file, an ICC profile converted to sRGB, transparency composited over white, a JPEG above readers.MAX_IMAGE_PIXELS
decoded at reduced scale (DCT scaling) up to `PHOTO_MAX_PIXELS`.
"""
from __future__ import annotations

import io
import struct
import threading
from pathlib import Path

import cv2
import numpy as np
from PIL import ExifTags, Image, ImageCms, ImageOps, UnidentifiedImageError

from flame_fitting.core.errors import GeofaceError
from flame_fitting.core.readers import MAX_IMAGE_PIXELS, check_pixel_count

__all__ = ["GenerateError", "MAX_SIDE", "PHOTO_MAX_PIXELS", "read_photo"]

MAX_SIDE = 4096
# A JPEG photo may declare up to 4× readers.MAX_IMAGE_PIXELS (537 MP: Samsung's 200 MP mode is 16320×12240, a
# medium-format pixel-shift shot ~400 MP): above MAX_IMAGE_PIXELS it is decoded at 1/2, 1/4 or 1/8 scale by the JPEG
# decoder itself (DCT scaling, PIL's `draft`), so no more than MAX_IMAGE_PIXELS are ever decoded; the limit on the
# declared size bounds the decoding time (the whole file is still entropy-decoded). Other formats have no reduced
# decode: MAX_IMAGE_PIXELS.
PHOTO_MAX_PIXELS = 4 * MAX_IMAGE_PIXELS
_JPEG = ("JPEG", "MPO")
_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
_PIL_LIMIT = threading.Lock()


class GenerateError(GeofaceError, ValueError):
    """A photo or model that cannot be used (names the file and the problem)."""


def _open_photo(p: Path) -> Image.Image:
    """Image.open (the header only, no pixel decoded) without PIL's own decompression-bomb check, which refuses
    above 2 × 89 MP (a 200 MP phone photo): `read_photo` checks the declared size itself before decoding. PIL has no
    per-call limit, so its global is lifted for the call, under a lock, and restored."""
    with _PIL_LIMIT:
        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            return Image.open(p)
        finally:
            Image.MAX_IMAGE_PIXELS = limit


def _decode_size(im: Image.Image, path, max_side: int, notes: list[str]) -> None:
    """Refuse a photo declaring more than it may (`PHOTO_MAX_PIXELS` for a JPEG, readers.MAX_IMAGE_PIXELS for other
    formats); a JPEG above MAX_IMAGE_PIXELS is set to decode at the smallest DCT scale (1/2, 1/4, 1/8) that still
    holds `max_side` px on its longest side (a JPEG below it decodes in full, as before: DCT scaling differs from
    full decoding + area downscaling by ~0.5 level on average)."""
    w, h = im.size
    check_pixel_count((w, h), path, GenerateError, kind="photo", limit=PHOTO_MAX_PIXELS, holder="a photo")
    if w * h <= MAX_IMAGE_PIXELS:
        return
    if im.format not in _JPEG:
        raise GenerateError(f"{path}: the photo declares {w}×{h} pixels; a {im.format} photo is read up to "
                            f"{MAX_IMAGE_PIXELS} pixels (a JPEG up to {PHOTO_MAX_PIXELS}: it is decoded at reduced "
                            "scale); save it as JPEG, or smaller")
    s = min(1.0, max_side / max(w, h))
    im.draft(im.mode, (max(1, int(np.ceil(w * s))), max(1, int(np.ceil(h * s)))))
    if im.size[0] * im.size[1] > MAX_IMAGE_PIXELS:  # max_side too large for 1/8 scale, or draft not possible
        raise GenerateError(f"{path}: the photo has {w}×{h} pixels; at most {MAX_IMAGE_PIXELS} are decoded, "
                            f"{im.size[0]}×{im.size[1]} at the scale max_side={max_side} needs; "
                            "use a smaller max_side")
    notes.append(f"decoded at 1/{round(w / im.size[0])} scale (JPEG DCT scaling; {w}x{h} is more than "
                 f"{MAX_IMAGE_PIXELS} pixels)")


def _to_srgb(im: Image.Image, icc: bytes | None, notes: list[str]) -> Image.Image:
    """`im` (RGB[A], L[A], CMYK, P) converted from its embedded ICC profile `icc` to sRGB (mode RGB, or RGBA with
    the alpha kept), as a colour-managed viewer shows it: an iPhone's Display P3 photo read as sRGB is duller and
    shifted; the model was trained on sRGB. Perceptual intent, what the ICC recommends for photographs and browsers
    use (Firefox's default; Chrome's skcms reads a LUT profile's A2B0, the perceptual table); for a matrix/TRC profile
    (Display P3, Adobe RGB: nearly every camera and phone) it equals relative colorimetric, out-of-gamut colours
    clipped. No profile: unchanged; a profile that cannot be read or does not fit the pixels: unchanged, noted."""
    if not icc:
        return im
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        name = ImageCms.getProfileDescription(src).strip() or "unnamed"
        space = src.profile.xcolor_space.strip()
    except (OSError, ImageCms.PyCMSError, ValueError, TypeError) as e:  # lcms: "cannot open profile from string"
        notes.append(f"its ICC profile is unreadable ({e}): colours read as sRGB")
        return im
    if im.mode == "P":
        im = im.convert("RGBA" if im.has_transparency_data else "RGB")
    base, alpha = (im.convert(im.mode[:-1]), im.getchannel("A")) if im.mode in ("RGBA", "LA") else (im, None)
    if {"RGB": "RGB", "L": "GRAY", "CMYK": "CMYK"}.get(base.mode) != space:
        notes.append(f"its ICC profile ({name}) is for {space} pixels, not {base.mode}: colours read as sRGB")
        return im
    try:
        rgb = ImageCms.profileToProfile(base, src, _SRGB, renderingIntent=ImageCms.Intent.PERCEPTUAL,
                                        outputMode="RGB")
    except ImageCms.PyCMSError as e:
        notes.append(f"its ICC profile ({name}) cannot be applied ({e}): colours read as sRGB")
        return im
    if alpha is not None:
        rgb.putalpha(alpha)
    notes.append(f"colours converted from its ICC profile ({name}) to sRGB")
    return rgb


def _upright_rgb(im: Image.Image, path, notes: list[str]) -> np.ndarray:
    """A loaded PIL image -> (H, W, 3|4) uint8 RGB[A] turned upright by its EXIF orientation (4 channels when it
    carries transparency), colours converted to sRGB from its ICC profile; notes what it turned and converted."""
    icc = im.info.get("icc_profile")
    try:
        turn = im.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # noqa: BLE001 - PIL raises many types on a damaged EXIF block; the pixels are still good
        turn = None
        notes.append("its EXIF block is unreadable: no orientation applied")
    if turn in range(2, 9):
        im = ImageOps.exif_transpose(im)
        notes.append(f"turned upright by its EXIF orientation ({turn})")
    if im.mode.startswith("I;16"):  # 16-bit grey (PNG, TIFF): PIL's own conversion would clip at 255
        im = Image.fromarray((np.asarray(im, np.float32) / 257.0 + 0.5).astype(np.uint8))
    if im.mode not in ("I", "F"):
        im = _to_srgb(im, icc, notes)
    try:
        if im.mode in ("I", "F"):
            raise ValueError("32-bit pixels")
        mode = "RGBA" if im.has_transparency_data else "RGB"
        return np.asarray(im if im.mode == mode else im.convert(mode))  # no copy of a 200 MB decoded image
    except ValueError as e:
        raise GenerateError(f"{path}: unsupported pixel format {im.mode} ({e}); save the photo as an 8- or 16-bit "
                            "JPEG or PNG") from None


def read_photo(path: Path | str, max_side: int = MAX_SIDE) -> tuple[np.ndarray, list[str], tuple[int, int]]:
    """-> RGB uint8 (longest side <= max_side), notes, (width, height) as shown. Read with PIL, as a photo viewer
    shows it: turned upright by its EXIF orientation (phones store portraits sideways with Orientation 6 or 8), the
    first frame of a multi-frame file (GIF, TIFF, WebP animation; noted), 16-bit scaled to 8, grey / palette / CMYK
    converted to RGB, an embedded ICC profile (an iPhone's Display P3, a CMYK or grey profile) converted to sRGB
    (`_to_srgb`; noted; an unreadable profile is noted and the pixels read as sRGB). A photo with transparency (a
    portrait cut out of its background; RGBA, LA, a palette with a transparent entry) is composited over white, as
    single-image-to-3D tools do: the colour of a transparent pixel is whatever the cutting tool left there (often
    black). A JPEG of more than readers.MAX_IMAGE_PIXELS (a 200 MP phone photo) is decoded at 1/2-1/8 scale
    (`_decode_size`; noted). A missing path, a folder, a header declaring more than `PHOTO_MAX_PIXELS` (a JPEG) or
    readers.MAX_IMAGE_PIXELS (other formats), a file PIL cannot identify, or a truncated or damaged file raises one
    GenerateError naming the file."""
    p = Path(path)
    if not p.exists():
        raise GenerateError(f"{path}: image file is missing")
    if not p.is_file():
        raise GenerateError(f"{path}: is {'a folder' if p.is_dir() else 'not a regular file'}, not an image file")
    if p.stat().st_size == 0:
        raise GenerateError(f"{path}: the file is empty (0 bytes)")
    notes = []
    try:
        with _open_photo(p) as im:
            declared = im.size
            _decode_size(im, path, max_side, notes)  # before any pixel is decoded
            decoded = im.size
            if getattr(im, "n_frames", 1) > 1 and im.format != "MPO":  # MPO: a phone JPEG + its extra pictures
                notes.append(f"{im.n_frames} frames ({im.format}); using the first")
            im.load()
            rgba = _upright_rgb(im, path, notes)
    except UnidentifiedImageError:
        raise GenerateError(f"{path}: not a readable image (JPEG, PNG, WebP, TIFF, BMP or GIF; an iPhone HEIC photo: "
                            "export it as JPEG)") from None
    except (OSError, SyntaxError, EOFError, struct.error) as e:  # PIL's errors on damaged pixel data
        raise GenerateError(f"{path}: truncated or damaged image ({e})") from None
    img, alpha = rgba[..., :3], (rgba[..., 3] if rgba.shape[2] == 4 else None)
    w, h = declared if rgba.shape[1::-1] == decoded else declared[::-1]  # as shown: EXIF may have turned it
    if alpha is not None and (alpha < 255).any():
        a = alpha[..., None].astype(np.float32) / 255.0
        img = (img * a + 255.0 * (1.0 - a) + 0.5).astype(np.uint8)
        notes.append(f"composited over white: {float((alpha < 255).mean()):.0%} of the photo is (partly) transparent")
    img = np.ascontiguousarray(img)
    if max(h, w) > max_side:
        s = max_side / max(h, w)
        img = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    if img.shape[1::-1] != (w, h):
        notes.append(f"downscaled from {w}x{h} to {img.shape[1]}x{img.shape[0]} (longest side > {max_side} px)")
    return img, notes, (w, h)
