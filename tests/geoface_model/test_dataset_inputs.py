"""The dataset stage refuses fits of another capture than the one given, before writing anything (the images of
one capture were paired with the geometry of another, and the lineage named the wrong capture)."""
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "flame_fitting"))
from export_testdata import make_export_data  # noqa: E402

from flame_fitting.formats.lineage import LineageError, write_lineage  # noqa: E402
from geoface_model.config import TokensConfig  # noqa: E402
from geoface_model.dataset_build import DatasetParams, build_dataset  # noqa: E402


def test_the_dataset_refuses_fits_of_another_capture(tmp_path):
    data = make_export_data(tmp_path / "data")
    fits = shutil.copytree(data.fits, tmp_path / "fits")
    write_lineage(fits, captures_version="0123456789abcdef")
    with pytest.raises(LineageError, match=f"{fits}: fits of capture version 0123456789abcdef, but {data.capture} is "
                                           "capture version"):
        build_dataset(data.capture, fits, tmp_path / "uv", tmp_path / "corr", data.head, tmp_path / "ds",
                      DatasetParams(), TokensConfig())
    assert not (tmp_path / "ds").exists()


def test_non_square_views_are_measured_as_a_stretch(tmp_path):
    """NeRSemble's 1100×1604 frames resized to S×S stretch faces 1.46×: the dataset metrics say how much (and the
    stage warns); a capture of square views is 1.0."""
    from geoface_model.dataset_build import aspect_stretch
    from flame_fitting.formats.capture import load_capture

    data = make_export_data(tmp_path / "data")  # 60×44 views
    assert aspect_stretch(load_capture(data.capture)) == round(60 / 44, 4)


@pytest.mark.parametrize("content, words", [
    ("header", "the image declares 12000×12000 pixels"),  # a PNG header promising 144 MP, then nothing
    (b"not an image", "the mask is missing or not a decodable image")])
def test_a_mask_the_dataset_cannot_use_is_one_error_naming_it(tmp_path, content, words):
    """The dataset stage decoded each view's mask with cv2.imread, unchecked: a mask declaring 12000×12000 was
    decoded as far as it went (the fit checks masks' headers, this stage did not) and one that did not decode failed
    the unit with "'NoneType' object has no attribute 'astype'". Now the header's size is checked first and either
    is one CaptureError naming the mask (the unit fails, the others go on)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "flame_fitting"))
    from test_capture import write_small
    from test_capture_image_sizes import png_header

    from flame_fitting.formats.capture import CaptureError, load_capture
    from geoface_model.dataset_build import view_arrays

    root = tmp_path / "cap"
    write_small(root)
    cap = load_capture(root)
    m = cap.manifest
    rows = m[m.frame == 0].set_index("camera")
    names = sorted(rows.index)
    mask = root / rows.loc[names[0], "mask_path"]
    mask.write_bytes(png_header(12000, 12000) if content == "header" else content)
    with pytest.raises(CaptureError, match=f"{mask}: {words}"):
        view_arrays(cap, rows, cap.cameras("s1", "seq"), names, 16)
