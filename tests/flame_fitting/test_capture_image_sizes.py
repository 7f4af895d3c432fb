"""load_capture checks each image file's real size (from its header only) against its camera (issue 12, item 6)."""
import cv2
import numpy as np
import pytest
from PIL import Image

from flame_fitting.core.readers import image_size
from flame_fitting.formats.capture import CaptureError, load_capture
from test_capture import write_small


def test_image_of_another_size_is_named_at_load(tmp_path):
    """The manifest and the camera agree (64×48), the file itself does not."""
    root = tmp_path / "cap"
    write_small(root)
    bad = root / "s1/seq/00001/cam2.png"
    cv2.imwrite(str(bad), np.zeros((24, 32, 3), np.uint8))       # half size: cameras are 64×48
    with pytest.raises(CaptureError, match=r"00001/cam2\.png: image is 32×24 pixels but camera 'cam2' in "
                                           r".*cameras\.json is 64×48"):
        load_capture(root)
    load_capture(root, check_files=False)                         # the check belongs to check_files


def test_only_headers_are_read(tmp_path):
    """A file whose header is intact but whose pixels are not decodable loads: no pixel is decoded at load time
    (the stages that decode it record it as unreadable); a file with no readable header is left to them too."""
    root = tmp_path / "cap"
    write_small(root)
    png = root / "s1/seq/00000/cam0.png"
    png.write_bytes(png.read_bytes()[:60])                        # signature + IHDR + a torn IDAT
    assert cv2.imread(str(png)) is None and image_size(png) == (64, 48)
    (root / "s1/seq/00000/cam1.png").write_bytes(b"not an image at all")
    assert image_size(root / "s1/seq/00000/cam1.png") is None
    assert len(load_capture(root).manifest) == 6


def test_jpeg_sizes_follow_exif_orientation(tmp_path):
    """cv2.imread turns JPEGs by their EXIF orientation: the size checked is the size the stages will decode."""
    ex = Image.Exif()
    ex[0x0112] = 6                                                # rotate 90°: stored 64×48, decoded 48×64
    path = tmp_path / "turned.jpg"
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(path, exif=ex)
    decoded = cv2.imread(str(path))
    assert image_size(path) == (decoded.shape[1], decoded.shape[0]) == (48, 64)
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(tmp_path / "plain.jpg")
    assert image_size(tmp_path / "plain.jpg") == (64, 48)



def png_header(width: int, height: int) -> bytes:
    """The first bytes of a grey PNG declaring width × height (signature, IHDR, the start of an IDAT): what a reader
    that trusts the header allocates before it finds the pixels missing."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(bytes(64))))


def test_a_camera_beyond_the_pixel_limit_is_refused_before_any_decode(tmp_path):
    """A hand-made capture whose camera, manifest and image header all say 12000×12000 was consistent, so every
    stage decoded its images at that size (432 MB an RGB image, and the fit its masks); the images' own reader
    (readers.read_image) refuses more than MAX_IMAGE_PIXELS, the landmark detector's and the masks' did not. The
    check of a capture's images (load_capture, and each data-stage unit: unit_capture) now refuses the camera."""
    import pandas as pd

    from flame_fitting.formats.capture import save_cameras
    from flame_fitting.formats.capture_checks import check_image_files

    root = tmp_path / "cap"
    write_small(root)
    cap = load_capture(root)
    row = cap.manifest.iloc[0]
    cams = cap.cameras(row.subject, row.sequence)
    save_cameras(root / row.subject / row.sequence / "cameras.json", {**cams, row.camera: cams[row.camera].resized(12000, 12000)})
    m = pd.read_parquet(root / "manifest.parquet")
    m.loc[m.camera == row.camera, ["width", "height"]] = 12000
    m.to_parquet(root / "manifest.parquet", index=False)
    for rel in m[m.camera == row.camera].path:
        (root / rel).write_bytes(png_header(12000, 12000))
    assert image_size(root / rel) == (12000, 12000)
    with pytest.raises(CaptureError, match=rf"{row.camera}\.png: the image declares 12000×12000 pixels, more than a "
                                           r"capture's image holds \(134217728 pixels\)"):
        load_capture(root)
    cap = load_capture(root, check_files=False)  # what the stages load: the units check their own images
    with pytest.raises(CaptureError, match="12000×12000 pixels"):
        check_image_files(cap)


def test_an_image_header_beyond_pils_limit_is_refused_by_the_image_check(tmp_path):
    """A 64×48 camera whose PNG header declares 60000×60000 (beyond PIL's decompression-bomb limit, so the header
    reader gave no size and the check passed it): the landmarks unit then died in cv2.imread with OpenCV's raw
    "(-215:Assertion failed) pixels <= CV_IO_MAX_IMAGE_PIXELS". The check now names the file and the limit."""
    from flame_fitting.formats.capture_checks import check_image_files

    root = tmp_path / "cap"
    write_small(root)
    bomb = root / "s1/seq/00001/cam2.png"
    bomb.write_bytes(png_header(60000, 60000))
    assert image_size(bomb) is None
    with pytest.raises(CaptureError, match=r"00001/cam2\.png: the image declares over 178 million pixels, more than a "
                                           r"capture's image holds \(134217728 pixels\); a damaged or hostile file"):
        load_capture(root)
    with pytest.raises(CaptureError, match=r"cam2\.png: the image declares over 178 million pixels"):
        check_image_files(load_capture(root, check_files=False))  # a data stage's unit (formats.units.unit_capture)


def test_a_capture_folder_whose_path_is_not_utf8_is_refused(tmp_path):
    """A capture folder whose path holds bytes that are not UTF-8 (the names inside a capture are checked,
    core/names.py, its own folder was not) was reported as a manifest that is "not a readable parquet table
    (UnicodeEncodeError ...)", the wrong problem; had it been read, OpenCV's binding crashes the process (SIGSEGV)
    on such a path. load_capture names the folder and the reason."""
    import os
    from pathlib import Path

    write_small(tmp_path / "cafe")
    root = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9"))
    os.rename(tmp_path / "cafe", root)
    with pytest.raises(CaptureError, match=r"caf\\udce9: the capture folder's path holds bytes that are not UTF-8"):
        load_capture(root)
