"""The real pipeline under real DVC, on tiny parameters, in a temporary git repository:
`dvc repro` succeeds and writes every declared output, and a second `dvc repro` does nothing."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

# the smallest settings that still exercise every stage
TINY = {
    "head_model": {"n_shape": 10, "n_expr": 10,
                   "calibration": {"subjects": 2, "frames": 1, "cameras": 8, "resolution": 192}},
    "captures": {"synthetic": {"subjects": 3, "frames": 1, "cameras": 6, "resolution": 192,
                               "yaw_range_deg": [-45.0, 45.0], "texture_resolution": 256}},
    "fit": {"iterations": 10},
    "uv": {"resolution": 64},
    "tokens": {"resolution": 32, "patch_size": 8, "uv_resolution": 32, "geo_patch_size": 8},
    "model": {"width": 32, "depth": 2, "heads": 2},
    "train": {"steps": 4, "checkpoint_every": 2, "batch_size": 1, "n_tgt": 2, "warmup_steps": 1},
    "eval": {"n_targets": 2, "num_inference_steps": 2, "detect_min_side": 128},
}


def deep_update(base: dict, new: dict) -> dict:
    for k, v in new.items():
        base[k] = deep_update(dict(base.get(k) or {}), v) if isinstance(v, dict) else v
    return base


def run(cmd, cwd, env):
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)


def locked_hash(repo: Path, stage: str, path: str) -> str:
    """The md5 dvc.lock records for output `path` of `stage`."""
    outs = yaml.safe_load((repo / "dvc.lock").read_text())["stages"][stage]["outs"]
    return next(o["md5"] for o in outs if o["path"] == path)


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory):
    if shutil.which("git") is None:
        pytest.fail("git is required for the pipeline test")
    dst = tmp_path_factory.mktemp("pipeline") / "repo"
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        src = REPO / f
        if src.is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / f)
    params = yaml.safe_load((dst / "params.yaml").read_text())
    deep_update(params, TINY)
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "tiny"]):
        subprocess.run(cmd, cwd=dst, env=env, check=True, capture_output=True)
    first = run([str(BIN / "dvc"), "repro"], dst, env)
    return dst, env, first


def test_repro_runs_every_stage(tiny_repo):
    dst, env, first = tiny_repo
    assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
    stages = yaml.safe_load((dst / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        for out in stage.get("outs", []) + stage.get("metrics", []) + stage.get("plots", []):
            path = out if isinstance(out, str) else next(iter(out))
            assert (dst / path).exists(), f"stage {name} did not write {path}"


def test_every_file_written_is_a_declared_output(tiny_repo):
    """Nothing a stage writes under data/, models/, metrics/ or plots/ escapes DVC (the evaluation's output marker in
    plots/eval did) but the training run's resumable states (models/train_state, docs/model.md) and DVC's own
    .gitignore files."""
    dst, _, first = tiny_repo
    assert first.returncode == 0
    stages = yaml.safe_load((dst / "dvc.yaml").read_text())["stages"]
    outs = [o if isinstance(o, str) else next(iter(o)) for st in stages.values()
            for o in st.get("outs", []) + st.get("metrics", []) + st.get("plots", [])]
    loose = [rel for root in ("data", "models", "metrics", "plots") for f in sorted((dst / root).rglob("*"))
             if f.is_file() and f.name != ".gitignore"
             and not (rel := f.relative_to(dst).as_posix()).startswith("models/train_state/")
             and not any(rel == o or rel.startswith(o.rstrip("/") + "/") for o in outs)]
    assert not loose, loose


def test_executor_settings_rerun_nothing(tiny_repo):
    """`executor` changes no result and is no stage's param: only check_params (which reads all of params.yaml and
    writes the same bytes) is out of date after a change (every data stage re-ran to keep every unit before)."""
    dst, env, first = tiny_repo
    assert first.returncode == 0
    p = dst / "params.yaml"
    text = p.read_text()
    params = yaml.safe_load(text)
    params["executor"]["workers"] += 1
    p.write_text(yaml.safe_dump(params, sort_keys=False))
    try:
        status = run([str(BIN / "dvc"), "status", "--json"], dst, env)
    finally:
        p.write_text(text)
    assert status.returncode == 0 and set(json.loads(status.stdout)) == {"check_params"}, status.stdout


def test_second_repro_does_nothing(tiny_repo):
    dst, env, first = tiny_repo
    assert first.returncode == 0
    second = run([str(BIN / "dvc"), "repro"], dst, env)
    assert second.returncode == 0, second.stderr
    assert "Running stage" not in second.stdout, second.stdout
    status = run([str(BIN / "dvc"), "status"], dst, env)
    assert "up to date" in status.stdout, status.stdout


def test_rebuilding_the_head_model_leaves_the_later_stages_cached(tiny_repo):
    """The head model folder holds no run times: forcing its stage again (stand-in build + landmark calibration)
    writes the same bytes, so dvc.lock keeps the folder's hash and no later stage is out of date (before, build_s
    and the calibration's timings in its JSON files gave the folder a new hash on every run)."""
    dst, env, first = tiny_repo
    assert first.returncode == 0
    before = locked_hash(dst, "head_model", "data/head_model")
    again = run([str(BIN / "dvc"), "repro", "-f", "-s", "head_model"], dst, env)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "Running stage 'head_model'" in again.stdout
    assert locked_hash(dst, "head_model", "data/head_model") == before
    status = run([str(BIN / "dvc"), "status"], dst, env)
    assert "up to date" in status.stdout, status.stdout


