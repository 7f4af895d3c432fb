"""load_capture checks each image file's real size (from its header only) against its camera (issue 12, item 6)."""
import cv2
import numpy as np
import pytest
from PIL import Image

from flame_fitting.core.fileio import image_size
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

