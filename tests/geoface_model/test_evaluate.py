"""Evaluation library: view choice, the canonical frame of a fitted frame, mesh-to-view alignment, aggregation,
and the offline HTML report (the whole `evaluate` stage runs under real DVC in tests/stages/test_pipeline_dvc.py)."""
import base64
import re

import cv2
import numpy as np
import pytest
import torch

from flame_fitting.geometry.camera import Camera, look_at
from flame_fitting.head.head_model import load_head_model
from standin_cache import standin_copy
from geoface_model.evaluate import (SampleResult, aggregate, canonical_transform, choose_views, mesh_view_alignment,
                                    yaw_pitch)
from geoface_model.report import sample_grid, write_report


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalhead")
    standin_copy(root / "head", seed=0, n_shape=10, n_expr=10)
    return load_head_model(root / "head")


def test_choose_views_frontal_reference_and_spread_targets():
    yaw = np.array([-80, -60, -30, -10, 5, 20, 45, 70, 90], float)
    pitch = np.array([0, 0, 0, 0, 0, 0, 0, 0, 0], float)
    ref, tg = choose_views(yaw, pitch, 3, 75.0)
    assert ref == 4
    assert tg == [1, 3, 7]  # candidates -60 -30 -10 20 45 70, evenly picked, yaw order
    ref, tg = choose_views(yaw, pitch, 20, 75.0)
    assert tg == [1, 2, 3, 5, 6, 7]
    # a frontal view seen from above is less frontal than a slightly turned level one
    ref, _ = choose_views(np.array([0.0, 8.0]), np.array([30.0, 0.0]), 1, 75.0)
    assert ref == 1


def test_yaw_pitch_of_cameras_around_a_centre():
    centre = np.array([0.0, 0.1, 0.0])
    K = np.array([[100, 0, 32], [0, 100, 32], [0, 0, 1]], np.float32)
    cams = []
    for yaw in (-60.0, 0.0, 45.0):
        eye = centre + np.array([np.sin(np.radians(yaw)), 0.2, np.cos(np.radians(yaw))])
        cams.append(Camera(K=K, world_to_cam=look_at(eye, centre), width=64, height=64))
    y, p = yaw_pitch(cams, centre)
    np.testing.assert_allclose(y, [-60, 0, 45], atol=1e-4)
    np.testing.assert_allclose(p, np.degrees(np.arctan2(0.2, 1.0)), atol=1e-4)


def _posed(head, shape, expr, orient, transl):
    z = lambda n: torch.zeros(1, n)  # noqa: E731
    with torch.no_grad():
        return head(shape=torch.as_tensor(shape)[None], expr=torch.as_tensor(expr)[None], jaw_pose=z(3), neck_pose=z(3),
                    eye_pose=z(6), global_orient=torch.as_tensor(orient)[None],
                    transl=torch.as_tensor(transl)[None]).vertices[0].numpy()


def test_canonical_transform_recovers_the_head_pose(head):
    rng = np.random.default_rng(0)
    shape, expr = rng.normal(0, 0.5, 10).astype(np.float32), rng.normal(0, 0.5, 10).astype(np.float32)
    orient, transl = np.array([0.1, 0.5, -0.2], np.float32), np.array([0.01, -0.02, 0.3], np.float32)
    z = np.zeros
    fit = {"shape": shape[None], "expr": expr[None], "jaw_pose": z((1, 3)), "neck_pose": z((1, 3)),
           "eye_pose": z((1, 6)), "vertices": _posed(head, shape, expr, orient, transl)[None]}
    T, canon = canonical_transform(head, fit, 0)
    mapped = canon @ T[:3, :3].T + T[:3, 3]
    assert np.abs(mapped - fit["vertices"][0]).max() < 1e-5
    R = cv2.Rodrigues(orient.astype(np.float64))[0]
    assert np.degrees(np.arccos(np.clip((np.trace(R.T @ T[:3, :3]) - 1) / 2, -1, 1))) < 1e-3


