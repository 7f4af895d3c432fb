"""A JPEG cut short is refused (OpenCV decodes it with grey rows and no error): `jpeg_end.jpeg_cut_short` against
the stream's real structure — complete files, files cut anywhere, an EXIF thumbnail's own end marker, data after
the end (motion photos), progressive JPEGs — and `readers.read_image` refusing it (an import skipping it:
tests/pipelines/test_folder.py)."""
import io

import cv2
import numpy as np
import pytest
from PIL import Image

from flame_fitting.core.fileio import OutputError
from flame_fitting.core.readers import read_image
from flame_fitting.core.jpeg_end import jpeg_cut_short


def photo(progressive: bool = False, thumbnail: bool = False) -> bytes:
    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.integers(0, 256, (96, 128, 3), np.uint8), (5, 5), 0)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=90, progressive=progressive)
    data = buf.getvalue()
    if thumbnail:  # an APP1 segment holding a whole small JPEG (SOI … EOI), as an EXIF thumbnail does
        small = io.BytesIO()
        Image.fromarray(img[::8, ::8]).save(small, "JPEG")
        payload = b"Exif\x00\x00" + small.getvalue()
        data = data[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + data[2:]
    return data


@pytest.mark.parametrize("kind", ["baseline", "progressive", "thumbnail"])
def test_complete_and_cut_jpegs(kind, tmp_path):
    data = photo(progressive=kind == "progressive", thumbnail=kind == "thumbnail")
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) is not None
    assert not jpeg_cut_short(data)
    assert not jpeg_cut_short(data + b"\x00" * 64 + b"ftypmp42 a motion photo's video after the image")
    for cut in (3, 20, len(data) // 3, len(data) // 2, len(data) - 2, len(data) - 1):
        assert jpeg_cut_short(data[:cut]), cut
    # cv2.imread decodes a cut JPEG file without an error (the reason for the check; imdecode returns None)
    (tmp_path / "cut.jpg").write_bytes(data[:len(data) * 2 // 3])
    assert cv2.imread(str(tmp_path / "cut.jpg"), cv2.IMREAD_COLOR).shape == (96, 128, 3)


def test_not_a_jpeg_is_not_judged(tmp_path):
    ok, png = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))
    assert not jpeg_cut_short(png.tobytes()[:20]) and not jpeg_cut_short(b"") and not jpeg_cut_short(b"text")
    (tmp_path / "a.png").write_bytes(png.tobytes())
    assert not jpeg_cut_short(tmp_path / "a.png")


def test_read_image_refuses_a_cut_jpeg(tmp_path):
    data = photo()
    (tmp_path / "whole.jpg").write_bytes(data)
    (tmp_path / "cut.jpg").write_bytes(data[:len(data) * 2 // 3])
    assert read_image(tmp_path / "whole.jpg").shape == (96, 128, 3)
    with pytest.raises(OutputError, match=r"cut.jpg: truncated JPEG"):
        read_image(tmp_path / "cut.jpg")
