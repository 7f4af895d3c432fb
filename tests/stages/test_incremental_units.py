"""Per-sequence work units (issue 16 item 1): the data stages (landmarks, fit, uv, correspondences, dataset), run by
their library functions on a 3-subject synthetic capture, then on the same capture with a 4th subject: only the new
sequence runs in every stage and the old sequences' outputs (and previews) stay byte-identical; removing a subject
removes its outputs everywhere; an output changed behind the stage's back (a partial restore) is re-run; a unit that
raises is recorded and the others complete."""
from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest
from unit_capture import EXTRAS, OUTS, build, run_data_stages, subjects_of, subset

from flame_fitting.core.executor import ExecutorConfig, ExecutorError
from flame_fitting.core.unit_keys import KEY_FILE, tree_hashes

LOCAL = ExecutorConfig(kind="local", workers=1)


def snapshot(data):
    """{folder: {relative path: sha256}} of every stage output and preview folder, key files included."""
    out = {}
    for name in list(OUTS.values()) + list(EXTRAS.values()):
        root = data / name
        out[name] = {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                     for p in sorted(root.rglob("*")) if p.is_file()}
    return out


def units_of(metrics):
    return {k: (m["units_run"], m["units_kept"], m["units_removed"], m["units_failed"]) for k, m in metrics.items()}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("units")
    head, full = build(root, subjects=4)
    names = subjects_of(full)
    cap, data = root / "captures", root / "data"
    first = run_data_stages(subset(full, cap, names[:3]), head, data, LOCAL)
    before = snapshot(data)
    added = run_data_stages(subset(full, cap, names), head, data, LOCAL)
    after = snapshot(data)
    return dict(root=root, head=head, full=full, names=names, cap=cap, data=data, first=first, before=before,
                added=added, after=after)


def test_first_run_runs_every_unit(pipeline):
    assert units_of(pipeline["first"]) == {k: (3, 0, 0, 0) for k in OUTS}
    assert pipeline["first"]["fit"]["frames_ok"] == 3


def test_adding_a_subject_runs_only_its_unit(pipeline):
    assert units_of(pipeline["added"]) == {k: (1, 3, 0, 0) for k in OUTS}
    assert pipeline["added"]["fit"]["frames_ok"] == 4  # metrics cover every sequence, kept ones included
    assert pipeline["added"]["landmarks"]["n_images"] == 4 * 4
    assert sum(pipeline["added"]["dataset"][f"samples_{s}"] for s in ("train", "val", "test")) == 4


def test_old_outputs_are_byte_identical(pipeline):
    before, after, old, new = pipeline["before"], pipeline["after"], pipeline["names"][:3], pipeline["names"][3]
    for folder, files in before.items():
        unit_files = {k: h for k, h in files.items() if k.startswith(tuple(f"{s}/" for s in old) +
                                                                     tuple(f"{s}_" for s in old))}
        assert unit_files, folder
        changed = [k for k, h in unit_files.items() if after[folder].get(k) != h]
        assert not changed, f"{folder}: {changed} changed"
        assert [k for k in after[folder] if k.startswith(new)], f"{folder}: nothing written for {new}"


def test_the_landmark_thread_count_re_runs_nothing(pipeline):
    """landmarks.workers changes no byte of a result; it was part of the unit key and re-ran every sequence."""
    from flame_fitting.landmarks.capture import LandmarksParams, detect_folder

    m = detect_folder(pipeline["cap"], pipeline["data"] / OUTS["landmarks"], LandmarksParams(workers=3),
                      executor=LOCAL)
    assert m["units_run"] == 0 and m["units_kept"] >= 3


def test_the_result_equals_a_full_run(pipeline, tmp_path):
    """The incremental outputs are those of one run over the 4-subject capture (array for array)."""
    data = tmp_path / "data"
    full = run_data_stages(pipeline["cap"], pipeline["head"], data, LOCAL, stages=("landmarks", "fit"))
    assert same_metrics(full["fit"], pipeline["added"]["fit"])  # 4 run == 1 run + 3 kept (from their records)
    inc = pipeline["data"] / "fits"
    for f in sorted((data / "fits").glob("*/*/fit.npz")):
        with np.load(f) as a, np.load(inc / f.relative_to(data / "fits")) as b:
            assert sorted(a.files) == sorted(b.files)
            for k in a.files:
                np.testing.assert_array_equal(a[k], b[k], err_msg=f"{f}: {k}")