@pytest.mark.parametrize("edit, message", [
    (("uv", "resolutin", 64), "params.yaml:uv: unknown keys ['resolutin']"),
    (("train", "steps", "abc"), "params.yaml:train.steps: expected an integer, got 'abc'"),
    (("uv", "resolution", -4), "params.yaml:uv.resolution: -4 is below the minimum"),
])
def test_bad_params_fail_before_any_output_is_removed(tiny_repo, edit, message):
    """A typo in params.yaml stops `dvc repro` at check_params with one line naming the key, before DVC has
    removed the outputs of the stage whose section changed (or of any stage after it)."""
    dst, env, first = tiny_repo
    assert first.returncode == 0
    good = (dst / "params.yaml").read_text()
    before = {p: (dst / p).stat().st_mtime_ns for p in ("data/uv", "models/geoface", "metrics/eval.json")}
    params = yaml.safe_load(good)
    section, key, value = edit
    params[section][key] = value
    try:
        (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        bad = run([str(BIN / "dvc"), "repro"], dst, env)
        assert bad.returncode != 0
        out = bad.stdout + bad.stderr
        assert f"check_params: error: {message}" in out and "Traceback" not in out, out[-3000:]
        for p, t in before.items():
            assert (dst / p).exists() and (dst / p).stat().st_mtime_ns == t, f"{p} was touched"
        assert (dst / "data/params_check.json").is_file()  # not even the check's own output is removed
    finally:
        (dst / "params.yaml").write_text(good)
    again = run([str(BIN / "dvc"), "repro"], dst, env)
    assert again.returncode == 0 and "Running stage" not in again.stdout, again.stdout[-3000:]


def test_eval_metrics_have_baselines_beside_them(tiny_repo):
    """metrics/eval.json holds the foreground and per-noise-band metrics and every baseline (issue 14 items 1-2)."""
    import json

    dst, env, first = tiny_repo
    assert first.returncode == 0
    m = json.loads((dst / "metrics/eval.json").read_text())
    number = (int, float)
    for k in ("psnr_fg", "ssim_fg", "attention_hit_rate_low", "attention_hit_rate_mid", "attention_hit_rate_high"):
        assert isinstance(m[k], number), k
    for b in ("copy_reference", "mean_colour"):
        for k in ("psnr", "ssim", "psnr_fg", "ssim_fg"):
            assert isinstance(m[f"baseline_{b}_{k}"], number), (b, k)
    assert isinstance(m["baseline_mean_uv_geometry_error_mm"], number)
    for band in ("", "_low", "_mid", "_high"):
        assert 0 <= m[f"baseline_camera_only_attention_hit_rate{band}"] <= 1
    assert m["noise_bands"] == {"low": [0, 333], "mid": [334, 666], "high": [667, 999]}
    assert m["baseline_training_samples"] >= 1


def test_lineage_reaches_every_metrics_file_and_the_model_card(tiny_repo):
    """Issue 16 item 3: the captures version in capture.json is in every later metrics file and the model card,
    and `geoface audit` (DVC's status) finds the workspace data matching the model."""
    import json

    dst, env, first = tiny_repo
    assert first.returncode == 0
    version = json.loads((dst / "data/captures/capture.json").read_text())["version_id"]
    for stage in ("captures", "landmarks", "fit", "uv", "correspondences", "dataset", "train", "eval"):
        assert json.loads((dst / f"metrics/{stage}.json").read_text())["captures_version"] == version, stage
    card = json.loads((dst / "models/geoface/model_card.json").read_text())
    assert card["captures_version"] == version and len(card["head_model_sha256"]) == 64
    assert card["params"]["train"]["steps"] == TINY["train"]["steps"] and card["dataset_params"]["tokens"]
    assert (dst / "models/geoface/MODEL_CARD.md").is_file()
    audit = run([str(BIN / "python"), "-m", "geoface.cli", "audit"], dst, env)
    assert audit.returncode == 0 and f"captures version:   {version}" in audit.stdout, audit.stdout + audit.stderr


def _unit_files(dst: Path, subjects: list[str]) -> dict[str, bytes]:
    """The files of the data stages' units (and previews) of `subjects`, by path."""
    out = {}
    for folder in ("data/landmarks", "data/fits", "data/uv", "data/correspondences", "plots/fit/overlays", "plots/uv",
                   "plots/correspondences"):
        for p in sorted((dst / folder).rglob("*")):
            rel = p.relative_to(dst / folder)
            if p.is_file() and (rel.parts[0] in subjects or rel.name.startswith(tuple(f"{s}_" for s in subjects))):
                out[f"{folder}/{rel}"] = p.read_bytes()
    return out


def test_adding_a_subject_reruns_only_its_units(tiny_repo):
    """Issue 16 item 1 under real DVC (persistent outputs): 3 -> 4 synthetic subjects re-runs the landmarks, fit, uv
    and correspondences stages for the new sequence only, the old sequences' files byte-identical; after
    `git checkout` + `dvc checkout` of the 3-subject version the restored unit folders are trusted again (DVC restores
    their key files with them), so going to 4 subjects once more again runs one unit per stage."""
    import json

    dst, env, first = tiny_repo
    assert first.returncode == 0
    good = (dst / "params.yaml").read_text()
    old = sorted(p.name for p in (dst / "data/fits").iterdir() if p.is_dir())
    assert len(old) == 3
    before = _unit_files(dst, old)
    params = yaml.safe_load(good)
    params["captures"]["synthetic"]["subjects"] = 4
    dvc = str(BIN / "dvc")
    for cmd in (["git", "add", "dvc.lock"], ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "3"]):
        subprocess.run(cmd, cwd=dst, env=env, check=True, capture_output=True)  # the 3-subject version
    try:
        for attempt in ("first", "after checkout"):
            (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
            r = run([dvc, "repro", "dataset"], dst, env)
            assert r.returncode == 0, (attempt, r.stdout[-3000:] + r.stderr[-3000:])
            for stage in ("landmarks", "fit", "uv", "correspondences"):
                m = json.loads((dst / f"metrics/{stage}.json").read_text())
                assert (m["units_run"], m["units_kept"], m["units_removed"]) == (1, 3, 0), (attempt, stage, m)
            m = json.loads((dst / "metrics/dataset.json").read_text())
            assert m["units"] == 4 and m["units_failed"] == 0, m
            assert _unit_files(dst, old) == before, attempt
            (dst / "params.yaml").write_text(good)
            for cmd in (["git", "checkout", "HEAD", "--", "dvc.lock"], [dvc, "checkout"]):
                r = run(cmd, dst, env)
                assert r.returncode == 0, r.stderr[-2000:]
            assert _unit_files(dst, old) == before and not (dst / "data/fits/synth003").exists()
    finally:
        (dst / "params.yaml").write_text(good)
        run(["git", "checkout", "HEAD", "--", "dvc.lock"], dst, env)
        run([dvc, "checkout"], dst, env)


def test_refitting_from_scratch_leaves_the_later_stages_cached(tiny_repo):
    """The fit stage run again from nothing (its outputs deleted, as in a fresh clone without a DVC remote) writes
    the same bytes: dvc.lock keeps data/fits' hash and `dvc repro` runs no later stage (before, the run times in
    each sequence's status.json and key file gave data/fits a new hash, and uv, correspondences, dataset, train and
    evaluate ran again on unchanged fits)."""
    dst, env, first = tiny_repo
    assert first.returncode == 0
    before = locked_hash(dst, "fit", "data/fits")
    shutil.rmtree(dst / "data" / "fits")
    shutil.rmtree(dst / "plots" / "fit" / "overlays")
    again = run([str(BIN / "dvc"), "repro"], dst, env)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "Running stage 'fit'" in again.stdout
    ran = [line for line in again.stdout.splitlines() if line.startswith("Running stage")]
    assert ran == ["Running stage 'fit':"], ran
    assert locked_hash(dst, "fit", "data/fits") == before
