"""One sequence's fit files (`save_sequence_fit`) go through core/fileio.py: each is written whole or not at all, and
their bytes are those pandas / numpy / json wrote before (the fit stage's DVC hashes, `plots/fit/cost.csv` built from
history.csv). history.csv and noise_model.csv were written with `DataFrame.to_csv(path)`, which empties the file
first: a write that failed part way left a truncated file where the previous one was."""
import json

import numpy as np
import pandas as pd
import pytest

from flame_fitting.core.arrays import load_npz
from flame_fitting.fit.capture_results import save_sequence_fit
from flame_fitting.fit.fitter import HISTORY_COLUMNS
from flame_fitting.fit.noise import GROUP_NAMES
from flame_fitting.fit.report import PARAM_NAMES, FrameParams, FrameStatus, SequenceFit
from flame_fitting.geometry.camera import Camera, intrinsics, look_at

WIDTHS = {"shape": 4, "expr": 3, "jaw_pose": 3, "neck_pose": 3, "eye_pose": 6, "global_orient": 3, "transl": 3}


def a_fit(rng) -> SequenceFit:
    """A sequence of frames 0 (ok) and 1 (diverged), frame 2 skipped, with a noise model: the tables as the fitter
    makes them (floats with NaN, booleans, group names)."""
    params = {f: FrameParams(**{k: rng.normal(0, 0.1, WIDTHS[k]).astype(np.float32) for k in PARAM_NAMES})
              for f in (0, 1)}
    cams = {f"cam{i}": Camera(K=intrinsics(20, 20, 8, 6), world_to_cam=look_at([np.sin(i), 0, np.cos(i)], [0, 0, 0]),
                              width=16, height=12, name=f"cam{i}") for i in range(2)}
    history = pd.DataFrame([[i, 10.0 / (i + 1), 9.0 / (i + 1), i != 2, 0.1 * i, 1e-3 * 10 ** -i, 2.5, 1.0 / 3]
                            for i in range(4)] + [[4, 2.0, np.nan, np.nan, np.nan, np.nan, 2.5, 0.25]],
                           columns=HISTORY_COLUMNS)
    noise = pd.DataFrame({"group": list(GROUP_NAMES), "sigma_px": rng.uniform(0.5, 3, len(GROUP_NAMES)),
                          "samples": np.arange(len(GROUP_NAMES)) * 40, "views": 2,
                          "weight": rng.uniform(0.1, 1, len(GROUP_NAMES))})
    residuals = pd.DataFrame({"frame": [0, 0, 1, 1], "camera": ["cam0", "cam1"] * 2, "n_landmarks": [478] * 4,
                              "median_px": rng.uniform(0, 2, 4)})
    return SequenceFit("s0", "seq", params, {f: rng.normal(0, 1, (5, 3)).astype(np.float32) for f in (0, 1)},
                       {f: rng.normal(0, 1, (3, 3)).astype(np.float32) for f in (0, 1)}, np.arange(3), cams,
                       residuals, history, {0: FrameStatus(0, "ok"), 1: FrameStatus(1, "diverged", "cost rose"),
                                            2: FrameStatus(2, "skipped", "no landmarks")},
                       {"total": 1.0}, True, None, noise=noise, silhouette={"used": False})


def test_the_sequence_files_round_trip_as_the_bytes_written_before(tmp_path):
    fit = a_fit(np.random.default_rng(0))
    folder = tmp_path / "fits" / "s0" / "seq"
    save_sequence_fit(fit, folder, {"overlays": ["a.png"]})
    assert sorted(p.name for p in folder.iterdir()) == ["cameras.json", "fit.npz", "history.csv", "noise_model.csv",
                                                         "residuals.parquet", "status.json"]  # no temporaries
    for name, df in (("history.csv", fit.history), ("noise_model.csv", fit.noise)):
        assert (folder / name).read_bytes() == df.to_csv(index=False).encode()  # what `to_csv(path)` wrote
        back = pd.read_csv(folder / name)
        assert list(back.columns) == list(df.columns) and back["group" if "group" in df else "iteration"].tolist() \
            == df["group" if "group" in df else "iteration"].tolist()
        num = [c for c in df.columns if c != "group"]
        np.testing.assert_allclose(back[num].to_numpy(float), df[num].to_numpy(float), rtol=1e-12, equal_nan=True)
    pd.testing.assert_frame_equal(pd.read_parquet(folder / "residuals.parquet"), fit.residuals)
    arrays = load_npz(folder / "fit.npz")
    for k, v in fit.stacked().items():
        np.testing.assert_array_equal(arrays[k], v)
    status = json.loads((folder / "status.json").read_text())
    assert status["frames"]["1"] == {"status": "diverged", "reason": "cost rose", "note": ""}
    assert status["overlays"] == ["a.png"] and status["converged"] is True


class Unwritable:
    """A table cell whose text cannot be made (a write that fails part way, as a full disk would)."""

    def __str__(self):
        raise RuntimeError("cannot write this cell")


@pytest.mark.parametrize("table", ["history", "noise"])
def test_a_failed_write_leaves_the_previous_file_as_it_was(tmp_path, table):
    rng = np.random.default_rng(1)
    folder = tmp_path / "seq"
    save_sequence_fit(a_fit(rng), folder)
    name = {"history": "history.csv", "noise": "noise_model.csv"}[table]
    before = (folder / name).read_bytes()
    fit = a_fit(rng)
    df = getattr(fit, table)
    df[df.columns[-1]] = df[df.columns[-1]].astype(object)
    df.iloc[len(df) - 1, len(df.columns) - 1] = Unwritable()
    with pytest.raises(RuntimeError, match="cannot write this cell"):
        save_sequence_fit(fit, folder)
    assert (folder / name).read_bytes() == before  # was the new header and rows up to the failing one before
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary left