def same_metrics(a: dict, b: dict) -> bool:
    """Two runs' metrics agree on every value except the run times and the units run / kept."""
    other = {"s_per_frame", "bake_ms_median", "units_run", "units_kept"}
    return {k: v for k, v in a.items() if k not in other} == {k: v for k, v in b.items() if k not in other}


def garble_kept(unit, name: str) -> None:
    """Replace the unit's file `name` by bytes no reader accepts and list their sha256 in its key file, so the unit
    stays current: a stage that still opened the file would fail on it."""
    bad = b"not a parquet file"
    (unit / name).write_bytes(bad)
    key = json.loads((unit / KEY_FILE).read_text())
    key["files"][name] = hashlib.sha256(bad).hexdigest()
    (unit / KEY_FILE).write_text(json.dumps(key))


def test_the_fit_metrics_open_no_kept_sequences_residuals(pipeline, tmp_path):
    """The fit's metrics read every sequence's residuals.parquet (for reprojection_px_median / _p95) on every run,
    kept sequences included: one file per sequence of the dataset to add one. The unit's record (its key file, read
    anyway to decide currency) now carries the per-view medians. Shown with a kept sequence whose residuals.parquet
    is replaced by bytes no parquet reader accepts, its key file listing their sha256 (so the unit stays current):
    the stage keeps every unit and its metrics are those of the run that wrote the files."""
    import pandas as pd

    from flame_fitting.fit.capture_results import unpack_medians

    data = tmp_path / "data"
    for name in ("landmarks", "fits", "overlays"):
        shutil.copytree(pipeline["data"] / name, data / name)
    for key in sorted((data / "fits").glob(f"*/*/{KEY_FILE}")):  # the record's medians are the table's, exactly
        medians = pd.read_parquet(key.parent / "residuals.parquet").median_px.to_numpy(np.float64)
        np.testing.assert_array_equal(unpack_medians(json.loads(key.read_text())["record"]["median_px"]),
                                      medians[np.isfinite(medians)])
    garble_kept(data / "fits" / pipeline["names"][1] / "synthetic", "residuals.parquet")  # not the first: cost.csv
    m = run_data_stages(pipeline["cap"], pipeline["head"], data, LOCAL, stages=("fit",))["fit"]
    assert (m["units_run"], m["units_kept"], m["units_failed"]) == (0, 4, 0)
    assert same_metrics(m, pipeline["added"]["fit"]) and m["reprojection_px_p95"] > 0


def test_the_landmark_metrics_open_no_kept_sequences_detections(pipeline, tmp_path):
    """The landmarks stage's metrics read every sequence's detections.parquet on every run, kept sequences included.
    The unit's record now carries what they need (`table_summary`: the views' detected flags, the failure reasons'
    and face choices' counts). Shown with a kept sequence whose detections.parquet is replaced by bytes no parquet
    reader accepts, its key file listing their sha256 (so the unit stays current): the stage keeps every unit and
    its metrics are those of the run that wrote the files; every record's summary is its table's."""
    import pandas as pd

    from flame_fitting.landmarks.capture import table_summary

    data = tmp_path / "data"
    shutil.copytree(pipeline["data"] / "landmarks", data / "landmarks")
    for key in sorted((data / "landmarks").glob(f"*/*/{KEY_FILE}")):
        record = json.loads(key.read_text())["record"]
        summary = table_summary(pd.read_parquet(key.parent / "detections.parquet"))
        assert {k: record[k] for k in summary} == summary and len(summary["detected"]) == record["n_images"]
    garble_kept(data / "landmarks" / pipeline["names"][1] / "synthetic", "detections.parquet")
    m = run_data_stages(pipeline["cap"], pipeline["head"], data, LOCAL, stages=("landmarks",))["landmarks"]
    assert (m["units_run"], m["units_kept"], m["units_failed"]) == (0, 4, 0)
    assert same_metrics(m, pipeline["added"]["landmarks"]) and m["n_detected"] > 0


