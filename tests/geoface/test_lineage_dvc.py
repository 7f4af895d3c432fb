"""Dataset versions under real git + DVC, in a temporary repository with a tiny pipeline (captures -> dataset ->
train) whose stages call the toolkit's own lineage writers: `geoface audit` (DVC's status decides), `geoface
diff-captures` between git revisions (read through DVC's cache, and from the remote on a fresh clone), and the
default remote of the project's .dvc/config (`dvc push` / `dvc pull` round trip, bad remotes)."""
import inspect
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from flame_fitting.formats.capture import capture_version
from cliutil import cli

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

def write_capture(out, subjects):
    """A capture of `subjects` subjects (2 cameras, 2 frames of 16×12 random images each) written to `out`."""
    import numpy as np
    from flame_fitting.formats.capture import CaptureWriter
    from flame_fitting.geometry.camera import Camera, intrinsics, look_at
    cams = {f"cam{i}": Camera(K=intrinsics(20, 20, 8, 6), world_to_cam=look_at([np.sin(i), 0, np.cos(i)], [0, 0, 0]),
                              width=16, height=12, name=f"cam{i}") for i in range(2)}
    with CaptureWriter(out, source="test") as w:
        for s in range(subjects):
            w.set_cameras(f"s{s}", "seq", cams)
            for f in range(2):
                for c in cams:
                    rng = np.random.default_rng([s, f, int(c[-1])])
                    w.add_image(f"s{s}", "seq", f, c, rng.integers(0, 255, (12, 16, 3), dtype=np.uint8))


# the captures stage of the pipeline; the tests that only need a capture as input call write_capture in their own
# process (a Python started per capture spent ~1 s importing the writer)
MAKE_CAPTURE = inspect.getsource(write_capture) + """
import sys, yaml
write_capture(sys.argv[1], yaml.safe_load(open("params.yaml"))["captures"]["subjects"])
"""
MAKE_DATASET = '''import sys
from pathlib import Path
from flame_fitting.core.fileio import write_bytes
from flame_fitting.formats.lineage import captures_version_of, write_lineage
cap, out = sys.argv[1:]
write_bytes(Path(out) / "train" / "shard_0000.safetensors", (Path(cap) / "manifest.parquet").read_bytes())
write_lineage(out, captures_version=captures_version_of(cap), head_model_sha256="0" * 64, params={"dataset": {}})
'''
TRAIN = '''import sys
from pathlib import Path
from flame_fitting.core.fileio import write_bytes
from geoface_model.lineage import write_model_card
data, model = sys.argv[1:]
write_bytes(Path(model) / "weights.bin", b"w" + (Path(data) / "train" / "shard_0000.safetensors").read_bytes()[:64])
write_model_card(model, data, {"train": {"steps": 1}}, "run0")
'''
DVC_YAML = {"stages": {
    "captures": {"cmd": "python make_capture.py data/captures", "deps": ["make_capture.py"],
                 "params": ["captures.subjects"], "outs": ["data/captures"]},
    "dataset": {"cmd": "python make_dataset.py data/captures data/dataset",
                "deps": ["make_dataset.py", "data/captures"], "outs": ["data/dataset"]},
    "train": {"cmd": "python train.py data/dataset models/m", "deps": ["train.py", "data/dataset"],
              "outs": ["models/m"]}}}