def test_mesh_view_alignment_measures_pixel_offsets(head):
    with torch.no_grad():
        verts = head().vertices[0].numpy()
    K = np.array([[400, 0, 128], [0, 400, 128], [0, 0, 1]], np.float32)
    cams = [Camera(K=K, world_to_cam=look_at(np.array([x, 0.0, 0.8]), np.zeros(3)), width=256, height=256)
            for x in (-0.3, 0.0, 0.3)]
    ids = head.mp_landmark_indices.numpy()
    with torch.no_grad():
        lmk = head().landmarks_mp[0].double().numpy()
    points = []
    for c in cams:
        p = np.full((478, 2), np.nan)
        p[ids] = c.project(lmk)[0]
        points.append(p)
    assert mesh_view_alignment(head, verts, cams, points)["align_px"] < 1e-3
    shifted = [p + np.array([3.0, 4.0]) for p in points]
    assert abs(mesh_view_alignment(head, verts, cams, shifted)["align_px"] - 5.0) < 1e-3
    none = [np.full((478, 2), np.nan) for _ in cams]
    assert mesh_view_alignment(head, verts, cams, none)["align_px"] is None
    assert mesh_view_alignment(head, verts * np.nan, cams, points)["align_px"] is None


def _result(name, psnr, geo, with_mesh=False):
    S, R = 32, 16
    rng = np.random.default_rng(0)
    img = lambda n: rng.integers(0, 255, (n, S, S, 3), dtype=np.uint8)  # noqa: E731
    K = np.array([[40, 0, 16], [0, 40, 16], [0, 0, 1]], np.float32)
    cams = [Camera(K=K, world_to_cam=look_at(np.array([x, 0.0, 1.0]), np.zeros(3)), width=S, height=S, name=f"c{i}")
            for i, x in enumerate((0.0, -0.3, 0.3))]
    pm = rng.uniform(-0.5, 0.5, (R, R, 3)).astype(np.float32)
    return SampleResult(name, {"psnr": psnr, "geometry_error_mm": geo, "lpips": None, "lpips_status": "unavailable"},
                        [{"sample": name, "camera": "c1", "psnr": psnr}], img(1)[0], img(2), img(2), cams,
                        pm if with_mesh else None, pm, np.ones((R, R), bool), None, np.zeros((4, 3), np.float32))


def test_aggregate_means_over_defined_values():
    agg = aggregate([_result("a", 10.0, None), _result("b", 20.0, 3.0)])
    assert agg["psnr"] == 15.0 and "psnr_n" not in agg
    assert agg["geometry_error_mm"] == 3.0 and agg["geometry_error_mm_n"] == 1
    # unavailable to the whole run: its status says why, no "lpips_n": 0 (docs: *_n where some samples lack it)
    assert agg["lpips"] is None and "lpips_n" not in agg and agg["lpips_status"] == "unavailable"
    # defined for no sample (MediaPipe found no face anywhere): the count says so, and the report's tables show it
    none = aggregate([_result("a", 10.0, None), _result("b", 20.0, None)])
    assert none["geometry_error_mm"] is None and none["geometry_error_mm_n"] == 0
    from geoface_model.summary import with_count

    assert with_count(none | {"n_samples": 2}, "geometry_error_mm") == "— (n 0 of 2)"
    assert with_count(agg | {"n_samples": 2}, "geometry_error_mm") == "3 (n 1 of 2)"


