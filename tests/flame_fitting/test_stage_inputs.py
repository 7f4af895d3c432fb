"""The data stages refuse inputs that do not belong together, before writing anything: landmarks or fits of
another capture than the one given (its images would be paired with another capture's geometry, and the lineage
would name the wrong capture), an input folder that holds no sequences (named, not the output), and a sequence
where no frame could be fitted is a failed unit (the fit stage exits non-zero instead of handing an empty fit
to the uv stage, which failed with an IndexError)."""
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from export_testdata import make_export_data  # noqa: E402

from flame_fitting.core.units import AllUnitsFailedError  # noqa: E402
from flame_fitting.fit import FitConfig  # noqa: E402
from flame_fitting.fit.run import fit_folder  # noqa: E402
from flame_fitting.formats.capture import capture_version  # noqa: E402
from flame_fitting.formats.lineage import LineageError, check_same_capture, write_lineage  # noqa: E402
from flame_fitting.landmarks.capture import LandmarksParams, detect_folder  # noqa: E402
from flame_fitting.uv.batch import CorrespondenceParams, UVParams, bake_fits, correspondences_for_fits  # noqa: E402

OTHER = "0123456789abcdef"  # the version id of a capture that is not the one given


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_export_data(tmp_path_factory.mktemp("inputs"))


def foreign(src: Path, dst: Path) -> Path:
    """A copy of the stage folder `src` whose lineage names another capture."""
    shutil.copytree(src, dst)
    write_lineage(dst, captures_version=OTHER)
    return dst


def test_check_same_capture(data, tmp_path):
    ours = capture_version(data.capture)
    with pytest.raises(LineageError, match=f"fits of capture version {OTHER}, but {data.capture} is capture version "
                                           f"{ours}; give the capture they were made from"):
        check_same_capture(data.capture, foreign(data.fits, tmp_path / "f"), "fits")
    write_lineage(tmp_path / "f", captures_version=ours)
    check_same_capture(data.capture, tmp_path / "f", "fits")  # the same capture
    check_same_capture(data.capture, data.fits, "fits")  # no lineage.json: written before lineage, not refused


def test_correspondences_refuse_fits_of_another_capture(data, tmp_path):
    fits = foreign(data.fits, tmp_path / "fits")
    with pytest.raises(LineageError, match="fits of capture version"):
        correspondences_for_fits(fits, tmp_path / "uv", data.capture, data.head, tmp_path / "corr", None,
                                 CorrespondenceParams(), 4, 4)
    assert not (tmp_path / "corr").exists()


def test_an_input_without_sequences_is_named_and_nothing_is_written(data, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(AllUnitsFailedError, match=f"{tmp_path / 'empty'}: holds no sequences for the uv stage"):
        bake_fits(tmp_path / "empty", data.head, tmp_path / "uv", None, UVParams())
    assert not (tmp_path / "uv").exists()


def test_landmarks_of_another_capture_and_a_sequence_without_any_fitted_frame(data, tmp_path):
    lmk = tmp_path / "lmk"
    m = detect_folder(data.capture, lmk, LandmarksParams(workers=1))  # noise images: no face anywhere
    assert m["captures_version"] == json.loads((lmk / "lineage.json").read_text())["captures_version"]
    with pytest.raises(AllUnitsFailedError, match=r"all 1 work unit\(s\) failed.*p001/EMO-1: FitInputError: "
                                                  r"p001/EMO-1: no frame could be fitted \(no view detected a face"):
        fit_folder(data.capture, lmk, data.head, tmp_path / "fits", FitConfig(n_shape=10, n_expr=8))
    assert not list((tmp_path / "fits").glob("p001/EMO-1/fit.npz"))
    write_lineage(lmk, captures_version=OTHER)
    with pytest.raises(LineageError, match="landmarks of capture version"):
        fit_folder(data.capture, lmk, data.head, tmp_path / "fits2", FitConfig(n_shape=10, n_expr=8))
    assert not (tmp_path / "fits2").exists()


@pytest.mark.parametrize("save_maps,with_maps", [("first", [True, False, False]), ("none", [False] * 3)])
def test_correspondences_save_maps(data, tmp_path, save_maps, with_maps):
    """`correspondences.save_maps`: the per-pixel maps in every frame file, the first of each sequence, or none; the
    token-level arrays the dataset stage reads are the same either way."""
    from flame_fitting.uv.correspondence_files import load_correspondences

    bake_fits(data.fits, data.head, tmp_path / "uv", None, UVParams())
    runs = {}
    for mode in ("all", save_maps):
        out = tmp_path / f"corr_{mode}"
        correspondences_for_fits(data.fits, tmp_path / "uv", data.capture, data.head, out, None,
                                 CorrespondenceParams(save_maps=mode), 4, 4)
        runs[mode] = sorted(out.glob("*/*/*.npz"))
    assert [p.name for p in runs["all"]] == [p.name for p in runs[save_maps]] and len(runs["all"]) == 3
    for full, lean, has in zip(runs["all"], runs[save_maps], with_maps):
        a, b = load_correspondences(full), load_correspondences(lean, maps=has)
        assert (b.uv.size > 0) == has
        for k in ("a2g_index", "a2g_weight", "g2a_index", "g2a_weight", "pair_index", "pair_count"):
            np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