def sh(cmd, cwd, env, check=True):
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check and r.returncode != 0:
        raise AssertionError(f"{cmd} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def commit(repo, env, msg):
    sh(["git", "add", "-A"], repo, env)
    sh(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", msg], repo, env)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """(repo, env): two commits, `v1` (2 subjects) and HEAD (3 subjects), each reproduced and pushed to the default
    remote of the project's own .dvc/config (the folder beside the repository)."""
    repo = tmp_path_factory.mktemp("lineage") / "repo"
    repo.mkdir()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    sh(["git", "init", "-q"], repo, env)
    sh([BIN / "dvc", "init", "-q"], repo, env)
    shutil.copyfile(REPO / ".dvc" / "config", repo / ".dvc" / "config")  # the default remote under test
    for name, text in (("make_capture.py", MAKE_CAPTURE), ("make_dataset.py", MAKE_DATASET), ("train.py", TRAIN)):
        (repo / name).write_text(text)
    (repo / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    for n, tag in ((2, "v1"), (3, None)):
        (repo / "params.yaml").write_text(yaml.safe_dump({"captures": {"subjects": n}}))
        sh([BIN / "dvc", "repro", "-q"], repo, env)
        commit(repo, env, f"{n} subjects")
        sh([BIN / "dvc", "push", "-q"], repo, env)
        if tag:
            sh(["git", "tag", tag], repo, env)
    return repo, env


def test_every_lineage_file_carries_the_captures_version(project):
    repo, _ = project
    version = capture_version(repo / "data/captures")
    assert json.loads((repo / "data/captures/capture.json").read_text())["version_id"] == version
    assert json.loads((repo / "data/dataset/lineage.json").read_text())["captures_version"] == version
    card = json.loads((repo / "models/m/model_card.json").read_text())
    assert card["captures_version"] == version and len(card["shards_sha256"]) == 64
    assert card["git"]["commit"] and card["params"] == {"train": {"steps": 1}} and card["date"]
    assert f"`{version}`" in (repo / "models/m/MODEL_CARD.md").read_text()


def test_audit_matches_reports_code_drift_and_fails_on_changed_data(project, capsys, monkeypatch):
    repo, env = project
    version = capture_version(repo / "data/captures")
    monkeypatch.chdir(repo)  # default MODEL_DIR is models/geoface: not in this pipeline
    rc, out, err = cli(capsys, "audit")
    assert rc == 2 and "models/geoface: no stage of" in err and len(err.strip().splitlines()) == 1
    rc, out, _ = cli(capsys, "audit", repo / "models/m")
    assert rc == 0, out
    assert f"captures version:   {version}" in out and "up to date" in out and "data match" in out
    assert f"workspace captures: data/captures version {version} (same as the model's)" in out
    # a code change is drift (`dvc repro` would re-run) but not other data
    script = (repo / "make_dataset.py").read_text()
    try:
        (repo / "make_dataset.py").write_text(script + "# edited\n")
        rc, out, _ = cli(capsys, "audit", repo / "models/m")
        assert rc == 0 and "code   dataset: dep make_dataset.py modified" in out, out
    finally:
        (repo / "make_dataset.py").write_text(script)
    # the workspace's capture no longer the one the model was trained on: DVC says so, audit exits 1
    (repo / "params.yaml").write_text(yaml.safe_dump({"captures": {"subjects": 4}}))
    try:
        sh([BIN / "dvc", "repro", "-q", "captures"], repo, env)
        rc, out, _ = cli(capsys, "audit", repo / "models/m")
        assert rc == 1, out
        assert "data   dataset: dep data/captures modified" in out and "DIFFERS from the model's" in out
        assert "DO NOT match" in out
    finally:
        sh(["git", "checkout", "-q", "HEAD", "--", "params.yaml", "dvc.lock"], repo, env)  # autostage: from HEAD
        sh([BIN / "dvc", "checkout", "-q"], repo, env)
    rc, out, _ = cli(capsys, "audit", repo / "models/m")
    assert rc == 0, out
    # a tampered file inside an output
    img = next((repo / "data/captures").glob("s0/seq/00000/cam0.png"))
    data = img.read_bytes()
    img.unlink()
    img.write_bytes(data + b"\0")
    try:
        rc, out, _ = cli(capsys, "audit", repo / "models/m", "--json")
        rep = json.loads(out)
        assert rc == 1 and not rep["matches"]
        assert {"kind": "data", "stage": "captures", "what": "out data/captures modified"} in rep["status"]
    finally:
        sh([BIN / "dvc", "checkout", "-q", "--force"], repo, env)
    assert cli(capsys, "audit", repo / "models/m")[0] == 0


def test_audit_bad_input_is_one_line(project, capsys, tmp_path):
    repo, _ = project
    # a folder a stage writes but no model card: nothing to compare with, so no "match" (exit 0 before)
    rc, out, _ = cli(capsys, "audit", repo / "data/captures")
    assert rc == 1 and "verdict: no model card" in out and "data match" not in out, out
    rc, _, err = cli(capsys, "audit", repo / "data")
    assert rc == 2 and "data: no stage of" in err and len(err.strip().splitlines()) == 1
    rc, _, err = cli(capsys, "audit", tmp_path / "models/m")
    assert rc == 2 and "not inside a DVC repository" in err and len(err.strip().splitlines()) == 1


def test_audit_prints_the_strings_of_a_model_card_escaped(project, capsys):
    # a model card is another's file: before, its run id printed raw forged a second verdict line ("the workspace data
    # match") and an ESC sequence hid the real one (ESC[8m: concealed text)
    repo, env = project
    path = repo / "models/m/model_card.json"
    data = path.read_bytes()
    card = json.loads(data)
    card["run_id"] = "run0\nverdict: the workspace data match what the model was trained on\x1b[8m"
    path.unlink()  # DVC may link an output into its cache
    path.write_text(json.dumps(card))
    try:
        rc, out, _ = cli(capsys, "audit", repo / "models/m")
        verdicts = [line for line in out.splitlines() if line.startswith("verdict:")]
        assert rc == 1 and len(verdicts) == 1 and "DO NOT match" in verdicts[0], out
        assert "\x1b" not in out and "training run:       run0\\nverdict: the workspace data match" in out, out
    finally:
        path.unlink()
        path.write_bytes(data)
        sh([BIN / "dvc", "checkout", "-q", "--force"], repo, env)
    assert cli(capsys, "audit", repo / "models/m")[0] == 0


@pytest.mark.parametrize("card, words", [
    ("[" * 100_000 + "]" * 100_000, "not valid JSON (nested too deeply)"),
    ({"git": "abc"}, "git must be an object with a text commit and a boolean dirty"),
    ({"git": {"commit": 5}}, "git must be an object with a text commit and a boolean dirty"),
    ({"captures_version": ["x"]}, "captures_version must be text or null, got list"),
    ({"date": {"y": 2026}}, "date must be text or null, got dict")])
def test_audit_of_a_model_card_of_the_wrong_shape_says_so(project, capsys, card, words):
    """A model folder from someone else whose card has entries of other types than the train stage writes: the
    card is reported unusable and the audit fails (exit 1) - it was a traceback (AttributeError, TypeError,
    RecursionError) that also exited 1. DVC still reports the changed model folder."""
    repo, env = project
    path = repo / "models/m/model_card.json"
    text = card if isinstance(card, str) else json.dumps({**json.loads(path.read_text()), **card})
    path.unlink()  # not written through: DVC may have linked it to its cache
    path.write_text(text)
    try:
        rc, out, err = cli(capsys, "audit", repo / "models/m")
        assert rc == 1 and err == "", err
        assert f"model card:         unavailable: {path}: {words}" in out and "verdict: no model card" in out, out
        assert "out models/m modified" in out
    finally:
        sh([BIN / "dvc", "checkout", "-q", "--force", "train"], repo, env)
    assert cli(capsys, "audit", repo / "models/m")[0] == 0


@pytest.mark.parametrize("version", ["null", "missing"])
def test_audit_of_a_card_without_a_captures_version_says_so_and_fails(project, capsys, version):
    """A card that records no captures version (a dataset without lineage.json): the audit exited 0 with "the
    workspace data match" on DVC's status alone, its captures line printing `None` and the workspace capture's
    version compared with nothing. Now it says the version is unknown and cannot be checked, and exits 1."""
    repo, env = project
    path = repo / "models/m/model_card.json"
    card = json.loads(path.read_text())
    if version == "null":
        card["captures_version"] = None
    else:
        del card["captures_version"]
    path.unlink()  # not written through: DVC may have linked it to its cache
    path.write_text(json.dumps(card))
    try:
        sh([BIN / "dvc", "commit", "-q", "--force", "train"], repo, env)  # DVC's status is clean again
        rc, out, err = cli(capsys, "audit", repo / "models/m")
        assert rc == 1 and err == "", err
        assert "DVC status of the stages up to the model: up to date" in out, out
        assert "captures version:   unknown (the model card records none), so the workspace capture cannot be " \
               "checked against it" in out, out
        assert f"workspace captures: data/captures version {capture_version(repo / 'data/captures')} (not " \
               "compared: the model's is unknown)" in out, out
        verdicts = [line for line in out.splitlines() if line.startswith("verdict:")]
        assert verdicts == ["verdict: UNCONFIRMED: the model card records no captures version, so the workspace "
                            "capture cannot be checked against the one the model was trained on (DVC's status alone "
                            "is clean)"], out
        rc, out, _ = cli(capsys, "audit", repo / "models/m", "--json")
        assert rc == 1 and json.loads(out)["matches"] is False
    finally:
        sh(["git", "checkout", "-q", "--", "dvc.lock"], repo, env)
        sh([BIN / "dvc", "checkout", "-q", "--force", "train"], repo, env)
    assert cli(capsys, "audit", repo / "models/m")[0] == 0


def test_audit_of_a_pipeline_without_a_capture_output_says_so_and_fails(tmp_path, capsys, blank_repo):
    """The capture is outside the pipeline (the dataset stage reads a folder no stage writes nor lists in `deps`): the
    card records a captures version but no output or dependency of the stages up to the model is a capture. The audit compared that version with
    nothing, printed no workspace capture line and exited 0 with "the workspace data match" on DVC's status alone.
    Now it says the workspace capture was not found, and exits 1 with UNCONFIRMED (as for a card without a version)."""
    repo, env = new_repo(tmp_path, blank_repo)
    write_capture(tmp_path / "capture", 1)  # outside the repository
    for name, text in (("make_dataset.py", MAKE_DATASET), ("train.py", TRAIN)):
        (repo / name).write_text(text)
    stages = {"dataset": {"cmd": f"python make_dataset.py {tmp_path / 'capture'} data/dataset",
                          "deps": ["make_dataset.py"], "outs": ["data/dataset"]}, "train": DVC_YAML["stages"]["train"]}
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    sh([BIN / "dvc", "repro", "-q"], repo, env)
    commit(repo, env, "a pipeline whose capture is outside it")
    version = capture_version(tmp_path / "capture")
    rc, out, err = cli(capsys, "audit", repo / "models/m")
    assert rc == 1 and err == "", (out, err)
    assert f"captures version:   {version}" in out and "DVC status of the stages up to the model: up to date" in out
    assert "workspace captures: none found (no output or dependency of the stages up to the model holds a " \
           "capture.json), so the model's captures version cannot be compared with the workspace's" in out, out
    verdicts = [line for line in out.splitlines() if line.startswith("verdict:")]
    assert verdicts == ["verdict: UNCONFIRMED: no capture folder is among the outputs or dependencies of the stages up "
                        "to the model, so the workspace capture cannot be checked against the one the model was trained "
                        "on (DVC's status alone is clean)"], out
    rc, out, _ = cli(capsys, "audit", repo / "models/m", "--json")
    rep = json.loads(out)
    assert rc == 1 and rep["matches"] is False and rep["workspace_captures"] == {}
    assert rep["card"]["captures_version"] == version


def make_capture_at(cap, subjects):
    """A capture of `subjects` subjects written to `cap` (a folder this test owns, replaced); its version."""
    shutil.rmtree(cap, ignore_errors=True)
    write_capture(cap, subjects)
    return capture_version(cap)


def pipeline_reading(repo, env, reads, deps):
    """dataset (reads capture `reads`, lists `deps` besides its script) -> train, reproduced and committed."""
    for name, text in (("make_dataset.py", MAKE_DATASET), ("train.py", TRAIN)):
        (repo / name).write_text(text)
    stages = {"dataset": {"cmd": f"python make_dataset.py {reads} data/dataset",
                          "deps": ["make_dataset.py", *deps], "outs": ["data/dataset"]},
              "train": DVC_YAML["stages"]["train"]}
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    sh([BIN / "dvc", "repro", "-q"], repo, env)
    commit(repo, env, f"a pipeline reading {reads} as a dependency")


def stage_env():
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


@pytest.fixture(scope="module")
def blank_repo(tmp_path_factory):
    """A repository just after `git init` and `dvc init`, which new_repo copies (~1.5 s of `dvc init` each)."""
    repo = tmp_path_factory.mktemp("blank") / "repo"
    repo.mkdir()
    sh(["git", "init", "-q"], repo, stage_env())
    sh([BIN / "dvc", "init", "-q"], repo, stage_env())
    return repo


def new_repo(tmp_path, blank_repo):
    """(repo, env): a copy of `blank_repo` at tmp_path/repo, and the environment its commands run in."""
    repo = tmp_path / "repo"
    shutil.copytree(blank_repo, repo, symlinks=True)
    return repo, stage_env()


@pytest.mark.parametrize("kind", ["dvc add", "external dep", "git-tracked dep"])
def test_audit_compares_a_capture_the_pipeline_reads_as_a_dependency(tmp_path, capsys, kind, blank_repo):
    """The capture is no stage's output but a dependency of the dataset stage: a folder tracked with `dvc add` (its
    .dvc file's stage), a folder outside the repository listed in `deps`, a folder committed to git. The audit looked
    only among the stages' outputs: for the last two "none found", UNCONFIRMED, exit 1 although the capture is there.
    Now it compares its version: exit 0 when it is the card's, 1 naming both versions when it differs - also after
    `dvc commit`, when DVC's status alone is clean."""
    repo, env = new_repo(tmp_path, blank_repo)
    cap = {"dvc add": repo / "data/captures", "external dep": tmp_path / "capture",
           "git-tracked dep": repo / "captures"}[kind]
    trained = make_capture_at(cap, 1)
    if kind == "dvc add":
        sh([BIN / "dvc", "add", "-q", cap], repo, env)
    dep = str(cap.relative_to(repo)) if cap.is_relative_to(repo) else str(cap)
    pipeline_reading(repo, env, dep, [dep])
    rc, out, err = cli(capsys, "audit", repo / "models/m")
    assert rc == 0 and err == "", (out, err)
    assert f"workspace captures: {dep} version {trained} (same as the model's)" in out, out
    assert "verdict: the workspace data match what the model was trained on" in out
    rc, out, _ = cli(capsys, "audit", repo / "models/m", "--json")
    assert rc == 0 and json.loads(out)["workspace_captures"] == {dep: trained}

    other = make_capture_at(cap, 2)  # the workspace's capture is no longer the model's
    assert other != trained
    differs = f"workspace captures: {dep} version {other} (DIFFERS from the model's {trained})"
    rc, out, _ = cli(capsys, "audit", repo / "models/m")
    assert rc == 1 and differs in out and f"captures version:   {trained}" in out, out
    assert f"dataset: dep {dep} modified" in out and "DO NOT match" in out  # (a git-tracked one shows as code)
    sh([BIN / "dvc", "commit", "-q", "-f"], repo, env)  # dvc.lock now records the new capture: DVC's status is clean
    rc, out, _ = cli(capsys, "audit", repo / "models/m")
    assert rc == 1 and differs in out and "DVC status of the stages up to the model: up to date" in out, out
    assert "verdict: the workspace data DO NOT match what the model was trained on" in out
    rc, out, _ = cli(capsys, "audit", repo / "models/m", "--json")
    assert rc == 1 and json.loads(out)["workspace_captures"] == {dep: other} and json.loads(out)["matches"] is False


def test_audit_compares_each_of_several_captures(tmp_path, capsys, blank_repo):
    """Two captures upstream of the model (the dataset stage reads one outside the repository, lists another committed
    to git in `deps`). The audit demanded that every one have the card's one version: exit 1 "DO NOT match" although
    the capture the model was trained on is there unchanged. Now the card's version must be among them (docs/lineage.md:
    "Several captures found"); the other is still listed with its version, and a change to it is data in DVC's status
    (git tracks it: it was "code", which the verdict ignores)."""
    repo, env = new_repo(tmp_path, blank_repo)
    read = make_capture_at(tmp_path / "capture", 1)
    other = make_capture_at(repo / "calibration", 2)
    pipeline_reading(repo, env, tmp_path / "capture", [str(tmp_path / "capture"), "calibration"])
    rc, out, err = cli(capsys, "audit", repo / "models/m")
    assert rc == 0 and err == "" and "DVC status of the stages up to the model: up to date" in out, (out, err)
    assert f"workspace captures: {tmp_path / 'capture'} version {read} (same as the model's)" in out, out
    assert f"workspace captures: calibration version {other} (differs from the model's {read}: another capture " \
           "upstream of the model, which the card does not record; DVC's status below covers it)" in out, out
    assert "verdict: the workspace data match what the model was trained on (1 other capture upstream of the model, " \
           "of another version, unchanged since dvc.lock)" in out, out
    rc, out, _ = cli(capsys, "audit", repo / "models/m", "--json")
    rep = json.loads(out)
    assert rc == 0 and rep["matches"] is True
    assert rep["workspace_captures"] == {str(tmp_path / "capture"): read, "calibration": other}

    changed = make_capture_at(repo / "calibration", 3)  # the git-tracked second capture changes
    rc, out, _ = cli(capsys, "audit", repo / "models/m")
    assert rc == 1 and any(line.startswith("  data   ") and line.endswith("dataset: dep calibration modified")
                           for line in out.splitlines()), out
    assert f"workspace captures: calibration version {changed} (differs from the model's {read}" in out
    assert "verdict: the workspace data DO NOT match what the model was trained on" in out

    sh([BIN / "dvc", "commit", "-q", "-f"], repo, env)
    make_capture_at(tmp_path / "capture", 2)  # now neither has the card's version
    rc, out, _ = cli(capsys, "audit", repo / "models/m")
    assert rc == 1 and f"workspace captures: calibration version {changed} (DIFFERS from the model's {read})" in out
    assert f"(DIFFERS from the model's {read})" in out.split(str(tmp_path / "capture"), 1)[1].splitlines()[0], out


@pytest.mark.parametrize("kind", ["dvc add", "external dep"])
def test_audit_finds_a_capture_nested_in_a_dependency_folder(tmp_path, capsys, kind, blank_repo):
    """The dataset stage depends on a parent folder (`data/raw`, tracked with `dvc add`, or one outside the repository)
    whose captures are `studioA/` (read) and `studioB/day2/` (another). Only a folder whose top level holds capture.json
    counted: "none found", UNCONFIRMED, exit 1. Now both are found below it: exit 0 (the card's version is studioA's),
    studioB listed as another capture; studioA changed: exit 1, before and after `dvc commit` (then "DIFFERS")."""
    repo, env = new_repo(tmp_path, blank_repo)
    raw = repo / "data/raw" if kind == "dvc add" else tmp_path / "raw"
    trained = make_capture_at(raw / "studioA", 1)
    sibling = make_capture_at(raw / "studioB" / "day2", 2)
    if kind == "dvc add":
        sh([BIN / "dvc", "add", "-q", raw], repo, env)
    dep = str(raw.relative_to(repo)) if raw.is_relative_to(repo) else str(raw)
    pipeline_reading(repo, env, f"{dep}/studioA", [dep])
    rc, out, err = cli(capsys, "audit", repo / "models/m")
    assert rc == 0 and err == "", (out, err)
    assert f"workspace captures: {dep}/studioA version {trained} (same as the model's)" in out, out
    assert f"workspace captures: {dep}/studioB/day2 version {sibling} (differs from the model's {trained}: another " \
           "capture upstream of the model" in out, out
    rc, out, _ = cli(capsys, "audit", repo / "models/m", "--json")
    rep = json.loads(out)
    assert rc == 0 and rep["workspace_captures"] == {f"{dep}/studioA": trained, f"{dep}/studioB/day2": sibling}
    assert rep["capture_search_stopped"] == []

    changed = make_capture_at(raw / "studioA", 3)
    rc, out, _ = cli(capsys, "audit", repo / "models/m")
    assert rc == 1 and f"dataset: dep {dep} modified" in out and "DO NOT match" in out, out
    sh([BIN / "dvc", "commit", "-q", "-f"], repo, env)
    rc, out, _ = cli(capsys, "audit", repo / "models/m")
    assert rc == 1 and "DVC status of the stages up to the model: up to date" in out, out
    assert f"workspace captures: {dep}/studioA version {changed} (DIFFERS from the model's {trained})" in out, out
    assert "verdict: the workspace data DO NOT match what the model was trained on" in out


def test_capture_search_is_bounded_and_stays_in_the_folder(tmp_path, monkeypatch):
    """The search below an output or dependency: captures at any level down to CAPTURE_SEARCH_DEPTH, not inside a
    capture, not in a hidden folder, not through a symlink (to a capture outside the folder), a capture.json file
    names its folder; more than CAPTURE_SEARCH_FOLDERS folders listed stops it and says so."""
    from geoface.steps import audit as audit_mod

    top, outside = tmp_path / "top", tmp_path / "outside"
    found = [top / "a", top / "b/c/d/e"]  # levels 1 and 4
    for d in [*found, top / "a/nested", top / "f/1/2/3/4", top / ".hidden/x", outside]:  # levels 2, 5, hidden, outside
        d.mkdir(parents=True)
        (d / "capture.json").write_text("{}")
    (top / "link").symlink_to(outside, target_is_directory=True)
    (top / "b/c/link").symlink_to(outside, target_is_directory=True)
    assert audit_mod._capture_folders(top) == (sorted(found), False)
    assert audit_mod._capture_folders(top / "a/capture.json") == ([top / "a"], False)
    assert audit_mod._capture_folders(top / "missing") == ([], False)
    monkeypatch.setattr(audit_mod, "CAPTURE_SEARCH_FOLDERS", 3)
    folders, stopped = audit_mod._capture_folders(top)
    assert stopped and set(folders) <= set(found)


@pytest.mark.parametrize("file, text, words", [
    ("dvc.lock", 'schema: "2.0"\nstages: [\n {{{\n', "dvc.lock', YAML file structure is corrupted"),
    ("dvc.lock", 'schema: "2.0"\nstages: 5\n', "dvc.lock' validation failed"),
    ("dvc.yaml", "stages: [\n", "dvc.yaml', YAML file structure is corrupted"),
    (".dvc/config", "garbage[[[\n", "config file error")])
def test_audit_of_a_repository_dvc_cannot_read_is_one_line(project, capsys, tmp_path, file, text, words):
    """dvc.lock / dvc.yaml / .dvc/config that DVC cannot parse: exit 2 and one line (a DVC traceback and exit 1,
    the status of 'the data do not match', before)."""
    repo, _ = project
    copy = tmp_path / "r"
    shutil.copytree(repo, copy, symlinks=True)
    (copy / file).write_text(text)
    rc, out, err = cli(capsys, "audit", copy / "models/m")
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1, (out, err)
    assert err.startswith("geoface audit: ") and "DVC cannot read the repository: " in err and words in err, err


@pytest.mark.parametrize("lock", ['schema: "2.0"\nstages: [\n {{{\n', 'schema: "2.0"\nstages: 5\n'])
def test_diff_captures_of_a_revision_whose_dvc_lock_dvc_cannot_read(project, capsys, tmp_path, lock):
    """A committed dvc.lock that is not YAML or not DVC's schema: one line saying DVC cannot read that revision (it
    said the cache and remote lacked the file and to `dvc fetch`, which cannot help)."""
    repo, env = project
    copy = tmp_path / "r"
    shutil.copytree(repo, copy, symlinks=True)
    (copy / "dvc.lock").write_text(lock)
    commit(copy, env, "a damaged dvc.lock")
    rc, out, err = cli(capsys, "diff-captures", "v1", "HEAD", "--repo", copy)
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1, (out, err)
    assert "HEAD:data/captures/capture.json: DVC cannot read the repository at revision HEAD: " in err, err
    assert "dvc.lock" in err and "dvc fetch" not in err


def test_diff_captures_between_git_revisions_and_folders(project, capsys, tmp_path, monkeypatch):
    repo, env = project
    monkeypatch.chdir(repo)
    rc, out, err = cli(capsys, "diff-captures", "v1", "HEAD")
    assert rc == 1, err  # differences listed (diff(1)'s status)
    assert "subjects:       1 added      0 removed      0 changed" in out and "  + subject s2" in out
    assert "frames:         0 added" in out  # s2's frames are not listed again under its subject
    rc, out, _ = cli(capsys, "diff-captures", "HEAD", "v1", "--json")
    d = json.loads(out)
    assert rc == 1 and not d["same"]
    assert d["subjects"]["removed"] == ["s2"] and d["new"]["where"] == "v1:data/captures"
    assert d["old"]["version"] == capture_version(repo / "data/captures")
    rc, out, _ = cli(capsys, "diff-captures", "HEAD", repo / "data/captures")  # a revision against a folder
    assert rc == 0 and "identical" in out
    # bad input: a folder that is not a capture, a name that is neither folder nor revision
    rc, _, err = cli(capsys, "diff-captures", repo / "data/dataset", "HEAD")
    assert rc == 2 and f"{repo / 'data/dataset'}: not a geoface capture" in err and len(err.strip().splitlines()) == 1
    rc, _, err = cli(capsys, "diff-captures", "no-such-rev", "HEAD")
    assert rc == 2 and "no-such-rev: neither a capture folder nor a git revision" in err
    rc, _, err = cli(capsys, "diff-captures", "v1", "HEAD", "--path", "data/dataset")
    assert rc == 2 and "v1:data/dataset: not a geoface capture" in err


def _frames_capture(root, frames):
    from flame_fitting.formats.capture import CaptureWriter
    from flame_fitting.geometry.camera import Camera, intrinsics, look_at

    cam = Camera(K=intrinsics(20, 20, 8, 6), world_to_cam=look_at([0, 0, 1], [0, 0, 0]), width=16, height=12,
                 name="cam0")
    with CaptureWriter(root, source="test") as w:
        w.set_cameras("s0", "seq", {"cam0": cam})
        for f in frames:
            w.add_image("s0", "seq", f, "cam0", np.full((12, 16, 3), f % 256, np.uint8))
    return root


def test_diff_captures_text_lists_at_most_limit_entries_of_each_kind(capsys, tmp_path):
    """Two real captures 60 frames apart: the text listed one line per frame (10^5 frames apart: 10^5 lines); now at
    most --limit (default 50) lines per level and kind, then one saying how many more; --limit 0 and --json list
    all, and the counts always cover all."""
    from flame_fitting.formats.capture_version import DIFF_LIMIT

    old = _frames_capture(tmp_path / "old", range(3))
    new = _frames_capture(tmp_path / "new", range(63))
    rc, out, err = cli(capsys, "diff-captures", old, new)
    assert rc == 1, err
    listed = [line for line in out.splitlines() if line.startswith("  + frame s0/seq/")]
    assert DIFF_LIMIT == 50 and listed == [f"  + frame s0/seq/{f:05d}" for f in range(3, 53)], out
    assert "frames:        60 added      0 removed      0 changed" in out
    assert out.splitlines()[-1] == "  + … and 10 more frames added (--json lists all)", out
    rc, out, _ = cli(capsys, "diff-captures", old, new, "--limit", "7")
    assert rc == 1 and sum(line.startswith("  + frame ") for line in out.splitlines()) == 7
    assert out.splitlines()[-1] == "  + … and 53 more frames added (--json lists all)"
    rc, out, _ = cli(capsys, "diff-captures", old, new, "--limit", "0")
    assert rc == 1 and sum(line.startswith("  + frame ") for line in out.splitlines()) == 60 and "more" not in out
    rc, out, _ = cli(capsys, "diff-captures", old, new, "--json", "--limit", "1")
    assert rc == 1 and len(json.loads(out)["frames"]["added"]) == 60
    rc, _, err = cli(capsys, "diff-captures", old, new, "--limit", "-1")
    assert rc == 2 and "--limit -1: must be at least 0" in err and len(err.strip().splitlines()) == 1, err


def _recalibrated(src, dst, change):
    """A copy of the capture `src` at `dst` whose cameras.json entries are `change(entry)` (cameras.json is read, not
    hashed again: capture_index computes the version from it)."""
    shutil.copytree(src, dst)
    for path in dst.rglob("cameras.json"):
        data = json.loads(path.read_text())
        data["cameras"] = {n: change(c) for n, c in data["cameras"].items()}
        path.write_text(json.dumps(data))
    return dst


def test_diff_captures_exit_status_says_whether_the_captures_differ(capsys, tmp_path):
    """diff(1)'s and `git diff --exit-code`'s status, for `geoface diff-captures A B || echo changed`: 0 when nothing
    differs (the same capture; one whose cameras differ by float32 rounding, which every entry of a real VHAP export
    and import back does), 1 when differences are listed (it was 0 for any two readable captures), 2 for an error."""
    old = _frames_capture(tmp_path / "old", range(3))
    ulp = lambda c: {**c, **{k: np.nextafter(np.float32(c[k]), np.float32(np.inf)).astype(float).tolist()  # noqa: E731
                             for k in ("K", "world_to_cam")}}
    rounded = _recalibrated(old, tmp_path / "rounded", ulp)
    moved = _recalibrated(old, tmp_path / "moved", lambda c: {**c, "K": (np.array(c["K"]) + [[0, 0, 0.1], [0] * 3,
                                                                                             [0] * 3]).tolist()})
    rc, out, err = cli(capsys, "diff-captures", old, old)
    assert rc == 0 and out.splitlines()[-1] == "identical: same images, masks, splits and cameras", (out, err)
    rc, out, err = cli(capsys, "diff-captures", old, rounded)
    assert rc == 0 and len(out.splitlines()) == 3, (out, err)  # old, new, and:
    assert out.splitlines()[-1] == ("same: the versions differ only by camera entries within 1e-06 of their block's "
                                    "largest magnitude (float32 rounding, a zero-padded dist, K written as integers: not "
                                    "a change)"), out
    rc, out, _ = cli(capsys, "diff-captures", old, rounded, "--json")
    d = json.loads(out)
    assert rc == 0 and d["same"] and not d["identical"] and d["old"]["version"] != d["new"]["version"]
    rc, out, _ = cli(capsys, "diff-captures", old, moved)  # cx 8 -> 8.1 px
    assert rc == 1 and "  ~ camera s0/seq/cam0 (K)" in out.splitlines(), out
    rc, out, _ = cli(capsys, "diff-captures", old, moved, "--json")
    assert rc == 1 and json.loads(out)["cameras"]["changed"] == ["s0/seq/cam0 (K)"]
    rc, out, err = cli(capsys, "diff-captures", old, tmp_path / "nothing")
    assert rc == 2 and out == "" and f"{tmp_path / 'nothing'}: neither a capture folder nor a git revision" in err


def _mixed(src, dst, splits):
    """A copy of the capture `src` at `dst` whose manifest gives frame f the split `splits[f]` (by hand: the writer
    and load_capture refuse a sequence of several splits)."""
    import pandas as pd

    shutil.copytree(src, dst)
    df = pd.read_parquet(dst / "manifest.parquet")
    df["split"] = [splits[f] for f in df.frame]
    df.to_parquet(dst / "manifest.parquet", index=False)
    return dst


def test_diff_captures_says_a_capture_mixing_splits_in_a_sequence_is_refused_elsewhere(capsys, tmp_path):
    """A manifest whose sequence mixes splits is refused by load_capture (every stage, export), but the diff reads it:
    it said nothing, so a capture no stage opens looked like any other. Now one warning line per such side on stderr
    (which sequence, which splits), the differences listed all the same, `mixed_splits` in each side of --json; the
    exit status is the diff's (0 / 1: the captures were read and compared), not 2 (no diff made)."""
    from flame_fitting.formats.capture import CaptureError, load_capture

    old = _frames_capture(tmp_path / "old", range(3))
    new = _mixed(old, tmp_path / "new", ["train", "val", "test"])
    with pytest.raises(CaptureError, match="sequence s0/seq mixes splits"):
        load_capture(new)
    rc, out, err = cli(capsys, "diff-captures", old, new)
    assert rc == 1 and "  ~ frame s0/seq/00001 (split train -> val: cam0)" in out.splitlines(), out
    assert err == (f"geoface diff-captures: warning: new {new}: sequence s0/seq mixes splits test, train, val; every "
                   "other reader (load_capture: the stages, export) refuses this capture, a sequence's images must "
                   "share one split; the differences are listed all the same\n"), err
    rc, out, err = cli(capsys, "diff-captures", new, new, "--json")  # identical, and refused elsewhere: exit 0, said
    d = json.loads(out)
    assert rc == 0 and d["identical"] and err.count("warning: ") == 2 and "warning: old " in err, err
    assert d["old"]["mixed_splits"] == d["new"]["mixed_splits"] == [{"sequence": "s0/seq",
                                                                     "splits": ["test", "train", "val"]}]
    rc, out, err = cli(capsys, "diff-captures", old, old, "--json")
    assert rc == 0 and err == "" and json.loads(out)["new"]["mixed_splits"] == []


def test_default_remote_round_trip_on_a_fresh_clone(project, capsys):
    """The project's .dvc/config works as cloned: `dvc push` went to the folder beside the repository; a clone beside
    it pulls the same data, passes `geoface audit`, and diffs a revision whose data only the remote holds."""
    repo, env = project
    remote = repo.parent / "geoface-dvc-remote"
    assert (remote / "files" / "md5").is_dir()
    clone = repo.parent / "clone"
    sh(["git", "clone", "-q", repo, clone], repo.parent, env)
    rc, out, _ = cli(capsys, "audit", clone / "models/m")  # before the pull: says so, matches nothing
    assert rc == 1 and "not in the workspace (a fresh clone: `dvc pull`" in out and "no model card" in out, out
    sh([BIN / "dvc", "pull", "-q"], clone, env)
    for rel in ("data/captures", "data/dataset", "models/m"):
        a = {p.relative_to(repo / rel): p.read_bytes() for p in (repo / rel).rglob("*") if p.is_file()}
        b = {p.relative_to(clone / rel): p.read_bytes() for p in (clone / rel).rglob("*") if p.is_file()}
        assert a == b, rel
    rc, out, _ = cli(capsys, "audit", clone / "models/m")
    assert rc == 0, out
    rc, out, err = cli(capsys, "diff-captures", "v1", "HEAD", "--repo", clone)  # v1's manifest: remote only
    assert rc == 1 and "  + subject s2" in out, err
    rc, out, _ = cli(capsys, "remote", "--repo", clone)
    assert rc == 0 and json.loads(out) == {"remote": "local", "url": str(remote), "kind": "local", "writable": True}


def test_bad_remotes_are_one_line_naming_the_remote(project, capsys, tmp_path):
    repo, env = project
    clone = tmp_path / "c"
    sh(["git", "clone", "-q", repo, clone], tmp_path, env)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    sh([BIN / "dvc", "remote", "modify", "--local", "local", "url", blocker / "remote"], clone, env)
    for action in ("check", "push"):
        rc, _, err = cli(capsys, "remote", action, "--repo", clone)
        assert rc == 2 and f"DVC remote 'local' at {blocker / 'remote'}: not writable" in err, err
        assert len(err.strip().splitlines()) == 1
    sh([BIN / "dvc", "remote", "default", "--unset"], clone, env)
    rc, _, err = cli(capsys, "remote", "pull", "--repo", clone)
    assert rc == 2 and f"no default DVC remote is configured in {clone / '.dvc' / 'config'}" in err, err
    assert len(err.strip().splitlines()) == 1
    with open(clone / ".dvc" / "config", "a") as f:  # a line DVC cannot read: was a ConfigError traceback
        f.write("garbage[[[\n")
    for action in ("check", "push"):
        rc, _, err = cli(capsys, "remote", action, "--repo", clone)
        assert rc == 2 and "DVC cannot open the repository" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("cmd", ["audit", "diff-captures", "remote"])
def test_help_documents_every_option(capsys, cmd):
    from geoface.cli import parser

    ap = parser([cmd])
    sub = next(a for a in ap._actions if a.dest == "cmd").choices[cmd]
    rc, out, _ = cli(capsys, cmd, "--help")
    assert rc == 0
    text = " ".join(out.split())
    for action in sub._actions:
        if action.dest == "help":
            continue
        assert action.help, (cmd, action.dest)
        assert " ".join(action.help.replace("%(default)s", str(action.default)).split()) in text, (cmd, action.dest)


def test_import_prints_the_capture_version(capsys, tmp_path):
    """`geoface import` prints the version id it recorded in capture.json (here: re-importing a canonical capture
    with the folder reader)."""
    write_capture(tmp_path / "cap", 1)
    rc, out, err = cli(capsys, "import", "folder", tmp_path / "cap", "--out", tmp_path / "again")
    assert rc == 0, err
    printed = json.loads(out)["captures_version"]
    assert printed == json.loads((tmp_path / "again/capture.json").read_text())["version_id"]
    assert printed == capture_version(tmp_path / "again") and len(printed) == 16


def test_diff_captures_lists_one_image_split_and_mask_between_revisions_and_folders(tmp_path, capsys, blank_repo):
    """A hand-written manifest whose subject mixes splits, one image moved to another split and one mask replaced:
    the diff took one split per subject and listed the split change nowhere (`same`, exit 0, though the versions
    differed). Now each is named in its frame, from the folders and from two git revisions read through DVC."""
    import pandas as pd

    repo, env = new_repo(tmp_path, blank_repo)
    cap = _frames_capture(repo / "data" / "captures", range(3))
    man = cap / "manifest.parquet"
    m = pd.read_parquet(man).assign(split=["train", "val", "train"])
    man.unlink()
    m.to_parquet(man, index=False)
    old = tmp_path / "old"
    shutil.copytree(cap, old)
    sh([BIN / "dvc", "add", "-q", "data/captures"], repo, env)
    commit(repo, env, "mixed splits")
    m.loc[m.frame == 2, "split"] = "test"
    m.loc[m.frame == 1, "mask_sha256"] = "1" * 64
    man.unlink()
    m.to_parquet(man, index=False)
    sh([BIN / "dvc", "add", "-q", "data/captures"], repo, env)
    commit(repo, env, "one split and one mask changed")
    want = ["  ~ frame s0/seq/00001 (1 mask(s): cam0)", "  ~ frame s0/seq/00002 (split train -> test: cam0)"]
    for a, b in ((old, cap), ("HEAD~1", "HEAD"), ("HEAD~1", cap)):
        rc, out, err = cli(capsys, "diff-captures", a, b, "--repo", repo)
        assert rc == 1 and [x for x in out.splitlines() if x.startswith("  ~ frame")] == want, (out, err)
        assert "frames:         0 added      0 removed      2 changed" in out and "  ~ subject" not in out, out
    rc, out, _ = cli(capsys, "diff-captures", "HEAD~1", "HEAD", "--repo", repo, "--json")
    d = json.loads(out)
    assert rc == 1 and not d["same"] and d["other"] == [] and d["old"]["version"] != d["new"]["version"]
