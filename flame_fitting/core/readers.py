"""Reading files the toolkit did not write, bounded before anything is allocated (JSON: json_files.py): images and
masks (`read_image`, `read_mask`: the header's size checked against `MAX_IMAGE_PIXELS` before decoding, truncated
JPEGs refused, one error naming the file), an image's size from its header alone (`image_size` as
cv2.IMREAD_COLOR turns it; `decoded_size`, checked, as `read_image(..., with_alpha=True)` decodes it), and the path
OpenCV is given (`cv2_path`: its binding crashes on a name that is not UTF-8). The writes are fileio.py's."""
from __future__ import annotations

import warnings
from pathlib import Path

import cv2
import numpy as np

from flame_fitting.core.fileio import OutputError
from flame_fitting.core.jpeg_end import jpeg_cut_short
from flame_fitting.core.names import terminal_safe


def cv2_path(path: Path | str, error: type[Exception] = OutputError) -> str:
    """`str(path)` for OpenCV to open (cv2.imread, cv2.VideoCapture); `error` naming the file when its name holds
    bytes that are not UTF-8 (Python keeps them as lone surrogates, and OpenCV 4.11's binding crashes the process,
    a segmentation fault, on such a string)."""
    s = str(path)
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise error(f"{terminal_safe(s)}: the file name holds bytes that are not UTF-8, which OpenCV cannot open; "
                    "rename the file") from None
    return s


def read_image(path: Path | str, with_alpha: bool = False, error: type[Exception] = OutputError):
    """(H, W, 3) uint8 RGB of any 8/16-bit grey/RGB/RGBA file OpenCV reads (16-bit scaled to 8), plus the
    (H, W) uint8 alpha or None when `with_alpha`. A missing, unreadable or truncated (JPEG: `jpeg_end`) file raises
    `error` naming it."""
    _check_regular_file(path, error)
    check_declared_size(path, path, error)
    if jpeg_cut_short(path):  # OpenCV would fill the missing rows with grey and say nothing
        raise error(f"{path}: truncated JPEG (its data end before the end-of-image marker; an interrupted copy?)")
    img = cv2.imread(cv2_path(path, error), cv2.IMREAD_UNCHANGED if with_alpha else cv2.IMREAD_COLOR)
    if img is None:
        raise error(f"{path}: not a readable image")
    if img.dtype == np.uint16:
        img = (img.astype(np.float32) / 257.0 + 0.5).astype(np.uint8)
    if img.dtype != np.uint8:
        raise error(f"{path}: unsupported pixel type {img.dtype}")
    alpha = None
    if img.ndim == 2:
        rgb = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif img.shape[2] == 4:
        rgb, alpha = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB), np.ascontiguousarray(img[..., 3])
    else:
        rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return (rgb, alpha) if with_alpha else rgb


def _check_regular_file(path: Path | str, error: type[Exception]) -> None:
    """`error` naming `path` when it is missing or not a regular file (a FIFO would block the decoder and PIL's
    header read; a folder or device is no image either)."""
    if not Path(path).is_file():
        raise error(f"{path}: " + ("image file is missing" if not Path(path).exists() else
                                   "not a regular file (a named pipe, device or folder); not read"))


MAX_IMAGE_PIXELS = 1 << 27  # 134 MP: every real capture camera is far below; decoding it costs GBs already


def check_declared_size(src, what, error: type[Exception] = OutputError) -> None:
    """`error` naming `what` when the image in `src` (a path, or a file object over encoded bytes) declares more than
    MAX_IMAGE_PIXELS in its header; call it before every cv2.imread / cv2.imdecode of an untrusted image or mask."""
    check_pixel_count(_declared_size(src), what, error)


def check_pixel_count(size: tuple[int, int] | None, what, error: type[Exception] = OutputError,
                      kind: str = "image", limit: int = MAX_IMAGE_PIXELS, holder: str = "a capture's image") -> None:
    """`error` naming `what` when `size` (width, height), what a file's header declares for its image (or a video's
    frames, `kind="video"`), is beyond `limit` pixels, more than `holder` holds; None (no size known) passes."""
    if size is not None and size[0] * size[1] > limit:
        shown = "over 178 million" if size[0] == 1 << 31 else f"{size[0]}×{size[1]}"
        per = " per frame" if kind == "video" else ""
        raise error(f"{what}: the {kind} declares {shown} pixels{per}, more than {holder} holds "
                    f"({limit} pixels); a damaged or hostile file")


def read_mask(path: Path | str, flags: int = cv2.IMREAD_GRAYSCALE, error: type[Exception] = OutputError):
    """cv2.imread(path, flags) of an untrusted mask after the header's size check; None when OpenCV cannot read it."""
    check_declared_size(path, path, error)
    return cv2.imread(cv2_path(path, error), flags)


def _declared_size(path: Path | str) -> tuple[int, int] | None:
    """(width, height) in the image's header (PIL's lazy open, no pixels decoded), before decoding: a few KB of PNG
    can declare a 32767² 16-bit image (~20 GB once decoded and converted). Beyond PIL's own limit (2 × 89 MP) the
    size is not read: (1 << 31, 1) stands for it. None when PIL cannot read the header (OpenCV then says whether it
    is an image)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():  # PIL warns above 89 MP: the caller compares with MAX_IMAGE_PIXELS instead
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return int(im.size[0]), int(im.size[1])
    except Image.DecompressionBombError:
        return 1 << 31, 1
    except Exception:  # noqa: BLE001 - PIL raises many types on corrupt headers
        return None


def decoded_size(path: Path | str, error: type[Exception] = OutputError) -> tuple[int, int]:
    """(width, height) of the image `read_image(path, with_alpha=True)` decodes, from the file's header alone (PIL's
    lazy open: no pixels decoded; no EXIF turn, which cv2.IMREAD_UNCHANGED does not apply either). `error` naming the
    file when it is missing, not a regular file, or its header declares more than MAX_IMAGE_PIXELS; a header PIL
    cannot read: the file is decoded, so an unreadable one is refused with read_image's error."""
    _check_regular_file(path, error)
    size = _declared_size(path)
    if size is None:
        rgb, _ = read_image(path, with_alpha=True, error=error)
        return rgb.shape[1], rgb.shape[0]
    check_pixel_count(size, path, error)
    return size


def image_size(path: Path | str) -> tuple[int, int] | None:
    """(width, height) of an image file as `cv2.imread` decodes it (JPEG EXIF orientation applied), read from the
    file's header only (PIL's lazy open: no pixels are decoded). None when the header is not a readable image
    header (the file is then reported as unreadable by whichever stage decodes it)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
            # only JPEG's EXIF is read here (PNG's may sit after the pixels: reading it would decode them)
            turned = im.format == "JPEG" and "exif" in im.info and im.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except Exception:  # noqa: BLE001 - PIL raises many types on corrupt headers; such files are recorded later
        return None
    return (h, w) if turned else (w, h)