def test_sample_grid_and_offline_report(tmp_path):
    r = _result("subj/seq/00000", 12.5, None)
    grid = sample_grid(r, None, tile=48)
    assert grid.shape == (2 * 48, 3 * 48, 3)  # reference + 2 targets; GT row and generated row (no mesh)
    np.testing.assert_array_equal(grid[0:48, 0:48][30:], cv2.resize(r.reference, (48, 48),
                                                                    interpolation=cv2.INTER_CUBIC)[30:])
    summary = {"split": "test", "n_samples": 1, "n_targets": 2, "psnr": 12.5, "ssim": 0.25, "tsed": 0.0,
               "gt_tsed": 0.5, "lpips": None, "lpips_status": "unavailable: no local weights", "notes": ["a note"],
               "psnr_fg": 9.75, "baseline_mean_colour_psnr_fg": 8.125, "baseline_mean_uv_geometry_error_mm": 3.625,
               "attention_hit_rate_mid": 0.4375, "baseline_camera_only_attention_hit_rate_mid": 0.8125}
    path = write_report(tmp_path / "r" / "report.html", summary, [{"sample": r.name, **r.metrics}], r.views,
                        [("grid", grid)], {"model": "m"}, {"loss_last": 1.0, "s_per_step": 0.987654,
                                                           "resumed_from": "models/train_state/x/step_9"})
    text = path.read_text()
    assert "12.5" in text and "0.25" in text and "a note" in text and "unavailable: no local weights" in text
    # the training run's time and resume are not results: the report is the same bytes whenever the results are
    assert "<th>loss_last</th>" in text and "0.987654" not in text and "train_state" not in text
    for label, value in (("constant mean training colour", "8.125"), ("mean training UV map", "3.625"),
                         ("camera-only attention", "0.8125"), ("generated (model)", "0.4375")):
        row = re.search(r"<tr><td>" + re.escape(label) + r"[^<]*</td>(.*?)</tr>", text).group(1)
        assert f"<td>{value}</td>" in row, (label, row)
    assert "<th>psnr_fg</th>" in text and "<th>attention_hit_rate_high</th>" in text
    assert "http" not in text and "<script" not in text  # readable offline, nothing fetched
    data = re.search(r'src="data:image/png;base64,([^"]+)"', text).group(1)
    png = cv2.imdecode(np.frombuffer(base64.b64decode(data), np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(cv2.cvtColor(png, cv2.COLOR_BGR2RGB), grid)
    assert not list(path.parent.glob(".*tmp*"))


def test_ablation_table_from_dvc_exp_show(tmp_path):
    """`dvc exp show --json` as DVC 3.67 printed it for a real `make ablations` run (trimmed to the keys used)."""
    import json
    from pathlib import Path

    from geoface_model.ablations import collect, table

    show = json.loads((Path(__file__).parent / "data" / "dvc_exp_show.json").read_text())
    commit = "59071faeb4bb2807b71919ed30542012d03de866"
    assert [v for v, _ in collect(commit, show)] == ["full", "no_align_loss", "no_geometry_stream"]
    assert collect("0" * 40, show) == []
    md = table(tmp_path / "ablations.md", commit=commit, show=show)
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in md.splitlines()
            if line.startswith("| ") and not line.startswith("| variant")}
    assert rows["full"][:2] == ["0.5", "True"] and rows["no_align_loss"][:2] == ["0", "True"]
    assert rows["no_geometry_stream"][1] == "False"
    header = [c.strip() for c in next(line for line in md.splitlines() if line.startswith("| variant")).split("|")[2:-1]]
    col = {h: i for i, h in enumerate(header)}
    assert rows["full"][col["PSNR ↑"]] == "5.504"  # PSNR of the full run's metrics/eval.json
    assert rows["no_geometry_stream"][col["geometry mm ↓"]] == "—"  # no geometry stream: no geometry error
    for h in ("PSNR fg ↑", "SSIM fg ↑", "hit low t ↑", "hit mid t ↑", "hit high t ↑", "MediaPipe views found ↑"):
        assert h in col
    # baseline rows under the variants, the baseline's value in the model's column (this file predates the others)
    assert rows["baseline: copy the reference"][col["PSNR ↑"]] == "16.37"
    assert rows["ground truth (views / fitted mesh)"][col["TSED ↑"]] == "0"
    assert "59071faeb4bb" in md and (tmp_path / "ablations.md").read_text() == md


def test_ablation_presets_name_their_experiments_and_match_the_readme(tmp_path):
    """A preset's experiments carry its name (so they never mix with the default's in one table), its table goes to
    its own file and says the settings, and the `learn` preset is the README's learn line, setting for setting."""
    import json
    import re
    from pathlib import Path

    from geoface_model.ablations import PRESETS, collect, doc_path, exp_name, table
    from geoface_model.dvc_exp import exp_states

    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    line = readme[readme.index("dvc exp run -n learn"):].split("```")[0]
    assert re.findall(r"-S '?([^' \\\n]+)'?", line) == PRESETS["learn"]
    commit = "59071faeb4bb2807b71919ed30542012d03de866"
    assert exp_name("no_align_loss", commit) == "ablation-no-align-loss-59071fa"
    assert exp_name("no_align_loss", commit, "learn") == "ablation-learn-no-align-loss-59071fa"
    assert doc_path() == Path("docs/ablations.md") and doc_path("learn") == Path("docs/ablations_learn.md")
    show = json.loads((Path(__file__).parent / "data" / "dvc_exp_show.json").read_text())
    assert collect(commit, show, "learn") == []  # the default run's experiments are not the preset's
    for rev in show:  # the same records under the preset's names
        for exp in rev.get("experiments") or []:
            for r in exp.get("revs") or []:
                r["name"] = r["name"].replace("ablation-", "ablation-learn-")
    assert [v for v, _ in collect(commit, show, "learn")] == ["full", "no_align_loss", "no_geometry_stream"]
    md = table(tmp_path / "t.md", commit=commit, show=show, preset="learn")
    assert "ablation-learn-full-59071fa" in md and "`train.steps=6000`" in md and "table --preset learn" in md
    assert "Not every experiment records" in md  # the trimmed records have no deps
    recs = [r for rev in show for exp in rev.get("experiments") or [] for r in exp.get("revs") or []]
    for r in recs:  # each variant's dvc.lock dependency on the dataset, as `dvc exp show --json` gives it
        r["data"].setdefault("deps", {})["data/dataset"] = {"hash": "a9b1d1ff.dir", "size": 1, "nfiles": 2}
    assert "same dataset (`data/dataset` a9b1d1ff.dir)" in table(tmp_path / "t.md", commit=commit, show=show,
                                                                 preset="learn")
    recs[0]["data"]["deps"]["data/dataset"]["hash"] = "0000.dir"
    assert "datasets differ" in table(tmp_path / "t.md", commit=commit, show=show, preset="learn")
    # the queue's states, as `wait` reads them (executor record per experiment; none once it is done)
    exps = [exp for rev in show for exp in rev.get("experiments") or []]
    names = [exp_name(v, commit, "learn") for v in ("full", "no_align_loss", "no_geometry_stream")]
    given = dict(zip(names, ("running", "queued", None)))
    for exp in exps:
        exp["name"] = exp["revs"][0]["name"]
        exp["executor"] = {"state": given[exp["name"]], "name": "dvc-task"} if given[exp["name"]] else None
    assert exp_states(show, names) == {names[0]: "running", names[1]: "queued", names[2]: "success"}


def test_ablations_find_this_environments_dvc_without_activation(monkeypatch):
    """`.venv/bin/python -m geoface_model.ablations run` with the environment not activated: DVC and the stages'
    `python` are this interpreter's (it used to die with FileNotFoundError: 'dvc' before running anything)."""
    import subprocess
    import sys
    from pathlib import Path

    from geoface_model.dvc_exp import _dvc_cmd, _env

    monkeypatch.delenv("DVC", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    cmd = _dvc_cmd("--version")
    assert Path(cmd[0]).parent == Path(sys.executable).parent
    assert subprocess.run(cmd, env=_env(), capture_output=True, text=True, check=True).stdout.strip()
    python = subprocess.run(["python", "-c", "import sys; print(sys.prefix)"], env=_env(), capture_output=True,
                            text=True, check=True).stdout.strip()
    assert python == sys.prefix
    monkeypatch.setenv("DVC", "/opt/my-dvc")
    assert _dvc_cmd("exp", "show")[:2] == ["/opt/my-dvc", "exp"]


def test_a_mean_over_some_samples_says_over_how_many(tmp_path):
    """The landmark fit exists only for samples where MediaPipe found faces: the report's metric table and the
    ablation table show the count beside such a mean (before, 1.95 px over 3 of 18 samples read as the best row)."""
    import json
    from pathlib import Path

    from geoface_model.ablations import table
    from geoface_model.report import metric_rows

    summary = {"n_samples": 18, "psnr": 14.6, "landmark_fit_rmse_px": 1.946, "landmark_fit_rmse_px_n": 3,
               "gt_landmark_fit_rmse_px": 1.39, "baseline_copy_reference_psnr": 14.03}
    model, gt, copy_ref = metric_rows(summary)
    assert model["landmark_fit_rmse_px"] == "1.946 (n 3 of 18)" and model["psnr"] == 14.6
    assert gt["landmark_fit_rmse_px"] == 1.39 and copy_ref["psnr"] == 14.03  # every sample: the plain number
    show = json.loads((Path(__file__).parent / "data" / "dvc_exp_show.json").read_text())
    commit = "59071faeb4bb2807b71919ed30542012d03de866"
    for rev in show:
        for exp in rev.get("experiments") or []:
            for r in exp.get("revs") or []:
                for path, content in (r.get("data") or {}).get("metrics", {}).items():
                    if path.endswith("metrics/eval.json"):
                        content["data"].update(n_samples=18, landmark_fit_rmse_px=1.946, landmark_fit_rmse_px_n=3)
    md = table(tmp_path / "t.md", commit=commit, show=show)
    full = next(line for line in md.splitlines() if line.startswith("| full "))
    assert "| 1.946 (n 3 of 18) |" in full