def test_the_uv_stage_reads_no_vertices_of_a_fit(pipeline, tmp_path):
    """The uv stage needs a fit's parameters (its units bake the canonical mesh they give; the layout report the
    model's sizes), never its per-frame posed vertices, the bulk of a fit.npz (tens of MB a sequence at NeRSemble's
    scale): it loaded every unit's whole fit.npz, and the first fit's once more for the report. Shown with fits
    whose `vertices` is an object array, which no geoface reader loads: the uv outputs and metrics are those of the
    intact fits."""
    from flame_fitting.uv.batch import UVParams, bake_fits

    fits = shutil.copytree(pipeline["data"] / "fits", tmp_path / "fits")
    for f in sorted(fits.glob("*/*/fit.npz")):
        with np.load(f) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["vertices"] = np.array([{"not": "vertices"}], dtype=object)
        np.savez(f, **arrays)
    m = bake_fits(fits, pipeline["head"], tmp_path / "uv", None, UVParams(resolution=32), executor=LOCAL)
    assert (m["units_run"], m["units_failed"]) == (4, 0)
    assert same_metrics(m, pipeline["added"]["uv"]) and m["layout_n_charts"] > 0
    ref = pipeline["data"] / "uv"
    for p in sorted((tmp_path / "uv").glob("*/*/*.npy")) + sorted((tmp_path / "uv").glob("*/*/*.npz")):
        assert p.read_bytes() == (ref / p.relative_to(tmp_path / "uv")).read_bytes(), p


def test_a_head_model_changed_at_the_same_path_is_read_again(pipeline, tmp_path):
    """A process that runs a stage again after its head model folder changed at the same path (the template moved
    by 1 cm) uses the new model: the uv maps, key files included, are those baked from a copy of the new model in
    another folder. The fit, uv, correspondences and dataset modules each cached the model by its path alone, so the
    second run baked with the old model under unit keys that name the new one (flame_fitting/head/shared.py)."""
    from flame_fitting.uv.batch import UVParams, bake_fits

    fits, cfg = pipeline["data"] / "fits", UVParams(resolution=32)
    head = shutil.copytree(pipeline["head"], tmp_path / "head")

    def bake(model, name):
        m = bake_fits(fits, model, tmp_path / name, None, cfg, executor=LOCAL)
        assert (m["units_run"], m["units_failed"]) == (4, 0)
        return {p.relative_to(tmp_path / name).as_posix(): p.read_bytes()
                for p in sorted((tmp_path / name).glob("*/*/*")) if p.is_file()}

    old = bake(head, "uv_old")
    with np.load(head / "FLAME_NEUTRAL.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["v_template"] = arrays["v_template"] + np.float32(0.01)
    np.savez(head / "FLAME_NEUTRAL.npz", **arrays)  # the same path, another model
    new = bake(head, "uv_new")
    ref = bake(shutil.copytree(head, tmp_path / "head_copy"), "uv_ref")
    assert new == ref
    canonical = [k for k in new if k.endswith(".canonical.npy")]
    assert canonical and all(new[k] != old[k] for k in canonical)  # the new model gives other maps


def test_a_local_pool_gives_the_same_outputs(pipeline, tmp_path):
    """executor.workers 2 (this process + one forked pool process), in other folders and at another time, writes
    what workers 1 wrote, byte for byte, key files included: no run time is written into a stage's output (before,
    the fit's status.json and the fit and uv key files carried them, so every run gave data/fits, data/uv and
    every later folder a new DVC hash). The run times are in the metrics, of the units run now only."""
    data = tmp_path / "data"
    m = run_data_stages(pipeline["cap"], pipeline["head"], data, ExecutorConfig(kind="local", workers=2))
    assert units_of(m) == {k: (4, 0, 0, 0) for k in OUTS}
    ref = pipeline["after"]
    for name, files in snapshot(data).items():
        assert files == ref[name], name
    assert m["fit"]["s_per_frame"] > 0 and m["uv"]["bake_ms_median"] > 0
    assert pipeline["added"]["fit"]["s_per_frame"] > 0  # the one sequence fitted in that run
    for rec in (data / "fits").glob(f"*/*/{KEY_FILE}"):
        assert "timing" not in json.loads(rec.read_text())["record"]
    assert all("timing" not in json.loads(f.read_text()) for f in (data / "fits").glob("*/*/status.json"))


def test_a_changed_output_is_rerun_and_a_removed_subject_is_removed(pipeline):
    data, names = pipeline["data"], pipeline["names"]
    victim = data / "uv" / names[1] / "synthetic"
    npz = sorted(victim.glob("*.npz"))[0]
    good = npz.read_bytes()
    npz.write_bytes(good[:-10])  # as a half-restored file would be
    m = run_data_stages(subset(pipeline["full"], pipeline["cap"], names[1:]), pipeline["head"], data, LOCAL)
    assert units_of(m)["landmarks"] == (0, 3, 1, 0)
    assert units_of(m)["uv"] == (1, 2, 1, 0)
    assert npz.read_bytes() == good  # re-made, identical content (the bake is deterministic)
    for name in OUTS.values():
        assert not (data / name / names[0]).exists(), f"{name}: the removed subject's outputs are still there"
    for name in EXTRAS.values():
        assert not [p for p in (data / name).iterdir() if p.name.startswith(names[0])], name


def test_a_unit_that_raises_is_recorded_and_the_others_complete(pipeline):
    data, names = pipeline["data"], pipeline["names"]
    cap = subset(pipeline["full"], pipeline["cap"], names)
    run_data_stages(cap, pipeline["head"], data, LOCAL, stages=("landmarks",))
    points = data / "landmarks" / names[2] / "synthetic" / "points.npy"
    saved = points.read_bytes()
    np.save(points, np.zeros((2, 2), np.float32))  # wrong shape: loading this unit's landmarks raises
    m = run_data_stages(cap, pipeline["head"], data, LOCAL, stages=("fit",))["fit"]
    assert (m["units_run"], m["units_kept"], m["units_failed"]) == (1, 2, 1)  # subject 0 is back; one unit fails
    failures = json.loads((data / "fits" / "failures.json").read_text())
    assert [(f["subject"], f["sequence"]) for f in failures] == [(names[2], "synthetic")]
    assert "points.npy" in failures[0]["error"] and "shape" in failures[0]["error"]
    assert not (data / "fits" / names[2]).exists()
    assert all((data / "fits" / n / "synthetic" / KEY_FILE).is_file() for n in names if n != names[2])
    points.write_bytes(saved)
    m = run_data_stages(cap, pipeline["head"], data, LOCAL, stages=("fit",))["fit"]
    assert (m["units_run"], m["units_kept"], m["units_failed"]) == (1, 3, 0)
    assert tree_hashes(data / "fits" / names[2] / "synthetic")
    shutil.rmtree(data / "fits" / names[2])  # the later tests of this module must not rely on this one


def test_a_capture_or_the_output_given_as_previews_is_refused_and_untouched(pipeline, tmp_path):
    """`geoface uv FITS HEAD --out U --previews <a capture>` used to delete every file of the capture that was not a
    uv preview, exit 0; `--previews U` (the output itself) deleted the output's units."""
    from flame_fitting.core.fileio import OutputError
    from flame_fitting.uv.batch import UVParams, bake_fits

    data, cap = pipeline["data"], pipeline["full"]  # the capture as geoface wrote it (its marker says so)
    before = {p: p.read_bytes() for p in cap.rglob("*") if p.is_file()}
    with pytest.raises(OutputError, match="capture output, not uv previews"):
        bake_fits(data / "fits", pipeline["head"], tmp_path / "uv", cap, UVParams(resolution=32), executor=LOCAL)
    assert {p: p.read_bytes() for p in cap.rglob("*") if p.is_file()} == before
    uv_before = snapshot(data)["uv"]
    with pytest.raises(OutputError, match="is the input"):
        bake_fits(data / "fits", pipeline["head"], data / "uv", data / "uv", UVParams(resolution=32), executor=LOCAL)
    assert snapshot(data)["uv"] == uv_before


def test_a_stage_whose_every_unit_fails_exits_with_an_error(pipeline, tmp_path):
    """One failed unit is recorded and skipped; when every unit fails the stage raises (one line naming
    failures.json and the first error) instead of handing an empty folder to the next stage with exit 0."""
    from flame_fitting.core.units import AllUnitsFailedError
    from flame_fitting.fit import FitConfig
    from flame_fitting.fit.run import fit_folder

    lmk = shutil.copytree(pipeline["data"] / "landmarks", tmp_path / "landmarks")
    for points in lmk.glob("*/*/points.npy"):
        np.save(points, np.zeros((2, 2), np.float32))  # wrong shape: every unit raises
    with pytest.raises(AllUnitsFailedError, match=r"failures.json: all 4 work unit\(s\) failed.*points.npy"):
        fit_folder(pipeline["cap"], lmk, pipeline["head"], tmp_path / "fits", FitConfig(iterations=5),
                   executor=LOCAL)
    assert len(json.loads((tmp_path / "fits" / "failures.json").read_text())) == 4


def test_a_sequence_with_no_fitted_frame_does_not_stop_the_uv_stage(pipeline, tmp_path):
    """A capture whose images of one subject were all unreadable gives that subject a fit with no frame (1-D empty
    arrays, `SequenceFit.stacked`); sorted first, the uv stage's layout report read its sizes and died with an
    IndexError after baking every other sequence (a user's folder import, found by running the pipeline)."""
    from flame_fitting.uv.batch import UVParams, bake_fits

    fits = shutil.copytree(pipeline["data"] / "fits", tmp_path / "fits")
    empty = shutil.copytree(next(fits.glob("*/synthetic")), fits / "aaa_unreadable" / "synthetic")
    with np.load(empty / "fit.npz") as z:
        arrays = {k: (z[k][:0] if z[k].ndim <= 1 else np.zeros((0,) if k != "vertices" else (0, 0, 3), z[k].dtype))
                  for k in z.files}
    np.savez(empty / "fit.npz", **arrays)
    m = bake_fits(fits, pipeline["head"], tmp_path / "uv", None, UVParams(resolution=32), executor=LOCAL)
    assert m["n_frames"] == len(list(fits.glob("synth*/synthetic"))) and m["layout_n_charts"] > 0


def test_an_unreachable_ray_cluster_changes_nothing(pipeline):
    """The executor connects before a stage removes or writes anything: one error line, every output as it was."""
    data, names = pipeline["data"], pipeline["names"]
    before = snapshot(data)
    cap = subset(pipeline["full"], pipeline["cap"], names[:2])  # two units vanished: they would be removed
    ray_cfg = ExecutorConfig(kind="ray", ray_address="127.0.0.1:9")  # the discard port: nothing answers
    for stage in OUTS:
        with pytest.raises(ExecutorError, match=r"executor.ray_address='127.0.0.1:9': no Ray cluster answers"):
            run_data_stages(cap, pipeline["head"], data, ray_cfg, stages=(stage,))
    assert snapshot(data) == before


def test_images_are_checked_by_the_units_that_run_them(pipeline, tmp_path):
    """The stages opened every image header of the capture on every run (load_capture's size check, in each of the
    four stages that read the capture): a re-read of the whole dataset to add one subject. A stage now loads the
    capture without opening an image and each unit checks its own sequence's images (`unit_capture`): an image
    changed behind the manifest's back in a kept unit is not read (the unit is current by the manifest's hashes; it
    made the stage refuse the capture), and a wrong-size image of a unit that runs fails that unit only, named."""
    import cv2
    import pandas as pd

    from flame_fitting.landmarks.capture import LandmarksParams, detect_folder

    names, out = pipeline["names"], tmp_path / "landmarks"
    cap = subset(pipeline["full"], tmp_path / "cap", names[:3])
    assert detect_folder(cap, out, LandmarksParams(workers=1), executor=LOCAL)["units_run"] == 3

    def shrink(subject):  # a half-size PNG over one of the subject's images; the manifest is not told
        path = cap / pd.read_parquet(cap / "manifest.parquet").query("subject == @subject").path.iat[0]
        cv2.imwrite(str(path), np.zeros((96, 96, 3), np.uint8))
        return path

    shrink(names[0])
    m = detect_folder(cap, out, LandmarksParams(workers=1), executor=LOCAL)
    assert (m["units_run"], m["units_kept"], m["units_failed"]) == (0, 3, 0)
    cap = subset(pipeline["full"], tmp_path / "cap", names)  # every file as generated, one more subject
    bad = shrink(names[3])
    m = detect_folder(cap, out, LandmarksParams(workers=1), executor=LOCAL)
    assert (m["units_run"], m["units_kept"], m["units_failed"]) == (0, 3, 1)
    failures = json.loads((out / "failures.json").read_text())
    assert [(f["subject"], f["sequence"]) for f in failures] == [(names[3], "synthetic")]
    assert f"{bad}: image is 96×96 pixels but camera" in failures[0]["error"]
